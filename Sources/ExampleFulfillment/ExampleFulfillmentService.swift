import BatonNode
import BatonService

/// The README's process manager as a service of its own.
public enum ExampleFulfillmentService: ServiceDefinition {
    public static let name = "example-fulfillment"

    public static var handlers: [any NodeHandler] {
        [try! ProcessManagerHost(fulfillment)]  // a broken definition is a programming error: the tests check it
    }
}
