import Baton
import BatonNode
import BatonSQLite
import BatonTestSupport
import BatonTesting
import Foundation
import Logging
import Metrics
import Synchronization

// A small order process used by the node tests.

struct OrderPlaced: Event {
    static let messageName = "orders.OrderPlaced"
    var orderID: String
}
struct PaymentReceived: Event {
    static let messageName = "payments.PaymentReceived"
    var orderID: String
    var fails: Int = 0
}
struct OrderClosed: Event {
    static let messageName = "orders.OrderClosed"
    var orderID: String
}
struct ChargeCard: Command {
    static let messageName = "payments.ChargeCard"
    var orderID: String
}
struct ShipOrder: Command {
    static let messageName = "shipping.ShipOrder"
    var orderID: String
}
struct VoidOrder: Command {
    static let messageName = "orders.VoidOrder"
    var orderID: String
}

struct OrderProcess: ProcessState {
    var orderID = ""
    var payments = 0
}

/// Counts handler attempts per order, to make a handler fail a set number of times.
final class FailureBudget: Sendable {
    private let attempts = Mutex<[String: Int]>([:])
    private let timerFailures = Mutex<[String: Int]>([:])

    func shouldFail(_ key: String, times: Int) -> Bool {
        attempts.withLock { attempts in
            attempts[key, default: 0] += 1
            return attempts[key]! <= times
        }
    }

    /// Makes the payment timeout of `orderID` fail its next `times` firings.
    func failTimer(of orderID: String, times: Int) {
        timerFailures.withLock { $0[orderID] = times }
    }

    func timerShouldFail(_ orderID: String) -> Bool {
        shouldFail("timer-\(orderID)", times: timerFailures.withLock { $0[orderID] ?? 0 })
    }
}

struct HandlerFailure: Error, CustomStringConvertible {
    var description: String { "payment gateway unavailable" }
}

func orderProcess(failures: FailureBudget = FailureBudget()) -> ProcessManager<OrderProcess> {
    ProcessManager(name: "order-process", listensTo: ["orders", "payments"]) { pm in
        pm.start(on: OrderPlaced.self, correlation: .field(\.orderID)) { event, process in
            process.state.orderID = event.orderID
            process.send(ChargeCard(orderID: event.orderID))
            process.schedule("payment-timeout", after: .seconds(60))
        }
        pm.on(PaymentReceived.self, correlation: .field(\.orderID)) { event, process in
            if failures.shouldFail(event.orderID, times: event.fails) { throw HandlerFailure() }
            process.state.payments += 1
            process.cancelTimer("payment-timeout")
            process.send(ShipOrder(orderID: event.orderID))
        }
        pm.end(on: OrderClosed.self, correlation: .field(\.orderID))
        pm.onTimer("payment-timeout") { process in
            if failures.timerShouldFail(process.state.orderID) { throw HandlerFailure() }
            process.send(VoidOrder(orderID: process.state.orderID))
            process.markAsFailed(reason: "payment timed out")
        }
    }
}

/// A node over the in-process transport with a real SQLite file, plus an observer queue that receives
/// every command and dead letter.
final class NodeHarness: Sendable {
    let directory: URL
    let transport: InProcessTransport
    let clock: TestClock
    let failures: FailureBudget
    static let observer = "observer"

    init(
        transport: InProcessTransport = InProcessTransport(),
        clock: TestClock = TestClock(),
        failures: FailureBudget = FailureBudget()
    ) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("baton-node-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        self.transport = transport
        self.clock = clock
        self.failures = failures
    }

    /// A node of the order process on `store`, by default a SQLite file in the harness's directory.
    func makeNode(
        retry: RetryPolicy = RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(5)),
        store: (any Store)? = nil,
        process: ProcessManager<OrderProcess>? = nil,
        retention: Retention = Retention(),
        metrics: (any MetricsFactory)? = nil
    ) throws -> Node {
        var configuration = Node.Configuration(name: "orders-pm")
        configuration.retry = retry
        configuration.retention = retention
        if let metrics { configuration.metricsFactory = metrics }
        return Node(
            configuration: configuration,
            store: try store ?? SQLiteStore(path: directory.appendingPathComponent("node.sqlite").path),
            transport: transport,
            handlers: [try ProcessManagerHost(process ?? orderProcess(failures: failures))],
            timeSource: clock,
            logger: Logger(label: "node-test")
        )
    }

    func declareObserver() async throws {
        try await transport.declare(
            Topology(
                exchanges: Routing.exchanges,
                queues: [.init(Self.observer)],
                bindings: [
                    .init(queue: Self.observer, exchange: Routing.commandExchange, bindingKey: "#"),
                    .init(queue: Self.observer, exchange: Routing.deadLetterExchange, bindingKey: "#"),
                ]
            )
        )
    }

    /// Publishes an event the way another node would: issued now, or at `issuedAt` (a copy of an earlier one).
    func publish<E: Event>(_ event: E, id: String, issuedAt: Date? = nil) async throws {
        try await publish(event, id: id, to: Routing.eventExchange, routingKey: E.messageName, issuedAt: issuedAt)
    }

    /// Sends a command the way another node would (on the command exchange, under its name).
    func send<C: Command>(_ command: C, id: String) async throws {
        try await publish(command, id: id, to: Routing.commandExchange, routingKey: C.messageName)
    }

    /// Sends an operator's command to a running node directly (on its node exchange), then waits until the node
    /// is idle.
    func administer<C: Command>(_ node: Node, _ command: C, id: String) async throws {
        try await publish(command, id: id, to: Routing.nodeExchange, routingKey: node.configuration.name)
        try await waitUntilIdle(node, transport: transport, clock: clock)
    }

    /// Publishes a message in its envelope, issued now or at `issuedAt`, and waits for the broker's confirm.
    private func publish<M: Message>(
        _ message: M,
        id: String,
        to exchange: String,
        routingKey: String,
        issuedAt: Date? = nil
    ) async throws {
        let envelope = Envelope(
            messageID: id,
            messageType: M.messageType,
            timestamp: issuedAt ?? clock.now(),
            payload: MessageRegistry.encode(message)
        )
        try await transport.publish([OutgoingMessage(exchange: exchange, routingKey: routingKey, envelope: envelope)])[
            0
        ]
        .get()
    }

    /// Publishes raw bytes with arbitrary properties (hostile input), on a route the node consumes.
    func publishRaw(body: String, id: String?, type: String?, contentType: String = "application/json") async throws {
        let envelope = Envelope(
            messageID: id ?? "",
            messageType: type ?? "",
            timestamp: clock.now(),
            payload: Data(body.utf8)
        )
        try await transport.publish([
            OutgoingMessage(
                exchange: Routing.eventExchange,
                routingKey: OrderPlaced.messageName,
                envelope: envelope,
                contentType: contentType
            )
        ])[0].get()
    }

    /// Polls `condition`, moving the clock 100 ms before each look: for work due in business time (retries).
    func eventuallyAdvancingClock(_ condition: () async throws -> Bool) async throws -> Bool {
        try await eventually {
            clock.advance(by: .milliseconds(100))
            return try await condition()
        }
    }

    /// What reached the observer queue: commands and dead letters, by type.
    var observed: [OutgoingMessage] { transport.readyMessages(Self.observer) }

    func removeFiles() {
        try? FileManager.default.removeItem(at: directory)
    }
}

/// The type names of messages, in order.
func types(_ messages: [OutgoingMessage]) -> [String] {
    messages.map(\.envelope.messageType)
}

/// Waits until the node is idle: every message in its queue handled and acknowledged, its outbox relayed, and
/// no timer or held message due at `clock`'s time. Nothing more happens until a message comes or the clock moves, so what a
/// test asserts did *not* happen holds from then on, whatever the machine's speed.
func waitUntilIdle(_ node: Node, transport: InProcessTransport, clock: TestClock) async throws {
    let idle = try await eventually {
        guard transport.unsettledCount(node.configuration.queue) == 0 else { return false }
        let now = clock.now()
        return try await node.store.read { work in
            try work.pendingOutboxCount() == 0 && work.dueTimers(before: now, limit: 1).isEmpty
                && work.dueParkedMessages(before: now, limit: 1).isEmpty
        }
    }
    if !idle { throw TestSupportError("node \(node.configuration.name) did not become idle") }
}

/// Runs `body` with the node running, then stops it gracefully. The node's queue is declared first, so
/// nothing the test publishes is unroutable.
func withRunningNode<T>(_ node: Node, transport: any Transport, _ body: () async throws -> T) async throws -> T {
    try await transport.declare(node.topology)
    let task = Task { try await node.run() }
    do {
        let result = try await body()
        task.cancel()
        try await task.value
        return result
    } catch {
        task.cancel()
        _ = try? await task.value
        throw error
    }
}
