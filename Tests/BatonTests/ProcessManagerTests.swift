import Baton
import BatonTesting
import Foundation
import Testing

@Suite struct ProcessManagerTests {
    @Test func onlyTheStartEventStartsAnInstance() throws {
        var scenario = try ProcessScenario(fulfillment)
        let early = try scenario.when(InventoryReserved(orderID: "o-1"))
        #expect(early.skipReason == .unknownInstance("o-1"))
        #expect(scenario.instance("o-1") == nil)

        let started = try scenario.when(OrderConfirmed(orderID: "o-1", address: "12 St James's Sq"))
        #expect(started.lifecycle == .started)
        #expect(started.commands(ReserveInventory.self) == [ReserveInventory(orderID: "o-1")])
        #expect(scenario.instance("o-1")?.timers["step-timeout"] == scenario.clock.now().addingTimeInterval(30))

        let again = try scenario.when(OrderConfirmed(orderID: "o-1", address: "elsewhere"))
        #expect(again.skipReason == .alreadyStarted("o-1"))
        #expect(scenario.instance("o-1")?.state.address == "12 St James's Sq")
    }

    @Test func happyPathRunsToCompletionAndSkipsLaterEvents() throws {
        var scenario = try ProcessScenario(fulfillment)
        try scenario.given(OrderConfirmed(orderID: "o-1", address: "addr"))
        let reserved = try scenario.when(InventoryReserved(orderID: "o-1"))
        #expect(reserved.lifecycle == .running)
        #expect(reserved.commands(CreateShipment.self) == [CreateShipment(orderID: "o-1", address: "addr")])
        let shipped = try scenario.when(ShipmentCreated(orderID: "o-1", trackingNumber: "TRK-1"))
        #expect(shipped.commands(CompleteOrder.self) == [CompleteOrder(orderID: "o-1")])
        let completed = try scenario.when(OrderCompleted(orderID: "o-1"))
        #expect(completed.lifecycle == .completed)
        #expect(scenario.instance("o-1")?.timers.isEmpty == true, "closing cancels every timer")

        let late = try scenario.when(InventoryReserved(orderID: "o-1"))
        #expect(late.skipReason == .closed(instanceID: "o-1", lifecycle: .completed))
        #expect(try scenario.advance(by: .seconds(60)).isEmpty, "no timer of a closed instance fires")
    }

    @Test func mappedCorrelationFindsTheInstanceByAnAssociatedValue() throws {
        var scenario = try ProcessScenario(fulfillment)
        try scenario.given(
            OrderConfirmed(orderID: "o-7", address: "a"),
            InventoryReserved(orderID: "o-7"),
            ShipmentCreated(orderID: "o-7", trackingNumber: "TRK-77")
        )
        let delivered = try scenario.when(ParcelDelivered(trackingNumber: "TRK-77"))
        #expect(delivered.transition != nil)
        #expect(scenario.instance("o-7")?.state.delivered == true)
        let stranger = try scenario.when(ParcelDelivered(trackingNumber: "TRK-unknown"))
        #expect(stranger.transition == nil)
    }

    @Test func compensationIssuesUndoStepsLastRegisteredFirst() throws {
        var scenario = try ProcessScenario(fulfillment)
        try scenario.given(
            OrderConfirmed(orderID: "o-2", address: "a"),
            InventoryReserved(orderID: "o-2"),
            ShipmentCreated(orderID: "o-2", trackingNumber: "TRK-2")
        )
        let cancelled = try scenario.when(OrderCancelled(orderID: "o-2", reason: "customer cancelled"))
        #expect(cancelled.issuedTypes == ["shipping.CancelShipment.v1", "inventory.ReleaseInventory.v1"])
        #expect(cancelled.lifecycle == .failed)
        #expect(scenario.instance("o-2")?.reason == "customer cancelled")
    }

    @Test func aFailedStepCompensatesVisibly() throws {
        var scenario = try ProcessScenario(fulfillment)
        try scenario.given(OrderConfirmed(orderID: "o-3", address: ""), InventoryReserved(orderID: "o-3"))
        let failed = try scenario.when(ShipmentFailed(orderID: "o-3", reason: "blank address"))
        #expect(failed.lifecycle == .compensating)
        #expect(failed.issuedTypes == ["inventory.ReleaseInventory.v1", "orders.CancelOrder.v1"])
        let closed = try scenario.when(OrderCancelled(orderID: "o-3", reason: "blank address"))
        #expect(closed.lifecycle == .failed)
        #expect(closed.issued.isEmpty, "compensation is issued once")
    }

    @Test func aStepTimeoutCompensatesAndALateReplyGetsItsOwnCompensation() throws {
        var scenario = try ProcessScenario(fulfillment)
        try scenario.given(OrderConfirmed(orderID: "o-4", address: "a"), InventoryReserved(orderID: "o-4"))
        #expect(try scenario.advance(by: .seconds(29)).isEmpty)
        let fired = try scenario.advance(by: .seconds(2))
        #expect(fired.count == 1)
        #expect(fired[0].lifecycle == .compensating)
        #expect(fired[0].issuedTypes == ["inventory.ReleaseInventory.v1", "orders.CancelOrder.v1"])
        try scenario.given(OrderCancelled(orderID: "o-4", reason: "step timed out"))
        #expect(scenario.instance("o-4")?.lifecycle == .failed)

        let late = try scenario.when(ShipmentCreated(orderID: "o-4", trackingNumber: "TRK-late"))
        #expect(late.commands(CancelShipment.self) == [CancelShipment(orderID: "o-4")])
        #expect(late.lifecycle == .failed, "a late reply is compensated, the instance stays closed")
    }

    @Test func aCancelledOrRescheduledTimerNeverFiresItsOldDeadline() throws {
        var scenario = try ProcessScenario(fulfillment)
        try scenario.given(OrderConfirmed(orderID: "o-5", address: "a"))
        try scenario.advance(by: .seconds(20))
        try scenario.given(InventoryReserved(orderID: "o-5"))  // reschedules to now + 30 s
        #expect(try scenario.advance(by: .seconds(15)).isEmpty, "the first deadline (30 s after start) is gone")
        #expect(try scenario.advance(by: .seconds(15)).count == 1)
    }

    @Test func aTimerSurvivesEveryStorageRoundTripAtAnyClockReading() throws {
        // A clock reading with sub-millisecond digits, as a real clock gives.
        var scenario = try ProcessScenario(
            fulfillment,
            clock: TestClock(start: Date(timeIntervalSince1970: 1_767_225_600.123_456_7))
        )
        try scenario.given(OrderConfirmed(orderID: "o-9", address: "a"))
        let stored = try #require(scenario.instance("o-9"))
        // The instance as a snapshot (JSON) and the deadline as the timers table keeps it (integer ms).
        let reloaded = try JSONDecoder.baton.decode(
            ProcessInstance<Fulfillment>.self,
            from: JSONEncoder.baton.encode(stored)
        )
        let dueAt = Date(millisecondsSince1970: try #require(stored.timers["step-timeout"]).millisecondsSince1970)
        #expect(reloaded == stored, "business time round-trips exactly")
        guard
            case .transition(_, let fired) = try scenario.engine.fire(
                timer: "step-timeout",
                dueAt: dueAt,
                instance: reloaded,
                now: dueAt
            )
        else {
            Issue.record("the timer was taken for stale")
            return
        }
        #expect(fired.lifecycle == .compensating)
    }

    @Test func issuedIdsAreDeterministicAndCarryCausationAndTrace() throws {
        var first = try ProcessScenario(fulfillment)
        var second = try ProcessScenario(fulfillment)
        let trace = ["traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
        let a = try first.when(OrderConfirmed(orderID: "o-6", address: "a"), messageID: "m-1", headers: trace)
        let b = try second.when(OrderConfirmed(orderID: "o-6", address: "a"), messageID: "m-1", headers: trace)
        #expect(a.issued.map(\.envelope.messageID) == b.issued.map(\.envelope.messageID))
        let envelope = try #require(a.issued.first?.envelope)
        #expect(envelope.causationID == "m-1" && envelope.correlationID == "o-6")
        #expect(envelope.headers == trace.merging([processManagerHeader: "fulfillment"]) { $1 })
        var third = try ProcessScenario(fulfillment)
        let c = try third.when(OrderConfirmed(orderID: "o-6", address: "a"), messageID: "m-2")
        #expect(c.issued.first?.envelope.messageID != envelope.messageID)
    }

    /// What an instance issues sorts by when its trigger came about (the event's timestamp, the timer's due
    /// time), so that the inboxes taking these messages add their ids on a b-tree's last pages. With random ids
    /// (the hash alone) the later order's messages sort before the earlier's about half the time.
    @Test func issuedIdsSortByTheirTriggersTime() throws {
        let start = Date(timeIntervalSince1970: 1_767_225_600)
        var ids: [String] = []
        for second in 0..<20 {
            var scenario = try ProcessScenario(
                fulfillment,
                clock: TestClock(start: start.addingTimeInterval(Double(second)))
            )
            let step = try scenario.when(OrderConfirmed(orderID: "o-\(second)", address: "a"))
            ids += step.issued.map(\.envelope.messageID)
            let fired = try scenario.advance(by: .seconds(3600)).flatMap(\.issued).map(\.envelope.messageID)
            #expect(!fired.isEmpty, "the step timeout fired")
            #expect(fired.allSatisfy { $0 > ids.last! }, "a timer's messages sort by its due time")
        }
        #expect(ids == ids.sorted(), "\(ids)")
        let first = try #require(ids.first)
        #expect(first.prefix(12) == String(start.millisecondsSince1970, radix: 16).leftPadded(to: 12))
    }

    @Test func replayFromAnySnapshotGivesTheLiveState() throws {
        var scenario = try ProcessScenario(fulfillment)
        try scenario.given(
            OrderConfirmed(orderID: "o-8", address: "a"),
            InventoryReserved(orderID: "o-8"),
            ShipmentCreated(orderID: "o-8", trackingNumber: "TRK-8"),
            ParcelDelivered(trackingNumber: "TRK-8")
        )
        try scenario.advance(by: .seconds(31))
        let live = try #require(scenario.instance("o-8"))
        let transitions = scenario.transitions["o-8"]!
        #expect(transitions.count == 5)
        let fromScratch = try scenario.engine.replay(
            from: nil,
            transitions: transitions,
            instanceID: "o-8",
            registry: sampleRegistry()
        )
        #expect(fromScratch == live)
        // Snapshot after every prefix, then replay the rest.
        for cut in 1..<transitions.count {
            let snapshot = try scenario.engine.replay(
                from: nil,
                transitions: Array(transitions[..<cut]),
                instanceID: "o-8",
                registry: sampleRegistry()
            )
            let resumed = try scenario.engine.replay(
                from: snapshot,
                transitions: Array(transitions[cut...]),
                instanceID: "o-8",
                registry: sampleRegistry()
            )
            #expect(resumed == live)
        }
    }

    @Test func anyHandlerMayCloseItsInstanceWithoutDeclaringIt() throws {
        let eager = ProcessManager<Fulfillment>(name: "eager", listensTo: ["orders", "shipping"]) { pm in
            pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { event, process in
                if event.address.isEmpty { process.markAsFailed(reason: "no address") }
                process.schedule("give-up", after: .seconds(60))
            }
            pm.on(ShipmentCreated.self, correlation: .field(\.orderID)) { _, process in process.markAsComplete() }
            pm.onTimer("give-up") { process in process.markAsFailed(reason: "gave up") }
        }
        var scenario = try ProcessScenario(eager)
        try scenario.when(OrderConfirmed(orderID: "started", address: ""))
        #expect(scenario.instance("started")?.lifecycle == .failed, "a start handler closes")
        try scenario.when(OrderConfirmed(orderID: "shipped", address: "a"))
        try scenario.when(ShipmentCreated(orderID: "shipped", trackingNumber: "t"))
        #expect(scenario.instance("shipped")?.lifecycle == .completed, "an ordinary handler closes")
        try scenario.when(OrderConfirmed(orderID: "waited", address: "a"))
        _ = try scenario.advance(by: .seconds(61))
        #expect(scenario.instance("waited")?.lifecycle == .failed, "a timer handler closes")
        #expect(scenario.instance("waited")?.reason == "gave up")
    }

    @Test func anEventForAMissingInstanceIsIgnoredDeadLetteredOrAnsweredAsItsHandlerSays() throws {
        let policies = ProcessManager<Fulfillment>(name: "policies", listensTo: ["orders", "shipping"]) { pm in
            pm.association("tracking")
            pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { _, _ in }
            pm.on(ShipmentCreated.self, correlation: .field(\.orderID), whenMissing: .deadLetter) { _, _ in }
            pm.on(
                ShipmentFailed.self,
                correlation: .field(\.orderID),
                whenMissing: .handle { event, context in
                    context.send(CancelOrder(orderID: event.orderID, reason: event.reason))
                }
            ) { _, _ in }
            pm.on(
                ParcelDelivered.self,
                correlation: .mapped("tracking", by: \.trackingNumber),
                whenMissing: .deadLetter
            ) {
                _,
                _ in
            }
            pm.end(on: OrderCompleted.self, correlation: .field(\.orderID))
        }
        var scenario = try ProcessScenario(policies)

        let ignored = try scenario.when(OrderCompleted(orderID: "ghost"))
        #expect(ignored.skipReason == .unknownInstance("ghost") && !ignored.isRefused, "ignore is the default")

        let refused = try scenario.when(ShipmentCreated(orderID: "ghost", trackingNumber: "t"))
        #expect(refused.isRefused && refused.skipReason == .unknownInstance("ghost"))
        let unmapped = try scenario.when(ParcelDelivered(trackingNumber: "t-9"))
        #expect(unmapped.isRefused && unmapped.skipReason == .unknownInstance("tracking=t-9"))

        let answered = try scenario.when(ShipmentFailed(orderID: "ghost", reason: "r"), messageID: "failed-1")
        #expect(answered.commands(CancelOrder.self).map(\.orderID) == ["ghost"])
        #expect(answered.issued.first?.envelope.causationID == "failed-1")
        #expect(answered.lifecycle == nil)
        #expect(scenario.instance("ghost") == nil, "no policy creates an instance")
    }

    @Test func aFailureReplyReachesTheIssuingInstanceByTheFailedCommandsType() throws {
        let failing = ProcessManager<Fulfillment>(name: "fulfillment", listensTo: ["orders", "inventory"]) { pm in
            pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { event, process in
                process.send(ReserveInventory(orderID: event.orderID))
                process.schedule("step-timeout", after: .seconds(30))
            }
            pm.on(InventoryReserved.self, correlation: .field(\.orderID)) { event, process in
                process.onCompensation(ReleaseInventory(orderID: event.orderID))
                process.send(CreateShipment(orderID: event.orderID, address: "a"))
            }
            pm.onFailure(of: ReserveInventory.self) { failure, process in
                process.markAsFailed(reason: "inventory refused: \(failure.reason)")
            }
            pm.onFailure(of: CreateShipment.self) { failure, process in
                process.compensate(reason: failure.reason)
            }
            pm.end(on: OrderCompleted.self, correlation: .field(\.orderID))
        }
        #expect(failing.messageNames.contains("baton.CommandFailed.fulfillment"), "its own replies only")
        var scenario = try ProcessScenario(failing)
        let started = try scenario.when(OrderConfirmed(orderID: "o-1", address: "a"), messageID: "confirmed-1")
        let reserve = try #require(started.issued.first?.envelope)
        #expect(reserve.headers[processManagerHeader] == "fulfillment", "a command names where its failure goes")

        func failure(of type: String, id: String, processManager: String = "fulfillment") -> CommandFailed {
            CommandFailed(
                commandType: type,
                commandID: id,
                reason: "unknown SKU",
                refusedBy: "inventory/reserve-inventory",
                attempts: 1,
                processManager: processManager,
                instanceID: "o-1",
                causation: [id, "confirmed-1"]
            )
        }
        let elsewhere = try scenario.when(
            failure(of: ReserveInventory.messageType, id: reserve.messageID, processManager: "billing")
        )
        #expect(elsewhere.skipReason != nil, "another process manager's failure is not this one's")
        let unhandled = try scenario.when(failure(of: ReleaseInventory.messageType, id: "x"))
        #expect(unhandled.skipReason != nil, "a failure of a command without a failure handler is skipped")
        #expect(scenario.instance("o-1")?.lifecycle == .started)

        let refused = try scenario.when(failure(of: ReserveInventory.messageType, id: reserve.messageID))
        #expect(refused.lifecycle == .failed, "compensated at once, not after the 30 s step timeout")
        #expect(scenario.instance("o-1")?.reason == "inventory refused: unknown SKU")
        #expect(scenario.instance("o-1")?.timers.isEmpty == true)
        let late = try scenario.when(failure(of: CreateShipment.messageType, id: "y"))
        #expect(late.skipReason == .closed(instanceID: "o-1", lifecycle: .failed))
    }

    @Test func anAbortIssuesTheCompensationRunsTheAbortHandlerAndClosesTheInstanceAsFailed() throws {
        let abortable = ProcessManager<Fulfillment>(name: "fulfillment", listensTo: ["orders", "inventory"]) { pm in
            pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { event, process in
                process.state.orderID = event.orderID
                process.send(ReserveInventory(orderID: event.orderID))
                process.schedule("step-timeout", after: .seconds(30))
            }
            pm.on(InventoryReserved.self, correlation: .field(\.orderID)) { event, process in
                process.onCompensation(ReleaseInventory(orderID: event.orderID))
            }
            pm.onAbort { reason, process in
                process.send(CancelOrder(orderID: process.state.orderID, reason: reason))
            }
            pm.end(on: OrderCompleted.self, correlation: .field(\.orderID))
        }
        var scenario = try ProcessScenario(abortable)
        try scenario.given(OrderConfirmed(orderID: "o-1", address: "a"), InventoryReserved(orderID: "o-1"))
        let aborted = try scenario.abort("o-1", reason: "customer called")
        #expect(aborted.lifecycle == .failed)
        #expect(aborted.issuedTypes == ["inventory.ReleaseInventory.v1", "orders.CancelOrder.v1"])
        #expect(aborted.commands(CancelOrder.self).map(\.reason) == ["customer called"])
        #expect(scenario.instance("o-1")?.reason == "customer called")
        #expect(scenario.instance("o-1")?.timers.isEmpty == true, "its deadlines are gone")

        let again = try scenario.abort("o-1", reason: "twice")
        #expect(again.skipReason == .closed(instanceID: "o-1", lifecycle: .failed), "an abort closes once")
        #expect(throws: ScenarioError.self) { try scenario.abort("nobody", reason: "r") }
    }

    @Test func closingAClosedInstanceDoesNothing() throws {
        let late = ProcessManager<Fulfillment>(name: "late", listensTo: ["orders", "shipping"]) { pm in
            pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { _, _ in }
            pm.end(on: OrderCompleted.self, correlation: .field(\.orderID))
            pm.afterClose(ShipmentCreated.self, correlation: .field(\.orderID)) { event, process in
                process.markAsFailed(reason: "too late")
                process.send(CancelShipment(orderID: event.orderID))
            }
        }
        var scenario = try ProcessScenario(late)
        try scenario.given(OrderConfirmed(orderID: "o", address: "a"), OrderCompleted(orderID: "o"))
        let outcome = try scenario.when(ShipmentCreated(orderID: "o", trackingNumber: "t"))
        #expect(outcome.commands(CancelShipment.self).count == 1, "the late reply is still compensated")
        #expect(scenario.instance("o")?.lifecycle == .completed, "and the instance stays as it closed")
    }
}

@Suite struct CorrelationTests {
    struct LinePicked: Event {
        static let messageName = "warehouse.LinePicked"
        var orderID: String
        var sku: String
    }
    struct PickLine: Command {
        static let messageName = "warehouse.PickLine"
        var orderID: String
    }
    struct LineState: ProcessState {
        var picks = 0
    }

    @Test func compositeKeysJoinSeveralFields() throws {
        let picking = ProcessManager<LineState>(name: "picking", listensTo: ["warehouse"]) { pm in
            pm.start(on: LinePicked.self, correlation: .composite([{ $0.orderID }, { $0.sku }])) {
                _,
                process in process.state.picks += 1
            }
        }
        var scenario = try ProcessScenario(picking)
        try scenario.given(LinePicked(orderID: "o-1", sku: "book-1"), LinePicked(orderID: "o-1", sku: "book-2"))
        #expect(Set(scenario.instances.keys) == ["o-1|book-1", "o-1|book-2"])
    }

    @Test func correlationIDNamesTheInstance() throws {
        let byCorrelation = ProcessManager<LineState>(name: "by-correlation", listensTo: ["warehouse"]) { pm in
            pm.start(on: LinePicked.self, correlation: .correlationID) { _, process in
                process.state.picks += 1
            }
        }
        var scenario = try ProcessScenario(byCorrelation)
        let started = try scenario.when(LinePicked(orderID: "o-1", sku: "s"), correlationID: "conv-9")
        #expect(started.transition != nil && scenario.instance("conv-9") != nil)
        let anonymous = try scenario.when(LinePicked(orderID: "o-1", sku: "s"))
        #expect(anonymous.skipReason == .uncorrelated(messageType: "warehouse.LinePicked.v1"))
    }
}

extension String {
    /// The text with zeros before it, `count` characters in all.
    fileprivate func leftPadded(to count: Int) -> String {
        String(repeating: "0", count: Swift.max(0, count - self.count)) + self
    }
}
