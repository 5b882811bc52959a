import Baton
import BatonNode
import BatonService
import BookstoreContracts
import Foundation

/// The inventory bounded context: stock per SKU, all-or-nothing reservations per order (idempotent per
/// order), releases. Invariant per SKU: stocked = available + reserved.
public enum InventoryService: ServiceDefinition {
    public static let name = "inventory"

    /// What the node hosts.
    public static var handlers: [any NodeHandler] {
        [
            MessageHandlerHost.command(AddStock.self, name: "add-stock") { command, context in
                var item =
                    try context.work.document(StockItem.self, in: "items", idOrAlias: command.sku)
                    ?? StockItem(sku: command.sku, title: "", available: 0, reserved: 0)
                if let title = command.title { item.title = title }
                item.available += command.quantity
                try save(item, &context)
                context.publish(StockAdded(sku: item.sku, quantity: command.quantity, available: item.available))
            },
            MessageHandlerHost.command(ReserveInventory.self, name: "reserve-inventory") { command, context in
                try reserve(command, &context)
            },
            MessageHandlerHost.command(ReleaseInventory.self, name: "release-inventory") { command, context in
                var reservation =
                    try context.work.document(Reservation.self, in: "reservations", idOrAlias: command.orderID)
                    ?? Reservation(orderID: command.orderID, status: .released, lines: [])
                if reservation.status == .reserved {
                    for (sku, quantity) in quantities(of: reservation.lines) {
                        guard var item = try context.work.document(StockItem.self, in: "items", idOrAlias: sku)
                        else { continue }
                        item.available += quantity
                        item.reserved -= quantity
                        try save(item, &context)
                    }
                }
                // A release before any reservation leaves a tombstone: a late reservation is then refused.
                let wasReserved = reservation.status == .reserved
                reservation.status = .released
                try context.work.save(
                    reservation,
                    in: "reservations",
                    id: command.orderID,
                    status: "RELEASED",
                    at: context.now
                )
                if wasReserved { context.publish(InventoryReleased(orderID: command.orderID, reason: command.reason)) }
            },
        ]
    }

    static func reserve(_ command: ReserveInventory, _ context: inout HandlerContext) throws {
        if try context.work.document(Reservation.self, in: "reservations", idOrAlias: command.orderID) != nil {
            return  // reserved, failed or released already: once per order
        }
        let wanted = quantities(of: command.lines)
        var items: [(item: StockItem, quantity: Int)] = []
        var shortages: [String] = []
        var unknown: [String] = []
        for (sku, quantity) in wanted {
            let item = try context.work.document(StockItem.self, in: "items", idOrAlias: sku)
            if item == nil { unknown.append(sku) }
            if let item, item.available >= quantity {
                items.append((item, quantity))
            } else {
                shortages.append("\(sku) (wanted \(quantity), available \(item?.available ?? 0))")
            }
        }
        // A SKU the catalogue never had is a bad reference, not a stock level: the command is refused (and the
        // process that issued it hears so at once), and nothing is recorded, so a replay after the SKU is added
        // reserves as usual.
        guard unknown.isEmpty else {
            throw Rejection("unknown SKU \(unknown.joined(separator: ", ")): not in the catalogue")
        }
        guard shortages.isEmpty else {
            let reason = "out of stock: " + shortages.joined(separator: ", ")
            try context.work.save(
                Reservation(orderID: command.orderID, status: .failed, lines: []),
                in: "reservations",
                id: command.orderID,
                status: "FAILED",
                at: context.now
            )
            context.publish(InventoryReservationFailed(orderID: command.orderID, reason: reason))
            return
        }
        for case (var item, let quantity) in items {
            item.available -= quantity
            item.reserved += quantity
            try save(item, &context)
        }
        try context.work.save(
            Reservation(orderID: command.orderID, status: .reserved, lines: command.lines),
            in: "reservations",
            id: command.orderID,
            status: "RESERVED",
            at: context.now
        )
        context.publish(InventoryReserved(orderID: command.orderID))
    }

    /// The quantity of each SKU in `lines`, in SKU order: every handler locks stock rows in that one order, so
    /// two replicas on a shared database never wait for each other's rows the other way round within a message.
    static func quantities(of lines: [OrderLine]) -> [(sku: String, quantity: Int)] {
        var wanted: [String: Int] = [:]
        for line in lines { wanted[line.sku, default: 0] += line.quantity }
        return wanted.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    static func save(_ item: StockItem, _ context: inout HandlerContext) throws {
        try context.work.save(item, in: "items", id: item.sku, at: context.now)
    }
}

/// Stock of one SKU, as `inventory show` and `inventory list` print it.
public struct StockItem: Codable, Sendable, Hashable {
    public var sku: String
    public var title: String
    public var available: Int
    public var reserved: Int
}

/// One order's reservation.
public struct Reservation: Codable, Sendable, Hashable {
    public enum Status: String, Codable, Sendable {
        case reserved = "RESERVED"
        case failed = "FAILED"
        case released = "RELEASED"
    }

    public var orderID: String
    public var status: Status
    public var lines: [OrderLine]
}
