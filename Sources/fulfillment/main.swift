import BatonService
import Fulfillment

await runCommandLine(FulfillmentCommand.self)
