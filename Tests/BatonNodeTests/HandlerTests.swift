import Baton
import BatonNode
import BatonSQLite
import BatonTestSupport
import BatonTesting
import Foundation
import GRDB
import Logging
import Metrics
import MetricsTestKit
import Testing

// An external checkout (no Baton type on the wire), translated into an internal command that an
// aggregate handles.

struct CheckoutCompleted: ValidatedMessage {
    static let messageName = "storefront.CheckoutCompleted"
    struct Line: Codable, Sendable {
        var sku: String
        var quantity: Int
    }
    var checkoutID: String
    var customer: String
    var lines: [Line]

    func validate() throws(MessageError) {
        try Check.length(checkoutID, 1...64, field: "checkout_id")
        try Check.length(customer, 1...150, field: "customer")
        try Check.count(lines, 1...100, field: "lines")
        for (index, line) in lines.enumerated() {
            try Check.length(line.sku, 1...64, field: "lines[\(index)].sku")
            try Check.range(line.quantity, 1...1000, field: "lines[\(index)].quantity")
        }
    }
}

struct NotifyCustomer: Command {
    static let messageName = "mail.NotifyCustomer"
    var customer: String
}

struct PlaceOrder: Command {
    static let messageName = "orders.PlaceOrder"
    var orderID: String
    var customer: String
}

struct Order: Aggregate {
    static let category = "order"
    static let eventTypes: [any Event.Type] = [OrderPlaced.self, OrderClosed.self]
    var isPlaced = false
    mutating func apply(_ event: any Event) {
        if event is OrderPlaced { isPlaced = true }
    }
}

@Suite struct HandlerTests {
    private func makeNode(
        _ harness: NodeHarness,
        handlers: [any NodeHandler]? = nil,
        metrics: (any MetricsFactory)? = nil
    ) throws -> Node {
        var configuration = Node.Configuration(name: "orders")
        if let metrics { configuration.metricsFactory = metrics }
        return Node(
            configuration: configuration,
            store: try SQLiteStore(path: harness.directory.appendingPathComponent("orders.sqlite").path),
            transport: harness.transport,
            handlers: handlers ?? [
                MessageHandlerHost.subscriber(
                    CheckoutCompleted.self,
                    name: "checkout-subscriber",
                    exchange: "storefront",
                    routingKey: "checkout.completed"
                ) { checkout, context in
                    context.send(PlaceOrder(orderID: "order-\(checkout.checkoutID)", customer: checkout.customer))
                },
                MessageHandlerHost.command(PlaceOrder.self, name: "place-order") { command, context in
                    var order = try context.load(Order.self, id: command.orderID)
                    guard !order.state.isPlaced else { return }  // a second checkout with the same id
                    // Two events in one call: each must get its own id and position.
                    try context.record(
                        [OrderPlaced(orderID: command.orderID), OrderClosed(orderID: command.orderID)],
                        to: &order
                    )
                },
            ],
            timeSource: harness.clock,
            logger: Logger(label: "handler-test")
        )
    }

    private func publishCheckout(_ harness: NodeHarness, _ json: String, id: String) async throws {
        let envelope = Envelope(
            messageID: id,
            messageType: "",
            timestamp: harness.clock.now(),
            payload: Data(json.utf8)
        )
        try await harness.transport.publish([
            OutgoingMessage(exchange: "storefront", routingKey: "checkout.completed", envelope: envelope)
        ])[0].get()
    }

    @Test func anExternalCheckoutBecomesAnOrderOnceAndItsEventIsPublishedWithItsStreamPosition() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.transport.declare(
            Topology(
                exchanges: Routing.exchanges,
                queues: [.init("events")],
                bindings: [.init(queue: "events", exchange: Routing.eventExchange, bindingKey: "orders.#")]
            )
        )
        let node = try makeNode(harness)
        let valid = #"{"checkout_id":"chk-1","customer":"Ada","lines":[{"sku":"book-1","quantity":2}]}"#
        try await withRunningNode(node, transport: harness.transport) {
            try await publishCheckout(harness, valid, id: "m-1")
            try await publishCheckout(harness, valid, id: "m-2")  // same checkout id, new message id
            try await publishCheckout(
                harness,
                #"{"checkout_id":"chk-2","customer":"Bob","lines":[{"sku":"b","quantity":0}]}"#,
                id: "m-3"
            )
            try await publishCheckout(harness, #"{"checkout_id":"chk-3","lines":[]}"#, id: "m-4")
            #expect(try await eventually { harness.transport.readyCount("events") >= 2 })
            #expect(try await eventually { try await node.store.read { try $0.deadLetters().count } == 2 })
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
        }
        let events = harness.transport.readyMessages("events").map(\.envelope)
        #expect(events.count == 2, "a duplicate checkout places no second order")
        #expect(
            events.map(\.stream) == ["order-order-chk-1", "order-order-chk-1"] && events.map(\.position) == [1, 2]
        )
        #expect(events.map(\.messageType) == ["orders.OrderPlaced.v1", "orders.OrderClosed.v1"])
        #expect(Set(events.map(\.messageID)).count == 2, "each recorded event has its own id")
        let reasons = try await node.store.read { try $0.deadLetters().map(\.reason) }.sorted()
        #expect(
            reasons == [
                "invalid: lines[0].quantity: must be 1 to 1000, got 0",
                "undecodable: customer: required field is missing",
            ]
        )
    }

    /// A subscriber that dispatches the order (placed here, refused for Mallory) and the customer's mail (another
    /// service's command), in that order or mail first.
    private func checkoutHandlers(mailFirst: Bool = false) -> [any NodeHandler] {
        [
            MessageHandlerHost.subscriber(
                CheckoutCompleted.self,
                name: "checkout-subscriber",
                exchange: "storefront",
                routingKey: "checkout.completed"
            ) { checkout, context in
                let mail = NotifyCustomer(customer: checkout.customer)
                if mailFirst { context.dispatch(mail) }
                context.dispatch(PlaceOrder(orderID: "order-\(checkout.checkoutID)", customer: checkout.customer))
                if !mailFirst { context.dispatch(mail) }
            },
            MessageHandlerHost.command(PlaceOrder.self, name: "place-order") { command, context in
                var order = try context.load(Order.self, id: command.orderID)
                guard !order.state.isPlaced else { return }
                guard command.customer != "Mallory" else { throw Rejection("customer blocked") }
                try context.record([OrderPlaced(orderID: command.orderID)], to: &order)
            },
        ]
    }

    @Test func aSubscriberDispatchesInternalCommandsHandledInItsOwnTransactionOrSentOn() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let node = try makeNode(harness, handlers: checkoutHandlers())
        try await withRunningNode(node, transport: harness.transport) {
            let ada = #"{"checkout_id":"chk-1","customer":"Ada","lines":[{"sku":"b","quantity":1}]}"#
            try await publishCheckout(harness, ada, id: "m-1")
            try await publishCheckout(harness, ada, id: "m-1")  // the same message again
            let mallory = #"{"checkout_id":"chk-2","customer":"Mallory","lines":[{"sku":"b","quantity":1}]}"#
            try await publishCheckout(harness, mallory, id: "m-2")
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
        }
        #expect(try await node.store.read { try $0.streamVersion("order-order-chk-1") } == 1, "placed once")
        #expect(
            types(harness.observed.filter { $0.exchange == Routing.commandExchange }) == ["mail.NotifyCustomer.v1"],
            "the local command never reached the broker; the other service's did, once"
        )
        let placed = try await node.store.read { try $0.readStream("order-order-chk-1") }
        #expect(placed.map(\.messageType) == ["orders.OrderPlaced.v1"])
        // The local command failed: the checkout, its whole transaction, is dead-lettered, and nothing of it stays.
        let letters = try await node.store.read { try $0.deadLetters() }
        #expect(letters.map(\.messageID) == ["m-2"] && letters.map(\.reason) == ["customer blocked"])
        #expect(letters.first?.handler == "checkout-subscriber")
        #expect(try await node.store.read { try $0.streamVersion("order-order-chk-2") } == 0)
        #expect(harness.observed.filter { $0.exchange == Routing.commandExchange }.count == 1, "no mail for Mallory")
    }

    @Test func aMessageFailingInABatchIsUndoneAloneAndTheOthersCommitOnce() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let metrics = TestMetrics()
        // The mail is queued first, then the order is refused for Mallory: half done when it fails.
        let node = try makeNode(harness, handlers: checkoutHandlers(mailFirst: true), metrics: metrics)
        // Queued before the node starts, so that they come in one batch, Mallory's in the middle.
        try await harness.transport.declare(node.topology)
        let customers = ["Ada", "Bob", "Mallory", "Eve"]
        for (index, customer) in customers.enumerated() {
            let checkout =
                #"{"checkout_id":"chk-\#(index)","customer":"\#(customer)","lines":[{"sku":"b","quantity":1}]}"#
            try await publishCheckout(harness, checkout, id: "m-\(index)")
        }
        try await withRunningNode(node, transport: harness.transport) {
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
        }
        #expect(try metrics.expectRecorder(NodeMetric.batchSize, [("node", "orders")]).values == [4], "one batch")
        #expect(
            metrics.counterTotal(label: NodeMetric.batchRetries, dimensions: [("reason", "isolation")]) == 1,
            "run without savepoints first, then again with them"
        )
        let mails = harness.observed.filter { $0.envelope.messageType == NotifyCustomer.messageType }
        let decoded = try mails.map {
            try JSONDecoder.baton.decode(NotifyCustomer.self, from: $0.envelope.payload).customer
        }
        #expect(decoded.sorted() == ["Ada", "Bob", "Eve"], "each once; Mallory's was undone with her order")
        for index in [0, 1, 3] {
            #expect(try await node.store.read { try $0.streamVersion("order-order-chk-\(index)") } == 1)
        }
        #expect(try await node.store.read { try $0.streamVersion("order-order-chk-2") } == 0)
        let letters = try await node.store.read { try $0.deadLetters() }
        #expect(letters.map(\.messageID) == ["m-2"] && letters.map(\.reason) == ["customer blocked"])
        #expect(metrics.counterTotal(label: NodeMetric.messages, dimensions: [("outcome", "handled")]) == 3)
    }

    @Test func aSubscriberTakesItsContractOnlyFromItsOwnExchange() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        let node = try makeNode(harness)
        try await withRunningNode(node, transport: harness.transport) {
            // A message on the internal command exchange that claims the external checkout's type.
            let envelope = Envelope(
                messageID: "masquerade",
                messageType: CheckoutCompleted.messageType,
                timestamp: harness.clock.now(),
                payload: Data(#"{"checkout_id":"chk-9","customer":"Eve","lines":[{"sku":"b","quantity":1}]}"#.utf8)
            )
            try await harness.transport.declare(
                Topology(
                    bindings: [.init(queue: "orders", exchange: Routing.commandExchange, bindingKey: "orders.Forged")]
                )
            )
            try await harness.transport.publish([
                OutgoingMessage(exchange: Routing.commandExchange, routingKey: "orders.Forged", envelope: envelope)
            ])[0].get()
            #expect(try await eventually { try await node.store.read { try $0.deadLetters().count } == 1 })
        }
        let letter = try #require(try await node.store.read { try $0.deadLetters() }.first)
        #expect(letter.reason == "no handler for message type 'storefront.CheckoutCompleted.v1'")
        #expect(try await node.store.read { try $0.streamVersion("order-order-chk-9") } == 0, "no order was placed")
    }

    @Test func concurrentWritersOfOneStreamAreDetected() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        let store = try SQLiteStore(path: harness.directory.appendingPathComponent("streams.sqlite").path)
        @Sendable func event(_ id: String) -> Envelope {
            Envelope(messageID: id, messageType: OrderPlaced.messageType, timestamp: .now, payload: Data("{}".utf8))
        }
        try await store.write { try $0.append([event("a")], to: "order-1", expectedVersion: 0) }
        await #expect(throws: ConcurrencyError(stream: "order-1", expectedVersion: 0, actualVersion: 1)) {
            try await store.write { try $0.append([event("b")], to: "order-1", expectedVersion: 0) }
        }
        try await store.write { try $0.append([event("c"), event("d")], to: "order-1", expectedVersion: 1) }
        #expect(try await store.read { try $0.streamVersion("order-1") } == 3)
    }

    /// Records six transitions with one definition, then loads with `changed`; returns what was recorded and
    /// what loaded. With `stateKeptAt`, the store is made to look like one written before the state of every
    /// transition was kept: the stored state is the one after that version (none for 0).
    private func recordThenLoad(
        _ path: String,
        changed: ProcessManager<OrderProcess>,
        stateKeptAt keptVersion: Int64? = nil
    ) async throws -> (recorded: ProcessInstance<OrderProcess>?, loaded: ProcessInstance<OrderProcess>?) {
        let store = try SQLiteStore(path: path)
        var keptState: Data?
        let original = try ProcessEngine(
            ProcessManager<OrderProcess>(name: "p", listensTo: ["orders", "payments"]) { pm in
                pm.start(on: OrderPlaced.self, correlation: .field(\.orderID)) { event, process in
                    process.state.orderID = event.orderID
                }
                pm.on(PaymentReceived.self, correlation: .field(\.orderID)) { _, process in
                    process.state.payments += 1
                }
                pm.end(on: OrderClosed.self, correlation: .field(\.orderID))
            }
        )
        var instance: ProcessInstance<OrderProcess>?
        let events = [OrderPlaced(orderID: "o")] as [any Event] + (0..<5).map { _ in PaymentReceived(orderID: "o") }
        for (index, event) in events.enumerated() {
            let envelope = Envelope(
                messageID: "m-\(index)",
                messageType: type(of: event).messageType,
                timestamp: .now,
                payload: MessageRegistry.encode(event)
            )
            let decision = try original.handle(
                event,
                envelope: envelope,
                instanceID: "o",
                instance: instance,
                now: .now
            )
            guard case .transition(let next, let transition) = decision else {
                Issue.record("no transition")
                return (nil, nil)
            }
            try await store.write {
                try $0.record(transition, instance: next, of: original, route: Routing.destination)
            }
            instance = next
            if next.version == keptVersion { keptState = try JSONEncoder.baton.encode(next) }
        }
        if let keptVersion {
            let keptState = keptState
            try await DatabaseQueue(path: path).write { db in
                if let keptState {
                    try db.execute(
                        sql: "UPDATE process_instances SET state_version = ?, state = ?",
                        arguments: [keptVersion, keptState]
                    )
                } else {
                    try db.execute(sql: "UPDATE process_instances SET state_version = NULL, state = NULL")
                }
            }
        }
        let engine = try ProcessEngine(changed)
        let loaded = try await store.read { try $0.loadInstance("o", of: engine) }
        return (instance, loaded)
    }

    @Test func loadingAnInstanceRunsNoHandler() async throws {
        // A deploy changed the handler: running instances keep the state their transitions stored.
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        let changed = ProcessManager<OrderProcess>(name: "p", listensTo: ["orders", "payments"]) { pm in
            pm.start(on: OrderPlaced.self, correlation: .field(\.orderID)) { _, _ in throw HandlerFailure() }
            pm.on(PaymentReceived.self, correlation: .field(\.orderID)) { _, _ in throw HandlerFailure() }
            pm.end(on: OrderClosed.self, correlation: .field(\.orderID))
        }
        let path = harness.directory.appendingPathComponent("pm.sqlite").path
        let (recorded, loaded) = try await recordThenLoad(path, changed: changed)
        #expect(loaded != nil && loaded == recorded)
        #expect(loaded?.state.payments == 5 && loaded?.version == 6)
    }

    @Test func anInstanceStoredBeforeStatesWereKeptIsRebuiltOnce() async throws {
        // A store written when only every 20th state was kept: the latest state is older than the instance.
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        let same = ProcessManager<OrderProcess>(name: "p", listensTo: ["orders", "payments"]) { pm in
            pm.start(on: OrderPlaced.self, correlation: .field(\.orderID)) { event, process in
                process.state.orderID = event.orderID
            }
            pm.on(PaymentReceived.self, correlation: .field(\.orderID)) { _, process in process.state.payments += 1 }
            pm.end(on: OrderClosed.self, correlation: .field(\.orderID))
        }
        for kept: Int64 in [0, 2] {
            let path = harness.directory.appendingPathComponent("pm-\(kept).sqlite").path
            let (recorded, loaded) = try await recordThenLoad(path, changed: same, stateKeptAt: kept)
            #expect(loaded != nil && loaded == recorded, "rebuilt from the state at version \(kept) and what followed")
        }
    }
}
