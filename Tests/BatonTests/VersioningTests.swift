import Baton
import BatonTesting
import Foundation
import Testing

/// v1 `{order_id}` → v2 adds `lines` → v3 renames `address` to `shipping_address`.
private struct ParcelBooked: Event, Equatable {
    static let messageName = "shipping.ParcelBooked"
    static let messageVersion = 3
    static let upcasters = [
        Upcaster(from: 1) { json in json["lines"] = [String]() },
        Upcaster(from: 2) { json in
            guard let address = json.removeValue(forKey: "address") else { throw MissingField(name: "address") }
            json["shipping_address"] = address
        },
    ]
    var orderID: String
    var shippingAddress: String
    var lines: [String]
}

private struct MissingField: Error, CustomStringConvertible {
    var name: String
    var description: String { "no '\(name)'" }
}

@Suite struct MessageVersioningTests {
    let registry = MessageRegistry(types: [ParcelBooked.self])

    func envelope(version: Int, _ json: String) -> Envelope {
        Envelope(
            messageID: "m-\(version)",
            messageType: "shipping.ParcelBooked.v\(version)",
            timestamp: .now,
            payload: Data(json.utf8)
        )
    }

    @Test func everyOlderVersionIsBroughtUpToTheCurrentOneStepByStep() throws {
        let expected = ParcelBooked(orderID: "o-1", shippingAddress: "12 St James's Sq", lines: [])
        let v1 = envelope(version: 1, #"{"order_id":"o-1","address":"12 St James's Sq"}"#)
        let v2 = envelope(version: 2, #"{"order_id":"o-1","address":"12 St James's Sq","lines":[]}"#)
        let v3 = envelope(version: 3, #"{"order_id":"o-1","shipping_address":"12 St James's Sq","lines":[]}"#)
        for old in [v1, v2, v3] {
            #expect(try registry.decode(old) as? ParcelBooked == expected, "v\(old.messageType.suffix(1))")
            let upcast = try registry.upcast(old)
            #expect(upcast.messageType == ParcelBooked.messageType, "routed and handled as the current type")
            #expect(upcast.messageID == old.messageID, "the same message: de-duplicated as one")
        }
    }

    @Test func aTypesNameIsItWithoutOnlyAVersionSuffix() {
        let names = [
            "orders.OrderConfirmed.v2": "orders.OrderConfirmed", "orders.vip.v12": "orders.vip",
            "step-timeout": "step-timeout", "orders.Thing.v": "orders.Thing.v", "orders.Thing.vx": "orders.Thing.vx",
            "orders.Thing.v1x": "orders.Thing.v1x", "orders.Thing.v-1": "orders.Thing.v-1", "v2": "v2",
        ]
        for (type, name) in names {
            let envelope = Envelope(messageID: "m", messageType: type, timestamp: Date(), payload: Data())
            #expect(envelope.messageName == name, "\(type)")
        }
    }

    @Test func aNewerVersionIsRecognisedAsSuchNotAsUnknown() {
        let v4 = envelope(version: 4, #"{"order_id":"o-1","shipping_address":"x","lines":[],"weight":2}"#)
        #expect(throws: MessageError.self) { try registry.upcast(v4) }
        do {
            _ = try registry.decode(v4)
        } catch {
            #expect(error.code == .newerVersion)
            #expect(error.reason.contains("newer than the v3 this node knows"))
        }
    }

    @Test func aBrokenOldMessageIsRefusedWithTheStepThatFailed() {
        let noAddress = envelope(version: 2, #"{"order_id":"o-1","lines":[]}"#)
        do {
            _ = try registry.decode(noAddress)
            Issue.record("decoded")
        } catch {
            #expect(error.code == .undecodable)
            #expect(error.reason == "the upcaster from v2 of shipping.ParcelBooked failed: no 'address'")
        }
        let notAnObject = envelope(version: 1, #"["o-1"]"#)
        #expect((try? registry.decode(notAnObject)) == nil)
    }

    @Test func aGapInTheChainIsNamed() {
        struct Gappy: Event {
            static let messageName = "test.Gappy"
            static let messageVersion = 3
            static let upcasters = [Upcaster(from: 2) { _ in }]
            var value: Int
        }
        let registry = MessageRegistry(types: [Gappy.self])
        let v1 = Envelope(
            messageID: "g",
            messageType: "test.Gappy.v1",
            timestamp: .now,
            payload: Data(#"{"value":1}"#.utf8)
        )
        do {
            _ = try registry.decode(v1)
            Issue.record("decoded")
        } catch {
            #expect(error.reason == "no upcaster from v1 of test.Gappy (the current version is v3)")
        }
    }

    @Test func aProcessHandlesAnEventRecordedUnderAnOlderVersionWhenItsHistoryIsReplayed() throws {
        struct Booking: ProcessState { var address = "" }
        let definition = ProcessManager<Booking>(name: "booking", listensTo: ["shipping", "orders"]) { pm in
            pm.start(on: ParcelBooked.self, correlation: .field(\.orderID)) { event, process in
                process.state.address = event.shippingAddress
            }
            pm.end(on: OrderCompleted.self, correlation: .field(\.orderID))
        }
        let engine = try ProcessEngine(definition)
        let recorded = envelope(version: 1, #"{"order_id":"o-1","address":"old street"}"#)
        let current = try registry.upcast(recorded)
        guard
            case .transition(let started, var transition) = try engine.handle(
                try registry.decode(current),
                envelope: current,
                instanceID: "o-1",
                instance: nil,
                now: .now
            )
        else {
            Issue.record("not started")
            return
        }
        transition.trigger = .event(recorded)  // as a store written by the old release holds it
        let replayed = try engine.replay(from: nil, transitions: [transition], instanceID: "o-1")
        #expect(replayed.state.address == "old street" && replayed == started)
    }
}

@Suite struct ReplayCheckTests {
    /// A history recorded by the sample fulfillment process: confirmed, reserved, shipped, then the timer gone.
    func recorded() throws -> [ProcessTransition] {
        var scenario = try ProcessScenario(fulfillment)
        try scenario.given(
            OrderConfirmed(orderID: "o-1", address: "12 St James's Sq"),
            InventoryReserved(orderID: "o-1")
        )
        try scenario.abort("o-1", reason: "operator")
        return scenario.transitions["o-1"] ?? []
    }

    /// The sample process with its InventoryReserved handler replaced.
    func changed(
        _ handle: @escaping @Sendable (InventoryReserved, inout ProcessContext<Fulfillment>) throws -> Void
    ) -> ProcessManager<Fulfillment> {
        ProcessManager<Fulfillment>(name: "fulfillment", listensTo: ["orders", "inventory", "shipping"]) { pm in
            pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { event, process in
                process.state.orderID = event.orderID
                process.state.address = event.address
                process.send(ReserveInventory(orderID: event.orderID))
                process.schedule("step-timeout", after: .seconds(90))  // a longer deadline: configuration
            }
            pm.on(InventoryReserved.self, correlation: .field(\.orderID), handle)
            pm.end(on: OrderCompleted.self, correlation: .field(\.orderID))
        }
    }

    @Test func theCodeThatRecordedAHistoryDecidesItTheSameWay() throws {
        let history = try recorded()
        #expect(history.count == 3)
        #expect(try ProcessEngine(fulfillment).verify(history, instanceID: "o-1") == nil)
        let sameDecisions = changed { event, process in
            process.onCompensation(ReleaseInventory(orderID: event.orderID))
            process.send(CreateShipment(orderID: event.orderID, address: process.state.address))
            process.schedule("step-timeout", after: .seconds(5))
        }
        #expect(try ProcessEngine(sameDecisions).verify(history, instanceID: "o-1") == nil, "delays are configuration")
    }

    /// A history recorded by a release that derived the issued ids from the hash alone (no time prefix) replays
    /// as the same decisions: the ids are a function of trigger and position, not a decision.
    @Test func aHistoryWithIdsDerivedTheEarlierWayDecidesTheSame() throws {
        var history = try recorded()
        for index in history.indices {
            for message in history[index].issued.indices {
                history[index].issued[message].envelope.messageID = MessageID.derived(from: "earlier", "\(message)")
            }
        }
        #expect(history.contains { !$0.issued.isEmpty })
        #expect(try ProcessEngine(fulfillment).verify(history, instanceID: "o-1") == nil)
    }

    @Test func aChangedDecisionIsReportedWhereItHappens() throws {
        let history = try recorded()
        let skipsTheShipment = changed { event, process in
            process.onCompensation(ReleaseInventory(orderID: event.orderID))
            process.schedule("step-timeout", after: .seconds(30))
        }
        let difference = try #require(try ProcessEngine(skipsTheShipment).verify(history, instanceID: "o-1"))
        #expect(difference.version == 2)
        #expect(difference.trigger.hasPrefix("event inventory.InventoryReserved"))
        #expect(
            difference.difference
                == "issued [\"shipping.CreateShipment.v1\"] then, now []"
        )

        let otherAddress = changed { event, process in
            process.onCompensation(ReleaseInventory(orderID: event.orderID))
            process.send(CreateShipment(orderID: event.orderID, address: "elsewhere"))
            process.schedule("step-timeout", after: .seconds(30))
        }
        let body = try #require(try ProcessEngine(otherAddress).verify(history, instanceID: "o-1"))
        #expect(body.difference.hasPrefix("the body of shipping.CreateShipment.v1 was"))

        let forgetsTheUndo = changed { event, process in
            process.send(CreateShipment(orderID: event.orderID, address: process.state.address))
            process.schedule("step-timeout", after: .seconds(30))
        }
        let abort = try #require(try ProcessEngine(forgetsTheUndo).verify(history, instanceID: "o-1"))
        #expect(abort.version == 3 && abort.trigger == "abort \"operator\" (scenario-3)", "found at the abort")
    }

    @Test func aBadHistoryIsAReportNotACrash() throws {
        var history = try recorded()
        let throwing = changed { _, _ in throw Rejection("no longer accepted") }
        let thrown = try #require(try ProcessEngine(throwing).verify(history, instanceID: "o-1"))
        #expect(thrown.version == 2 && thrown.difference == "cannot be replayed: no longer accepted")

        guard case .event(var envelope) = history[1].trigger else { return }
        envelope.payload = Data("{".utf8)
        history[1].trigger = .event(envelope)
        let broken = try #require(try ProcessEngine(fulfillment).verify(history, instanceID: "o-1"))
        #expect(broken.version == 2 && broken.difference.hasPrefix("cannot be replayed: undecodable"))

        let timerFirst = try ProcessEngine(fulfillment).verify(
            [
                ProcessTransition(
                    version: 1,
                    trigger: .timer(name: "t", dueAt: .now),
                    at: .now,
                    lifecycle: .started,
                    issued: [],
                    timers: [],
                    associations: [:],
                    reason: nil
                )
            ],
            instanceID: "o-2"
        )
        #expect(timerFirst?.difference == "cannot be replayed: timer before start in 'o-2'")
    }
}

private struct Rejection: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
