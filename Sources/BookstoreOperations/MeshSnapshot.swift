import Baton
import BatonNode
import BatonService
import BookstoreContracts
import Foundation
import Fulfillment
import Inventory
import Orders
import Shipping

/// Everything the four services store, read at one moment, and the invariants that must hold between
/// them once the mesh is idle.
public struct MeshSnapshot: Sendable {
    public var orders: [OrderView]
    public var items: [StockItem]
    public var shipments: [Shipment]
    public var processes: [InstanceSummary]
    /// Open dead letters per service.
    public var deadLetters: [String: [DeadLetter]]

    /// Reads the four stores where `options` point — SQLite files in a data directory, or schemas in a
    /// PostgreSQL database (read-only; the services may be running). A service that never ran has no store
    /// yet and contributes nothing.
    public static func read(_ options: ServiceOptions) async throws -> MeshSnapshot {
        /// One read of a service's store: its open dead letters and what `body` reads beside them.
        func read<T: Sendable>(
            _ service: String,
            _ body: @escaping @Sendable (any UnitOfWork) throws -> [T]
        ) async throws -> (letters: [DeadLetter], values: [T]) {
            try await options.readIfPresent(service) { (try $0.deadLetters(), try body($0)) } ?? ([], [])
        }
        // Everything, however long the run (the soak makes a million orders).
        let all = Int(Int32.max)
        let orders = try await read("orders") { try $0.documents(OrderView.self, in: "orders", limit: all) }
        let items = try await read("inventory") { try $0.documents(StockItem.self, in: "items", limit: all) }
        let shipments = try await read("shipping") { try $0.documents(Shipment.self, in: "shipments", limit: all) }
        let processes = try await read("fulfillment") {
            try $0.instances(of: "fulfillment", matching: InstanceFilter(), limit: all)
        }
        return MeshSnapshot(
            orders: orders.values,
            items: items.values,
            shipments: shipments.values,
            processes: processes.values,
            deadLetters: [
                "orders": orders.letters, "inventory": items.letters, "shipping": shipments.letters,
                "fulfillment": processes.letters,
            ]
        )
    }

    /// Orders by status.
    public var ordersByStatus: [String: Int] {
        orders.reduce(into: [:]) { $0[$1.status, default: 0] += 1 }
    }

    /// Whether every order and every process is in a terminal state.
    public var isSettled: Bool {
        orders.allSatisfy { $0.status == "COMPLETED" || $0.status == "CANCELLED" }
            && processes.allSatisfy { $0.lifecycle.isClosed }
    }

    /// The broken invariants, one sentence each (empty when all hold).
    /// - Parameter stocked: Units added per SKU since the stores were created.
    public func problems(stocked: [String: Int]) -> [String] {
        var problems: [String] = []
        for order in orders where order.status != "COMPLETED" && order.status != "CANCELLED" {
            problems.append("order \(order.orderID) is \(order.status), not terminal")
        }
        for process in processes where !process.lifecycle.isClosed {
            problems.append("process \(process.instanceID) is \(process.lifecycle.rawValue), not closed")
        }
        var held: [String: Int] = [:]
        for order in orders where order.status != "CANCELLED" {
            for line in order.lines { held[line.sku, default: 0] += line.quantity }
        }
        // Orders that failed before reserving hold nothing either: count only what inventory reserved.
        let items = Dictionary(uniqueKeysWithValues: self.items.map { ($0.sku, $0) })
        for (sku, units) in stocked.sorted(by: { $0.key < $1.key }) {
            guard let item = items[sku] else {
                problems.append("\(sku): stocked \(units) but inventory has no item")
                continue
            }
            if item.available + item.reserved != units {
                problems.append("\(sku): stocked \(units) ≠ available \(item.available) + reserved \(item.reserved)")
            }
            if item.reserved != held[sku, default: 0] {
                problems.append(
                    "\(sku): reserved \(item.reserved) ≠ \(held[sku, default: 0]) held by orders that are not cancelled"
                )
            }
        }
        let shipments = Dictionary(uniqueKeysWithValues: self.shipments.map { ($0.orderID, $0) })
        for order in orders where order.status == "CANCELLED" {
            if let shipment = shipments[order.orderID], shipment.status == .created || shipment.status == .delivered {
                problems.append("cancelled order \(order.orderID) has a live shipment (\(shipment.status.rawValue))")
            }
        }
        for order in orders where order.status == "COMPLETED" {
            if shipments[order.orderID].map({ $0.status == .created || $0.status == .delivered }) != true {
                problems.append("completed order \(order.orderID) has no live shipment")
            }
        }
        return problems
    }
}

extension ServiceOptions {
    /// What `body` reads from a service's store, or `nil` if the service has no store yet.
    func readIfPresent<T: Sendable>(
        _ service: String,
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> T? {
        do {
            return try await read(from: service, body)
        } catch let failure as CommandFailure where failure.isMissingStore {
            return nil
        }
    }
}
