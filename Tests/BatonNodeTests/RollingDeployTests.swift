import Baton
import BatonNode
import BatonSQLite
import BatonTestSupport
import Foundation
import Logging
import Testing

// A payment process as the release before a deploy defines it: one step, "pay".

private struct PaymentV1: ProcessState {
    var orderID = ""
    var address = ""
    var step = ""
}

private let releaseOne = ProcessManager<PaymentV1>(name: "payment", listensTo: ["orders", "payments"]) { pm in
    pm.start(on: OrderPlaced.self, correlation: .field(\.orderID)) { event, process in
        process.state = PaymentV1(orderID: event.orderID, address: "12 St James's Sq", step: "pay")
        process.send(ChargeCard(orderID: event.orderID))
    }
    pm.on(PaymentReceived.self, correlation: .field(\.orderID)) { event, process in
        process.state.step = "ship"
        process.send(ShipOrder(orderID: event.orderID))
    }
    pm.end(on: OrderClosed.self, correlation: .field(\.orderID))
}

/// Instances started by one release and carried on by the next, on the same SQLite file: a field added, a
/// field renamed, a step split in two. Each new state shape declares its version and an upcaster; the stored
/// instances of the old release load through it, and nothing stalls.
@Suite struct RollingDeployTests {
    /// A node of `definition` on the SQLite file at `path`: each release in turn runs on the same file.
    static func node<S: ProcessState>(
        _ definition: ProcessManager<S>,
        _ harness: NodeHarness,
        path: String
    ) throws -> Node {
        Node(
            configuration: Node.Configuration(name: "payment"),
            store: try SQLiteStore(path: path),
            transport: harness.transport,
            handlers: [try ProcessManagerHost(definition)],
            timeSource: harness.clock,
            logger: Logger(label: "deploy")
        )
    }

    /// Runs `definition` on the store at `path` until it has handled `events` and is idle; returns its node.
    @discardableResult
    static func run<S: ProcessState>(
        _ definition: ProcessManager<S>,
        _ harness: NodeHarness,
        path: String,
        _ events: [(any Event, id: String)]
    ) async throws -> Node {
        let node = try node(definition, harness, path: path)
        try await withRunningNode(node, transport: harness.transport) {
            for (event, id) in events { try await harness.publish(event, id: id) }
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
        }
        return node
    }

    /// Starts `o-1` under release one, then runs `next` on the same store and sends it a payment for `o-1`
    /// and a new order `o-2`.
    private func deploy<State: ProcessState>(
        _ next: ProcessManager<State>
    ) async throws -> (old: ProcessInstance<State>?, new: ProcessInstance<State>?, issued: [String]) {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let path = harness.directory.appendingPathComponent("payment.sqlite").path
        try await Self.run(releaseOne, harness, path: path, [(OrderPlaced(orderID: "o-1"), "placed-1")])
        let after = try await Self.run(
            next,
            harness,
            path: path,
            [(PaymentReceived(orderID: "o-1"), "paid-1"), (OrderPlaced(orderID: "o-2"), "placed-2")]
        )
        let engine = try ProcessEngine(next)
        let (old, new) = try await after.store.read { work in
            (try work.loadInstance("o-1", of: engine), try work.loadInstance("o-2", of: engine))
        }
        #expect(try await after.store.read { try $0.deadLetters() }.isEmpty, "nothing was dead-lettered")
        #expect(try await after.store.read { try $0.parkedMessages() }.isEmpty, "nothing waits")
        return (old, new, types(harness.observed))
    }

    @Test func aFieldAddedKeepsTheRunningInstanceGoing() async throws {
        struct PaymentV2: ProcessState {
            static let stateVersion = 2
            static let stateUpcasters = [Upcaster(from: 1) { json in json["currency"] = "EUR" }]
            var orderID = ""
            var address = ""
            var step = ""
            var currency = ""
        }
        let releaseTwo = ProcessManager<PaymentV2>(name: "payment", version: 2, listensTo: ["orders", "payments"]) {
            pm in
            pm.start(on: OrderPlaced.self, correlation: .field(\.orderID)) { event, process in
                process.state = PaymentV2(orderID: event.orderID, address: "a", step: "pay", currency: "GBP")
                process.send(ChargeCard(orderID: event.orderID))
            }
            pm.on(PaymentReceived.self, correlation: .field(\.orderID)) { event, process in
                guard process.state.currency == "EUR" else { throw Rejection("no currency") }
                process.state.step = "ship"
                process.send(ShipOrder(orderID: event.orderID))
            }
            pm.end(on: OrderClosed.self, correlation: .field(\.orderID))
        }
        let (old, new, issued) = try await deploy(releaseTwo)
        #expect(old?.state == PaymentV2(orderID: "o-1", address: "12 St James's Sq", step: "ship", currency: "EUR"))
        #expect(old?.definitionVersion == 1 && old?.stateVersion == 2, "started under release one, stored as v2 now")
        #expect(new?.definitionVersion == 2 && new?.state.currency == "GBP")
        #expect(issued == ["payments.ChargeCard.v1", "shipping.ShipOrder.v1", "payments.ChargeCard.v1"])
    }

    @Test func aFieldRenamedKeepsTheRunningInstanceGoing() async throws {
        struct PaymentV2: ProcessState {
            static let stateVersion = 2
            static let stateUpcasters = [
                Upcaster(from: 1) { json in json["shipping_address"] = json.removeValue(forKey: "address") }
            ]
            var orderID = ""
            var shippingAddress = ""
            var step = ""
        }
        let releaseTwo = ProcessManager<PaymentV2>(name: "payment", version: 2, listensTo: ["orders", "payments"]) {
            pm in
            pm.start(on: OrderPlaced.self, correlation: .field(\.orderID)) { event, process in
                process.state = PaymentV2(orderID: event.orderID, shippingAddress: "b", step: "pay")
            }
            pm.on(PaymentReceived.self, correlation: .field(\.orderID)) { event, process in
                guard !process.state.shippingAddress.isEmpty else { throw Rejection("no address") }
                process.state.step = "ship"
                process.send(ShipOrder(orderID: event.orderID))
            }
            pm.end(on: OrderClosed.self, correlation: .field(\.orderID))
        }
        let (old, _, issued) = try await deploy(releaseTwo)
        #expect(old?.state == PaymentV2(orderID: "o-1", shippingAddress: "12 St James's Sq", step: "ship"))
        #expect(issued.contains("shipping.ShipOrder.v1"))
    }

    @Test func aStepSplitInTwoTakesTheOldStepAsTheFirstOfTheNewOnes() async throws {
        struct CaptureCard: Command {
            static let messageName = "payments.CaptureCard"
            var orderID: String
        }
        struct PaymentV2: ProcessState {
            static let stateVersion = 2
            // "pay" became "authorize" then "capture": an instance waiting in "pay" is waiting for the authorisation.
            static let stateUpcasters = [
                Upcaster(from: 1) { json in if json["step"] as? String == "pay" { json["step"] = "authorize" } }
            ]
            var orderID = ""
            var address = ""
            var step = ""
        }
        let releaseTwo = ProcessManager<PaymentV2>(name: "payment", version: 2, listensTo: ["orders", "payments"]) {
            pm in
            pm.start(on: OrderPlaced.self, correlation: .field(\.orderID)) { event, process in
                process.state = PaymentV2(orderID: event.orderID, address: "c", step: "authorize")
                process.send(ChargeCard(orderID: event.orderID))
            }
            pm.on(PaymentReceived.self, correlation: .field(\.orderID)) { event, process in
                switch process.state.step {
                case "authorize":
                    process.state.step = "capture"
                    process.send(CaptureCard(orderID: event.orderID))
                default:
                    throw Rejection("a payment in step \(process.state.step)")
                }
            }
            pm.end(on: OrderClosed.self, correlation: .field(\.orderID))
        }
        let (old, _, issued) = try await deploy(releaseTwo)
        #expect(old?.state.step == "capture", "the old 'pay' instance went on as 'authorize'")
        #expect(issued.contains("payments.CaptureCard.v1"))
    }

    @Test func aStateOfALaterReleaseWaitsForANodeThatKnowsIt() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        struct PaymentV2: ProcessState {
            static let stateVersion = 2
            static let stateUpcasters = [Upcaster(from: 1) { _ in }]
            var orderID = ""
            var address = ""
            var step = ""
        }
        let releaseTwo = ProcessManager<PaymentV2>(name: "payment", version: 2, listensTo: ["orders", "payments"]) {
            pm in
            pm.start(on: OrderPlaced.self, correlation: .field(\.orderID)) { event, process in
                process.state.orderID = event.orderID
            }
            pm.on(PaymentReceived.self, correlation: .field(\.orderID)) { event, process in
                process.send(ShipOrder(orderID: event.orderID))
            }
            pm.end(on: OrderClosed.self, correlation: .field(\.orderID))
        }
        let path = harness.directory.appendingPathComponent("payment.sqlite").path
        // The new release starts o-1; an old replica (release one) then gets its payment.
        try await Self.run(releaseTwo, harness, path: path, [(OrderPlaced(orderID: "o-1"), "placed-1")])
        let old = try await Self.run(releaseOne, harness, path: path, [(PaymentReceived(orderID: "o-1"), "paid-1")])
        #expect(try await old.store.read { try $0.deadLetters() }.isEmpty, "not dead-lettered")
        #expect(try await old.store.read { try $0.parkedMessages() }.map(\.messageID) == ["paid-1"], "kept")
        let again = try Self.node(releaseTwo, harness, path: path)
        try await withRunningNode(again, transport: harness.transport) {
            harness.clock.advance(by: .seconds(3))
            let shipped = try await eventually { types(harness.observed).contains("shipping.ShipOrder.v1") }
            #expect(shipped, "release two handled the kept payment")
        }
    }
}
