import Baton
import BatonAMQP
import BatonNode
import BatonSQLite
import BatonTestSupport
import BookstoreContracts
import BookstoreOperations
import Foundation
import Logging
import Testing

/// Hostile input at the edges: a seeded corpus of malformed and mutated external messages while real orders
/// flow, and bad arguments to every CLI. Nothing may crash, nothing bad may take effect, nothing may be lost.
@Suite(.serialized) struct EdgeTests {
    /// One message of the corpus and what must become of it.
    struct Case {
        enum Fate: Equatable {
            /// The orders service dead-letters it with a reason.
            case deadLettered
            /// The broker refuses it (unroutable, over its size limit): the producer learns at once.
            case refusedByBroker
            /// It is a valid checkout after all (a mutant that still parses): it becomes an order.
            case order(checkoutID: String)
        }
        var what: String
        var body: [UInt8]
        var messageID: String?
        var contentType: String? = "application/json"
        var exchange = CheckoutCompleted.exchange
        var routingKey = CheckoutCompleted.routingKey
        var type: String?
        var fate: Fate
    }

    static let corpusSize = 10_000

    @Test func tenThousandMalformedMessagesAreDeadLetteredWhileOrdersFlow() async throws {
        let seed =
            UInt64(ProcessInfo.processInfo.environment["BATON_FUZZ_SEED"] ?? "") ?? UInt64.random(in: 1...1_000_000)
        var random = SeededGenerator(seed: seed)
        let corpus = (0..<Self.corpusSize).map { Self.makeCase($0, using: &random) }
        try await Mesh.run { mesh in
            try await mesh.startAll()
            try await mesh.stock("book-0001", 1_000)

            var logger = Logger(label: "fuzzer")
            logger.logLevel = .critical
            let connection = try await AMQPConnection.connect(
                configuration: .init(url: mesh.url, connectionName: "fuzzer"),
                logger: logger
            )
            var realOrders = 0
            var resentWithoutID = 0  // sent twice, maybe taken twice: without an id nothing can fold the copies
            for (index, chunk) in stride(from: 0, to: corpus.count, by: 250).map({
                corpus[$0..<min($0 + 250, corpus.count)]
            })
            .enumerated() {
                var results = await connection.publish(contentsOf: chunk.map(Self.message))
                // A refused message closes the channel over all in flight: a producer learns which by sending the
                // ones of unknown outcome again, alone.
                for (offset, item) in chunk.enumerated() {
                    if case .failure(let error) = results[offset], error.code == .outcomeUnknown {
                        if item.messageID == nil { resentWithoutID += 1 }
                        results[offset] = await connection.publish(contentsOf: [Self.message(item)])[0]
                    }
                }
                for (item, result) in zip(chunk, results) {
                    switch (item.fate, result) {
                    case (.refusedByBroker, .failure), (.deadLettered, .success), (.order, .success): break
                    default: Issue.record("seed \(seed): \(item.what): the broker said \(result)")
                    }
                }
                try await mesh.checkout("fz-real-\(index)", lines: [("book-0001", 1)])  // real orders keep flowing
                realOrders += 1
            }
            await connection.close()

            let expectedOrders = Set(corpus.compactMap { if case .order(let id) = $0.fate { id } else { nil } })
            let (snapshot, problems) = try await mesh.settle(
                orders: realOrders + expectedOrders.count,
                timeout: .seconds(180)
            )
            #expect(problems.isEmpty, "seed \(seed): \(problems)")
            let store = try SQLiteStore(
                path: mesh.dataDirectory.appendingPathComponent("orders.sqlite").path,
                readOnly: true
            )
            let letters = try await store.read { try $0.deadLetters(includeReplayed: false, limit: 100_000) }
            let reasons = Dictionary(letters.map { ($0.messageID, $0.reason) }) { first, _ in first }
            let expectedLetters = corpus.filter { $0.fate == .deadLettered }
            var missing: [String] = []
            for item in expectedLetters {
                guard let id = item.messageID else { continue }
                if reasons[id]?.isEmpty != false { missing.append("\(item.what) (\(id))") }
            }
            #expect(missing.isEmpty, "seed \(seed): not dead-lettered: \(missing.prefix(10))")
            let withoutID = expectedLetters.filter { $0.messageID == nil }.count
            let idless = letters.filter { $0.messageID.isEmpty }
            #expect(
                (withoutID...withoutID + resentWithoutID).contains(idless.count),
                "seed \(seed): a dead letter per id-less message sent: \(Dictionary(grouping: idless.map(\.reason)) { $0 }.mapValues(\.count))"
            )
            let ids = Set(expectedLetters.compactMap(\.messageID))
            #expect(
                letters.count - idless.count == ids.count,
                "seed \(seed): one dead letter per message id, repeats and re-sends folded"
            )
            let fuzzOrders = Set(snapshot.orders.map(\.checkoutID).filter { !$0.hasPrefix("fz-real-") })
            #expect(
                fuzzOrders == expectedOrders,
                "seed \(seed): only the mutants that are valid checkouts became orders"
            )
            #expect(
                snapshot.orders.filter { $0.checkoutID.hasPrefix("fz-real-") }.allSatisfy { $0.status == "COMPLETED" }
            )
            let exited = await mesh.exited()
            #expect(exited.isEmpty, "no service crashed: \(exited)")
            print(
                "fuzz seed \(seed): \(corpus.count) messages: \(expectedLetters.count) dead-lettered, "
                    + "\(corpus.filter { $0.fate == .refusedByBroker }.count) refused by the broker, "
                    + "\(expectedOrders.count) valid mutants; \(realOrders) real orders completed"
            )
        }
    }

    static func message(_ item: Case) -> AMQPOutgoingMessage {
        AMQPOutgoingMessage(
            exchange: item.exchange,
            routingKey: item.routingKey,
            body: item.body,
            properties: AMQPProperties(contentType: item.contentType, messageID: item.messageID, type: item.type),
            isMandatory: item.messageID != nil  // the broker matches a returned message by its id
        )
    }

    // MARK: The corpus

    static func valid(_ id: String) -> [String: Any] {
        [
            "checkout_id": id, "customer": "Fuzz Tester", "shipping_address": "1 Fuzz Road",
            "lines": [["sku": "book-0001", "quantity": 1]],
        ]
    }

    static func json(_ value: Any) -> [UInt8] {
        Array(try! JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed]))
    }

    static func randomValue(using random: inout SeededGenerator) -> Any {
        switch Int.random(in: 0..<7, using: &random) {
        case 0: return Int.random(in: -1_000_000...1_000_000, using: &random)
        case 1: return Bool.random(using: &random)
        case 2: return NSNull()
        case 3: return [1, "two", 3.5] as [Any]
        case 4: return ["nested": ["deeper": true]]
        case 5: return Double.random(in: -1e20...1e20, using: &random)
        default: return ""
        }
    }

    static func makeCase(_ index: Int, using random: inout SeededGenerator) -> Case {
        let id = "fz-\(index)"
        var body = valid(id)
        func dead(_ what: String, _ bytes: [UInt8]) -> Case {
            Case(what: what, body: bytes, messageID: id, fate: .deadLettered)
        }
        switch index % 16 {
        case 0:
            let field = ["checkout_id", "customer", "shipping_address", "lines"].randomElement(using: &random)!
            var value = randomValue(using: &random)
            if field != "lines", value is String { value = 7 }
            body[field] = value
            return dead("\(field) of a wrong type", json(body))
        case 1:
            let field = ["checkout_id", "customer", "shipping_address", "lines"].randomElement(using: &random)!
            body[field] = nil
            return dead("\(field) missing", json(body))
        case 2:
            let field = ["sku", "quantity"].randomElement(using: &random)!
            var line: [String: Any] = ["sku": "book-0001", "quantity": 1]
            if Bool.random(using: &random) { line[field] = nil } else { line[field] = field == "sku" ? 5 : "2" }
            body["lines"] = [line]
            return dead("lines[0].\(field) missing or of a wrong type", json(body))
        case 3:
            let variants: [(String, String, Any)] = [
                ("checkout_id", "empty", ""), ("checkout_id", "65 characters", String(repeating: "c", count: 65)),
                ("customer", "empty", ""), ("customer", "151 characters", String(repeating: "x", count: 151)),
                ("shipping_address", "501 characters", String(repeating: "a", count: 501)),
                ("lines", "empty", [Any]()),
                ("lines", "101 lines", Array(repeating: ["sku": "book-0001", "quantity": 1], count: 101)),
                ("lines", "quantity 0", [["sku": "book-0001", "quantity": 0]]),
                ("lines", "quantity 1001", [["sku": "book-0001", "quantity": 1001]]),
                ("lines", "quantity negative", [["sku": "book-0001", "quantity": -3]]),
                ("lines", "quantity 2.5", [["sku": "book-0001", "quantity": 2.5]]),
                ("lines", "sku empty", [["sku": "", "quantity": 1]]),
            ]
            let (field, what, value) = variants.randomElement(using: &random)!
            body[field] = value
            return dead("\(field) \(what)", json(body))
        case 4:
            let count = Int.random(in: 0...200, using: &random)
            return dead("random bytes", (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) })
        case 5:
            let whole = json(body)
            return dead("truncated JSON", Array(whole.prefix(Int.random(in: 0..<whole.count, using: &random))))
        case 6:
            let fragments = ["null", "[]", "42", "\"checkout\"", "true", "{}", "[{}]", "{\"lines\": {}}"]
            return dead("a JSON value that is not a checkout", Array(fragments.randomElement(using: &random)!.utf8))
        case 7:
            var bytes = Array(#"{"checkout_id": "\#(id)", "customer": "Bad "#.utf8)
            bytes += [[0xC3, 0x28], [0xFF, 0xFE], [0xED, 0xA0, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80]]
                .randomElement(using: &random)!
            bytes += Array(#"", "shipping_address": "x", "lines": [{"sku": "book-0001", "quantity": 1}]}"#.utf8)
            return dead("invalid UTF-8", bytes)
        case 8:
            let depth = [64, 600, 5_000, 100_000].randomElement(using: &random)!
            let nested = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
            let text = #"{"checkout_id": "\#(id)", "customer": "Deep", "shipping_address": "x", "lines": \#(nested)}"#
            return dead("nesting \(depth) deep", Array(text.utf8))
        case 9:
            if index % 160 == 9 {
                body["customer"] = String(repeating: "h", count: 1_200_000)
                return Case(
                    what: "a body over the broker's 1 MiB limit",
                    body: json(body),
                    messageID: id,
                    fate: .refusedByBroker
                )
            }
            body["customer"] = String(repeating: "h", count: 300_000)
            return dead("a body over the 256 KiB message limit", json(body))
        case 10:
            var item = dead("a wrong content type", json(body))
            item.contentType = ["text/plain", "application/xml", "application/json; charset=utf-16", ""]
                .randomElement(using: &random)!
            return item
        case 11:
            var item = Case(what: "an unknown routing key", body: json(body), messageID: id, fate: .refusedByBroker)
            item.routingKey = ["checkout.cancelled", "checkout.completed.v2", "", "#"].randomElement(using: &random)!
            return item
        case 12:
            var item = dead("a command of an unknown type", json(body))
            item.exchange = "baton.commands"
            item.routingKey = "orders.PlaceOrder"
            item.type = ["orders.PlaceOrder.v0", "orders.Nonexistent.v1", "storefront.CheckoutCompleted.v1"]
                .randomElement(using: &random)!
            return item
        case 13:
            var item = dead("no message id", json(body))
            item.messageID = nil
            return item
        case 14:
            // The same malformed message twice under one id: one dead letter.
            var item = dead("a repeated message id", json(["checkout_id": 1]))
            item.messageID = "fz-\(index - index % 32)-repeat"
            return item
        default:
            var bytes = json(body)
            for _ in 0..<Int.random(in: 1...3, using: &random) {
                bytes[Int.random(in: 0..<bytes.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
            }
            return Case(what: "a byte-flipped checkout", body: bytes, messageID: id, fate: predictedFate(of: bytes))
        }
    }

    /// What the orders service must do with a mutant: decoded and validated by the contract's own rules
    /// (the same registry call the node makes); a valid one is an order under its (possibly mutated) id.
    static let contract: MessageRegistry = {
        var registry = MessageRegistry()
        registry.register(CheckoutCompleted.self)
        return registry
    }()

    static func predictedFate(of bytes: [UInt8]) -> Case.Fate {
        let envelope = Envelope(
            messageID: "prediction",
            messageType: CheckoutCompleted.messageType,
            timestamp: Date(),
            payload: Data(bytes)
        )
        guard let checkout = try? contract.decode(envelope) as? CheckoutCompleted else { return .deadLettered }
        return .order(checkoutID: checkout.checkoutID)
    }

    // MARK: Command lines

    @Test func everyCLIRefusesBadArgumentsClearlyAndWritesNothing() async throws {
        try await Mesh.run { mesh in
            try await mesh.startAll()
            try await mesh.stock("book-0001", 10)
            let before = try await mesh.snapshot()
            let battery: [(String, [String], String)] = [
                ("orders", ["place", "--customer", "", "--line", "book-0001:1"], "customer"),
                ("orders", ["place", "--customer", "Ada", "--line", "book-0001:0"], "quantity"),
                ("orders", ["place", "--customer", "Ada", "--line", "book-0001:x"], "SKU:QTY"),
                ("orders", ["place", "--customer", "Ada"], "--line"),
                ("orders", ["place", "--customer", "Ada", "--line", ":3"], "SKU:QTY"),
                ("orders", ["cancel"], "REF"),
                ("orders", ["show"], "REF"),
                ("orders", ["show", "ord-nope"], "no order"),
                ("orders", ["list", "--status", "SHIPPED"], "--status must be"),
                ("orders", ["frobnicate"], "frobnicate"),
                ("orders", ["list", "--amqp-url", "ftp://x"], "amqp:// or amqps://"),
                ("orders", ["serve", "--topology", "sideways"], "node or broker"),
                ("orders", ["list", "--database-url", "mysql://baton@db/baton"], "not postgres://"),
                ("orders", ["serve", "--database-url", "postgres://baton:pw@127.0.0.1:1/baton"], "cannot reach"),
                ("inventory", ["add", "book-0002", "--quantity", "-5"], "quantity"),
                ("inventory", ["add", "book-0002", "--quantity", "many"], "quantity"),
                ("inventory", ["add", "--quantity", "5"], "sku"),
                ("inventory", ["add", String(repeating: "s", count: 65), "--quantity", "5"], "sku"),
                ("inventory", ["show", "book-9999"], "book-9999"),
                ("shipping", ["show"], "order"),
                ("shipping", ["show", "ord-nope"], "ord-nope"),
                ("fulfillment", ["serve", "--step-timeout", "0"], "--step-timeout"),
                ("fulfillment", ["serve", "--instance-cache", "-1"], "--instance-cache"),
                ("fulfillment", ["serve", "--http", "localhost"], "not HOST:PORT"),
                ("shipping", ["serve", "--http", "127.0.0.1:70000"], "port from 0 to 65535"),
                ("inventory", ["serve", "--stuck-after", "0"], "--stuck-after must be"),
                ("orders", ["serve", "--inbox-window", "30s"], "--inbox-window must be an age of at least 60s"),
                ("shipping", ["serve", "--keep-tombstones", "forever"], "--keep-tombstones must be an age"),
                ("inventory", ["serve", "--partitions", "0"], "--partitions must be a count from 1 to 64"),
                ("orders", ["serve", "--sqlite-page-cache", "0"], "--sqlite-page-cache must be a size in MiB"),
                ("inventory", ["repartition", "--to", "0"], "--to must be a count from 1 to 64"),
                ("shipping", ["repartition"], "--to"),
                ("orders", ["repartition", "--to", "2", "--data-dir", "/nonexistent/baton"], "no orders data"),
                ("fulfillment", ["show", "ord-nope"], "ord-nope"),
                ("fulfillment", ["processes", "list", "--open", "--closed"], "--closed"),
                ("fulfillment", ["processes", "list", "--lifecycle", "stuck"], "lifecycle"),
                ("fulfillment", ["processes", "list", "--older-than", "soon"], "older-than"),
                ("fulfillment", ["processes", "list", "--association", "tracking"], "NAME=VALUE"),
                ("fulfillment", ["processes", "list", "--process-manager", "billing"], "billing"),
                ("fulfillment", ["processes", "abort", "ord-nope", "--reason", " "], "reason"),
                ("fulfillment", ["processes", "abort", "ord-nope", "--reason", "r"], "ord-nope"),
                ("fulfillment", ["processes", "purge"], "closed-before"),
                ("fulfillment", ["processes", "retry", "ord-nope"], "ord-nope"),
                ("fulfillment", ["processes", "resume", "ord-nope"], "ord-nope"),
                ("fulfillment", ["processes", "verify"], "ids or --all"),
                ("fulfillment", ["processes", "diagram", "--format", "png"], "'mermaid', 'dot' or 'svg'"),
                ("orders", ["dlq", "replay"], "ids or --all"),
                ("orders", ["dlq", "replay", "1", "--all"], "ids or --all"),
                ("orders", ["dlq", "show", "one"], "one"),
                ("orders", ["dlq", "show", "424242"], "424242"),
                ("shipping", ["dlq", "frobnicate"], "frobnicate"),
            ]
            for (service, arguments, mention) in battery {
                let result = try await mesh.cli(service, arguments)
                #expect(result.status != 0, "\(service) \(arguments) exited 0: \(result.output)")
                #expect(
                    result.output.lowercased().contains(mention.lowercased()),
                    "\(service) \(arguments) should mention \(mention): \(result.output)"
                )
            }
            // Each CLI publishes with confirms before it exits: anything one wrongly sent is in a queue by now, and
            // once every queue is settled it has been handled.
            #expect(
                try await TestBroker.areSettled(
                    ["orders", "inventory", "shipping", "fulfillment"],
                    virtualHost: mesh.virtualHost
                )
            )
            let after = try await mesh.snapshot()
            #expect(after.orders == before.orders && after.items == before.items, "nothing was written")
            #expect(after.deadLetters.values.allSatisfy { $0.isEmpty }, "nothing reached a service as a bad message")

            // A broker URL with a password: the password appears in no error, whatever goes wrong.
            for (service, arguments) in [
                ("orders", ["place", "--customer", "Ada", "--line", "book-0001:1"]), ("inventory", ["health"]),
                ("orders", ["dlq", "replay", "--all"]),
            ] {
                for url in [
                    "amqp://ada:pw-s3cr3t-x@127.0.0.1:1/%2F", "amqp://baton:pw-s3cr3t-x@\(mesh.brokerAddress)/%2F",
                ] {
                    let result = try await mesh.cli(service, arguments + ["--amqp-url", url])
                    #expect(result.status != 0)
                    #expect(!result.output.contains("pw-s3cr3t-x"), "\(service) printed the password: \(result.output)")
                }
            }
        }
    }
}
