import Baton
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// A running service: consumes its queue, handles each message effectively once, relays its outbox and
/// fires its timers.
///
/// - **Consume** (`Node+Consume.swift`): messages are taken in batches (what the prefetch has buffered).
///   Each is checked at the edge (id, type, content type, size, schema); a bad one is dead-lettered at once.
///   The rest are handled in **one** store transaction: inbox check, handler effects, outbox, inbox record.
///   Acks go out only after the commit. The transaction runs without savepoints; if a message fails in it, it
///   is rolled back and run again at once with each message in its own savepoint, so the failure stays alone.
/// - **Failures** (`Node+Failures.swift`): a message whose handler throws is held in the store and
///   acknowledged, so the queue flows on; it is retried with backoff off the consume path, then dead-lettered
///   with the reason. Later messages of its instance wait behind it, in order, until it is handled or its
///   dead letter is replayed.
/// - **Relay** (`Node+Relay.swift`): publishes the outbox in order with publisher confirms and marks what
///   was confirmed. The rows a transaction of the node's committed are handed to it in memory; it reads the
///   outbox table at start, after a failure and for rows another process queued. A crash re-sends (same ids),
///   never loses.
/// - **Deadlines** (`Node+Deadlines.swift`): timers and the next attempts of held messages are stored
///   deadlines in business time, acted on through the same unit of work when the clock reaches them, also
///   after a restart. A failing timer is retried and dead-lettered on its own.
public final class Node: Service {
    /// How the node runs.
    public struct Configuration: Sendable {
        /// The node's name: its inbox consumer name, dead-letter routing key and default queue.
        public var name: String
        /// The queue it consumes.
        public var queue: String
        /// Unsettled deliveries at most (the broker's prefetch).
        public var prefetch: Int
        /// Messages per transaction at most.
        public var batchSize: Int
        /// Retries of a failing handler.
        public var retry: RetryPolicy
        /// Outbox messages per relay round.
        public var relayBatchSize: Int
        /// Relay rounds whose confirms may be outstanding at once: the relay keeps publishing new rows while the
        /// broker confirms earlier ones (1, the least: each round waits for the one before it). A row waits only
        /// for the rows of its order scope.
        public var relayWindow: Int
        /// The largest message body accepted, in bytes; a larger one is dead-lettered at the edge.
        public var maximumPayloadSize: Int
        /// Who declares the node's exchanges, queues and bindings: the node itself (the default) or the
        /// broker's definitions, in which case the node only checks that they exist.
        public var topologyOwnership: TopologyOwnership
        /// Test hook: called at named points of the consume path (crash-injection tests kill the process
        /// there). `nil` in production.
        public var faultInjection: (@Sendable (FaultPoint) -> Void)?
        /// How often the store's counts (outbox, dead letters, instances) are sampled into gauges
        /// (``NodeMetric``); `nil` (the default) samples nothing, for a process that exports no metrics.
        public var storeSampling: Duration?
        /// How long an open instance may go without a transition before it counts as stuck
        /// (``NodeMetric/stuckInstances``).
        public var stuckAfter: Duration
        /// Where the node's metrics go (``NodeMetric``): `nil` (the default) for the factory the process
        /// bootstrapped (`MetricsSystem.bootstrap`; none: nothing is recorded); a factory of its own to measure
        /// one node apart from others in the process.
        public var metricsFactory: (any MetricsFactory)?
        /// What the node keeps of handled work, and for how long: the inbox's window, closed instances'
        /// timelines, tombstones.
        public var retention: Retention
        /// How many queues the node's input is split over (see `Node+Partitions.swift`); 1 (the default): one
        /// queue, ``queue``. Every replica of a service must say the same: the store records the count, and a
        /// node started with another refuses to run.
        public var partitions: Int
        /// How often the broker delivers a message of a partition's queue before it dead-letters it (to
        /// ``Routing/deadLetterExchange``, at least once): high, so that only a message that keeps killing its
        /// consumer ends there. (Before RabbitMQ 4.3 a killed consumer's unacknowledged deliveries count too.)
        public var deliveryLimit: Int

        /// Creates a configuration with defaults for everything but the name.
        public init(name: String, queue: String? = nil) {
            self.name = name
            self.queue = queue ?? name
            self.prefetch = 256
            self.batchSize = 128
            self.retry = RetryPolicy()
            self.relayBatchSize = 500
            self.relayWindow = 4
            self.maximumPayloadSize = 256 * 1024
            self.topologyOwnership = .node
            self.faultInjection = nil
            self.storeSampling = nil
            self.stuckAfter = .seconds(600)
            self.metricsFactory = nil
            self.retention = Retention()
            self.partitions = 1
            self.deliveryLimit = 1_000
        }
    }

    /// Points in the consume path where ``Configuration/faultInjection`` is called.
    public enum FaultPoint: String, Sendable, CaseIterable {
        /// Inside the transaction, after the handlers ran, before it commits.
        case beforeCommit
        /// After the commit, before the relay publishes what the handlers issued.
        case afterCommitBeforePublish
        /// After the relay published (and the broker confirmed) what the handlers issued, before the ack.
        case afterPublishBeforeAck
    }

    /// The configuration.
    public let configuration: Configuration
    /// The store.
    public let store: any Store
    let transport: any Transport
    let registry: MessageRegistry
    let handlers: [any NodeHandler]
    /// How a message goes through the handlers (and the commands they dispatch).
    let delivery: Delivery
    let timeSource: any TimeSource
    let logger: Logger
    let handover = Mutex(Handover())
    /// The relay's publish rounds whose confirms are outstanding, and those that ended.
    let relayRounds = Mutex(RelayRounds())
    /// Rows the broker confirmed whose deletion waits for the node's next transaction.
    let sentMarks = Mutex(SentMarks())
    let schedulesTimers: Bool
    /// The node's loops, each stopped by its service's graceful shutdown (consumption first, the relay
    /// last).
    let consumption = NodeLoop()
    let deadlines = NodeLoop()
    /// The business time the deadline loop sleeps until: `.distantPast` while it reads the store (a batch
    /// that commits a deadline then wakes it), `.distantFuture` when nothing is scheduled. A batch wakes it only
    /// for an earlier deadline than this.
    let deadlineLoopWakesAt = Mutex(Date.distantPast)
    let relay = NodeLoop()
    let sampling = NodeLoop()
    let housekeeping = NodeLoop()
    /// What the loops last reported, for ``readiness``.
    let health = Mutex(NodeHealth())
    /// The store's figures as the sampling loop last read them.
    let lastSample = Mutex<StoreSample?>(nil)
    /// The node's instruments (swift-metrics).
    let metrics: NodeMetrics
    /// The queues the node consumes now (a re-partitioning's drain markers must arrive on one of them).
    let consumedQueues = Mutex<[String]>([])
    /// The running node's services, or a stop asked for before they run.
    private let lifecycle = Mutex<(group: ServiceGroup?, stopRequested: Bool)>((nil, false))

    /// Creates a node.
    /// - Parameters:
    ///   - configuration: Name, queue, limits.
    ///   - store: Its store (SQLite, or PostgreSQL when replicas share one).
    ///   - transport: The broker or the in-process transport.
    ///   - handlers: What it hosts (process managers, command handlers, subscribers). The message types it
    ///     accepts are the ones they declare (``NodeHandler/messageTypes``).
    ///   - timeSource: Business time (a ``TestClock`` in tests).
    ///   - logger: Where it logs.
    public init(
        configuration: Configuration,
        store: any Store,
        transport: any Transport,
        handlers: [any NodeHandler],
        timeSource: any TimeSource = SystemTimeSource(),
        logger: Logger
    ) {
        self.configuration = configuration
        self.store = store
        self.transport = transport
        self.registry = MessageRegistry(
            types: handlers.flatMap(\.messageTypes),
            maximumPayloadSize: configuration.maximumPayloadSize
        )
        self.handlers = handlers
        self.delivery = Delivery(handlers: handlers, registry: registry, consumer: configuration.name)
        self.schedulesTimers = handlers.contains { $0.schedulesTimers }
        self.metrics = NodeMetrics(
            node: configuration.name,
            factory: configuration.metricsFactory ?? MetricsSystem.factory
        )
        self.timeSource = timeSource
        var logger = logger
        logger[metadataKey: "baton.node"] = "\(configuration.name)"
        self.logger = logger
    }

    /// Whether the node does its work at this moment: it consumes its queue, its last batch committed and its
    /// last deadline round succeeded. (Whether its broker connection is up is the transport's to say.)
    public var readiness: NodeReadiness { health.withLock { $0.readiness } }

    /// The store's figures as the node last sampled them (every ``Configuration/storeSampling``, for the
    /// metrics); `nil` before the first sample or when it does not sample. Cheaper than counting again: a count
    /// of a million instances reads a million index entries.
    public var storeSample: StoreSample? { lastSample.withLock { $0 } }

    /// The node's queue, its dead-letter queue, and the bindings its handlers need.
    public var topology: Topology { Self.topology(configuration: configuration, handlers: handlers) }

    /// The topology a node with this configuration and these handlers needs: the exchanges it publishes to
    /// and subscribes from, its queue (bound for each handler and to ``Routing/nodeExchange`` under its
    /// name) — or its partitions' exchanges and queues, fed by those bindings — and its dead-letter queue.
    /// What broker definitions must contain for ``TopologyOwnership/broker``.
    /// - Parameters:
    ///   - configuration: The node's name, queue and partitions.
    ///   - handlers: What it hosts.
    public static func topology(configuration: Configuration, handlers: [any NodeHandler]) -> Topology {
        if configuration.partitions > 1 {
            return partitionedTopology(configuration: configuration, handlers: handlers)
        }
        let deadLetters = "\(configuration.name).dead-letters"
        let handlerBindings = handlers.flatMap(\.bindings).map {
            Topology.Binding(queue: configuration.queue, exchange: $0.exchange, bindingKey: $0.bindingKey)
        }
        return Topology(
            exchanges: Routing.exchanges + handlers.flatMap(\.exchanges),
            queues: [.init(configuration.queue, kind: .quorum), .init(deadLetters, kind: .quorum)],
            bindings: handlerBindings + [
                .init(queue: configuration.queue, exchange: Routing.nodeExchange, bindingKey: configuration.name),
                .init(queue: deadLetters, exchange: Routing.deadLetterExchange, bindingKey: configuration.name),
            ]
        )
    }

    /// Runs the node until it is shut down gracefully — by its ``ServiceGroup`` (SIGTERM, SIGINT), by
    /// ``stop()`` or by cancelling the task — and then stops: it stops consuming, finishes the batch in hand
    /// (commit, then ack), stops its deadlines, flushes the outbox, and returns.
    ///
    /// Its loops are services of a group of their own — the relay, the deadlines, the consumer — which shuts
    /// them down in reverse order, each after the one before has finished. The consumer and the deadlines run
    /// on the node's own thread (``NodeExecutor``), the relay on the shared pool.
    /// - Throws: If the topology cannot be declared (or, owned by the broker, is missing) or the queue
    ///   consumed.
    public func run() async throws {
        try checkHandledTypes()
        let input = try await inputPlan()
        let topology =
            input.declaresFeeds ? topology : Self.topologyWithoutFeeds(configuration: configuration, handlers: handlers)
        switch configuration.topologyOwnership {
        case .node: try await transport.declare(topology)
        case .broker: try await transport.verify(topology)
        }
        let source = try await subscribe(input.queues)
        let executor = NodeExecutor(name: configuration.name)
        defer { executor.shutdown() }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    .init(service: LoopService("relay", relay) { await self.relayLoop() }),
                    .init(
                        service: LoopService("deadlines", deadlines) {
                            await withTaskExecutorPreference(executor) { await self.deadlineLoop() }
                        }
                    ),
                    .init(service: LoopService("sampling", sampling) { await self.samplingLoop() }),
                    .init(service: LoopService("retention", housekeeping) { await self.retentionLoop() }),
                    // A consumer that ends (its connection gave up) stops the node gracefully: what it
                    // committed is still relayed.
                    .init(
                        service: LoopService("consumption", consumption) {
                            await withTaskExecutorPreference(executor) { await self.consume(source, input) }
                        },
                        successTerminationBehavior: .gracefullyShutdownGroup,
                        failureTerminationBehavior: .gracefullyShutdownGroup
                    ),
                ],
                logger: logger
            )
        )
        let stopRequested = lifecycle.withLock { lifecycle in
            lifecycle.group = group
            return lifecycle.stopRequested
        }
        logger.info("node started", metadata: ["queues": "\(input.queues.joined(separator: ","))"])
        // The group runs in a task of its own so that cancelling `run` shuts it down gracefully instead of
        // cutting its loops off mid-transaction. (The task inherits a parent group's graceful shutdown.)
        let running = Task { try await group.run() }
        if stopRequested { await group.triggerGracefulShutdown() }
        try await withTaskCancellationHandler {
            try await running.value
        } onCancel: {
            stop()
        }
        lifecycle.withLock { $0.group = nil }
        logger.info("node stopped")
    }

    /// Checks that every message a handler is bound to receive has a declared type to decode it as: a node
    /// that would dead-letter a whole message type at run time refuses to start instead, naming it.
    /// - Throws: ``NodeError`` naming the handler and the message.
    func checkHandledTypes() throws {
        for handler in handlers {
            for binding in handler.bindings
            where [Routing.commandExchange, Routing.eventExchange].contains(binding.exchange)
                && !binding.bindingKey.contains("*") && !binding.bindingKey.contains("#")
                && !registry.contains(messageName: Self.messageName(boundBy: binding.bindingKey))
            {
                throw NodeError(
                    message:
                        "handler '\(handler.name)' is bound to '\(binding.bindingKey)' on \(binding.exchange), but no handler declares a message type of that name to decode it"
                )
            }
        }
    }

    /// The message name a binding key routes: the key itself, but for a process manager's own failure replies.
    private static func messageName(boundBy key: String) -> String {
        key.hasPrefix(CommandFailed.messageName + ".") ? CommandFailed.messageName : key
    }

    /// Shuts the node down gracefully (what cancelling ``run()`` or its service group's shutdown does); a node
    /// that is not running yet stops as soon as it starts.
    public func stop() {
        let group = lifecycle.withLock { lifecycle in
            lifecycle.stopRequested = true
            return lifecycle.group
        }
        if let group { Task { await group.triggerGracefulShutdown() } }
    }

    /// The clock reading handed to handlers, at the precision of business time.
    func businessNow() -> Date {
        timeSource.now().roundedToMilliseconds
    }

    /// Runs one write transaction and returns once it is on the disk, its outbox rows handed to the relay. The
    /// transaction also deletes the rows the relay has sent since the last one (``SentMarks``).
    func commit<T: Sendable>(_ body: @escaping @Sendable (any UnitOfWork) throws -> T) async throws -> T {
        let (value, queued, durability) = try await commitBeforeDisk(body)
        handOver(queued, once: durability)
        try await durability.reached()
        return value
    }

    /// Like ``commit(_:)``, returning as soon as the transaction commits (a store that groups its syncs lets the
    /// node's thread go on while the disk works): its outbox rows are the caller's to hand over
    /// (``handOver(_:once:then:)``), and nothing outside the store may act on it before its durability.
    func commitBeforeDisk<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> (T, [OutboxMessage], Durability) {
        let sent = sentMarks.withLock { $0.pending }
        let (value, queued, durability) = try await store.writeHandingOverOutboxBeforeDisk { work in
            try work.removeSent(sent.sequences)
            return try body(work)
        }
        // Deleted in a commit that a power failure could take back: the rows would be sent again, under their ids.
        sentMarks.withLock { $0.remove(through: sent, at: .now) }
        return (value, queued, durability)
    }

    /// Hands a commit's outbox rows to the relay and wakes it once the commit is on the disk, then runs `then`
    /// (on the thread that synced, in commit order). If the sync failed, the rows stay in the table, unsent
    /// until a restarted node finds them there.
    func handOver(
        _ queued: [OutboxMessage],
        once durability: Durability,
        then: (@Sendable (Result<Void, any Error>) -> Void)? = nil
    ) {
        guard !queued.isEmpty || then != nil else { return }
        durability.whenReached { [self] result in
            if case .success = result, !queued.isEmpty {
                handover.withLock { $0.add(queued) }
                relay.wake()
            }
            then?(result)
        }
    }

    /// Waits for `signal` (which the node's stop also raises), or until `sleep` returns.
    func waitFor(_ signal: Signal, orUntil sleep: (@Sendable () async -> Void)?) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await signal.wait() }
            if let sleep { group.addTask { await sleep() } }
            await group.next()
            group.cancelAll()
        }
    }
}

/// A handler error that no retry can fix (the message refers to something that does not exist, breaks a
/// business rule, …): the message is dead-lettered at once with the error as reason.
public protocol PermanentFailure: Error {}

/// A store's refusal of a transaction that lost a race with a concurrent one on the same data — a deadlock, a
/// serialization failure — which it rolled back. Nothing of the transaction is kept, and nothing is wrong with
/// the messages in it: the node runs the whole transaction again, soon, and counts no failed attempt against any
/// of them (replicas that update the same rows in different orders would otherwise dead-letter good messages).
public protocol StoreConflict: Error {}

/// A handler's refusal of a message, dead-lettered at once with ``reason``.
public struct Rejection: PermanentFailure, CustomStringConvertible {
    /// Why the message was refused.
    public var reason: String

    /// Creates a rejection.
    public init(_ reason: String) {
        self.reason = reason
    }

    public var description: String { reason }
}

/// A node operation that cannot be done.
public struct NodeError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong.
    public var message: String

    /// Creates the error.
    public init(message: String) {
        self.message = message
    }

    public var description: String { message }
}

/// One of a node's loops: the signal that wakes it, and its stop flag.
final class NodeLoop: Sendable {
    /// Wakes the loop (new work, or its stop).
    let signal = Signal()
    private let stopped = Atomic<Bool>(false)

    /// Whether the loop was asked to stop: it finishes what it has in hand and returns.
    var isStopping: Bool { stopped.load(ordering: .sequentiallyConsistent) }

    /// Tells the loop there is work.
    func wake() { signal.notify() }

    /// Asks the loop to stop, and wakes it.
    func stop() {
        stopped.store(true, ordering: .sequentiallyConsistent)
        signal.notify()
    }
}

/// A node's loop as a service: on graceful shutdown the loop is asked to stop, finishes what it has in hand
/// (the consumer its batch, the relay what can be published) and returns.
struct LoopService: Service, CustomStringConvertible {
    let description: String
    let loop: NodeLoop
    let body: @Sendable () async -> Void

    init(_ name: String, _ loop: NodeLoop, body: @escaping @Sendable () async -> Void) {
        self.description = name
        self.loop = loop
        self.body = body
    }

    func run() async {
        await withGracefulShutdownHandler {
            await body()
        } onGracefulShutdown: {
            loop.stop()
        }
    }
}
