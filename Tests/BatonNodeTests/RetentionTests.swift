import Baton
import BatonNode
import BatonTestSupport
import BatonTesting
import Foundation
import Testing

/// Retention: the inbox's window, sent outbox rows, closed instances' timelines and tombstones.
@Suite struct RetentionTests {
    /// A copy of a message (a redelivery, a publisher's retry) carries its original's timestamp. Inside the
    /// window the inbox still has the original's record, even after retention ran; past it the record may be
    /// gone, and the copy is dead-lettered with that reason instead of running its handler a second time.
    @Test func aCopyInsideTheInboxWindowIsDroppedAndAnOlderOneIsDeadLetteredNotHandledAgain() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let node = try harness.makeNode(retention: Retention(inboxWindow: .seconds(3_600)))
        let issued = harness.clock.now()
        func shipments() -> Int { types(harness.observed).count { $0 == "shipping.ShipOrder.v1" } }
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publish(OrderPlaced(orderID: "o-1"), id: "placed-1")
            try await harness.publish(PaymentReceived(orderID: "o-1"), id: "paid-1")
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
            #expect(try await node.store.read { try $0.outboxMessageIDs() }.isEmpty, "sent rows are deleted")

            harness.clock.advance(by: .seconds(55 * 60))
            #expect(try await node.applyRetention().forgottenMessages == 0, "inside the window and its margin")
            try await harness.publish(PaymentReceived(orderID: "o-1"), id: "paid-1", issuedAt: issued)
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
            #expect(shipments() == 1, "a copy inside the window is dropped as a duplicate")

            harness.clock.advance(by: .seconds(15 * 60))  // 70 minutes: past the window and its margin
            #expect(try await node.applyRetention().forgottenMessages == 2, "placed-1 and paid-1 are forgotten")
            try await harness.publish(PaymentReceived(orderID: "o-1"), id: "paid-1", issuedAt: issued)
            try await harness.publish(OrderPlaced(orderID: "o-2"), id: "placed-2")
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
        }
        #expect(shipments() == 1, "the old copy did not run its handler again")
        let process = try await node.store.read { try $0.transitions(of: "order-process", instance: "o-1") }
        #expect(process.count == 2, "o-1 moved once per message")
        let letters = try await node.store.read { try $0.deadLetters() }
        #expect(letters.map(\.messageID) == ["paid-1"] && letters.first?.handler == "inbox")
        #expect(letters.first?.reason.contains("before the inbox's window of 1h") == true, "\(letters)")
        let dead = harness.observed.filter { $0.exchange == Routing.deadLetterExchange }
        #expect(dead.first?.envelope.headers[BatonHeader.deadLetterReason]?.contains("inbox's window") == true)
        #expect(types(harness.observed).contains("payments.ChargeCard.v1"), "the node went on: o-2 started")
        #expect(try await node.store.read { try $0.hasHandled("placed-2", consumer: "orders-pm") })
    }

    /// A closed instance's timeline is purged after its time; its tombstone keeps its state and lifecycle, so a
    /// late reply still gets its after-close compensation. Once the tombstone goes, a reply finds no instance.
    @Test func closedInstancesArePurgedToTombstonesAndALateReplyIsStillCompensated() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        func makeNode() throws -> Node {
            try harness.makeNode(
                process: refundingOrderProcess(),
                retention: Retention(
                    closedInstances: .seconds(3_600),
                    tombstones: .seconds(86_400),
                    interval: .milliseconds(20)
                )
            )
        }
        func refunds() -> Int { types(harness.observed).count { $0 == RefundPayment.messageType } }
        let node = try makeNode()
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publish(OrderPlaced(orderID: "o-1"), id: "placed-1")
            try await harness.publish(OrderPlaced(orderID: "o-2"), id: "placed-2")
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
            harness.clock.advance(by: .seconds(61))  // the payment timeouts fire: both fail
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
            let timeline = try await node.store.read { try $0.transitions(of: "order-process", instance: "o-1") }
            #expect(timeline.count == 2)

            // The node's own loop purges them once they have been closed an hour.
            harness.clock.advance(by: .seconds(2 * 3_600))
            let purged = try await eventually {
                try await node.store.read { try $0.transitions(of: "order-process", instance: "o-1").isEmpty }
            }
            #expect(purged, "the retention loop purged o-1's timeline")
            let tombstone = try await node.store.read { try $0.storedInstance("o-1", processManager: "order-process") }
            #expect(tombstone?.version == 2, "its tombstone stays")
        }
        // A new node (nothing cached) loads the tombstone from the store.
        let restarted = try makeNode()
        try await withRunningNode(restarted, transport: harness.transport) {
            let node = restarted
            try await harness.publish(PaymentReceived(orderID: "o-1"), id: "paid-late-1")
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
            #expect(refunds() == 1, "the late payment of a purged instance is refunded")

            harness.clock.advance(by: .seconds(2 * 86_400))
            let removed = try await eventually {
                try await node.store.read { try $0.storedInstance("o-2", processManager: "order-process") == nil }
            }
            #expect(removed, "the tombstones went a day after the purge")
            try await harness.publish(PaymentReceived(orderID: "o-2"), id: "paid-late-2")
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
        }
        #expect(refunds() == 1, "a reply for a forgotten instance finds none (its handler ignores it)")
        #expect(try await node.store.read { try $0.instances(of: "order-process") }.isEmpty)
        #expect(try await node.store.read { try $0.deadLetters() }.isEmpty)
    }
}

struct RefundPayment: Command {
    static let messageName = "payments.RefundPayment"
    var orderID: String
}

/// The order process with an after-close handler: a payment for a failed order is refunded.
func refundingOrderProcess() -> ProcessManager<OrderProcess> {
    ProcessManager(name: "order-process", listensTo: ["orders", "payments"]) { pm in
        pm.start(on: OrderPlaced.self, correlation: .field(\.orderID)) { event, process in
            process.state.orderID = event.orderID
            process.send(ChargeCard(orderID: event.orderID))
            process.schedule("payment-timeout", after: .seconds(60))
        }
        pm.on(PaymentReceived.self, correlation: .field(\.orderID)) { event, process in
            process.cancelTimer("payment-timeout")
            process.send(ShipOrder(orderID: event.orderID))
        }
        pm.afterClose(PaymentReceived.self, correlation: .field(\.orderID)) { event, process in
            guard process.lifecycle == .failed else { return }
            process.send(RefundPayment(orderID: event.orderID))
        }
        pm.onTimer("payment-timeout") { process in
            process.send(VoidOrder(orderID: process.state.orderID))
            process.markAsFailed(reason: "payment timed out")
        }
    }
}
