import BatonService
import Inventory

await runCommandLine(InventoryCommand.self)
