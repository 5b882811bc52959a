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
