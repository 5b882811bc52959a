import Baton
import Foundation
import Testing

@Suite struct DefinitionValidationTests {
    private func problems(_ definition: ProcessManager<Fulfillment>) -> [String] {
        do {
            try definition.validate()
            return []
        } catch {
            return error.problems
        }
    }

    @Test func theSampleIsValid() {
        #expect(problems(fulfillment).isEmpty)
    }

    @Test func noStartHandler() {
        let definition = ProcessManager<Fulfillment>(name: "p", listensTo: ["orders"]) { pm in
            pm.end(on: OrderCompleted.self, correlation: .field(\.orderID))
        }
        #expect(problems(definition) == ["no start handler: declare one with start(on:correlation:)"])
    }

    @Test func aHandlerThatCannotCorrelate() {
        let definition = ProcessManager<Fulfillment>(name: "p", listensTo: ["orders", "shipping"]) { pm in
            pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { _, _ in }
            pm.on(ParcelDelivered.self, correlation: .mapped("tracking", by: \.trackingNumber)) { _, _ in }
            pm.end(on: OrderCompleted.self, correlation: .field(\.orderID))
        }
        #expect(problems(definition).count == 1)
        #expect(problems(definition).first?.contains("shipping.ParcelDelivered.v1 cannot correlate") == true)
    }

    @Test func aCategoryThatIsNotListenedTo() {
        let definition = ProcessManager<Fulfillment>(name: "p", listensTo: ["orders"]) { pm in
            pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { _, _ in }
            pm.on(InventoryReserved.self, correlation: .field(\.orderID)) { _, _ in }
            pm.end(on: OrderCompleted.self, correlation: .field(\.orderID))
        }
        #expect(
            problems(definition) == [
                "inventory.InventoryReserved.v1 is handled but its category 'inventory' is not listened to"
            ]
        )
    }

    @Test func everyProblemIsNamedAtOnceAndTheEngineRefusesTheDefinition() {
        let definition = ProcessManager<Fulfillment>(name: "broken", listensTo: []) { pm in
            pm.on(InventoryReserved.self, correlation: .field(\.orderID)) { _, _ in }
            pm.on(InventoryReserved.self, correlation: .field(\.orderID)) { _, _ in }
        }
        #expect(throws: DefinitionError.self) { try ProcessEngine(definition) }
        let found = problems(definition)
        #expect(found.count == 4, "\(found)")
        let text = "\(DefinitionError(processManager: "broken", problems: found))"
        #expect(text.hasPrefix("process manager 'broken' is invalid:"))
    }
}

@Suite struct LifecycleTests {
    @Test func closedInstancesNeverMoveAndCompensationNeverGoesBack() {
        for next in ProcessLifecycle.allCases {
            #expect(!ProcessLifecycle.completed.canMove(to: next))
            #expect(!ProcessLifecycle.failed.canMove(to: next))
        }
        #expect(ProcessLifecycle.started.canMove(to: .running))
        #expect(ProcessLifecycle.running.canMove(to: .compensating))
        #expect(ProcessLifecycle.compensating.canMove(to: .failed))
        #expect(ProcessLifecycle.compensating.canMove(to: .completed))
        #expect(!ProcessLifecycle.compensating.canMove(to: .running))
        #expect(!ProcessLifecycle.running.canMove(to: .started))
    }
}

@Suite struct MessageRegistryTests {
    @Test func unknownUndecodableAndOversizedMessagesHavePreciseReasons() throws {
        var registry = sampleRegistry()
        func envelope(_ type: String, _ json: String) -> Envelope {
            Envelope(messageID: "m", messageType: type, timestamp: .now, payload: Data(json.utf8))
        }
        #expect(throws: MessageError(code: .unknownType, reason: "no message type 'orders.Nope.v1' is registered")) {
            try registry.decode(envelope("orders.Nope.v1", "{}"))
        }
        #expect(throws: MessageError(code: .undecodable, reason: "address: required field is missing")) {
            try registry.decode(envelope(OrderConfirmed.messageType, #"{"order_id":"o"}"#))
        }
        #expect(throws: MessageError(code: .undecodable, reason: "order_id: expected String")) {
            try registry.decode(envelope(OrderConfirmed.messageType, #"{"order_id":5,"address":"a"}"#))
        }
        registry.maximumPayloadSize = 10
        #expect(throws: MessageError.self) {
            try registry.decode(envelope(OrderCompleted.messageType, #"{"order_id":"0123456789"}"#))
        }
        let decoded = try sampleRegistry().decode(envelope(OrderCompleted.messageType, #"{"order_id":"o-1"}"#))
        #expect((decoded as? OrderCompleted) == OrderCompleted(orderID: "o-1"))
    }

    @Test func snakeCaseKeysRoundTripWithAcronyms() throws {
        struct Sample: Codable, Equatable {
            var orderID: String
            var shippingAddress: String
            var callbackURL: String
            var sku: String
        }
        let sample = Sample(orderID: "o", shippingAddress: "a", callbackURL: "u", sku: "s")
        let json = try JSONEncoder.baton.encode(sample)
        #expect(
            String(decoding: json, as: UTF8.self)
                == #"{"callback_url":"u","order_id":"o","shipping_address":"a","sku":"s"}"#
        )
        #expect(try JSONDecoder.baton.decode(Sample.self, from: json) == sample)
    }

    @Test func datesAreWrittenWithMillisecondsAndReadBackExactly() throws {
        struct Stamp: Codable, Equatable { var at: Date }
        for milliseconds: Int64 in [1_767_225_630_123, 1_767_225_630_000, 1_767_225_630_999, -1_500] {
            let stamp = Stamp(at: Date(millisecondsSince1970: milliseconds))
            let json = try JSONEncoder.baton.encode(stamp)
            #expect(
                try JSONDecoder.baton.decode(Stamp.self, from: json) == stamp,
                "\(String(decoding: json, as: UTF8.self))"
            )
        }
        #expect(
            String(
                decoding: try JSONEncoder.baton.encode(Stamp(at: Date(millisecondsSince1970: 1_767_225_630_123))),
                as: UTF8.self
            ) == #"{"at":"2026-01-01T00:00:30.123Z"}"#
        )
        // Producers may send whole seconds.
        #expect(
            try JSONDecoder.baton.decode(Stamp.self, from: Data(#"{"at":"2026-01-01T00:00:30Z"}"#.utf8)).at
                .millisecondsSince1970 == 1_767_225_630_000
        )
    }

    @Test func envelopesKnowTheirNameAndCategory() {
        let envelope = Envelope(
            messageID: "m",
            messageType: "inventory.InventoryReserved.v2",
            timestamp: .now,
            payload: Data()
        )
        #expect(envelope.messageName == "inventory.InventoryReserved")
        #expect(envelope.category == "inventory")
    }

    @Test func derivedIdsAreStableAndDistinct() {
        #expect(MessageID.derived(from: "a", "b") == MessageID.derived(from: "a", "b"))
        #expect(MessageID.derived(from: "ab", "c") != MessageID.derived(from: "a", "bc"))
        #expect(MessageID.derived(from: "x").count == 32)
        let many = Set((0..<10_000).map { MessageID.derived(from: "pm", "instance", "trigger", String($0)) })
        #expect(many.count == 10_000)
        // Neighbouring inputs give unrelated ids: about half of the 128 bits differ.
        let a = MessageID.derived(from: "pm", "instance", "trigger", "0")
        let b = MessageID.derived(from: "pm", "instance", "trigger", "1")
        let differingBits = zip(a.split(every: 16), b.split(every: 16)).map {
            UInt64($0, radix: 16)! ^ UInt64($1, radix: 16)!
        }
        .map(\.nonzeroBitCount).reduce(0, +)
        #expect((40...88).contains(differingBits), "\(a) vs \(b): \(differingBits) bits differ")
    }

    /// Ids derived at a time: 32 hex digits, the first 12 the time's milliseconds, so they sort by it; stable;
    /// distinct within one millisecond.
    @Test func idsDerivedAtATimeSortByIt() {
        let now = Date(timeIntervalSince1970: 1_767_225_600.123)
        #expect(MessageID.derived(at: now, from: "a", "b") == MessageID.derived(at: now, from: "a", "b"))
        #expect(MessageID.derived(at: now, from: "ab", "c") != MessageID.derived(at: now, from: "a", "bc"))
        let id = MessageID.derived(at: now, from: "x")
        #expect(id.count == 32 && id.allSatisfy(\.isHexDigit))
        #expect(id.hasPrefix("019b76daa87b"), "1,767,225,600,123 ms: \(id)")
        let sameMillisecond = Set((0..<10_000).map { MessageID.derived(at: now, from: "pm", "i", String($0)) })
        #expect(sameMillisecond.count == 10_000)
        let times = (0..<1_000).map { _ in now.addingTimeInterval(.random(in: -86_400...86_400)) }
        let byID = times.map { (MessageID.derived(at: $0, from: "pm", "i", "\($0)"), $0) }.sorted { $0.0 < $1.0 }
        #expect(byID.map(\.1.millisecondsSince1970) == times.map(\.millisecondsSince1970).sorted())
        #expect(MessageID.derived(at: .distantPast, from: "x").hasPrefix("000000000000"))
        #expect(MessageID.derived(at: Date(timeIntervalSince1970: 1e15), from: "x").hasPrefix("ffffffffffff"))
    }
}

extension String {
    fileprivate func split(every length: Int) -> [String] {
        stride(from: 0, to: count, by: length).map { start in
            let from = index(startIndex, offsetBy: start)
            return String(self[from..<index(from, offsetBy: min(length, count - start))])
        }
    }
}

@Suite struct ProcessDiagramTests {
    struct Tracked: ProcessState {}

    static let definition = ProcessManager<Tracked>(name: "tracker", version: 3, listensTo: ["orders", "inventory"]) {
        pm in
        pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { _, _ in }
        pm.on(InventoryReserved.self, correlation: .field(\.orderID)) { _, _ in }
        pm.end(on: OrderCompleted.self, correlation: .field(\.orderID))
        pm.afterClose(ShipmentCreated.self, correlation: .field(\.orderID)) { _, _ in }
        pm.onTimer("reminder") { _ in }
    }

    @Test func theDefinitionIsDrawnFromWhatItReactsTo() {
        let outline = Self.definition.outline
        #expect(outline.name == "tracker" && outline.version == 3)
        #expect(
            outline.steps.map { "\($0.kind.rawValue) \($0.trigger)" } == [
                "start orders.OrderConfirmed.v1", "handle inventory.InventoryReserved.v1",
                "end orders.OrderCompleted.v1", "after-close shipping.ShipmentCreated.v1", "timer reminder",
            ]
        )
        #expect(
            ProcessDiagram.mermaid(outline) == """
                ---
                title: tracker (definition v3)
                ---
                stateDiagram-v2
                    state "open: started, running, compensating" as open
                    [*] --> open: orders.OrderConfirmed.v1
                    open --> open: inventory.InventoryReserved.v1
                    open --> completed: orders.OrderCompleted.v1
                    completed --> completed: late shipping.ShipmentCreated.v1
                    failed --> failed: late shipping.ShipmentCreated.v1
                    open --> open: timer reminder
                    open --> failed: a handler fails it, or an operator aborts it
                    completed --> [*]: purged
                    failed --> [*]: purged

                """
        )
        let dot = ProcessDiagram.dot(outline)
        #expect(dot.hasPrefix("digraph \"tracker\" {") && dot.hasSuffix("}\n"))
        #expect(dot.contains("start -> open [label=\"orders.OrderConfirmed.v1\"];"))
        #expect(dot.contains("failed -> end [label=\"purged\"];"))
    }

    /// An event as a transition records it.
    static func event<E: Event>(_ event: E, id: String) -> ProcessTrigger {
        .event(
            Envelope(
                messageID: id,
                messageType: E.messageType,
                timestamp: Date(timeIntervalSince1970: 0),
                payload: MessageRegistry.encode(event)
            )
        )
    }

    static func transition(
        _ version: Int64,
        _ trigger: ProcessTrigger,
        _ lifecycle: ProcessLifecycle
    )
        -> ProcessTransition
    {
        ProcessTransition(
            version: version,
            trigger: trigger,
            at: Date(timeIntervalSince1970: Double(version)),
            lifecycle: lifecycle,
            issued: [],
            timers: [],
            associations: [:],
            reason: nil
        )
    }

    @Test func anInstancesPathIsFollowedThroughItsDefinitionAndHighlighted() {
        let outline = Self.definition.outline
        let completed = ProcessPath(
            outline: outline,
            transitions: [
                Self.transition(1, Self.event(OrderConfirmed(orderID: "o-1", address: "a"), id: "m1"), .started),
                Self.transition(2, .timer(name: "reminder", dueAt: Date(timeIntervalSince1970: 2)), .running),
                Self.transition(3, Self.event(InventoryReserved(orderID: "o-1"), id: "m3"), .running),
                Self.transition(4, Self.event(OrderCompleted(orderID: "o-1"), id: "m4"), .completed),
                // Closed: a late ShipmentCreated takes the after-close step, not an open one.
                Self.transition(
                    5,
                    Self.event(ShipmentCreated(orderID: "o-1", trackingNumber: "T"), id: "m5"),
                    .completed
                ),
            ]
        )
        #expect(
            completed.visits == [
                "start:orders.OrderConfirmed.v1": [1], "timer:reminder": [2],
                "handle:inventory.InventoryReserved.v1": [3],
                "end:orders.OrderCompleted.v1": [4], "after-close:shipping.ShipmentCreated.v1": [5],
            ]
        )
        #expect(completed.lifecycles == [.started, .running, .completed] && completed.current == .completed)
        let svg = ProcessDiagram.svg(outline, path: completed)
        #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\"") && svg.hasSuffix("</svg>"))
        #expect(svg.contains(#"<g data-step="after-close:shipping.ShipmentCreated.v1" data-visited="5">"#))
        #expect(svg.contains(#"data-state="completed" data-current="true""#))
        for step in outline.steps { #expect(svg.contains(#"data-step="\#(step.id)""#), "\(step.id) drawn") }

        // A failure reply takes its command's step; an operator's abort its own.
        let failure = CommandFailed(
            commandType: "inventory.ReserveInventory.v1",
            commandID: "c-1",
            reason: "no such SKU",
            refusedBy: "inventory/handler",
            attempts: 1,
            processManager: "tracker",
            instanceID: "o-2",
            causation: ["c-1"]
        )
        let withFailures = ProcessManager<Tracked>(name: "tracker", listensTo: ["orders"]) { pm in
            pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { _, _ in }
            pm.onFailure(of: ReserveInventory.self) { _, _ in }
        }.outline
        let aborted = ProcessPath(
            outline: withFailures,
            transitions: [
                Self.transition(1, Self.event(OrderConfirmed(orderID: "o-2", address: "a"), id: "m1"), .started),
                Self.transition(2, Self.event(failure, id: "m2"), .compensating),
                Self.transition(3, .abort(messageID: "m3", reason: "<b>by hand</b>"), .failed),
            ]
        )
        #expect(
            aborted.visits == [
                "start:orders.OrderConfirmed.v1": [1], "failure:inventory.ReserveInventory.v1": [2],
                ProcessPath.abortStep: [3],
            ]
        )
        let drawn = ProcessDiagram.svg(withFailures, path: aborted)
        #expect(drawn.contains(#"<g data-step="abort" data-visited="3">"#))
        #expect(drawn.contains(#"data-state="failed" data-current="true""#))
        #expect(!ProcessDiagram.svg(outline).contains("data-visited"), "without a path nothing is highlighted")
        #expect(
            ProcessDiagram.escapeMarkup(#"<a href="x">'&'</a>"#)
                == "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        )
    }
}
