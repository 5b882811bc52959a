import Baton

// The messages of the README's example: plain Codable structs, named `<context>.<Name>` on the wire.

struct OrderConfirmed: Event {
    static let messageName = "orders.OrderConfirmed"
    var orderID: String
    var address: String
}

struct InventoryReserved: Event {
    static let messageName = "inventory.InventoryReserved"
    var orderID: String
}

struct ShipmentCreated: Event {
    static let messageName = "shipping.ShipmentCreated"
    var orderID: String
    var trackingNumber: String
}

struct ShipmentFailed: Event {
    static let messageName = "shipping.ShipmentFailed"
    var orderID: String
    var reason: String
}

struct OrderCompleted: Event {
    static let messageName = "orders.OrderCompleted"
    var orderID: String
}

struct OrderCancelled: Event {
    static let messageName = "orders.OrderCancelled"
    var orderID: String
    var reason: String
}

struct ReserveInventory: Command {
    static let messageName = "inventory.ReserveInventory"
    var orderID: String
}

struct ReleaseInventory: Command {
    static let messageName = "inventory.ReleaseInventory"
    var orderID: String
}

struct CreateShipment: Command {
    static let messageName = "shipping.CreateShipment"
    var orderID: String
    var address: String
}

struct CancelShipment: Command {
    static let messageName = "shipping.CancelShipment"
    var orderID: String
}

struct CompleteOrder: Command {
    static let messageName = "orders.CompleteOrder"
    var orderID: String
}

struct CancelOrder: Command {
    static let messageName = "orders.CancelOrder"
    var orderID: String
    var reason: String
}
