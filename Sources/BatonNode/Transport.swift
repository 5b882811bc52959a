import Baton
import Foundation

/// A message as it arrives from a transport, before it is trusted: external producers may omit the id,
/// the type or send a body that is not JSON.
public struct IncomingMessage: Sendable {
    /// The exchange it was published to.
    public var exchange: String
    /// The routing key.
    public var routingKey: String
    /// The body.
    public var body: Data
    /// The `message_id` property, if present.
    public var messageID: String?
    /// The `type` property, if present (internal messages carry `<context>.<Name>.v<n>`).
    public var messageType: String?
    /// The `content_type` property.
    public var contentType: String?
    /// The `correlation_id` property.
    public var correlationID: String?
    /// The `timestamp` property.
    public var timestamp: Date?
    /// Headers, as text.
    public var headers: [String: String]
    /// Whether the transport delivered it before.
    public var isRedelivered: Bool
    /// No other copy of it can exist: a transaction wrote it into its queue once (``takeInTransaction``), as
    /// opposed to a producer that may publish a message twice. A node that takes such a delivery in its own
    /// transaction needs no inbox record for it.
    public var isWrittenOnce: Bool
    let settle: @Sendable (_ accept: Bool) -> Void
    /// For a transport whose queues are rows of a store: deletes the delivery from its queue inside `work`, a
    /// transaction of that same store, and returns `true` (the handling and the taking then commit together, and
    /// the acknowledgement has nothing left to do); `false` for a transaction of another store.
    public let takeInTransaction: (@Sendable (_ work: any UnitOfWork) throws -> Bool)?

    /// Creates an incoming message (transports and tests).
    public init(
        exchange: String,
        routingKey: String,
        body: Data,
        messageID: String?,
        messageType: String?,
        contentType: String?,
        correlationID: String?,
        timestamp: Date?,
        headers: [String: String],
        isRedelivered: Bool,
        isWrittenOnce: Bool = false,
        settle: @escaping @Sendable (_ accept: Bool) -> Void,
        takeInTransaction: (@Sendable (_ work: any UnitOfWork) throws -> Bool)? = nil
    ) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
        self.messageID = messageID
        self.messageType = messageType
        self.contentType = contentType
        self.correlationID = correlationID
        self.timestamp = timestamp
        self.headers = headers
        self.isRedelivered = isRedelivered
        self.isWrittenOnce = isWrittenOnce
        self.settle = settle
        self.takeInTransaction = takeInTransaction
    }

    /// A delivery of a message as a transport of this process holds it (in memory, in a store): the envelope's
    /// fields as the broker's properties and headers would carry them.
    public init(
        delivering message: OutgoingMessage,
        isRedelivered: Bool,
        isWrittenOnce: Bool = false,
        settle: @escaping @Sendable (_ accept: Bool) -> Void,
        takeInTransaction: (@Sendable (_ work: any UnitOfWork) throws -> Bool)? = nil
    ) {
        self.init(
            exchange: message.exchange,
            routingKey: message.routingKey,
            body: message.envelope.payload,
            messageID: message.envelope.messageID,
            messageType: message.envelope.messageType,
            contentType: message.contentType,
            correlationID: message.envelope.correlationID,
            timestamp: message.envelope.timestamp,
            headers: message.envelope.wireHeaders,
            isRedelivered: isRedelivered,
            isWrittenOnce: isWrittenOnce,
            settle: settle,
            takeInTransaction: takeInTransaction
        )
    }

    /// Confirms it was handled; the transport forgets it.
    public func acknowledge() { settle(true) }

    /// Gives it back to the transport for redelivery (used when the node stops mid-batch).
    public func requeue() { settle(false) }
}

/// A message to send: where, and what.
public struct OutgoingMessage: Sendable, Hashable {
    /// The exchange.
    public var exchange: String
    /// The routing key.
    public var routingKey: String
    /// The message.
    public var envelope: Envelope
    /// The `content_type` property: what Baton sends is JSON; tests send other types to see them refused.
    public var contentType: String

    /// Creates an outgoing message.
    public init(exchange: String, routingKey: String, envelope: Envelope, contentType: String = "application/json") {
        self.exchange = exchange
        self.routingKey = routingKey
        self.envelope = envelope
        self.contentType = contentType
    }
}

/// Deliveries of a queue (or of several), taken in batches: at least one (waiting for it), then whatever else is ready.
public protocol MessageSource: Sendable {
    /// Waits for a message and returns it with up to `maxCount - 1` more that are ready; `nil` when ended.
    func nextBatch(maxCount: Int) async throws -> [IncomingMessage]?
    /// Stops delivery; unsettled messages go back to the queue.
    func cancel() async
}

/// The transport port: how a node talks to other nodes. Adapters: the RabbitMQ broker (`AMQPTransport`, in
/// `BatonAMQPTransport`) and, for tests and a single-process mode, memory (`InProcessTransport`, in
/// `BatonTesting`). All have the same semantics, which `TransportConformance` checks: durable topic routing,
/// confirms, commands that no queue takes refused, prefetch, ack or requeue.
public protocol Transport: Sendable {
    /// Declares exchanges, queues and bindings.
    /// - Throws: ``TransportError`` (or the adapter's own error) when one conflicts with what exists.
    func declare(_ topology: Topology) async throws
    /// Checks that the exchanges and queues exist, declaring nothing (the broker's definitions own them).
    /// - Throws: ``TransportError`` naming what is missing (or the adapter's own error).
    func verify(_ topology: Topology) async throws
    /// Publishes messages and returns when each is confirmed or failed, one outcome per message in order. A
    /// command (on ``Routing/commandExchange``) that no queue takes is not confirmed.
    func publish(_ messages: [OutgoingMessage]) async -> [PublishOutcome]
    /// Starts consuming queues as one source (a service's partitions): each queue delivers in its own order,
    /// deliveries of different queues interleave. `prefetch` bounds the unsettled deliveries of each queue.
    func subscribe(queues: [String], prefetch: Int) async throws -> any MessageSource
}

extension Transport {
    /// Starts consuming a queue.
    public func subscribe(queue: String, prefetch: Int) async throws -> any MessageSource {
        try await subscribe(queues: [queue], prefetch: prefetch)
    }
}

/// Where Baton's messages go on the wire.
public enum Routing {
    /// Commands, routed by their name (`inventory.ReserveInventory`).
    public static let commandExchange = "baton.commands"
    /// Events, routed by their name (`orders.OrderCompleted`); anyone may bind.
    public static let eventExchange = "baton.events"
    /// Dead letters, routed by the name of the node that gave up on them.
    public static let deadLetterExchange = "baton.dead-letters"
    /// Messages addressed to one node, routed by its name: replayed dead letters and administration
    /// commands. Every node binds its queue here with its own name, so a replay reaches only the node that
    /// dead-lettered the message (never every subscriber of its original exchange), and a broker user can be
    /// limited to its own name with a topic permission.
    public static let nodeExchange = "baton.nodes"

    /// The exchanges every node declares.
    public static var exchanges: [Topology.Exchange] {
        [
            .init(commandExchange, kind: .topic), .init(eventExchange, kind: .topic),
            .init(deadLetterExchange, kind: .topic), .init(nodeExchange, kind: .topic),
        ]
    }

    /// The destination of an issued message.
    public static func destination(of message: IssuedMessage) -> (exchange: String, routingKey: String) {
        (message.kind == .command ? commandExchange : eventExchange, message.envelope.messageName)
    }
}

/// Who declares the exchanges, queues and bindings a node needs.
public enum TopologyOwnership: String, Sendable, CaseIterable {
    /// The node declares them when it starts and again after every reconnect; its broker user needs configure
    /// permission on them. For development, tests and brokers without pre-declared definitions.
    case node
    /// The broker's definitions declare them; the node only checks that its exchanges and queues exist
    /// (passive declares, which need no permission) and declares nothing, so its broker user needs no
    /// configure permission at all.
    case broker
}

extension UnitOfWork {
    /// Queues a dead letter to be sent back to the node that dead-lettered it, through
    /// ``Routing/nodeExchange``, carrying where it first came from; that node handles it like a new delivery
    /// from there. Other subscribers of the original exchange do not see it again.
    /// - Parameters:
    ///   - id: The dead letter.
    ///   - node: The node's name (its routing key on ``Routing/nodeExchange``).
    ///   - now: The business time of the replay.
    /// - Returns: `false` if there is no such dead letter or it was replayed already.
    @discardableResult
    public func replayDeadLetter(id: Int64, to node: String, at now: Date) throws -> Bool {
        try replayDeadLetter(id: id, at: now) { letter in
            (
                Routing.nodeExchange, node,
                [BatonHeader.originalExchange: letter.exchange, BatonHeader.originalRoutingKey: letter.routingKey]
            )
        }
    }
}

/// Header names the node writes on messages and dead letters.
public enum BatonHeader {
    /// The id of the message that caused this one.
    public static let causationID = "x-baton-causation-id"
    /// The stream an event was appended to (e.g. `order-ord-1a2b…`).
    public static let stream = "x-baton-stream"
    /// The event's position in its stream, from 1.
    public static let position = "x-baton-position"
    /// On a dead letter: why it was dead-lettered (the error text or the edge check that refused it).
    public static let deadLetterReason = "x-baton-dead-letter-reason"
    /// On a dead letter: the handler that failed, or the stage that refused it (`edge`, `decode`).
    public static let deadLetterHandler = "x-baton-dead-letter-handler"
    /// On a dead letter: how many times handling was attempted.
    public static let deadLetterAttempts = "x-baton-dead-letter-attempts"
    /// On a dead letter: the exchange it was first published to.
    public static let originalExchange = "x-baton-original-exchange"
    /// On a dead letter: the routing key it was first published with.
    public static let originalRoutingKey = "x-baton-original-routing-key"
    /// On a dead letter: when it was dead-lettered (ISO 8601).
    public static let deadLetteredAt = "x-baton-dead-lettered-at"
    /// On a command a process issued: its process manager, where a ``CommandFailed`` reply goes.
    public static let processManager = processManagerHeader
    /// What the message stays in order with (``Envelope/partitionKey``); a partitioned service's exchange
    /// hashes it.
    public static let partitionKey = partitionKeyHeader
    /// The message's position in its emitter's outbox: the emitter's commit order, which a receiver's order
    /// can be checked against (several replicas of a service share one outbox, hence one order).
    public static let sequence = "x-baton-sequence"
}

extension Envelope {
    /// The envelope's headers plus its causation id, stream, position and partition key as text headers: what a transport
    /// sends beside the properties (id, type, correlation id, timestamp); the node reads them back at its edge.
    public var wireHeaders: [String: String] {
        var headers = self.headers
        if let causationID { headers[BatonHeader.causationID] = causationID }
        if let stream { headers[BatonHeader.stream] = stream }
        if let position { headers[BatonHeader.position] = String(position) }
        headers[BatonHeader.partitionKey] = partitionKey
        return headers
    }
}
