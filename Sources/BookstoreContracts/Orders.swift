import Baton

/// Place (and confirm) an order; sent by `orders place`. Idempotent by checkout id.
public struct PlaceOrder: ValidatedMessage, Command {
    public static let messageName = "orders.PlaceOrder"
    public var checkoutID: String
    public var customer: String
    public var shippingAddress: String
    public var lines: [OrderLine]

    public init(checkoutID: String, customer: String, shippingAddress: String, lines: [OrderLine]) {
        self.checkoutID = checkoutID
        self.customer = customer
        self.shippingAddress = shippingAddress
        self.lines = lines
    }

    public func validate() throws(MessageError) {
        try CheckoutCompleted(
            checkoutID: checkoutID,
            customer: customer,
            shippingAddress: shippingAddress,
            lines: lines
        )
        .validate()
    }
}

/// Complete a confirmed order (the process manager sends it when the shipment exists).
public struct CompleteOrder: Command {
    public static let messageName = "orders.CompleteOrder"
    public var orderID: String
    public init(orderID: String) { self.orderID = orderID }
}

/// Cancel an order that is not completed; `orders cancel` sends it with reason "cancelled by the customer".
public struct CancelOrder: Command {
    public static let messageName = "orders.CancelOrder"
    public var orderID: String
    public var reason: String
    public init(orderID: String, reason: String) {
        self.orderID = orderID
        self.reason = reason
    }
}

/// An order was placed.
public struct OrderPlaced: Event {
    public static let messageName = "orders.OrderPlaced"
    public var orderID: String
    public var checkoutID: String
    public var customer: String
    public init(orderID: String, checkoutID: String, customer: String) {
        self.orderID = orderID
        self.checkoutID = checkoutID
        self.customer = customer
    }
}

/// An order was confirmed: fulfillment starts. Carries what fulfillment needs, so it never reads the
/// orders store.
public struct OrderConfirmed: Event {
    public static let messageName = "orders.OrderConfirmed"
    public var orderID: String
    public var checkoutID: String
    public var shippingAddress: String
    public var lines: [OrderLine]
    public init(orderID: String, checkoutID: String, shippingAddress: String, lines: [OrderLine]) {
        self.orderID = orderID
        self.checkoutID = checkoutID
        self.shippingAddress = shippingAddress
        self.lines = lines
    }
}

/// An order was completed.
public struct OrderCompleted: Event {
    public static let messageName = "orders.OrderCompleted"
    public var orderID: String
    public var checkoutID: String
    public init(orderID: String, checkoutID: String) {
        self.orderID = orderID
        self.checkoutID = checkoutID
    }
}

/// An order was cancelled.
public struct OrderCancelled: Event {
    public static let messageName = "orders.OrderCancelled"
    public var orderID: String
    public var checkoutID: String
    public var reason: String
    public init(orderID: String, checkoutID: String, reason: String) {
        self.orderID = orderID
        self.checkoutID = checkoutID
        self.reason = reason
    }
}
