import BatonService
import Orders

await runCommandLine(OrdersCommand.self)
