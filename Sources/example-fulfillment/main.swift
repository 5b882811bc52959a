import BatonService
import ExampleFulfillment

await runCommandLine(ServiceCommand<ExampleFulfillmentService>.self)
