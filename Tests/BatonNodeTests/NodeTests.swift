import Baton
import BatonSQLite
import BatonTestSupport
import BatonTesting
import Foundation
import Logging
import MetricsTestKit
import Testing

@testable import BatonNode

@Suite struct NodeTests {
    @Test func eventsForAMissingInstanceFollowTheirHandlersPolicy() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let strict = ProcessManager<OrderProcess>(name: "order-process", listensTo: ["orders", "payments"]) { pm in
            pm.start(on: OrderPlaced.self, correlation: .field(\.orderID)) { _, _ in }
            pm.on(
                PaymentReceived.self,
                correlation: .field(\.orderID),
                whenMissing: .handle { event, context in context.send(VoidOrder(orderID: event.orderID)) }
            ) { _, _ in }
            pm.end(on: OrderClosed.self, correlation: .field(\.orderID), whenMissing: .deadLetter)
        }
        let node = try harness.makeNode(process: strict)
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publish(PaymentReceived(orderID: "ghost"), id: "payment-1")
            try await harness.publish(OrderClosed(orderID: "ghost"), id: "closed-1")
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
        }
        #expect(types(harness.observed) == ["orders.VoidOrder.v1", "orders.OrderClosed.v1"])
        let void = harness.observed[0].envelope
        #expect(void.correlationID == "ghost" && void.causationID == "payment-1", "answered as the instance would")
        let letters = try await node.store.read { try $0.deadLetters() }
        #expect(letters.map(\.messageID) == ["closed-1"])
        #expect(letters.first?.reason == "order-process: no instance 'ghost' and the event does not start one")
        #expect(harness.observed[1].exchange == Routing.deadLetterExchange)
        let instances = try await node.store.read { try $0.instances(of: "order-process") }
        #expect(instances.isEmpty, "neither policy creates an instance")
    }

    @Test func aCommandRefusedAtItsTargetReachesTheIssuingInstanceAtOnce() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let process = ProcessManager<OrderProcess>(name: "order-process", listensTo: ["orders", "payments"]) { pm in
            pm.start(on: OrderPlaced.self, correlation: .field(\.orderID)) { event, process in
                process.state.orderID = event.orderID
                process.send(ChargeCard(orderID: event.orderID))
                process.schedule("payment-timeout", after: .seconds(60))
            }
            pm.onFailure(of: ChargeCard.self) { failure, process in
                process.send(VoidOrder(orderID: process.state.orderID))
                process.markAsFailed(reason: "payment refused: \(failure.reason)")
            }
            pm.end(on: OrderClosed.self, correlation: .field(\.orderID))
        }
        let manager = try harness.makeNode(process: process)
        let payments = Node(
            configuration: Node.Configuration(name: "payments"),
            store: try SQLiteStore(path: harness.directory.appendingPathComponent("payments.sqlite").path),
            transport: harness.transport,
            handlers: [
                MessageHandlerHost.command(ChargeCard.self, name: "charge-card") { _, _ in
                    throw Rejection("card expired")
                }
            ],
            timeSource: harness.clock,
            logger: Logger(label: "payments")
        )
        let placedAt = harness.clock.now()
        try await withRunningNode(payments, transport: harness.transport) {
            try await withRunningNode(manager, transport: harness.transport) {
                try await harness.publish(OrderPlaced(orderID: "o-1"), id: "placed-1")
                let voided = try await eventually { types(harness.observed).contains("orders.VoidOrder.v1") }
                #expect(voided, "the instance heard of the refusal")
            }
        }
        #expect(harness.clock.now() == placedAt, "no business time passed: the 60 s timeout played no part")
        let instance = try #require(try await manager.store.read { try $0.instances(of: "order-process") }.first)
        #expect(instance.lifecycle == .failed)
        let failures = try await manager.store.read { try $0.transitions(of: "order-process", instance: "o-1") }
        guard case .event(let reply) = failures.last?.trigger else {
            Issue.record("the last transition was not the reply")
            return
        }
        let failure = try JSONDecoder.baton.decode(CommandFailed.self, from: reply.payload)
        #expect(failure.commandType == ChargeCard.messageType && failure.reason == "card expired")
        #expect(failure.refusedBy == "payments/charge-card" && failure.attempts == 1)
        #expect(failure.causation.last == "placed-1", "the chain ends at what made the instance issue it")
        let letters = try await payments.store.read { try $0.deadLetters() }
        #expect(letters.map(\.messageID) == [failure.commandID], "the command itself is dead-lettered at its target")
    }

    @Test func anOperatorAbortsOneInstanceAndPurgesClosedOnesThroughTheRunningNode() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let node = try harness.makeNode()
        func administer<C: Command>(_ command: C, id: String) async throws {
            try await harness.administer(node, command, id: id)
        }
        let closedEarly = harness.clock.now()
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publish(OrderPlaced(orderID: "o-1"), id: "placed-1")
            try await harness.publish(OrderPlaced(orderID: "o-2"), id: "placed-2")
            try await harness.publish(OrderClosed(orderID: "o-2"), id: "closed-2")
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
            harness.clock.advance(by: .seconds(10))
            try await administer(
                AbortProcess(processManager: "order-process", instanceID: "o-1", reason: "fraud suspected"),
                id: "abort-1"
            )
            try await administer(
                AbortProcess(processManager: "order-process", instanceID: "o-9", reason: "typo"),
                id: "abort-9"
            )
            harness.clock.advance(by: .seconds(120))  // o-1's payment timeout would have fired by now
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
            try await administer(
                PurgeProcesses(processManager: "order-process", closedBefore: closedEarly.addingTimeInterval(5)),
                id: "purge-1"
            )
        }
        let instances = try await node.store.read { try $0.instances(of: "order-process") }
        #expect(instances.map(\.instanceID) == ["o-1", "o-2"] && instances.first?.lifecycle == .failed)
        let purged = try await node.store.read { try $0.transitions(of: "order-process", instance: "o-2") }
        #expect(purged.isEmpty, "o-2 closed before the cut-off: its timeline was purged, its tombstone stays")
        let aborted = try await node.store.read { try $0.transitions(of: "order-process", instance: "o-1") }
        #expect(aborted.last?.reason == "fraud suspected")
        #expect(!types(harness.observed).contains("orders.VoidOrder.v1"), "the aborted instance's timer is gone")
        let letters = try await node.store.read { try $0.deadLetters() }
        #expect(letters.map(\.messageID) == ["abort-9"], "an abort of an unknown instance is refused, not lost")
        #expect(letters.first?.reason == "no instance 'o-9' of process manager 'order-process' to abort")
    }

    @Test func aNewerVersionWaitsForANodeThatKnowsItAndAnOlderOneIsUpcast() async throws {
        /// The next release's OrderPlaced: v2 adds the customer.
        struct OrderPlacedV2: Event {
            static let messageName = "orders.OrderPlaced"
            static let messageVersion = 2
            static let upcasters = [Upcaster(from: 1) { json in json["customer"] = "unknown" }]
            var orderID: String
            var customer: String
        }
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        func publishV2(_ orderID: String, id: String) async throws {
            try await harness.publish(OrderPlacedV2(orderID: orderID, customer: "Ada"), id: id)
        }
        // The old release meets a v2 event during a rolling deploy: it keeps it, it does not dead-letter it.
        let old = try harness.makeNode()
        try await withRunningNode(old, transport: harness.transport) {
            try await publishV2("o-new", id: "placed-v2")
            try await waitUntilIdle(old, transport: harness.transport, clock: harness.clock)
        }
        #expect(try await old.store.read { try $0.deadLetters() }.isEmpty)
        #expect(try await old.store.read { try $0.parkedMessages() }.map(\.messageID) == ["placed-v2"])
        #expect(harness.observed.isEmpty, "nothing handled it")

        // The new release on the same store handles it once it is due, and reads v1 events through the upcaster.
        let upgraded = ProcessManager<OrderProcess>(name: "order-process", listensTo: ["orders", "payments"]) { pm in
            pm.start(on: OrderPlacedV2.self, correlation: .field(\.orderID)) { event, process in
                process.state.orderID = event.orderID
                process.send(ChargeCard(orderID: "\(event.orderID) for \(event.customer)"))
            }
            pm.end(on: OrderClosed.self, correlation: .field(\.orderID))
        }
        let new = try harness.makeNode(process: upgraded)
        try await withRunningNode(new, transport: harness.transport) {
            harness.clock.advance(by: .seconds(3))  // past the longest retry delay
            try await harness.publish(OrderPlaced(orderID: "o-old"), id: "placed-v1")
            let handled = try await eventually { harness.observed.count == 2 }
            #expect(handled)
        }
        let charged = harness.observed.map {
            try? JSONDecoder.baton.decode(ChargeCard.self, from: $0.envelope.payload).orderID
        }
        #expect(Set(charged) == ["o-new for Ada", "o-old for unknown"])
        #expect(try await new.store.read { try $0.parkedMessages() }.isEmpty)
    }

    @Test func anOperatorRetriesTheFailedStepOfOneInstanceAndResumesAnotherPastIt() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let node = try harness.makeNode()  // three attempts, then the dead letter
        func administer<C: Command>(_ command: C, id: String) async throws {
            try await harness.administer(node, command, id: id)
        }
        try await withRunningNode(node, transport: harness.transport) {
            for id in ["o-1", "o-2"] {
                try await harness.publish(OrderPlaced(orderID: id), id: "placed-\(id)")
                try await harness.publish(PaymentReceived(orderID: id, fails: 3), id: "paid-\(id)")  // dead-lettered
                try await harness.publish(OrderClosed(orderID: id), id: "closed-\(id)")  // waits behind it
            }
            let dead = try await harness.eventuallyAdvancingClock {
                try await node.store.read { try $0.deadLetters().count } == 2
            }
            #expect(dead, "both payments are dead-lettered and hold their instances")
            try await administer(RetryProcess(processManager: "order-process", instanceID: "o-1"), id: "retry-1")
            try await administer(ResumeProcess(processManager: "order-process", instanceID: "o-2"), id: "resume-2")
            try await administer(ResumeProcess(processManager: "order-process", instanceID: "o-2"), id: "resume-again")
        }
        let instances = try await node.store.read { try $0.instances(of: "order-process") }
        let byID = Dictionary(uniqueKeysWithValues: instances.map { ($0.instanceID, $0) })
        #expect(byID["o-1"]?.lifecycle == .completed && byID["o-1"]?.version == 3, "retried: paid, then closed")
        #expect(
            byID["o-2"]?.lifecycle == .completed && byID["o-2"]?.version == 2,
            "resumed: closed without the payment"
        )
        let open = try await node.store.read { try $0.deadLetters() }
        #expect(
            open.map(\.messageID).sorted() == ["paid-o-2", "resume-again"],
            "o-2's dead letter stays for the record"
        )
        #expect(open.first { $0.messageID == "resume-again" }?.reason.contains("is not held") == true)
    }

    @Test func anInstancesTimerWaitsBehindItsHeldMessage() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let node = try harness.makeNode()  // three attempts, then the dead letter
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publish(OrderPlaced(orderID: "o-1"), id: "placed")  // payment timeout in 60 s
            // The payment fails all three attempts: dead-lettered, it holds o-1.
            try await harness.publish(PaymentReceived(orderID: "o-1", fails: 3), id: "paid")
            let dead = try await harness.eventuallyAdvancingClock {
                try await node.store.read { try $0.deadLetters().count } == 1
            }
            #expect(dead)
            harness.clock.advance(by: .seconds(61))  // the timeout is due, behind the held payment
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
            #expect(!types(harness.observed).contains("orders.VoidOrder.v1"), "it did not fire past the payment")
            // The payment goes through on retry, and it cancels the timeout it was waiting behind.
            try await harness.administer(
                node,
                RetryProcess(processManager: "order-process", instanceID: "o-1"),
                id: "r"
            )
            harness.clock.advance(by: .seconds(3))
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
        }
        let commands = harness.observed.filter { $0.exchange == Routing.commandExchange }
        #expect(types(commands) == ["payments.ChargeCard.v1", "shipping.ShipOrder.v1"])
        let instance = try #require(try await node.store.read { try $0.instances(of: "order-process") }.first)
        #expect(instance.lifecycle == .running, "paid, not timed out")
    }

    @Test func aProcessRunsThroughTheNodeAndIssuesItsCommands() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let node = try harness.makeNode()
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publish(OrderPlaced(orderID: "o-1"), id: "e-1")
            try await harness.publish(PaymentReceived(orderID: "o-1"), id: "e-2")
            #expect(try await eventually { harness.observed.count == 2 })
        }
        #expect(types(harness.observed) == ["payments.ChargeCard.v1", "shipping.ShipOrder.v1"])
        let issued = harness.observed[0].envelope
        #expect(issued.correlationID == "o-1" && issued.causationID == "e-1")
        let timeline = try await node.store.read { try $0.transitions(of: "order-process", instance: "o-1") }
        #expect(timeline.map(\.lifecycle) == [.started, .running])
    }

    @Test func aNodeRunsOnTheInMemoryStoreAsOnSQLite() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let node = try harness.makeNode(store: InMemoryStore())
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publish(OrderPlaced(orderID: "o-1"), id: "e-1")
            try await harness.publish(OrderPlaced(orderID: "o-1"), id: "e-1")  // a redelivery
            try await harness.publish(PaymentReceived(orderID: "o-1"), id: "e-2")
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
            harness.clock.advance(by: .seconds(61))  // the payment cancelled the timeout: nothing fires
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
        }
        #expect(types(harness.observed) == ["payments.ChargeCard.v1", "shipping.ShipOrder.v1"])
        let timeline = try await node.store.read { try $0.transitions(of: "order-process", instance: "o-1") }
        #expect(timeline.map(\.lifecycle) == [.started, .running])
    }

    @Test func aRedeliveredMessageHasNoSecondEffect() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let node = try harness.makeNode()
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publish(OrderPlaced(orderID: "o-2"), id: "e-1")
            try await harness.publish(OrderPlaced(orderID: "o-2"), id: "e-1")  // the same message again
            try await harness.publish(PaymentReceived(orderID: "o-2"), id: "e-2")
            try await harness.publish(PaymentReceived(orderID: "o-2"), id: "e-2")
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
        }
        #expect(types(harness.observed) == ["payments.ChargeCard.v1", "shipping.ShipOrder.v1"])
        let timeline = try await node.store.read { try $0.transitions(of: "order-process", instance: "o-2") }
        #expect(timeline.count == 2)
    }

    @Test func timersFireAfterARestartAndACancelledTimerNeverFires() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        try await withRunningNode(try harness.makeNode(), transport: harness.transport) {
            try await harness.publish(OrderPlaced(orderID: "slow"), id: "e-1")
            try await harness.publish(OrderPlaced(orderID: "paid"), id: "e-2")
            try await harness.publish(PaymentReceived(orderID: "paid"), id: "e-3")  // cancels its timer
            #expect(try await eventually { harness.observed.count == 3 })
        }
        // A new node on the same file: the stored deadline fires when the clock reaches it.
        let restarted = try harness.makeNode()
        try await withRunningNode(restarted, transport: harness.transport) {
            harness.clock.advance(by: .seconds(59))
            try await waitUntilIdle(restarted, transport: harness.transport, clock: harness.clock)
            #expect(harness.observed.count == 3, "not due yet")
            harness.clock.advance(by: .seconds(2))
            #expect(try await eventually { harness.observed.count == 4 })
            try await waitUntilIdle(restarted, transport: harness.transport, clock: harness.clock)
        }
        #expect(types(harness.observed).filter { $0 == "orders.VoidOrder.v1" }.count == 1)
        #expect(harness.observed.last?.envelope.correlationID == "slow")
        let summaries = try await restarted.store.read { try $0.instances(of: "order-process") }
        #expect(
            Dictionary(uniqueKeysWithValues: summaries.map { ($0.instanceID, $0.lifecycle) }) == [
                "slow": .failed, "paid": .running,
            ]
        )
    }

    @Test func aFailingTimerIsRetriedAloneThenDeadLetteredAndCanBeReplayed() async throws {
        let failures = FailureBudget()
        failures.failTimer(of: "poisoned", times: 3)  // every attempt the node makes (3), not the replay
        let harness = try NodeHarness(failures: failures)
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let metrics = TestMetrics()
        let node = try harness.makeNode(metrics: metrics)
        func voided() -> [String?] {
            harness.observed.filter { $0.envelope.messageType == VoidOrder.messageType }.map(\.envelope.correlationID)
        }
        try await withRunningNode(node, transport: harness.transport) {
            // The poisoned timer is due first, so it heads every batch of due timers.
            try await harness.publish(OrderPlaced(orderID: "poisoned"), id: "e-0")
            #expect(try await eventually { harness.observed.count == 1 })
            harness.clock.advance(by: .seconds(1))
            for index in 1...5 { try await harness.publish(OrderPlaced(orderID: "o-\(index)"), id: "e-\(index)") }
            #expect(try await eventually { harness.observed.count == 6 })

            harness.clock.advance(by: .seconds(60))
            #expect(try await eventually { voided().count == 5 }, "the other timers fire: \(voided())")
            #expect(!voided().contains("poisoned"))
            let isolated = {
                metrics.counterTotal(label: NodeMetric.batchRetries, dimensions: [("reason", "isolation")])
            }
            #expect(isolated() == 1, "the round ran without savepoints, then again with them")

            // Its retries are due in business time; the clock moves until the last one has failed.
            let dead = try await eventually {
                harness.clock.advance(by: .seconds(1))
                return try await node.store.read { try $0.deadLetters() }.count == 1
            }
            #expect(dead, "the timer was dead-lettered after its attempts")
            let letter = try #require(try await node.store.read { try $0.deadLetters() }.first)
            #expect(letter.messageType == DueTimer.deadLetterType && letter.handler == "order-process")
            #expect(letter.attempts == 3 && letter.reason == "payment gateway unavailable")
            #expect(isolated() == 3, "each failed attempt ran once without savepoints, once with")
            #expect(String(decoding: letter.body, as: UTF8.self).contains(#""instance_id":"poisoned""#))
            let parked = try await node.store.read { try $0.parkedTimers() }
            #expect(parked.map(\.instanceID) == ["poisoned"] && parked.first?.attempts == 3)
            #expect(
                try await eventually {
                    harness.observed.contains {
                        $0.exchange == Routing.deadLetterExchange && $0.envelope.messageType == DueTimer.deadLetterType
                    }
                },
                "the dead letter went to the dead-letter exchange too"
            )

            // The handler works again: the replay fires the timer once more.
            try await node.replayDeadLetter(id: letter.id)
            #expect(try await eventually { voided().count == 6 })
            #expect(try await node.store.read { try $0.parkedTimers() }.isEmpty)
            #expect(try await node.store.read { try $0.deadLetters() }.isEmpty, "a replayed letter is no longer open")
        }
        #expect(voided().filter { $0 == "poisoned" }.count == 1)
        let lifecycle = try await node.store.read { try $0.instances(of: "order-process") }
        #expect(lifecycle.allSatisfy { $0.lifecycle == .failed }, "every payment timed out once")
    }

    @Test func aNodeRefusesToStartWhenAHandlerTakesAMessageNothingDecodes() async throws {
        /// A hand-written handler bound to a message type it does not declare.
        struct Forgetful: NodeHandler {
            var name: String { "forgetful" }
            var messageTypes: [any Message.Type] { [OrderPlaced.self] }
            var bindings: [Topology.Binding] {
                [.init(queue: "", exchange: Routing.eventExchange, bindingKey: "orders.OrderRefunded")]
            }
            func handles(_ envelope: Envelope) -> Bool { true }
            func handle(_ message: any Message, envelope: Envelope, in work: UnitOfWork, now: Date, logger: Logger) {}
        }
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        let node = Node(
            configuration: Node.Configuration(name: "forgetful"),
            store: try SQLiteStore(path: harness.directory.appendingPathComponent("node.sqlite").path),
            transport: harness.transport,
            handlers: [Forgetful()],
            logger: Logger(label: "node-test")
        )
        await #expect(
            throws: NodeError(
                message:
                    "handler 'forgetful' is bound to 'orders.OrderRefunded' on baton.events, but no handler declares a message type of that name to decode it"
            )
        ) {
            try await node.run()
        }
    }

    @Test func badMessagesAreDeadLetteredWithTheirReasonAndTheNodeGoesOn() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let node = try harness.makeNode()
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publishRaw(body: "{not json", id: "bad-1", type: OrderPlaced.messageType)
            try await harness.publishRaw(body: #"{"order_id": 7}"#, id: "bad-2", type: OrderPlaced.messageType)
            try await harness.publishRaw(body: "{}", id: "bad-3", type: "orders.Unknown.v1")
            try await harness.publishRaw(body: "{}", id: nil, type: OrderPlaced.messageType)
            try await harness.publishRaw(
                body: #"{"order_id":"xml"}"#,
                id: "bad-4",
                type: OrderPlaced.messageType,
                contentType: "application/xml"
            )
            try await harness.publish(OrderPlaced(orderID: "good"), id: "good-1")
            #expect(try await eventually { harness.observed.count == 6 })
        }
        let letters = try await node.store.read { try $0.deadLetters() }
        let reasons = Dictionary(uniqueKeysWithValues: letters.map { ($0.messageID, $0.reason) })
        #expect(reasons["bad-1"]?.hasPrefix("undecodable:") == true)
        #expect(reasons["bad-2"] == "undecodable: order_id: expected String")
        #expect(reasons["bad-3"] == "no handler for message type 'orders.Unknown.v1'")
        #expect(reasons[""] == "the message has no message_id property")
        #expect(reasons["bad-4"] == "content type 'application/xml' is not application/json")
        let deadLetterMessages = harness.observed.filter { $0.exchange == Routing.deadLetterExchange }
        #expect(deadLetterMessages.count == 5)
        #expect(deadLetterMessages.allSatisfy { $0.envelope.headers[BatonHeader.deadLetterReason] != nil })
        #expect(
            deadLetterMessages.first { $0.envelope.messageID == "bad-2" }?.envelope.headers[
                BatonHeader.originalRoutingKey
            ] == "orders.OrderPlaced"
        )
        #expect(types(harness.observed).contains("payments.ChargeCard.v1"), "the good order went through")
    }

    @Test func aFailingHandlerIsRetriedThenDeadLetteredAndCanBeReplayed() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        // Another service listening to the same events: a replay must not reach it a second time.
        try await harness.transport.declare(
            Topology(
                queues: [.init("bystander")],
                bindings: [.init(queue: "bystander", exchange: Routing.eventExchange, bindingKey: "#")]
            )
        )
        let node = try harness.makeNode()
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publish(OrderPlaced(orderID: "flaky"), id: "e-1")
            try await harness.publish(OrderPlaced(orderID: "broken"), id: "e-2")
            try await harness.publish(PaymentReceived(orderID: "flaky", fails: 2), id: "e-3")  // third attempt works
            try await harness.publish(PaymentReceived(orderID: "broken", fails: 3), id: "e-4")  // all 3 fail
            try await harness.publish(OrderClosed(orderID: "broken"), id: "e-5")  // waits behind e-4
            // The retries are due in business time.
            #expect(try await harness.eventuallyAdvancingClock { harness.observed.count == 4 })
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
            let letters = try await node.store.read { try $0.deadLetters() }
            #expect(letters.count == 1)
            let letter = try #require(letters.first)
            #expect(letter.messageID == "e-4" && letter.attempts == 3 && letter.handler == "order-process")
            #expect(letter.reason == "payment gateway unavailable")
            let held = try await node.store.read { try $0.parkedMessages() }
            #expect(held.map(\.messageID) == ["e-4", "e-5"], "the closing event waits behind the dead letter")
            #expect(held.first?.deadLetterID == letter.id && held.last?.nextAttemptAt == nil)
            let broken = { try await node.store.read { try $0.transitions(of: "order-process", instance: "broken") } }
            #expect(try await broken().map(\.lifecycle) == [.started])

            // The gateway is back (the failure budget is spent): replaying handles it once, then what waited.
            try await node.replayDeadLetter(id: letter.id)
            #expect(try await eventually { harness.observed.count == 5 })
            #expect(try await eventually { try await broken().map(\.lifecycle) == [.started, .running, .completed] })
            #expect(try await node.store.read { try $0.deadLetters() }.isEmpty, "a replayed letter is no longer open")
            #expect(try await node.store.read { try $0.parkedMessages() }.isEmpty)
            let bystanderCopies = harness.transport.readyMessages("bystander").filter { $0.envelope.messageID == "e-4" }
            #expect(bystanderCopies.count == 1, "the replay went to the node alone, not to every subscriber")
        }
        let shipped = harness.observed.filter { $0.envelope.messageType == ShipOrder.messageType }
        #expect(shipped.map(\.envelope.correlationID) == ["flaky", "broken"])
    }

    @Test func aFailingMessageIsHeldWhileTheQueueFlowsAndItsInstanceWaitsBehindIt() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let node = try harness.makeNode(retry: RetryPolicy(maxAttempts: 3, initialDelay: .seconds(10)))
        func commands(_ order: String) -> [String] {
            harness.observed.filter { $0.envelope.correlationID == order }.map(\.envelope.messageType)
        }
        let stuck = { try await node.store.read { try $0.transitions(of: "order-process", instance: "stuck") } }
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publish(OrderPlaced(orderID: "stuck"), id: "e-1")
            try await harness.publish(OrderPlaced(orderID: "free"), id: "e-2")
            try await harness.publish(PaymentReceived(orderID: "stuck", fails: 2), id: "e-3")  // works the 3rd time
            try await harness.publish(OrderClosed(orderID: "stuck"), id: "e-4")  // must wait behind e-3
            try await harness.publish(PaymentReceived(orderID: "free"), id: "e-5")  // another instance

            // No retry is due before the clock moves: everything else was handled meanwhile.
            let paid = [ChargeCard.messageType, ShipOrder.messageType]
            #expect(try await eventually { commands("free") == paid })
            try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock)
            #expect(commands("stuck") == [ChargeCard.messageType])
            let held = try await node.store.read { try $0.parkedMessages() }
            #expect(held.map(\.messageID) == ["e-3", "e-4"])
            #expect(held.first?.attempts == 1 && held.first?.lastError == "payment gateway unavailable")
            #expect(held.last?.nextAttemptAt == nil, "the closing event waits, not retried on its own")
            #expect(try await stuck().map(\.lifecycle) == [.started])

            // The retries come due; the third attempt works, then the event that waited is handled.
            #expect(try await harness.eventuallyAdvancingClock { commands("stuck") == paid })
            #expect(try await eventually { try await stuck().map(\.lifecycle) == [.started, .running, .completed] })
            #expect(try await node.store.read { try $0.parkedMessages() }.isEmpty)
        }
    }

    @Test func aCommandNoQueueTakesYetStaysInTheOutboxUntilOneDoes() async throws {
        let harness = try NodeHarness()  // no observer: nothing consumes payments.ChargeCard yet
        defer { harness.removeFiles() }
        let node = try harness.makeNode()
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publish(OrderPlaced(orderID: "early"), id: "e-1")
            #expect(
                try await eventually {
                    try await node.store.read { try $0.transitions(of: "order-process", instance: "early").count } == 1
                }
            )
            try await Task.sleep(for: .milliseconds(200))
            #expect(try await node.store.read { try $0.pendingOutboxCount() } == 1, "the unroutable command was kept")
            // The payments service appears: its queue takes the command at the relay's next try.
            try await harness.transport.declare(
                Topology(
                    exchanges: Routing.exchanges,
                    queues: [.init("payments")],
                    bindings: [
                        .init(queue: "payments", exchange: Routing.commandExchange, bindingKey: ChargeCard.messageName)
                    ]
                )
            )
            #expect(try await eventually { harness.transport.readyCount("payments") == 1 })
            // The confirmed row's deletion rides in a later transaction (SentMarks): within its delay.
            #expect(try await eventually { try await node.store.read { try $0.pendingOutboxCount() } == 0 })
        }
    }

    @Test func commandsThatCannotBeRoutedNeverHoldUpTheOthers() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        // Only shipping exists: 600 ChargeCard commands (more than a relay batch) have nowhere to go.
        try await harness.transport.declare(
            Topology(
                exchanges: Routing.exchanges,
                queues: [.init("shipping")],
                bindings: [
                    .init(queue: "shipping", exchange: Routing.commandExchange, bindingKey: ShipOrder.messageName)
                ]
            )
        )
        let node = try harness.makeNode()
        try await withRunningNode(node, transport: harness.transport) {
            for index in 0..<600 {
                try await harness.publish(OrderPlaced(orderID: "o-\(index)"), id: "placed-\(index)")
            }
            #expect(try await eventually { try await node.store.read { try $0.pendingOutboxCount() } == 600 })
            try await harness.publish(PaymentReceived(orderID: "o-7"), id: "paid-7")
            #expect(
                try await eventually(timeout: .seconds(5)) { harness.transport.readyCount("shipping") == 1 },
                "queued behind 600 stuck rows, it still went out"
            )
            // Marked sent once confirmed, just after the delivery: the stuck rows are all that stays.
            #expect(try await eventually { try await node.store.read { try $0.pendingOutboxCount() } == 600 })
        }
    }

    @Test func retryDelaysDoubleUpToTheCap() {
        let policy = RetryPolicy(maxAttempts: 5, initialDelay: .milliseconds(100), maximumDelay: .milliseconds(300))
        #expect(
            (1...5).map { policy.delay(afterAttempt: $0) } == [
                .milliseconds(100), .milliseconds(200), .milliseconds(300), .milliseconds(300), nil,
            ]
        )
    }
}

@Suite struct NodeReadinessTests {
    @Test func aNodeIsReadyOnlyWhileItConsumes() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        let node = try harness.makeNode()
        #expect(node.readiness.problems == ["not consuming its queue"], "not running yet")
        let ready = try await withRunningNode(node, transport: harness.transport) {
            try await eventually { node.readiness.isReady }
        }
        #expect(ready, "consuming")
        #expect(node.readiness.problems == ["not consuming its queue"], "stopped")
    }
}

/// The wall clock stepped backwards and forwards under a running node (NTP, an operator, a VM resumed): a
/// timer fires once, when business time reaches it, whatever the clock did before — never twice, never lost.
@Suite struct ClockStepTests {
    /// The deadline loop sleeps until the earliest stored timer and is woken only by a batch that stores an
    /// earlier one: here a payment schedules a reminder 5 s out while the loop waits for a timeout 60 s out,
    /// and the reminder fires when due, not when the loop would have woken.
    @Test func aTimerEarlierThanTheOneTheLoopWaitsForFiresWhenDue() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let process = ProcessManager<OrderProcess>(name: "order-process", listensTo: ["orders", "payments"]) { pm in
            pm.start(on: OrderPlaced.self, correlation: .field(\.orderID)) { event, process in
                process.state.orderID = event.orderID
                process.schedule("payment-timeout", after: .seconds(60))
            }
            pm.on(PaymentReceived.self, correlation: .field(\.orderID)) { _, process in
                process.schedule("reminder", after: .seconds(5))
            }
            pm.onTimer("payment-timeout") { process in process.send(VoidOrder(orderID: process.state.orderID)) }
            pm.onTimer("reminder") { process in process.send(ShipOrder(orderID: process.state.orderID)) }
        }
        let node = try harness.makeNode(process: process)
        func idle() async throws { try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock) }
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publish(OrderPlaced(orderID: "o-1"), id: "placed-1")
            try await idle()
            let sleeping = try await eventually {
                let wakesAt = node.deadlineLoopWakesAt.withLock { $0 }
                return wakesAt > harness.clock.now() && wakesAt < .distantFuture
            }
            #expect(sleeping, "the loop sleeps until the timeout")
            try await harness.publish(PaymentReceived(orderID: "o-1"), id: "paid-1")
            try await idle()
            harness.clock.advance(by: .seconds(6))
            #expect(try await eventually { types(harness.observed).contains(ShipOrder.messageType) })
            #expect(!types(harness.observed).contains(VoidOrder.messageType), "the timeout is not due")
        }
    }

    @Test func timersFireOnceThroughClockStepsBothWays() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        try await harness.declareObserver()
        let node = try harness.makeNode()
        let start = harness.clock.now()
        func voided() -> [String] {
            harness.observed.filter { $0.envelope.messageType == VoidOrder.messageType }.compactMap {
                try? JSONDecoder.baton.decode(VoidOrder.self, from: $0.envelope.payload).orderID
            }
        }
        func idle() async throws { try await waitUntilIdle(node, transport: harness.transport, clock: harness.clock) }
        try await withRunningNode(node, transport: harness.transport) {
            try await harness.publish(OrderPlaced(orderID: "o-1"), id: "placed-1")  // its timeout: start + 60 s
            try await idle()
            harness.clock.step(to: start.addingTimeInterval(-3600))  // an hour back
            try await harness.publish(OrderPlaced(orderID: "o-2"), id: "placed-2")  // its timeout: start − 3540 s
            try await idle()
            harness.clock.step(to: start.addingTimeInterval(-3530))  // o-2's timeout is due, o-1's is not
            try await idle()
            #expect(try await eventually { voided() == ["o-2"] }, "o-2 fired on its own, earlier, business time")
            harness.clock.step(to: start.addingTimeInterval(30))  // forward again, not yet o-1's
            try await idle()
            #expect(voided() == ["o-2"])
            harness.clock.step(to: start.addingTimeInterval(7200))  // two hours forward at once
            try await idle()
            #expect(try await eventually { voided() == ["o-2", "o-1"] }, "o-1 fired once it was due")
            harness.clock.step(to: start)  // back past both deadlines, then over them again
            try await idle()
            harness.clock.step(to: start.addingTimeInterval(7300))
            try await idle()
        }
        #expect(voided() == ["o-2", "o-1"], "each timer fired exactly once")
        let timers = try await node.store.read { try $0.dueTimers(before: start.addingTimeInterval(86_400), limit: 10) }
        #expect(timers.isEmpty, "none left behind")
        let failed = try await node.store.read { try $0.instances(of: "order-process") }.filter {
            $0.lifecycle == .failed
        }
        #expect(failed.count == 2)
    }
}
