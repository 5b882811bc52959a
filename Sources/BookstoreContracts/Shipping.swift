import Baton

/// Create the order's shipment; fails for an empty or blank address.
public struct CreateShipment: Command {
    public static let messageName = "shipping.CreateShipment"
    public var orderID: String
    public var address: String
    public init(orderID: String, address: String) {
        self.orderID = orderID
        self.address = address
    }
}

/// Cancel the order's shipment (also one created later: a cancelled order never gets a live shipment).
public struct CancelShipment: Command {
    public static let messageName = "shipping.CancelShipment"
    public var orderID: String
    public var reason: String
    public init(orderID: String, reason: String) {
        self.orderID = orderID
        self.reason = reason
    }
}

/// A shipment exists.
public struct ShipmentCreated: Event {
    public static let messageName = "shipping.ShipmentCreated"
    public var orderID: String
    public var trackingNumber: String
    public init(orderID: String, trackingNumber: String) {
        self.orderID = orderID
        self.trackingNumber = trackingNumber
    }
}

/// The shipment could not be created.
public struct ShipmentFailed: Event {
    public static let messageName = "shipping.ShipmentFailed"
    public var orderID: String
    public var reason: String
    public init(orderID: String, reason: String) {
        self.orderID = orderID
        self.reason = reason
    }
}

/// The shipment was cancelled.
public struct ShipmentCancelled: Event {
    public static let messageName = "shipping.ShipmentCancelled"
    public var orderID: String
    public var reason: String
    public init(orderID: String, reason: String) {
        self.orderID = orderID
        self.reason = reason
    }
}

/// The carrier delivered the parcel.
public struct ShipmentDelivered: Event {
    public static let messageName = "shipping.ShipmentDelivered"
    public var orderID: String
    public var trackingNumber: String
    public var deliveredAt: String
    public init(orderID: String, trackingNumber: String, deliveredAt: String) {
        self.orderID = orderID
        self.trackingNumber = trackingNumber
        self.deliveredAt = deliveredAt
    }
}
