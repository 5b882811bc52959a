import Baton
import BatonAMQP
import Foundation

/// The ``Transport`` over a RabbitMQ broker: envelopes travel as persistent JSON messages with their id,
/// type, correlation id and timestamp in the AMQP properties and the rest in headers.
public struct AMQPTransport: Transport {
    /// The connection it uses.
    public let connection: AMQPConnection

    /// Wraps an open connection.
    public init(connection: AMQPConnection) {
        self.connection = connection
    }

    public func declare(_ topology: AMQPTopology) async throws {
        try await connection.declare(topology)
    }

    public func verify(_ topology: AMQPTopology) async throws {
        try await connection.verify(topology)
    }

    public func publish(_ messages: [OutgoingMessage]) async -> [Result<Void, any Error>] {
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
        return await connection.publish(contentsOf: outgoing).map { $0.mapError { $0 as any Error } }
    }

    public func subscribe(queue: String, prefetch: Int) async throws -> any MessageSource {
        Source(consumer: try await connection.consume(queue: queue, prefetch: UInt16(clamping: prefetch)))
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
                switch value {
                case .string(let text): headers[key] = text
                case .bytes(let bytes): headers[key] = String(decoding: bytes, as: UTF8.self)
                default: if let number = value.int64Value { headers[key] = String(number) }
                }
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
    }
}
