import ArgumentParser
import BatonService
import BookstoreContracts

/// The `inventory` executable.
public struct InventoryCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "inventory",
        abstract: "The inventory service of the Baton bookstore.",
        subcommands: [
            ServeCommand<InventoryService>.self, TopologyCommand<InventoryService>.self,
            RepartitionCommand<InventoryService>.self,
            HealthCommand<InventoryService>.self, Add.self, Show.self, List.self,
            DeadLetterCommands<InventoryService>.self,
        ]
    )

    public init() {}

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add stock (sent to the running service).")
        @OptionGroup var options: ServiceOptions
        @Argument(help: "The SKU.") var sku: String
        @Option(help: "How many units to add.") var quantity: Int
        @Option(help: "The title.") var title: String?

        func validate() throws {
            do {
                try AddStock(sku: sku, quantity: quantity, title: title).validate()
            } catch {
                throw ValidationError(error.reason)
            }
        }

        func run() async throws {
            try await ServiceClient.send(
                AddStock(sku: sku, quantity: quantity, title: title),
                to: InventoryService.name,
                options: options
            )
            print("asked to add \(quantity) of \(sku)")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one SKU's stock.")
        @OptionGroup var options: ServiceOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The SKU.") var sku: String

        func run() async throws {
            let item = try await options.document(
                StockItem.self,
                of: InventoryService.name,
                in: "items",
                key: sku,
                missing: "no stock item '\(sku)'"
            )
            if json { return try printJSON(item) }
            printTable(
                ["SKU", "TITLE", "AVAILABLE", "RESERVED"],
                [[item.sku, item.title, String(item.available), String(item.reserved)]]
            )
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the stock.")
        @OptionGroup var options: ServiceOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let items = try await options.read(from: InventoryService.name) {
                try $0.documents(StockItem.self, in: "items")
            }
            if json { return try printJSON(items) }
            printTable(
                ["SKU", "TITLE", "AVAILABLE", "RESERVED"],
                items.map { [$0.sku, $0.title, String($0.available), String($0.reserved)] }
            )
        }
    }
}
