import Baton

/// Add stock for a SKU; sent by `inventory add`.
public struct AddStock: ValidatedMessage, Command {
    public static let messageName = "inventory.AddStock"
    public var sku: String
    public var quantity: Int
    public var title: String?
    public init(sku: String, quantity: Int, title: String?) {
        self.sku = sku
        self.quantity = quantity
        self.title = title
    }

    public func validate() throws(MessageError) {
        try Check.length(sku, 1...64, field: "sku")
        try Check.range(quantity, 1...1_000_000, field: "quantity")
        if let title { try Check.length(title, 0...200, field: "title") }
    }
}

/// Reserve all lines of an order, or none.
public struct ReserveInventory: Command {
    public static let messageName = "inventory.ReserveInventory"
    public var orderID: String
    public var lines: [OrderLine]
    public init(orderID: String, lines: [OrderLine]) {
        self.orderID = orderID
        self.lines = lines
    }
}

/// Give back an order's reservation (if it has one).
public struct ReleaseInventory: Command {
    public static let messageName = "inventory.ReleaseInventory"
    public var orderID: String
    public var reason: String
    public init(orderID: String, reason: String) {
        self.orderID = orderID
        self.reason = reason
    }
}

/// Stock was added.
public struct StockAdded: Event {
    public static let messageName = "inventory.StockAdded"
    public var sku: String
    public var quantity: Int
    public var available: Int
    public init(sku: String, quantity: Int, available: Int) {
        self.sku = sku
        self.quantity = quantity
        self.available = available
    }
}

/// Every line of the order is reserved.
public struct InventoryReserved: Event {
    public static let messageName = "inventory.InventoryReserved"
    public var orderID: String
    public init(orderID: String) { self.orderID = orderID }
}

/// The order could not be reserved (nothing was).
public struct InventoryReservationFailed: Event {
    public static let messageName = "inventory.InventoryReservationFailed"
    public var orderID: String
    public var reason: String
    public init(orderID: String, reason: String) {
        self.orderID = orderID
        self.reason = reason
    }
}

/// The order's reservation was given back.
public struct InventoryReleased: Event {
    public static let messageName = "inventory.InventoryReleased"
    public var orderID: String
    public var reason: String
    public init(orderID: String, reason: String) {
        self.orderID = orderID
        self.reason = reason
    }
}
