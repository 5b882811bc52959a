import Foundation
import Logging
import Synchronization

/// A connection to a RabbitMQ broker, owned by a dedicated thread.
///
/// All librabbitmq calls run on that thread, never on Swift's cooperative pool; this object only hands work
/// to it. The connection keeps itself up: when it is lost (socket error, missed heartbeats, the broker
/// closing it) it reconnects with backoff, declares the recorded topology again and resumes its consumers.
/// Publishes in flight when it is lost fail with ``AMQPError/Code-swift.struct/connectionLost``: their fate
/// is unknown, so publish them again (consumers de-duplicate by message id).
///
/// ```swift
/// let connection = try await AMQPConnection.connect(configuration: .init(url: url), logger: logger)
/// try await connection.declare(AMQPTopology(queues: [.init("work")]))
/// try await connection.publish(AMQPOutgoingMessage(exchange: "", routingKey: "work", body: Array("hi".utf8)))
/// for try await delivery in try await connection.consume(queue: "work", prefetch: 50) {
///     delivery.ack()
/// }
/// await connection.close()
/// ```
///
/// Close it with ``close()``; it must not be dropped while open.
public final class AMQPConnection: Sendable {
    /// The settings it was made with.
    public let configuration: Configuration
    private let mailbox: Mailbox
    private let status: ConnectionStatus
    private let nextConsumerChannel = Atomic<UInt16>(3)

    private init(configuration: Configuration, mailbox: Mailbox, status: ConnectionStatus) {
        self.configuration = configuration
        self.mailbox = mailbox
        self.status = status
    }

    deinit {
        assert(status.isClosed, "AMQPConnection to \(configuration) was not closed before deinit")
    }

    /// Connects to the broker, starting the connection's thread.
    /// - Parameters:
    ///   - configuration: Where and how to connect.
    ///   - logger: Where the connection logs (connects, losses, reconnects).
    /// - Returns: The open connection.
    /// - Throws: ``AMQPError`` if the first attempt fails: `.connectFailed` or `.timedOut` for an unreachable
    ///   broker, `.accessRefused` for bad credentials, `.notAllowed` for an unknown virtual host, `.tlsFailed`
    ///   for a certificate that does not verify. No retry happens for the first attempt.
    public static func connect(configuration: Configuration, logger: Logger) async throws -> AMQPConnection {
        let mailbox = try Mailbox()
        let status = ConnectionStatus()
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let thread = Thread {
                let loop = ConnectionLoop(
                    configuration: configuration,
                    logger: logger,
                    mailbox: mailbox,
                    status: status
                )
                loop.run(firstConnect: continuation)
            }
            thread.name = "baton-amqp \(configuration.connectionName)"
            thread.start()
        }
        return AMQPConnection(configuration: configuration, mailbox: mailbox, status: status)
    }

    /// Runs `body` with an open connection and closes it afterwards, also when `body` throws.
    /// - Parameters:
    ///   - configuration: Where and how to connect.
    ///   - logger: Where the connection logs.
    ///   - body: The work to do with the connection.
    /// - Returns: What `body` returns.
    /// - Throws: What ``connect(configuration:logger:)`` or `body` throws.
    public static func withConnection<Result: Sendable>(
        configuration: Configuration,
        logger: Logger,
        _ body: (AMQPConnection) async throws -> Result
    ) async throws -> Result {
        let connection = try await connect(configuration: configuration, logger: logger)
        do {
            let result = try await body(connection)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw error
        }
    }

    /// Whether the connection is up at this moment (it may be reconnecting).
    public var isConnected: Bool { status.isConnected }

    /// How many times the connection has been established, the first time included.
    public var connectionCount: Int { status.connectionCount }

    /// Declares exchanges, queues and bindings, and remembers them to declare again after a reconnect.
    /// - Parameter topology: What to declare.
    /// - Throws: ``AMQPError`` with the broker's reply, e.g. `.preconditionFailed` for a queue that exists
    ///   with other arguments, `.accessRefused` without configure permission.
    public func declare(_ topology: AMQPTopology) async throws {
        _ = try await perform(.declare(topology))
    }

    /// Checks that the exchanges and queues of a topology exist, declaring nothing (passive declares need no
    /// permission): for a service whose broker definitions own the topology. Bindings cannot be checked
    /// in AMQP 0-9-1 and are skipped. Nothing is recorded for a reconnect.
    /// - Parameter topology: What must exist.
    /// - Throws: ``AMQPError`` `.notFound` naming the first missing exchange or queue.
    public func verify(_ topology: AMQPTopology) async throws {
        _ = try await perform(.verify(topology))
    }

    /// Removes every ready message from a queue.
    /// - Parameter queue: The queue name.
    /// - Returns: How many messages were removed.
    /// - Throws: ``AMQPError`` (e.g. `.notFound`).
    @discardableResult
    public func purgeQueue(_ queue: String) async throws -> Int {
        Int(try await perform(.purgeQueue(queue)).messages)
    }

    /// Deletes a queue and the messages in it.
    /// - Parameter queue: The queue name.
    /// - Returns: How many messages were deleted with it.
    /// - Throws: ``AMQPError``.
    @discardableResult
    public func deleteQueue(_ queue: String) async throws -> Int {
        Int(try await perform(.deleteQueue(queue)).messages)
    }

    /// Removes the bindings of a topology (queue and exchange-to-exchange bindings; its exchanges and queues
    /// stay), also from what a reconnect declares again. Removing a binding that does not exist succeeds.
    /// - Parameter topology: The bindings to remove.
    /// - Throws: ``AMQPError`` (e.g. `.accessRefused` without the permissions binding needs).
    public func unbind(_ topology: AMQPTopology) async throws {
        _ = try await perform(.unbind(topology))
    }

    /// Deletes an exchange and its bindings.
    /// - Parameter exchange: The exchange name.
    /// - Throws: ``AMQPError``.
    public func deleteExchange(_ exchange: String) async throws {
        _ = try await perform(.deleteExchange(exchange))
    }

    /// Looks a queue up without changing it (a passive declare).
    /// - Parameter queue: The queue name.
    /// - Returns: Its ready messages and its consumers.
    /// - Throws: ``AMQPError`` `.notFound` if it does not exist.
    public func inspectQueue(_ queue: String) async throws -> (messages: Int, consumers: Int) {
        let counts = try await perform(.inspectQueue(queue))
        return (Int(counts.messages), Int(counts.consumers))
    }

    private func perform(_ operation: TopologyOperation) async throws -> QueueCounts {
        try await withCheckedThrowingContinuation { continuation in
            mailbox.send(.topology(operation, continuation))
        }
    }

    /// Publishes a message and waits until the broker confirms it (for a persistent message to a durable
    /// queue: until it is on disk).
    /// - Parameter message: The message.
    /// - Throws: ``AMQPError``: `.nacked` if the broker refused it, `.notFound` if the exchange does not exist,
    ///   `.connectionLost` if the connection broke first (publish it again), `.notConnected` while
    ///   reconnecting, `.closed` after ``close()``.
    public func publish(_ message: AMQPOutgoingMessage) async throws {
        try await publish(contentsOf: [message])[0].get()
    }

    /// Publishes several messages in one hand-over to the connection thread and waits for all their confirms.
    /// Messages are published in order; each has its own outcome.
    /// - Parameter messages: The messages; at least one.
    /// - Returns: One result per message, in order.
    public func publish(contentsOf messages: [AMQPOutgoingMessage]) async -> [Result<Void, AMQPError>] {
        guard !messages.isEmpty else { return [] }
        return await withCheckedContinuation { continuation in
            mailbox.send(.publish(messages, ConfirmSink(count: messages.count, continuation: continuation)))
        }
    }

    /// Starts consuming a queue with manual acknowledgement.
    /// - Parameters:
    ///   - queue: The queue name.
    ///   - prefetch: How many unsettled deliveries the broker may send at once (1–65535).
    /// - Returns: The deliveries.
    /// - Throws: ``AMQPError``, e.g. `.notFound` for a missing queue, `.accessRefused` without read permission.
    public func consume(queue: String, prefetch: UInt16) async throws -> AMQPConsumer {
        try await consume(queues: [queue], prefetch: prefetch)
    }

    /// Starts consuming several queues as one sequence, each with a consumer (and a channel) of its own: the
    /// partitions of a service, each delivering in its own order (deliveries of different queues interleave).
    /// - Parameters:
    ///   - queues: The queue names, at least one.
    ///   - prefetch: How many unsettled deliveries the broker may send at once, per queue (1–65535).
    /// - Returns: The deliveries of all of them.
    /// - Throws: ``AMQPError`` for the first queue that cannot be consumed (the others are cancelled).
    public func consume(queues: [String], prefetch: UInt16) async throws -> AMQPConsumer {
        precondition(!queues.isEmpty, "consume at least one queue")
        precondition(prefetch > 0, "prefetch must be at least 1: 0 would mean unbounded")
        let buffer = DeliveryBuffer()
        var channels: [UInt16] = []
        for queue in queues {
            let channel = nextConsumerChannel.add(1, ordering: .relaxed).oldValue
            precondition(channel < 2047, "too many consumers on one connection")
            let registration = ConsumerRegistration(queue: queue, prefetch: prefetch, channel: channel, buffer: buffer)
            do {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                    mailbox.send(.consume(registration, continuation))
                }
            } catch {
                await AMQPConsumer(queues: queues, channels: channels, buffer: buffer, mailbox: mailbox).cancel()
                throw error
            }
            channels.append(channel)
        }
        return AMQPConsumer(queues: queues, channels: channels, buffer: buffer, mailbox: mailbox)
    }

    /// Closes the connection: runs what is already queued (acks included), waits up to
    /// ``Configuration/closeTimeout`` for outstanding confirms, ends all consumers and stops the thread.
    /// Safe to call more than once.
    public func close() async {
        await withCheckedContinuation { continuation in
            mailbox.send(.close(continuation))
        }
    }
}

/// What the connection thread reports about itself, readable from any thread.
final class ConnectionStatus: Sendable {
    private struct State {
        var isConnected = false
        var connectionCount = 0
        var isClosed = false
    }

    private let state = Mutex(State())

    var isConnected: Bool { state.withLock { $0.isConnected } }
    var connectionCount: Int { state.withLock { $0.connectionCount } }
    var isClosed: Bool { state.withLock { $0.isClosed } }

    func didConnect() {
        state.withLock {
            $0.isConnected = true
            $0.connectionCount += 1
        }
    }

    func didDisconnect() {
        state.withLock { $0.isConnected = false }
    }

    func didClose() {
        state.withLock {
            $0.isConnected = false
            $0.isClosed = true
        }
    }
}
