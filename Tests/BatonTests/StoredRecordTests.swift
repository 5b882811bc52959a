import Baton
import Foundation
import Testing

@Suite struct StoredRecordTests {
    /// Every optional set, headers, and a payload that is not UTF-8 (the bytes are kept as they are).
    let fullEnvelope = Envelope(
        messageID: "msg-1",
        messageType: "orders.OrderPlaced.v2",
        correlationID: "ord-1",
        causationID: "chk-1",
        stream: "order-ord-1",
        position: 7,
        timestamp: Date(timeIntervalSince1970: 1_790_000_000.123_456),
        headers: ["traceparent": "00-abc-def-01", "x-ünïcode": "✓"],
        payload: Data([0x7B, 0x00, 0xFF, 0xC3, 0x28, 0x7D])
    )
    let bareEnvelope = Envelope(
        messageID: "m",
        messageType: "t",
        timestamp: Date(timeIntervalSince1970: 0),
        payload: Data()
    )

    var transitions: [ProcessTransition] {
        [
            ProcessTransition(
                version: 1,
                trigger: .event(fullEnvelope),
                at: Date(timeIntervalSince1970: 1_790_000_001.5),
                lifecycle: .started,
                issued: [
                    IssuedMessage(kind: .command, envelope: bareEnvelope),
                    IssuedMessage(kind: .event, envelope: fullEnvelope),
                ],
                timers: [
                    .schedule(name: "step-timeout", dueAt: Date(timeIntervalSince1970: 1_790_000_031.5)),
                    .cancel(name: "payment"),
                ],
                associations: ["tracking": "TRK-1", "payment": "PAY-9"],
                reason: nil
            ),
            ProcessTransition(
                version: Int64.max,
                trigger: .timer(name: "step-timeout", dueAt: Date(timeIntervalSince1970: -1)),
                at: Date(timeIntervalSince1970: 2),
                lifecycle: .compensating,
                issued: [],
                timers: [],
                associations: [:],
                reason: "the step timed out"
            ),
            ProcessTransition(
                version: 3,
                trigger: .abort(messageID: "abort-1", reason: "customer called"),
                at: Date(timeIntervalSince1970: 3),
                lifecycle: .failed,
                issued: [],
                timers: [.cancel(name: "step-timeout")],
                associations: [:],
                reason: ""
            ),
        ]
    }

    @Test func envelopesReadBackAsTheyWereWritten() throws {
        for envelope in [fullEnvelope, bareEnvelope] {
            #expect(try Envelope(storedRecord: envelope.storedRecord) == envelope)
        }
    }

    @Test func transitionsReadBackAsTheyWereWritten() throws {
        for transition in transitions {
            #expect(try ProcessTransition(storedRecord: transition.storedRecord) == transition)
        }
    }

    @Test func thePayloadIsStoredOnceAsItsOwnBytes() {
        let payload = Data(#"{"order_id":"ord-1","lines":[{"sku":"book-0001","quantity":2}]}"#.utf8)
        var envelope = fullEnvelope
        envelope.payload = payload
        let record = envelope.storedRecord
        #expect(record.firstRange(of: payload) != nil)
        #expect(record.count < (try! JSONEncoder.baton.encode(envelope)).count / 2 + payload.count)
    }

    @Test func recordsEarlierVersionsStoredAsJSONStillRead() throws {
        // A date JSON keeps exactly (it keeps milliseconds).
        var envelope = fullEnvelope
        envelope.timestamp = Date(timeIntervalSince1970: 1_790_000_000.5)
        envelope.payload = Data(#"{"order_id":"ord-1"}"#.utf8)
        var transition = transitions[0]
        transition.trigger = .event(envelope)
        transition.issued = [IssuedMessage(kind: .event, envelope: envelope)]
        #expect(try Envelope(storedRecord: try JSONEncoder.baton.encode(envelope)) == envelope)
        #expect(try ProcessTransition(storedRecord: try JSONEncoder.baton.encode(transition)) == transition)
    }

    struct Parcel: ProcessState {
        static let stateVersion = 2
        static let stateUpcasters = [
            Upcaster(from: 1) { json in json["destination"] = json.removeValue(forKey: "address") }
        ]
        var destination = ""
        var trackingNumber: String?
        var weights: [Double]?
    }
    struct ParcelV1: ProcessState {
        var address = ""
    }

    var instance: ProcessInstance<Parcel> {
        var instance = ProcessInstance<Parcel>(id: "ord-ü-1", definitionVersion: 3)
        instance.state = Parcel(destination: "1 Main St", trackingNumber: "TRK-1", weights: [0.5, 2])
        instance.lifecycle = .compensating
        instance.version = 4
        instance.compensations = [
            CompensationStep(messageType: "inventory.ReleaseInventory.v1", payload: Data([0x7B, 0xFF, 0x7D])),
            CompensationStep(messageType: "shipping.CancelShipment.v1", payload: Data(), partitionKey: "ord-1"),
        ]
        instance.timers = [
            "step-timeout": Date(timeIntervalSince1970: 1_790_000_031.25), "reminder": Date(timeIntervalSince1970: 0),
        ]
        instance.reason = "shipment failed"
        return instance
    }

    @Test func instancesReadBackAsTheyWereWritten() throws {
        for instance in [instance, ProcessInstance<Parcel>(id: "new")] {
            #expect(try ProcessInstance<Parcel>.decodeStored(try instance.storedRecord()) == instance)
        }
        // Earlier releases stored the whole instance as JSON; it still reads.
        var json = instance
        json.timers = ["step-timeout": Date(timeIntervalSince1970: 1_790_000_031.5)]  // JSON keeps milliseconds
        #expect(try ProcessInstance<Parcel>.decodeStored(try JSONEncoder.baton.encode(json)) == json)
    }

    @Test func aStoredInstanceOfAnOlderStateIsUpcastAndOneOfANewerWaits() throws {
        var old = ProcessInstance<ParcelV1>(id: "ord-1")
        old.state.address = "2 Side St"
        old.version = 2
        let upcast = try ProcessInstance<Parcel>.decodeStored(try old.storedRecord())
        #expect(upcast.state.destination == "2 Side St" && upcast.stateVersion == 2 && upcast.version == 2)
        #expect(throws: NewerStateError.self) {
            try ProcessInstance<ParcelV1>.decodeStored(try instance.storedRecord())
        }
    }

    @Test func anInstanceRecordReadsAsJSONForOperators() throws {
        let record = try instance.storedRecord()
        #expect(record.firstRange(of: Data([0x7B, 0xFF, 0x7D])) != nil, "a compensation's payload, as its own bytes")
        let object = try #require(
            try JSONSerialization.jsonObject(with: StoredRecord.instanceJSON(record)) as? [String: Any]
        )
        let state = try #require(object["state"] as? [String: Any])
        #expect(state["destination"] as? String == "1 Main St" && state["tracking_number"] as? String == "TRK-1")
        #expect(object["lifecycle"] as? String == "compensating" && object["version"] as? Int == 4)
        #expect(object["definition_version"] as? Int == 3 && object["state_version"] as? Int == 2)
        #expect((object["compensations"] as? [Any])?.count == 2 && object["reason"] as? String == "shipment failed")
        let earlier = try JSONEncoder.baton.encode(instance)
        #expect(try StoredRecord.instanceJSON(earlier) == earlier, "JSON stored by earlier releases, as it is")
        for length in 0..<record.count {
            #expect(throws: (any Error).self) { try ProcessInstance<Parcel>.decodeStored(record.prefix(length)) }
        }
    }

    @Test func aTruncatedRecordIsRefusedAtEveryLength() throws {
        let record = transitions[0].storedRecord
        for length in 0..<record.count {
            #expect(throws: (any Error).self, "\(length) of \(record.count) bytes") {
                try ProcessTransition(storedRecord: record.prefix(length))
            }
        }
        let envelope = fullEnvelope.storedRecord
        for length in 0..<envelope.count {
            #expect(throws: (any Error).self) { try Envelope(storedRecord: envelope.prefix(length)) }
        }
    }

    @Test func extraBytesAKindMismatchAndAnUnknownTagAreRefused() {
        #expect(throws: StoredRecord.FormatError.self) { try Envelope(storedRecord: bareEnvelope.storedRecord + [0]) }
        #expect(throws: StoredRecord.FormatError.self) {
            try ProcessTransition(storedRecord: bareEnvelope.storedRecord)
        }
        var record = transitions[1].storedRecord
        record[10] = 9  // the trigger's tag, after the marker, the kind and the 8-byte version
        #expect(throws: StoredRecord.FormatError.self) { try ProcessTransition(storedRecord: record) }
        #expect(throws: StoredRecord.FormatError.self) { try Envelope(storedRecord: Data([0x00, 0x01])) }
    }
}

@Suite struct TraceContextTests {
    func envelope(_ traceparent: String?) -> Envelope {
        Envelope(
            messageID: "m",
            messageType: "t.T.v1",
            timestamp: Date(),
            headers: traceparent.map { [traceparentHeader: $0] } ?? [:],
            payload: Data()
        )
    }

    @Test func theTraceIDIsReadFromAValidTraceparentOnly() {
        #expect(
            envelope("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").traceID
                == "4bf92f3577b34da6a3ce929d0e0e4736"
        )
        #expect(envelope(nil).traceID == nil)
        #expect(envelope("00-00000000000000000000000000000000-00f067aa0ba902b7-01").traceID == nil, "all zero")
        #expect(envelope("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").traceID == nil, "uppercase")
        #expect(envelope("00-4bf92f3577b34da6-00f067aa0ba902b7-01").traceID == nil, "too short")
        #expect(envelope("garbage").traceID == nil)
    }
}
