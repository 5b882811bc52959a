import BatonService
import Shipping

await runCommandLine(ShippingCommand.self)
