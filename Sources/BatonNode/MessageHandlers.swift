import Baton
import Foundation
import Logging

/// An aggregate as loaded for a command: its state and the version the writer saw.
public struct Loaded<A: Aggregate>: Sendable {
    /// The aggregate id.
    public var id: String
    /// The state.
    public var state: A
    /// The number of events in its stream when loaded (0: it does not exist yet).
    public var version: Int64

    /// The stream name, `<category>-<id>`.
    public var stream: String { "\(A.category)-\(id)" }
}

/// What a command, event or subscriber handler sees and does; everything commits in the node's transaction.
public struct HandlerContext {
    /// The handler's name.
    public let handler: String
    /// The message being handled.
    public let envelope: Envelope
    /// The node's clock reading.
    public let now: Date
    /// The transaction, for queries of the service's own tables.
    public let work: any UnitOfWork
    var issued: [IssuedMessage] = []
    var dispatched: [Envelope] = []

    /// Loads an aggregate by replaying its stream.
    public func load<A: Aggregate>(_ type: A.Type, id: String) throws -> Loaded<A> {
        let registry = MessageRegistry(types: A.eventTypes)
        var state = A()
        let events = try work.readStream("\(A.category)-\(id)")
        for (messageType, payload) in events {
            let envelope = Envelope(messageID: "", messageType: messageType, timestamp: now, payload: payload)
            guard let event = try registry.decode(envelope) as? any Event else { continue }
            state.apply(event)
        }
        return Loaded(id: id, state: state, version: Int64(events.count))
    }

    /// Appends events to the aggregate's stream (checking that nobody else did since it was loaded), applies
    /// them to `aggregate`, and publishes them.
    /// - Throws: `ConcurrencyError` if the stream moved since the load (the node retries the message).
    public mutating func record<A: Aggregate>(_ events: [any Event], to aggregate: inout Loaded<A>) throws {
        let envelopes = events.enumerated().map { offset, event in
            var envelope = makeEnvelope(event, index: issued.count + offset)
            envelope.headers[partitionKeyHeader] = envelope.headers[partitionKeyHeader] ?? aggregate.stream
            envelope.stream = aggregate.stream
            envelope.position = aggregate.version + Int64(offset) + 1
            return envelope
        }
        try work.append(envelopes, to: aggregate.stream, expectedVersion: aggregate.version)
        for (event, envelope) in zip(events, envelopes) {
            aggregate.state.apply(event)
            issued.append(IssuedMessage(kind: .event, envelope: envelope))
        }
        aggregate.version += Int64(events.count)
    }

    /// Publishes an event that belongs to no aggregate stream.
    public mutating func publish<E: Event>(_ event: E) {
        issued.append(IssuedMessage(kind: .event, envelope: makeEnvelope(event)))
    }

    /// Sends a command.
    public mutating func send<C: Command>(_ command: C) {
        issued.append(
            IssuedMessage(kind: .command, envelope: makeEnvelope(command))
        )
    }

    /// Dispatches an internal command: a subscriber's translation of an external message. A command a handler
    /// of this node takes is handled in this same transaction (its effects commit with this message's, or
    /// none do); any other goes to its service through the broker. Its id derives from this message's id, so
    /// a repeated external message has no second effect.
    public mutating func dispatch<C: Command>(_ command: C) {
        dispatched.append(
            makeEnvelope(command, index: issued.count + dispatched.count)
        )
    }

    /// An envelope for the `index`-th message this handler issues for the current trigger.
    private func makeEnvelope(_ message: any Message, index: Int? = nil) -> Envelope {
        var headers: [String: String] = [:]
        if let traceparent = envelope.headers[traceparentHeader] { headers[traceparentHeader] = traceparent }
        if let key = message.partitionKey { headers[partitionKeyHeader] = key }
        return Envelope(
            messageID: MessageID.derived(
                at: envelope.timestamp,
                from: handler,
                envelope.messageID,
                String(index ?? issued.count)
            ),
            messageType: type(of: message).messageType,
            correlationID: envelope.correlationID ?? envelope.messageID,
            causationID: envelope.messageID,
            timestamp: now,
            headers: headers,
            payload: MessageRegistry.encode(message)
        )
    }
}

/// Hosts a handler of one message type in a node: a command handler, an event handler, or a subscriber
/// that translates an external message (from a producer in any language) into internal commands.
public struct MessageHandlerHost<M: Message>: NodeHandler {
    /// The handler's name (logs, dead letters, and the derivation of the ids of what it issues).
    public let name: String
    let binding: Topology.Binding
    let external: Topology.Exchange?
    let body: @Sendable (M, inout HandlerContext) throws -> Void

    /// Handles the command `type`, sent to `baton.commands` under its name.
    public static func command(
        _ type: M.Type,
        name: String,
        _ body: @escaping @Sendable (M, inout HandlerContext) throws -> Void
    ) -> Self where M: Command {
        Self(
            name: name,
            binding: .init(queue: "", exchange: Routing.commandExchange, bindingKey: M.messageName),
            external: nil,
            body: body
        )
    }

    /// Handles the event `type`, published on `baton.events` under its name.
    public static func event(
        _ type: M.Type,
        name: String,
        _ body: @escaping @Sendable (M, inout HandlerContext) throws -> Void
    ) -> Self where M: Event {
        Self(
            name: name,
            binding: .init(queue: "", exchange: Routing.eventExchange, bindingKey: M.messageName),
            external: nil,
            body: body
        )
    }

    /// Subscribes to an external contract: messages on `exchange` with `routingKey`, which carry no Baton
    /// type, are decoded (and validated) as `type` and handed to `body` to translate.
    public static func subscriber(
        _ type: M.Type,
        name: String,
        exchange: String,
        routingKey: String,
        _ body: @escaping @Sendable (M, inout HandlerContext) throws -> Void
    ) -> Self {
        Self(
            name: name,
            binding: .init(queue: "", exchange: exchange, bindingKey: routingKey),
            external: .init(exchange, kind: .topic),
            body: body
        )
    }

    public var messageTypes: [any Message.Type] { [M.self] }

    public var bindings: [Topology.Binding] { [binding] }

    public var exchanges: [Topology.Exchange] { external.map { [$0] } ?? [] }

    public func handles(_ envelope: Envelope) -> Bool {
        envelope.messageType == M.messageType
    }

    public func messageType(forExternal exchange: String, routingKey: String) -> String? {
        guard external != nil, exchange == binding.exchange, routingKey == binding.bindingKey else { return nil }
        return M.messageType
    }

    public func handle(
        _ message: any Message,
        envelope: Envelope,
        in work: any UnitOfWork,
        now: Date,
        logger: Logger
    ) throws {
        try handle(message, envelope: envelope, in: work, now: now, logger: logger) { command in
            try work.enqueue(command, exchange: Routing.commandExchange, routingKey: command.messageName)
        }
    }

    public func handle(
        _ message: any Message,
        envelope: Envelope,
        in work: any UnitOfWork,
        now: Date,
        logger: Logger,
        dispatch: CommandDispatch
    ) throws {
        var context = HandlerContext(handler: name, envelope: envelope, now: now, work: work)
        try body(message as! M, &context)
        for issued in context.issued {
            let destination = Routing.destination(of: issued)
            try work.enqueue(issued.envelope, exchange: destination.exchange, routingKey: destination.routingKey)
        }
        for command in context.dispatched { try dispatch(command) }
    }
}
