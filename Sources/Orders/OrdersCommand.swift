import ArgumentParser
import BatonService
import BookstoreContracts
import Foundation

/// The `orders` executable: serve the orders service, or operate it.
public struct OrdersCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "orders",
        abstract: "The orders service of the Baton bookstore.",
        subcommands: [
            ServeCommand<OrdersService>.self, TopologyCommand<OrdersService>.self,
            RepartitionCommand<OrdersService>.self, HealthCommand<OrdersService>.self,
            Place.self, Cancel.self, Show.self, List.self,
            DeadLetterCommands<OrdersService>.self,
        ]
    )

    public init() {}

    struct Place: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Place an order (sent to the running service).")
        @OptionGroup var options: ServiceOptions
        @Option(help: "The customer's name.") var customer: String
        @Option(help: "The shipping address.") var address: String = ""
        @Option(name: .customLong("line"), help: "A line, SKU:QTY (repeat for more lines).") var lines: [String]
        @Option(help: "The checkout id (default: a new one).") var checkoutID: String?

        func parsedLines() throws -> [OrderLine] {
            try lines.map { text in
                let parts = text.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count == 2, let quantity = Int(parts[1]), !parts[0].isEmpty else {
                    throw ValidationError("--line '\(text)' is not SKU:QTY (e.g. --line book-0001:2)")
                }
                return OrderLine(sku: String(parts[0]), quantity: quantity)
            }
        }

        func validate() throws {
            let command = PlaceOrder(
                checkoutID: checkoutID ?? "cli",
                customer: customer,
                shippingAddress: address,
                lines: try parsedLines()
            )
            do {
                try command.validate()
            } catch {
                throw ValidationError(error.reason.replacingOccurrences(of: "_", with: "-"))
            }
        }

        func run() async throws {
            let checkout = checkoutID ?? "cli-\(UUID().uuidString.prefix(8).lowercased())"
            try await ServiceClient.send(
                PlaceOrder(
                    checkoutID: checkout,
                    customer: customer,
                    shippingAddress: address,
                    lines: try parsedLines()
                ),
                to: OrdersService.name,
                options: options
            )
            print("placed order \(orderID(forCheckout: checkout)) (checkout \(checkout))")
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel an order on the customer's behalf.")
        @OptionGroup var options: ServiceOptions
        @Argument(help: "The order id or the checkout id.") var reference: String
        @Option(help: "Why.") var reason = "cancelled by the customer"

        func run() async throws {
            let reference = self.reference
            let order = try? await options.read(from: OrdersService.name) {
                try $0.document(OrderView.self, in: "orders", idOrAlias: reference)
            }
            // Without a local store (another machine), a checkout id maps to its order id all the same.
            let id = order?.orderID ?? (reference.hasPrefix("ord-") ? reference : orderID(forCheckout: reference))
            try await ServiceClient.send(
                CancelOrder(orderID: id, reason: reason),
                to: OrdersService.name,
                options: options
            )
            print("asked to cancel order \(id)")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an order.")
        @OptionGroup var options: ServiceOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The order id or the checkout id.") var reference: String

        func run() async throws {
            let order = try await options.document(
                OrderView.self,
                of: OrdersService.name,
                in: "orders",
                key: reference,
                missing: "no order with id or checkout id '\(reference)'"
            )
            if json { return try printJSON(order) }
            print("order:     \(order.orderID)")
            print("checkout:  \(order.checkoutID)")
            print("status:    \(order.status)")
            print("customer:  \(order.customer)")
            print("address:   \(order.shippingAddress.isEmpty ? "(none)" : order.shippingAddress)")
            print("lines:     \(order.lines.map { "\($0.sku) x\($0.quantity)" }.joined(separator: ", "))")
            if let reason = order.cancelReason { print("cancelled: \(reason)") }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List orders.")
        @OptionGroup var options: ServiceOptions
        @Flag(help: "Print JSON.") var json = false
        @Option(help: "Only this status: PENDING, CONFIRMED, COMPLETED or CANCELLED.") var status: String?

        func validate() throws {
            if let status, !["PENDING", "CONFIRMED", "COMPLETED", "CANCELLED"].contains(status) {
                throw ValidationError("--status must be PENDING, CONFIRMED, COMPLETED or CANCELLED, not '\(status)'")
            }
        }

        func run() async throws {
            let status = self.status
            let orders = try await options.read(from: OrdersService.name) {
                try $0.documents(OrderView.self, in: "orders", status: status)
            }
            if json { return try printJSON(orders) }
            printTable(
                ["ORDER", "CHECKOUT", "STATUS", "CUSTOMER", "REASON"],
                orders.map { [$0.orderID, $0.checkoutID, $0.status, $0.customer, $0.cancelReason ?? ""] }
            )
        }
    }
}
