import ArgumentParser
import BatonService

/// The `shipping` executable.
public struct ShippingCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "shipping",
        abstract: "The shipping service of the Baton bookstore.",
        subcommands: [
            ServeCommand<ShippingService>.self, TopologyCommand<ShippingService>.self,
            RepartitionCommand<ShippingService>.self,
            HealthCommand<ShippingService>.self, Show.self, List.self, DeadLetterCommands<ShippingService>.self,
        ]
    )

    public init() {}

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an order's shipment.")
        @OptionGroup var options: ServiceOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The order id (or the tracking number).") var orderID: String

        func run() async throws {
            let shipment = try await options.document(
                Shipment.self,
                of: ShippingService.name,
                in: "shipments",
                key: orderID,
                missing: "no shipment for order '\(orderID)'"
            )
            if json { return try printJSON(shipment) }
            printTable(["ORDER", "STATUS", "TRACKING", "REASON"], [row(shipment)])
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List shipments.")
        @OptionGroup var options: ServiceOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let shipments = try await options.read(from: ShippingService.name) {
                try $0.documents(Shipment.self, in: "shipments")
            }
            if json { return try printJSON(shipments) }
            printTable(["ORDER", "STATUS", "TRACKING", "REASON"], shipments.map(row))
        }
    }
}

private func row(_ shipment: Shipment) -> [String] {
    [shipment.orderID, shipment.status.rawValue, shipment.trackingNumber ?? "-", shipment.reason ?? ""]
}
