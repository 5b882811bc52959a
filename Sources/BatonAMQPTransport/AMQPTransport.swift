import Baton
import BatonAMQP
import BatonNode
import Foundation

/// The transport port's adapter for a RabbitMQ broker: envelopes travel as persistent JSON messages with their
/// id, type, correlation id and timestamp in the AMQP properties and the rest in headers; a command is
/// published mandatory, so one that no queue takes is not confirmed.
public struct AMQPTransport: Transport {
    /// The connection it uses.
    public let connection: AMQPConnection

    /// Wraps an open connection.
    public init(connection: AMQPConnection) {
        self.connection = connection
    }

    public func declare(_ topology: Topology) async throws {
        try await connection.declare(AMQPTopology(topology))
    }

    public func verify(_ topology: Topology) async throws {
        try await connection.verify(AMQPTopology(topology))
    }

    public func publish(_ messages: [OutgoingMessage]) async -> [PublishOutcome] {
        let outgoing = messages.map { message in
            let envelope = message.envelope
            var headers: [String: AMQPFieldValue] = [:]
            for (key, value) in envelope.wireHeaders { headers[key] = .string(value) }
            return AMQPOutgoingMessage(
                exchange: message.exchange,
                routingKey: message.routingKey,
                body: [UInt8](envelope.payload),
                properties: AMQPProperties(
                    contentType: message.contentType,
                    headers: headers,
                    correlationID: envelope.correlationID,
                    messageID: envelope.messageID,
                    timestamp: UInt64(max(0, envelope.timestamp.timeIntervalSince1970)),
                    type: envelope.messageType,
                    appID: "baton"
                ),
                // A command must reach its service's queue; an event may have no listener.
                isMandatory: message.exchange == Routing.commandExchange
            )
        }
        return await connection.publish(contentsOf: outgoing).map { result in
            switch result {
            case .success: return .confirmed
            case .failure(let error): return Self.outcome(of: error)
            }
        }
    }

    /// What a publish error means for the message: the broker refused it itself by closing the channel (a
    /// permission, a missing exchange, a size limit); it may have arrived (the channel closed over it in
    /// flight); or it was not taken (a connection failure, a nack, no route for a mandatory command).
    static func outcome(of error: AMQPError) -> PublishOutcome {
        switch error.code {
        case .outcomeUnknown:
            return .unknown(error.description)
        case .accessRefused, .notFound, .preconditionFailed, .notAllowed, .brokerClosedChannel:
            return .refused(error.description)
        default:
            return .failed(error.description)
        }
    }

    public func subscribe(queues: [String], prefetch: Int) async throws -> any MessageSource {
        Source(consumer: try await connection.consume(queues: queues, prefetch: UInt16(clamping: prefetch)))
    }

    private struct Source: MessageSource {
        let consumer: AMQPConsumer

        func nextBatch(maxCount: Int) async throws -> [IncomingMessage]? {
            try await consumer.nextBatch(maxCount: maxCount)?.map(Self.incoming)
        }

        func cancel() async {
            await consumer.cancel()
        }

        static func incoming(_ delivery: AMQPDelivery) -> IncomingMessage {
            var headers: [String: String] = [:]
            for (key, value) in delivery.properties.headers {
                if let text = text(value) { headers[key] = text }
            }
            // The broker's record of its dead-letterings, the latest first: where the message was published.
            if let death = delivery.properties.headers["x-death"]?.arrayValue?.first?.tableValue {
                headers[BatonHeader.originalExchange] =
                    headers[BatonHeader.originalExchange] ?? death["exchange"].flatMap(text)
                headers[BatonHeader.originalRoutingKey] =
                    headers[BatonHeader.originalRoutingKey] ?? death["routing-keys"]?.arrayValue?.first.flatMap(text)
            }
            return IncomingMessage(
                exchange: delivery.exchange,
                routingKey: delivery.routingKey,
                body: Data(delivery.body),
                messageID: delivery.properties.messageID,
                messageType: delivery.properties.type,
                contentType: delivery.properties.contentType,
                correlationID: delivery.properties.correlationID,
                timestamp: delivery.properties.timestamp.map { Date(timeIntervalSince1970: Double($0)) },
                headers: headers,
                isRedelivered: delivery.isRedelivered,
                settle: { accept in accept ? delivery.ack() : delivery.nack(requeue: true) }
            )
        }

        /// A header value as text: a string, bytes as UTF-8, a number; `nil` for the rest (tables, arrays).
        static func text(_ value: AMQPFieldValue) -> String? {
            switch value {
            case .string(let text): return text
            case .bytes(let bytes): return String(decoding: bytes, as: UTF8.self)
            default: return value.int64Value.map { String($0) }
            }
        }
    }
}

extension AMQPTopology {
    /// The AMQP declarations of a node's topology: exchanges (a consistent-hash one with what it hashes),
    /// queues (type, single active consumer, delivery limit, at-least-once dead-lettering) and bindings.
    public init(_ topology: Topology) {
        self.init(
            exchanges: topology.exchanges.map {
                Exchange(
                    $0.name,
                    kind: Exchange.Kind(rawValue: $0.kind.rawValue)!,
                    isDurable: $0.isDurable,
                    arguments: Self.arguments(hashing: $0.hashedBy)
                )
            },
            queues: topology.queues.map(Self.queue),
            bindings: topology.bindings.map {
                Binding(queue: $0.queue, exchange: $0.exchange, bindingKey: $0.bindingKey)
            },
            exchangeBindings: topology.exchangeBindings.map {
                ExchangeBinding(source: $0.source, destination: $0.destination, bindingKey: $0.bindingKey)
            }
        )
    }

    private static func arguments(hashing source: Topology.Exchange.HashSource?) -> [String: AMQPFieldValue] {
        switch source {
        case .header(let name): ["hash-header": .string(name)]
        case .messageID: ["hash-property": .string("message_id")]
        case nil: [:]
        }
    }

    private static func queue(_ queue: Topology.Queue) -> Queue {
        var arguments: [String: AMQPFieldValue] = [:]
        if queue.hasSingleActiveConsumer { arguments["x-single-active-consumer"] = .bool(true) }
        if let limit = queue.deliveryLimit { arguments["x-delivery-limit"] = .int64(Int64(limit)) }
        if queue.kind == .quorum, queue.deadLetterExchange != nil {
            // The message leaves the queue only once the dead-letter queue confirmed it (RabbitMQ 3.10+, which
            // requires rejecting publishes over a length limit instead of dropping the oldest).
            arguments["x-dead-letter-strategy"] = .string("at-least-once")
            arguments["x-overflow"] = .string("reject-publish")
        }
        return Queue(
            queue.name,
            kind: queue.kind == .quorum ? .quorum : .classic,
            isDurable: queue.isDurable,
            deadLetterExchange: queue.deadLetterExchange,
            deadLetterRoutingKey: queue.deadLetterRoutingKey,
            arguments: arguments
        )
    }
}
