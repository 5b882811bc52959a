import Baton

/// Customer service → fulfillment: hurry one order along. Addressed to the order's running fulfillment
/// process (a command a process manager takes); one for an order with no process is dead-lettered.
public struct ExpediteOrder: Command {
    public static let messageName = "fulfillment.ExpediteOrder"
    /// The order.
    public var orderID: String
    /// Who asked (an agent, a system).
    public var requestedBy: String

    public init(orderID: String, requestedBy: String) {
        self.orderID = orderID
        self.requestedBy = requestedBy
    }
}
