import Baton
import BatonAMQP
import BatonNode
import Foundation

/// Changes a service's partition count on a RabbitMQ broker while the service runs: drain, then rebind.
///
/// 1. The plan goes into the service's store (``RepartitionPlan``); running again resumes it.
/// 2. The new count's exchanges and queues are declared and fed; then the old count's feeds are removed, so
///    new messages wait in the new queues (a message published in between reaches both; the inbox drops the
///    second copy).
/// 3. A ``PartitionDrained`` marker goes through each old queue; the replicas that consume it (started with
///    the old count, or with the new one, which drain the old queues first) record it when they commit it.
/// 4. Once every old queue is drained the store records the new count: replicas of the new count move on to
///    their own queues; replicas of the old one must be restarted with the new count.
/// 5. The old feeds are removed once more (a replica of the old count that reconnected binds them again), the
///    old queues that are empty and unconsumed are deleted, then the old exchanges; queues still consumed stay
///    until a later run.
///
/// Declaring, binding and deleting need an operator's broker credential (configure permission on the
/// service's exchanges and queues, write permission on the default exchange for the markers).
public struct Repartitioning: Sendable {
    /// The service's node configuration (its name, queue and delivery limit; its partition count is ignored:
    /// the store's record counts).
    public var configuration: Node.Configuration
    /// The service's handlers, whose bindings feed its input.
    public var handlers: [any NodeHandler]
    /// The service's store.
    public var store: any Store
    /// A connection with an operator's credential.
    public var connection: AMQPConnection
    /// How long to wait after removing the old feeds before sending the markers, so that a message routed
    /// just before (a publish in flight on another connection) reaches its old queue before the marker.
    public var settle: Duration
    /// Receives a line on each step.
    public var progress: @Sendable (String) -> Void

    /// Prepares a re-partitioning.
    public init(
        configuration: Node.Configuration,
        handlers: [any NodeHandler],
        store: any Store,
        connection: AMQPConnection,
        settle: Duration = .seconds(2),
        progress: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.handlers = handlers
        self.store = store
        self.connection = connection
        self.settle = settle
        self.progress = progress
    }

    /// What a run achieved.
    public enum Outcome: Sendable, Hashable {
        /// The service already runs with that count and nothing of an earlier count is left.
        case unchanged
        /// The store records the new count; `kept` are old queues not removed yet (a replica still consumes
        /// them, or they hold messages), with why.
        case switched(kept: [String: String])
    }

    /// Changes the partition count to `target`, or resumes the change in progress.
    /// - Parameters:
    ///   - target: The new count (``Node/partitionCounts``).
    ///   - limit: How long to wait for the old queues to drain.
    /// - Throws: ``RepartitionError`` when there is nothing to change from, another change is in progress, or
    ///   the old queues are not drained in time (run again to go on waiting); ``AMQPError`` from the broker.
    public func run(to target: Int, waitingAtMost limit: Duration) async throws -> Outcome {
        let name = configuration.name
        guard Node.partitionCounts.contains(target) else {
            throw RepartitionError("the new count must be \(Node.partitionCountsText), not \(target)")
        }
        guard let recorded = try await Node.recordedPartitions(of: name, in: store) else {
            throw RepartitionError(
                "the store records no partition count for '\(name)': it has never run; start it with --partitions \(target)"
            )
        }
        var plan: RepartitionPlan
        if let current = try await Node.repartitionPlan(of: name, in: store), current.state != .finished {
            guard current.to == target else {
                throw RepartitionError(
                    "'\(name)' is changing from \(current.from) to \(current.to) partition(s): finish that first (repartition --to \(current.to))"
                )
            }
            plan = current
        } else {
            guard recorded != target else {
                progress("'\(name)' runs with \(target) partition(s) already")
                return .unchanged
            }
            plan = RepartitionPlan(from: recorded, to: target)
        }
        if plan.state == .draining {
            try await Node.saveRepartitionPlan(plan, of: name, in: store)
            try await switchFeeds(plan)
            try await drain(plan, waitingAtMost: limit)
            try await Node.switchPartitions(plan, of: name, in: store)
            plan.state = .switched
            progress("the store records \(plan.to) partition(s); replicas of \(plan.to) consume their own queues now")
        }
        let kept = try await removeOldCount(plan)
        if kept.isEmpty {
            plan.state = .finished
            try await Node.saveRepartitionPlan(plan, of: name, in: store)
        }
        return .switched(kept: kept)
    }

    /// The configuration with a partition count.
    private func configuration(partitions: Int) -> Node.Configuration {
        var configuration = configuration
        configuration.partitions = partitions
        return configuration
    }

    /// Declares and feeds the new count, then removes the old count's feeds.
    private func switchFeeds(_ plan: RepartitionPlan) async throws {
        let new = configuration(partitions: plan.to)
        try await connection.declare(AMQPTopology(Node.topology(configuration: new, handlers: handlers)))
        progress("declared and fed the \(plan.to) partition queue(s): \(Node.inputQueues(new).joined(separator: ", "))")
        let old = configuration(partitions: plan.from)
        try await connection.unbind(AMQPTopology(Node.inputFeeds(configuration: old, handlers: handlers)))
        progress("removed the feeds of the \(plan.from) old queue(s); new messages wait in the new ones")
    }

    /// Sends the markers through the old queues not drained yet and waits until the store records them all.
    private func drain(_ plan: RepartitionPlan, waitingAtMost limit: Duration) async throws {
        var undrained = try await Node.undrainedQueues(of: plan, configuration: configuration, in: store)
        guard !undrained.isEmpty else { return }
        try await Task.sleep(for: settle)
        let markers = undrained.map { queue in
            OutgoingMessage(
                exchange: "",
                routingKey: queue,
                envelope: Envelope(
                    messageID: "drain-\(plan.id)-\(queue)",
                    messageType: PartitionDrained.messageType,
                    timestamp: Date(),
                    payload: MessageRegistry.encode(PartitionDrained(plan: plan.id, queue: queue))
                )
            )
        }
        for (queue, outcome) in zip(undrained, await AMQPTransport(connection: connection).publish(markers)) {
            switch outcome {
            case .confirmed: break
            case .refused(let reason), .failed(let reason), .unknown(let reason):
                throw RepartitionError("the drain marker for '\(queue)' was not taken: \(reason)")
            }
        }
        progress(
            "sent a drain marker through each of \(undrained.count) old queue(s); waiting for the replicas to reach them"
        )
        let deadline = ContinuousClock.now + limit
        var lastReport = ContinuousClock.now
        while true {
            undrained = try await Node.undrainedQueues(of: plan, configuration: configuration, in: store)
            if undrained.isEmpty { break }
            guard ContinuousClock.now < deadline else {
                throw RepartitionError(
                    "\(undrained.count) old queue(s) not drained yet (\(undrained.joined(separator: ", "))): a replica started with --partitions \(plan.from) or \(plan.to) drains them; run repartition --to \(plan.to) again to go on waiting"
                )
            }
            if ContinuousClock.now - lastReport >= .seconds(10) {
                progress("\(undrained.count) old queue(s) still draining: \(undrained.joined(separator: ", "))")
                lastReport = .now
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        progress("every old queue is drained")
    }

    /// Deletes the old queues that are empty and unconsumed, then, once they are all gone, the old partition
    /// exchanges. (A single queue, the count 1, is the service's queue: it goes too, and its bindings with it.)
    /// - Returns: The old queues kept, with why.
    private func removeOldCount(_ plan: RepartitionPlan) async throws -> [String: String] {
        let old = configuration(partitions: plan.from)
        // Again: a replica of the old count that reconnected since binds them anew.
        try await connection.unbind(AMQPTopology(Node.inputFeeds(configuration: old, handlers: handlers)))
        var kept: [String: String] = [:]
        // Back to one queue: nothing dead-letters into the delivery-limit queue any more, and nothing reads it.
        let pastLimit = plan.from > 1 && plan.to == 1 ? [Node.deliveryLimitQueue(old.name)] : []
        for queue in Node.inputQueues(old) + pastLimit {
            let counts: (messages: Int, consumers: Int)
            do {
                counts = try await connection.inspectQueue(queue)
            } catch let error as AMQPError where error.code == .notFound {
                continue
            }
            if counts.consumers > 0 {
                kept[queue] =
                    "\(counts.consumers) replica(s) of the old count still consume it: restart them with --partitions \(plan.to)"
            } else if counts.messages > 0 {
                kept[queue] =
                    pastLimit.contains(queue)
                    ? "it holds \(counts.messages) message(s) past the delivery limit that no replica recorded"
                    : "it holds \(counts.messages) message(s) that came after its marker"
            } else {
                try await connection.deleteQueue(queue)
            }
        }
        guard kept.isEmpty else {
            for (queue, why) in kept.sorted(by: { $0.key < $1.key }) { progress("kept \(queue): \(why)") }
            progress("run repartition --to \(plan.to) again to remove them")
            return kept
        }
        if plan.from > 1 {
            let exchanges = Node.topology(configuration: old, handlers: handlers).exchanges
            for exchange in exchanges where exchange.kind == .consistentHash {
                try await connection.deleteExchange(exchange.name)
            }
        }
        progress("removed the queues and exchanges of \(plan.from) partition(s)")
        return [:]
    }
}

/// Why a re-partitioning cannot go on.
public struct RepartitionError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong, for the operator.
    public var message: String

    init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}
