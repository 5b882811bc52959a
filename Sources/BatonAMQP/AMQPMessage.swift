/// The basic properties of an AMQP message.
public struct AMQPProperties: Sendable, Hashable {
    /// MIME type of the body, e.g. `application/json`.
    public var contentType: String?
    /// Encoding of the body, e.g. `gzip`.
    public var contentEncoding: String?
    /// Application headers.
    public var headers: [String: AMQPFieldValue]
    /// Whether the broker writes the message to disk (delivery mode 2). On by default.
    public var isPersistent: Bool
    /// Priority 0–9, for priority queues.
    public var priority: UInt8?
    /// The id of the conversation or process this message belongs to.
    public var correlationID: String?
    /// A queue to reply to.
    public var replyTo: String?
    /// Per-message TTL in milliseconds, as text.
    public var expiration: String?
    /// The unique id of this message; consumers de-duplicate on it.
    public var messageID: String?
    /// Seconds since the Unix epoch.
    public var timestamp: UInt64?
    /// The message's type name.
    public var type: String?
    /// The user that published it (the broker checks it against the connection's user when set).
    public var userID: String?
    /// The publishing application.
    public var appID: String?

    /// Creates properties; every message is persistent unless told otherwise.
    public init(
        contentType: String? = nil,
        contentEncoding: String? = nil,
        headers: [String: AMQPFieldValue] = [:],
        isPersistent: Bool = true,
        priority: UInt8? = nil,
        correlationID: String? = nil,
        replyTo: String? = nil,
        expiration: String? = nil,
        messageID: String? = nil,
        timestamp: UInt64? = nil,
        type: String? = nil,
        userID: String? = nil,
        appID: String? = nil
    ) {
        self.contentType = contentType
        self.contentEncoding = contentEncoding
        self.headers = headers
        self.isPersistent = isPersistent
        self.priority = priority
        self.correlationID = correlationID
        self.replyTo = replyTo
        self.expiration = expiration
        self.messageID = messageID
        self.timestamp = timestamp
        self.type = type
        self.userID = userID
        self.appID = appID
    }
}

/// A message to publish: where it goes, its body and its properties.
public struct AMQPOutgoingMessage: Sendable, Hashable {
    /// The exchange to publish to; `""` is the default exchange, which routes by queue name.
    public var exchange: String
    /// The routing key.
    public var routingKey: String
    /// The body bytes.
    public var body: [UInt8]
    /// The properties.
    public var properties: AMQPProperties
    /// Whether the publish fails with ``AMQPError/Code-swift.struct/unroutable`` when no queue takes it,
    /// instead of being dropped by the broker. Needs a ``AMQPProperties/messageID``.
    public var isMandatory: Bool

    /// Creates a message.
    /// - Parameters:
    ///   - exchange: The exchange name.
    ///   - routingKey: The routing key.
    ///   - body: The body.
    ///   - properties: The properties (persistent by default).
    ///   - isMandatory: Fail the publish if no queue takes it (requires a message id).
    public init(
        exchange: String,
        routingKey: String,
        body: [UInt8],
        properties: AMQPProperties = AMQPProperties(),
        isMandatory: Bool = false
    ) {
        precondition(!isMandatory || properties.messageID != nil, "a mandatory publish needs a message id")
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.properties = properties
        self.isMandatory = isMandatory
    }
}
