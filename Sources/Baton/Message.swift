import Foundation

/// A message of the published contract: a `Codable` value registered under a stable, versioned name.
///
/// The name is `<context>.<Name>` (e.g. `orders.OrderConfirmed`); it is the routing key on the wire and
/// never changes once published. A new, incompatible shape gets a new ``messageVersion``.
public protocol Message: Codable, Sendable {
    /// The stable name, `<context>.<Name>`.
    static var messageName: String { get }
    /// The schema version of this shape. 1 unless overridden.
    static var messageVersion: Int { get }
    /// How older versions become this one, one step each (see ``Upcaster``). None unless overridden.
    static var upcasters: [Upcaster] { get }
    /// What this message must stay in order with: messages of one key reach a partitioned service's same
    /// partition, where one consumer at a time handles them in the order they were committed. The aggregate or
    /// process instance the message is about (an order's id). `nil` unless overridden: then an event recorded
    /// to an aggregate is keyed by its stream, and any other message by its correlation id.
    var partitionKey: String? { get }
}

extension Message {
    /// Version 1 unless a type says otherwise.
    public static var messageVersion: Int { 1 }

    /// No upcasters unless a type says otherwise.
    public static var upcasters: [Upcaster] { [] }

    /// None unless a type says otherwise.
    public var partitionKey: String? { nil }

    /// The type name carried in the envelope: `<context>.<Name>.v<version>`.
    public static var messageType: String { "\(messageName).v\(messageVersion)" }

    /// The bounded context (category) the message belongs to: the part of the name before the first dot.
    public static var category: String { String(messageName.prefix { $0 != "." }) }
}

/// An instruction to one bounded context. Sent to exactly one handler.
public protocol Command: Message {}

/// A fact that happened. Published to anyone who listens.
public protocol Event: Message {}

/// A message with everything needed to route, de-duplicate, correlate and trace it.
public struct Envelope: Sendable, Hashable, Codable {
    /// Unique id; a repeated id has no second effect.
    public var messageID: String
    /// `<context>.<Name>.v<version>`.
    public var messageType: String
    /// The id of the conversation (process instance, order, …) this message belongs to.
    public var correlationID: String?
    /// The id of the message that caused this one.
    public var causationID: String?
    /// The stream this event was appended to, if it is an event of an aggregate or process.
    public var stream: String?
    /// The event's position in ``stream``.
    public var position: Int64?
    /// When the message was created.
    public var timestamp: Date
    /// Other headers, passed through unchanged (W3C `traceparent` among them).
    public var headers: [String: String]
    /// The JSON body.
    public var payload: Data

    /// Creates an envelope.
    public init(
        messageID: String,
        messageType: String,
        correlationID: String? = nil,
        causationID: String? = nil,
        stream: String? = nil,
        position: Int64? = nil,
        timestamp: Date,
        headers: [String: String] = [:],
        payload: Data
    ) {
        self.messageID = messageID
        self.messageType = messageType
        self.correlationID = correlationID
        self.causationID = causationID
        self.stream = stream
        self.position = position
        self.timestamp = timestamp
        self.headers = headers
        self.payload = payload
    }

    /// The name part of ``messageType`` (without `.v<version>`): the routing key on the wire.
    public var messageName: String { Self.messageName(of: messageType) }

    /// The name part of a message type: `orders.OrderConfirmed.v2` → `orders.OrderConfirmed`; a text without a
    /// version suffix (a timer's name) as it is. (Asked for every message a node routes or handles: a scan of the
    /// bytes from the end, not a string search.)
    static func messageName(of messageType: String) -> String {
        let bytes = messageType.utf8
        guard let dot = bytes.lastIndex(of: UInt8(ascii: ".")) else { return messageType }
        let version = bytes[bytes.index(after: dot)...]
        guard version.first == UInt8(ascii: "v"), version.count > 1,
            version.dropFirst().allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) })
        else { return messageType }
        return String(messageType[..<dot])
    }

    /// The bounded context the message belongs to.
    public var category: String { String(messageName.prefix { $0 != "." }) }

    /// What the message stays in order with (see ``Message/partitionKey``): its ``partitionKeyHeader``, else its
    /// correlation id, else its own id.
    public var partitionKey: String { headers[partitionKeyHeader] ?? correlationID ?? messageID }

    /// The trace id of its W3C `traceparent` header (`00-<trace id>-<parent id>-<flags>`: 32 lowercase hex
    /// digits, not all zero), if it has a valid one.
    public var traceID: String? {
        guard let header = headers[traceparentHeader] else { return nil }
        let parts = header.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[1].count == 32,
            parts[1].allSatisfy({ $0.isHexDigit && !$0.isUppercase }), parts[1].contains(where: { $0 != "0" })
        else { return nil }
        return String(parts[1])
    }
}

/// The header that carries a message's ``Envelope/partitionKey`` on the wire: a partitioned service's
/// consistent-hash exchange routes by it.
public let partitionKeyHeader = "x-baton-partition-key"

/// The W3C trace context header, passed from each message to the messages it causes.
public let traceparentHeader = "traceparent"
