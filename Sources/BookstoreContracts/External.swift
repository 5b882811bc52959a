import Baton
import Foundation

/// One line of an order: a SKU and how many.
public struct OrderLine: Codable, Sendable, Hashable {
    /// The stock-keeping unit, 1–64 characters.
    public var sku: String
    /// How many, 1–1000.
    public var quantity: Int

    /// Creates a line.
    public init(sku: String, quantity: Int) {
        self.sku = sku
        self.quantity = quantity
    }
}

/// Storefront → orders: a completed checkout. Exchange `storefront`, routing key `checkout.completed`.
/// External producers send it without a Baton type; the orders service's subscriber reads it.
public struct CheckoutCompleted: ValidatedMessage, Hashable {
    public static let messageName = "storefront.CheckoutCompleted"
    /// The exchange external producers publish to.
    public static let exchange = "storefront"
    /// The routing key external producers publish with.
    public static let routingKey = "checkout.completed"

    /// The order's external reference: a second checkout with the same id is a duplicate.
    public var checkoutID: String
    /// The customer's name.
    public var customer: String
    /// Where to ship; empty means shipping fails and the order is compensated.
    public var shippingAddress: String
    /// What was bought.
    public var lines: [OrderLine]

    /// Creates a checkout.
    public init(checkoutID: String, customer: String, shippingAddress: String, lines: [OrderLine]) {
        self.checkoutID = checkoutID
        self.customer = customer
        self.shippingAddress = shippingAddress
        self.lines = lines
    }

    public func validate() throws(MessageError) {
        try Check.length(checkoutID, 1...64, field: "checkout_id")
        try Check.length(customer, 1...150, field: "customer")
        try Check.length(shippingAddress, 0...500, field: "shipping_address")
        try validateLines(lines)
    }
}

/// Carrier → shipping: a parcel was delivered. Exchange `carrier`, routing key `parcel.delivered`.
public struct ParcelDelivered: ValidatedMessage, Hashable {
    public static let messageName = "carrier.ParcelDelivered"
    /// The exchange external producers publish to.
    public static let exchange = "carrier"
    /// The routing key external producers publish with.
    public static let routingKey = "parcel.delivered"

    /// The shipment's tracking number.
    public var trackingNumber: String
    /// When it was delivered (ISO 8601).
    public var deliveredAt: String

    /// Creates a delivery report.
    public init(trackingNumber: String, deliveredAt: String) {
        self.trackingNumber = trackingNumber
        self.deliveredAt = deliveredAt
    }

    public func validate() throws(MessageError) {
        try Check.length(trackingNumber, 1...64, field: "tracking_number")
        guard ISO8601Milliseconds.parse(deliveredAt) != nil else {
            throw .invalid("delivered_at", "must be an ISO 8601 date-time such as 2026-11-22T10:00:00Z")
        }
    }
}

func validateLines(_ lines: [OrderLine]) throws(MessageError) {
    try Check.count(lines, 1...100, field: "lines")
    for (index, line) in lines.enumerated() {
        try Check.length(line.sku, 1...64, field: "lines[\(index)].sku")
        try Check.range(line.quantity, 1...1000, field: "lines[\(index)].quantity")
    }
}

/// The order id for a checkout: deterministic, so a duplicate checkout names the same order.
public func orderID(forCheckout checkoutID: String) -> String {
    "ord-" + MessageID.derived(from: "order", checkoutID).prefix(12)
}
