import Foundation

/// Baton's compact binary form of its own records: the envelopes of outbox rows, the transition records of
/// process instances and the instances themselves, as stores keep them.
///
/// These records are written for every handled message and read back rarely (a relay after a restart, an
/// operator's `show`, a replay check), so they are encoded once, without key conversion or a date closure, and
/// a payload's bytes are kept as they are (not base64 inside JSON). The first byte tells the format apart from
/// the JSON that earlier versions stored (which starts with `{`): both are read.
///
/// Layout: lengths and counts are unsigned LEB128 varints; a string is its UTF-8 length and bytes; bytes are
/// their length and themselves; a date is the bit pattern of its `timeIntervalSince1970` (8 bytes, little
/// endian); an optional is a presence byte (0 or 1) and the value; a dictionary is its count and its pairs in
/// key order.
public enum StoredRecord {
    /// The first byte of a record in this format.
    static let marker: UInt8 = 0xB1
    /// The record kinds, the second byte.
    enum Kind: UInt8 {
        case envelope = 1
        case transition = 2
        case instance = 3
    }

    /// A record that is neither this format nor the earlier JSON.
    public struct FormatError: Error, CustomStringConvertible {
        /// What is wrong.
        public var description: String
    }

    /// Reads a record of `kind` with `body`, or, for a record an earlier version stored as JSON (it starts
    /// with `{`), decodes that.
    static func read<Record: Decodable>(
        _ data: Data,
        _ kind: Kind,
        _ body: (inout RecordReader) throws -> Record
    ) throws -> Record {
        if data.first == UInt8(ascii: "{") { return try JSONDecoder.baton.decode(Record.self, from: data) }
        var reader = try RecordReader(data, kind)
        let record = try body(&reader)
        try reader.finish()
        return record
    }
}

extension Envelope {
    /// The envelope as a store keeps it (``StoredRecord``).
    public var storedRecord: Data {
        var writer = RecordWriter(.envelope, capacity: 96 + payload.count + messageID.utf8.count)
        writer.write(self)
        return writer.data
    }

    /// Reads an envelope a store kept, in this format or the earlier JSON.
    /// - Throws: ``StoredRecord/FormatError`` (or a decoding error for broken JSON).
    public init(storedRecord data: Data) throws {
        self = try StoredRecord.read(data, .envelope) { try $0.readEnvelope() }
    }
}

extension ProcessTransition {
    /// The transition record as a store keeps it (``StoredRecord``).
    public var storedRecord: Data {
        var capacity = 64
        if case .event(let envelope) = trigger { capacity += 96 + envelope.payload.count }
        for message in issued { capacity += 96 + message.envelope.payload.count }
        var writer = RecordWriter(.transition, capacity: capacity)
        writer.write(version)
        switch trigger {
        case .event(let envelope):
            writer.write(byte: 0)
            writer.write(envelope)
        case .timer(let name, let dueAt):
            writer.write(byte: 1)
            writer.write(name)
            writer.write(dueAt)
        case .abort(let messageID, let reason):
            writer.write(byte: 2)
            writer.write(messageID)
            writer.write(reason)
        }
        writer.write(at)
        writer.write(lifecycle.rawValue)
        writer.write(count: issued.count)
        for message in issued {
            writer.write(byte: message.kind == .command ? 0 : 1)
            writer.write(message.envelope)
        }
        writer.write(count: timers.count)
        for operation in timers {
            switch operation {
            case .schedule(let name, let dueAt):
                writer.write(byte: 0)
                writer.write(name)
                writer.write(dueAt)
            case .cancel(let name):
                writer.write(byte: 1)
                writer.write(name)
            }
        }
        writer.write(associations)
        writer.write(reason)
        return writer.data
    }

    /// Reads a transition record a store kept, in this format or the earlier JSON.
    /// - Throws: ``StoredRecord/FormatError`` (or a decoding error for broken JSON).
    public init(storedRecord data: Data) throws {
        self = try StoredRecord.read(data, .transition) { reader in try Self(reading: &reader) }
    }

    private init(reading reader: inout RecordReader) throws {
        let version = try reader.readInt64()
        let trigger: ProcessTrigger
        switch try reader.readByte() {
        case 0: trigger = .event(try reader.readEnvelope())
        case 1: trigger = .timer(name: try reader.readString(), dueAt: try reader.readDate())
        case 2: trigger = .abort(messageID: try reader.readString(), reason: try reader.readString())
        case let tag: throw StoredRecord.FormatError(description: "unknown trigger tag \(tag)")
        }
        let at = try reader.readDate()
        let lifecycleName = try reader.readString()
        guard let lifecycle = ProcessLifecycle(rawValue: lifecycleName) else {
            throw StoredRecord.FormatError(description: "unknown lifecycle '\(lifecycleName)'")
        }
        var issued: [IssuedMessage] = []
        for _ in 0..<(try reader.readCount()) {
            let kind: IssuedMessage.Kind = try reader.readByte() == 0 ? .command : .event
            issued.append(IssuedMessage(kind: kind, envelope: try reader.readEnvelope()))
        }
        var timers: [TimerOperation] = []
        for _ in 0..<(try reader.readCount()) {
            switch try reader.readByte() {
            case 0: timers.append(.schedule(name: try reader.readString(), dueAt: try reader.readDate()))
            case 1: timers.append(.cancel(name: try reader.readString()))
            case let tag: throw StoredRecord.FormatError(description: "unknown timer operation tag \(tag)")
            }
        }
        self.init(
            version: version,
            trigger: trigger,
            at: at,
            lifecycle: lifecycle,
            issued: issued,
            timers: timers,
            associations: try reader.readDictionary(),
            reason: try reader.readOptionalString()
        )
    }
}

/// The fields of a stored process instance, its state as JSON (only its process manager's `State` type reads
/// it): what ``ProcessInstance`` stores around the state. Encodes, without the state, as the JSON that earlier
/// releases stored.
struct StoredInstanceFields: Encodable {
    var id: String
    var stateVersion: Int
    /// The state as JSON (``JSONEncoder/baton``), which upcasters and the console read as it is.
    var state: Data
    var lifecycle: ProcessLifecycle
    var version: Int64
    var compensations: [CompensationStep]
    var timers: [String: Date]
    var reason: String?
    var definitionVersion: Int

    private enum CodingKeys: String, CodingKey {
        case id, stateVersion, lifecycle, version, compensations, timers, reason, definitionVersion
    }

    /// The record (``StoredRecord``, kind `instance`).
    var storedRecord: Data {
        var capacity = 64 + id.utf8.count + state.count
        for step in compensations { capacity += 32 + step.messageType.utf8.count + step.payload.count }
        var writer = RecordWriter(.instance, capacity: capacity)
        writer.write(id)
        writer.write(count: stateVersion)
        writer.write(state)
        writer.write(lifecycle.rawValue)
        writer.write(version)
        writer.write(count: compensations.count)
        for step in compensations {
            writer.write(step.messageType)
            writer.write(step.payload)
            writer.write(step.partitionKey)
        }
        writer.write(count: timers.count)
        for name in timers.keys.sorted() {
            writer.write(name)
            writer.write(timers[name]!)
        }
        writer.write(reason)
        writer.write(count: definitionVersion)
        return writer.data
    }
}

extension StoredInstanceFields {
    /// Reads a record of kind `instance`.
    init(storedRecord data: Data) throws {
        var reader = try RecordReader(data, .instance)
        id = try reader.readString()
        stateVersion = try reader.readCount()
        state = try reader.readData()
        let lifecycleName = try reader.readString()
        guard let lifecycle = ProcessLifecycle(rawValue: lifecycleName) else {
            throw StoredRecord.FormatError(description: "unknown lifecycle '\(lifecycleName)'")
        }
        self.lifecycle = lifecycle
        version = try reader.readInt64()
        compensations = []
        for _ in 0..<(try reader.readCount()) {
            compensations.append(
                CompensationStep(
                    messageType: try reader.readString(),
                    payload: try reader.readData(),
                    partitionKey: try reader.readOptionalString()
                )
            )
        }
        timers = [:]
        for _ in 0..<(try reader.readCount()) {
            let name = try reader.readString()
            timers[name] = try reader.readDate()
        }
        reason = try reader.readOptionalString()
        definitionVersion = try reader.readCount()
        try reader.finish()
    }
}

extension StoredRecord {
    /// A stored process instance as JSON, the shape earlier versions stored (snake_case keys, ISO 8601 dates,
    /// payloads in base64): for operators' views, which know no `State` type. A record in that JSON already
    /// is returned as it is.
    /// - Throws: ``FormatError`` for a record that is neither.
    public static func instanceJSON(_ data: Data) throws -> Data {
        if data.first == UInt8(ascii: "{") { return data }
        let fields = try StoredInstanceFields(storedRecord: data)
        guard var object = try JSONSerialization.jsonObject(with: WireJSON.encode(fields)) as? [String: Any]
        else { throw FormatError(description: "an instance that is not a JSON object") }
        object["state"] = try JSONSerialization.jsonObject(with: fields.state, options: .fragmentsAllowed)
        return try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    }
}

/// Appends the fields of a ``StoredRecord``.
struct RecordWriter {
    private(set) var bytes: [UInt8] = []

    init(_ kind: StoredRecord.Kind, capacity: Int) {
        bytes.reserveCapacity(capacity)
        bytes.append(StoredRecord.marker)
        bytes.append(kind.rawValue)
    }

    var data: Data { Data(bytes) }

    mutating func write(byte: UInt8) {
        bytes.append(byte)
    }

    mutating func write(count: Int) {
        var value = UInt64(count)
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    mutating func write(_ value: Int64) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func write(_ date: Date) {
        withUnsafeBytes(of: date.timeIntervalSince1970.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func write(_ string: String) {
        var string = string
        string.withUTF8 { utf8 in
            write(count: utf8.count)
            bytes.append(contentsOf: utf8)
        }
    }

    mutating func write(_ string: String?) {
        guard let string else { return write(byte: 0) }
        write(byte: 1)
        write(string)
    }

    mutating func write(_ data: Data) {
        write(count: data.count)
        bytes.append(contentsOf: data)
    }

    mutating func write(_ dictionary: [String: String]) {
        write(count: dictionary.count)
        for key in dictionary.keys.sorted() {
            write(key)
            write(dictionary[key]!)
        }
    }

    mutating func write(_ envelope: Envelope) {
        write(envelope.messageID)
        write(envelope.messageType)
        write(envelope.correlationID)
        write(envelope.causationID)
        write(envelope.stream)
        if let position = envelope.position {
            write(byte: 1)
            write(position)
        } else {
            write(byte: 0)
        }
        write(envelope.timestamp)
        write(envelope.headers)
        write(envelope.payload)
    }
}

/// Reads the fields of a ``StoredRecord`` in the order ``RecordWriter`` wrote them.
struct RecordReader {
    private let bytes: [UInt8]
    private var index = 2

    init(_ data: Data, _ kind: StoredRecord.Kind) throws {
        bytes = [UInt8](data)
        guard bytes.count >= 2, bytes[0] == StoredRecord.marker else {
            throw StoredRecord.FormatError(description: "not a stored record (first byte \(bytes.first ?? 0))")
        }
        guard bytes[1] == kind.rawValue else {
            throw StoredRecord.FormatError(description: "a record of kind \(bytes[1]), expected \(kind)")
        }
    }

    /// Throws unless every byte was read.
    func finish() throws {
        guard index == bytes.count else {
            throw StoredRecord.FormatError(description: "\(bytes.count - index) bytes after the record")
        }
    }

    private mutating func take(_ count: Int) throws -> ArraySlice<UInt8> {
        guard count >= 0, count <= bytes.count - index else {
            throw StoredRecord.FormatError(description: "the record ends early (at byte \(index) of \(bytes.count))")
        }
        defer { index += count }
        return bytes[index..<index + count]
    }

    mutating func readByte() throws -> UInt8 {
        try take(1).first!
    }

    mutating func readCount() throws -> Int {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let byte = try readByte()
            guard shift < 63 else { throw StoredRecord.FormatError(description: "a length over 63 bits") }
            value |= UInt64(byte & 0x7F) << shift
            if byte < 0x80 { break }
            shift += 7
        }
        guard value <= UInt64(bytes.count) else {
            throw StoredRecord.FormatError(description: "a length of \(value) in a record of \(bytes.count) bytes")
        }
        return Int(value)
    }

    private mutating func readUInt64() throws -> UInt64 {
        try take(8).reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    mutating func readInt64() throws -> Int64 {
        Int64(bitPattern: try readUInt64())
    }

    mutating func readDate() throws -> Date {
        Date(timeIntervalSince1970: Double(bitPattern: try readUInt64()))
    }

    mutating func readString() throws -> String {
        let utf8 = try take(try readCount())
        guard let string = utf8.withUnsafeBufferPointer(String.init(strictUTF8:)) else {
            throw StoredRecord.FormatError(description: "a string that is not UTF-8")
        }
        return string
    }

    mutating func readOptionalString() throws -> String? {
        try readPresence() ? try readString() : nil
    }

    private mutating func readPresence() throws -> Bool {
        switch try readByte() {
        case 0: return false
        case 1: return true
        case let byte: throw StoredRecord.FormatError(description: "a presence byte of \(byte)")
        }
    }

    mutating func readData() throws -> Data {
        Data(try take(try readCount()))
    }

    mutating func readDictionary() throws -> [String: String] {
        var dictionary: [String: String] = [:]
        for _ in 0..<(try readCount()) {
            let key = try readString()
            dictionary[key] = try readString()
        }
        return dictionary
    }

    mutating func readEnvelope() throws -> Envelope {
        Envelope(
            messageID: try readString(),
            messageType: try readString(),
            correlationID: try readOptionalString(),
            causationID: try readOptionalString(),
            stream: try readOptionalString(),
            position: try readPresence() ? try readInt64() : nil,
            timestamp: try readDate(),
            headers: try readDictionary(),
            payload: try readData()
        )
    }
}
