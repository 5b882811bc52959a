import ArgumentParser
import BatonAMQP
import BatonService
import BookstoreContracts
import BookstoreOperations
import Foundation
import Logging
import Synchronization

/// Drives the local mesh: stocks a catalogue, pushes checkouts as an external storefront would (raw JSON on
/// the `storefront` exchange), waits until every order is settled, and prints the outcome.
@main
struct BookstoreDemo: AsyncParsableCommand {
    private static let lastLogged = Mutex(-1)

    static let configuration = CommandConfiguration(
        commandName: "bookstore-demo",
        abstract: "Stock the bookstore, push a demo load of checkouts, and print the outcome."
    )

    @OptionGroup var options: ServiceOptions

    @Option(help: "Checkouts to push (plus one duplicate and one malformed message).")
    var checkouts = 200

    @Option(help: "Seconds to wait for every order to settle.")
    var timeout: Double = 180

    func validate() throws {
        guard checkouts >= 10, checkouts <= 100_000 else { throw ValidationError("--checkouts must be 10 to 100000") }
    }

    /// Ten books; the last is scarce, so some orders run out of stock.
    static let catalogue: [(sku: String, title: String, quantity: Int)] =
        (1...9).map { ("book-000\($0)", "Volume \($0)", 1_000) } + [("book-0010", "The Rare One", 6)]

    func run() async throws {
        let started = ContinuousClock.now
        print("stocking \(Self.catalogue.count) books…")
        for book in Self.catalogue {
            try await ServiceClient.send(
                AddStock(sku: book.sku, quantity: book.quantity, title: book.title),
                to: "inventory",
                options: options
            )
        }
        var logger = Logger(label: "storefront")
        logger.logLevel = .warning
        let connection = try await AMQPConnection.connect(
            configuration: options.connectionConfiguration(name: "demo-storefront"),
            logger: logger
        )
        let bodies = Self.load(checkouts)
        print("pushing \(bodies.count) storefront messages: \(checkouts) checkouts (every 10th with a blank address,")
        print("every 10th asking for the scarce book), 1 duplicate checkout, 1 malformed message")
        for chunk in stride(from: 0, to: bodies.count, by: 100).map({ Array(bodies[$0..<min($0 + 100, bodies.count)]) })
        {
            let results = await connection.publish(
                contentsOf: chunk.map { body in
                    AMQPOutgoingMessage(
                        exchange: CheckoutCompleted.exchange,
                        routingKey: CheckoutCompleted.routingKey,
                        body: Array(body.utf8),
                        properties: AMQPProperties(
                            contentType: "application/json",
                            messageID: UUID().uuidString.lowercased()
                        )
                    )
                }
            )
            for result in results { try result.get() }
        }
        await connection.close()

        let deadline = ContinuousClock.now + .seconds(timeout)
        var snapshot = try await MeshSnapshot.read(options)
        while !(snapshot.orders.count >= checkouts && snapshot.isSettled) {
            let settled = snapshot.orders.filter { $0.status == "COMPLETED" || $0.status == "CANCELLED" }.count
            progress(settled, of: checkouts)
            guard ContinuousClock.now < deadline else {
                print("")
                throw CommandFailure("orders did not settle within \(Int(timeout)) s (\(settled) of \(checkouts))")
            }
            try await Task.sleep(for: .milliseconds(250))
            snapshot = try await MeshSnapshot.read(options)
        }
        progress(checkouts, of: checkouts)
        print("\n")
        report(snapshot, elapsed: ContinuousClock.now - started)
        let problems = snapshot.problems(
            stocked: Dictionary(uniqueKeysWithValues: Self.catalogue.map { ($0.sku, $0.quantity) })
        )
        if !problems.isEmpty {
            for problem in problems { print("INVARIANT BROKEN: \(problem)") }
            throw ExitCode.failure
        }
    }

    /// The storefront's messages: checkouts, a duplicate of the first, and a malformed one.
    static func load(_ count: Int) -> [String] {
        var bodies: [String] = []
        for index in 0..<count {
            let address = index % 10 == 3 ? "" : "\(index + 1) Baker Street, London"
            var lines = [#"{"sku":"book-000\#(index % 9 + 1)","quantity":\#(index % 3 + 1)}"#]
            if index % 10 == 7 { lines.append(#"{"sku":"book-0010","quantity":2}"#) }
            if index % 4 == 0 { lines.append(#"{"sku":"book-000\#((index + 4) % 9 + 1)","quantity":1}"#) }
            bodies.append(
                #"{"checkout_id":"chk-\#(index + 1000)","customer":"Customer \#(index)","shipping_address":"\#(address)","lines":[\#(lines.joined(separator: ","))]}"#
            )
        }
        bodies.append(bodies[0])  // the same checkout again: no second order
        bodies.append(#"{"checkout_id":"chk-broken","customer":42,"lines":"none"}"#)
        return bodies
    }

    private func progress(_ done: Int, of total: Int) {
        // On a terminal the bar redraws in place; in a log, a line per tenth is enough.
        guard isatty(STDOUT_FILENO) != 0 else {
            let step = max(1, total / 10)
            if done / step != Self.lastLogged.withLock({ $0 }) / step || done == total {
                Self.lastLogged.withLock { $0 = done }
                print("  \(done)/\(total) orders settled")
            }
            return
        }
        let width = 40
        let filled = min(width, width * done / max(total, 1))
        let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
        FileHandle.standardOutput.write(Data("\r  \(bar) \(done)/\(total) orders settled".utf8))
    }

    private func report(_ snapshot: MeshSnapshot, elapsed: Duration) {
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        print("outcome after \(String(format: "%.1f", seconds)) s")
        var reasons: [String: Int] = [:]
        for order in snapshot.orders where order.status == "CANCELLED" {
            let reason = order.cancelReason ?? "?"
            let kind = reason.hasPrefix("out of stock") ? "out of stock" : reason
            reasons[kind, default: 0] += 1
        }
        var rows = [["COMPLETED", String(snapshot.ordersByStatus["COMPLETED", default: 0]), "shipped"]]
        for (reason, count) in reasons.sorted(by: { $0.value > $1.value }) {
            rows.append(["CANCELLED", String(count), reason])
        }
        rows.append(["(orders)", String(snapshot.orders.count), "one per checkout id; the duplicate made none"])
        for service in ["orders", "inventory", "shipping", "fulfillment"] {
            let letters = snapshot.deadLetters[service] ?? []
            if !letters.isEmpty {
                rows.append(["dead letters", String(letters.count), "\(service): \(letters.first!.reason)"])
            }
        }
        printTable(["OUTCOME", "COUNT", "DETAIL"], rows)
        print("")
        printTable(
            ["SKU", "STOCKED", "AVAILABLE", "RESERVED"],
            snapshot.items.map { item in
                [
                    item.sku, String(Self.catalogue.first { $0.sku == item.sku }?.quantity ?? 0),
                    String(item.available), String(item.reserved),
                ]
            }
        )
        print("\nevery order terminal, stock conserved, no live shipment for a cancelled order: checked")
        if let example = snapshot.orders.first(where: {
            $0.status == "CANCELLED" && $0.cancelReason?.contains("shipment") == true
        })
            ?? snapshot.orders.first
        {
            print("\nlook at one workflow:")
            print("  .build/release/fulfillment show \(example.orderID) --data-dir \(options.dataDirectory)")
            print("  .build/release/orders show \(example.checkoutID) --data-dir \(options.dataDirectory)")
            print("  .build/release/orders dlq list --data-dir \(options.dataDirectory)")
        }
    }
}
