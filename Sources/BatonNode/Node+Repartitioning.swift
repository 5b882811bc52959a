import Baton
import Foundation

/// A change of a service's partition count, recorded in its store while it runs.
///
/// Changing the count moves every key to another queue, so the old queues must be empty before the new ones
/// are consumed, or a key's later message (already in its new queue) could be handled before an earlier one
/// still waiting in its old queue. The operator's tool (`repartition`, in `BatonService`) feeds the new
/// count's queues instead of the old ones, then sends a ``PartitionDrained`` marker through each old queue;
/// whichever replica consumes that queue records the marker when it commits it, which is after everything
/// before it in the queue, because a node commits its batches one after the other. Replicas started with the
/// new count consume the old queues until every marker is recorded, and only then their own.
public struct RepartitionPlan: Codable, Sendable, Hashable {
    /// Where a change of the count stands.
    public enum State: String, Codable, Sendable, Hashable {
        /// The new count's queues are fed; the old ones drain.
        case draining
        /// Every old queue was drained and the store records the new count; the old queues may still exist.
        case switched
        /// The old queues and exchanges are removed.
        case finished
    }

    /// Tells this change's markers from an earlier change's.
    public var id: String
    /// The count the service ran with.
    public var from: Int
    /// The count it changes to.
    public var to: Int
    /// Where it stands.
    public var state: State

    /// Creates a plan.
    public init(id: String = UUID().uuidString.lowercased(), from: Int, to: Int, state: State = .draining) {
        self.id = id
        self.from = from
        self.to = to
        self.state = state
    }
}

/// The marker a re-partitioning sends through each queue of the old partition count, through the default
/// exchange (so straight into that queue): once a node commits it, everything the queue held before it is
/// handled.
public struct PartitionDrained: Command {
    public static let messageName = "baton.PartitionDrained"
    /// The re-partitioning (``RepartitionPlan/id``).
    public var plan: String
    /// The queue it drains.
    public var queue: String

    /// Creates a marker.
    public init(plan: String, queue: String) {
        self.plan = plan
        self.queue = queue
    }
}

/// What a node consumes, as its partition count and the store's record say.
struct InputPlan: Sendable {
    /// The queues it consumes first.
    var queues: [String]
    /// While a re-partitioning drains the old count's queues, a node of the new count consumes those first;
    /// then the plan and its own queues.
    var drainingInto: (plan: RepartitionPlan, queues: [String])?
    /// Whether the node declares its input's feeds (a node of the old count, while its queues drain, does not).
    var declaresFeeds: Bool
}

extension Node {
    /// Records the node's partition count in its store when none is recorded, and refuses to run with another
    /// one, unless a re-partitioning from or to it is draining: replicas of one service must split its input
    /// the same way, or one key's messages would reach two replicas at once.
    /// - Returns: What the node consumes.
    /// - Throws: ``NodeError`` naming both counts.
    func inputPlan() async throws -> InputPlan {
        let partitions = configuration.partitions
        let name = configuration.name
        let key = Self.partitionCountKey(name)
        let (recorded, plan) = try await store.write { work -> (Int?, RepartitionPlan?) in
            let plan = try work.document(
                RepartitionPlan.self,
                in: Self.settingsCollection,
                idOrAlias: Self.planKey(name)
            )
            if let recorded = try work.document(PartitionCount.self, in: Self.settingsCollection, idOrAlias: key) {
                return (recorded.partitions, plan)
            }
            try work.save(PartitionCount(partitions: partitions), in: Self.settingsCollection, id: key, at: Date())
            return (nil, plan)
        }
        // Partitioned, the node consumes the queue of what its partitions delivered past their limit too.
        let pastLimit = [Self.deliveryLimitQueue(name)]
        let own = inputQueues + (partitions > 1 ? pastLimit : [])
        if let plan, plan.state == .draining {
            if partitions == plan.from { return InputPlan(queues: own, declaresFeeds: false) }
            if partitions == plan.to {
                var old = configuration
                old.partitions = plan.from
                let draining = Self.inputQueues(old) + (plan.from > 1 || partitions > 1 ? pastLimit : [])
                return InputPlan(queues: draining, drainingInto: (plan, own), declaresFeeds: true)
            }
            throw NodeError(
                message:
                    "this replica of '\(name)' was started with \(partitions) partition(s), but the service is changing from \(plan.from) to \(plan.to): start it with --partitions \(plan.to)"
            )
        }
        if let recorded, recorded != partitions {
            throw NodeError(
                message:
                    "this replica of '\(name)' was started with \(partitions) partition(s), but its store says the service runs with \(recorded): start every replica with --partitions \(recorded), or change the count with `\(name) repartition --to \(partitions)` (a count cannot simply change while its queues may hold messages)"
            )
        }
        return InputPlan(queues: own, declaresFeeds: true)
    }

    /// ``PartitionDrained``'s type, made once: every delivery is compared with it.
    static let drainMarkerType = PartitionDrained.messageType

    /// The settings document of a service's re-partitioning.
    static func planKey(_ name: String) -> String { "\(name).repartition" }

    /// The settings document that records a queue's drain marker.
    static func drainedKey(_ name: String, plan: String, queue: String) -> String { "\(name).drained.\(plan).\(queue)" }

    /// A service's latest re-partitioning, if it ever had one.
    public static func repartitionPlan(of name: String, in store: any Store) async throws -> RepartitionPlan? {
        try await store.read { work in
            try work.document(RepartitionPlan.self, in: settingsCollection, idOrAlias: planKey(name))
        }
    }

    /// Records a re-partitioning's plan (its state, when it changes).
    public static func saveRepartitionPlan(_ plan: RepartitionPlan, of name: String, in store: any Store) async throws {
        try await store.write { work in
            try work.save(plan, in: settingsCollection, id: planKey(name), at: Date())
        }
    }

    /// Records the new partition count of a re-partitioning whose old queues are drained, in one transaction
    /// with its plan's ``RepartitionPlan/State/switched`` state.
    public static func switchPartitions(_ plan: RepartitionPlan, of name: String, in store: any Store) async throws {
        var switched = plan
        switched.state = .switched
        try await store.write { [switched] work in
            try work.save(
                PartitionCount(partitions: switched.to),
                in: settingsCollection,
                id: partitionCountKey(name),
                at: Date()
            )
            try work.save(switched, in: settingsCollection, id: planKey(name), at: Date())
        }
    }

    /// The old count's queues whose drain marker no node has committed yet.
    public static func undrainedQueues(
        of plan: RepartitionPlan,
        configuration: Configuration,
        in store: any Store
    ) async throws -> [String] {
        var old = configuration
        old.partitions = plan.from
        let queues = inputQueues(old)
        let name = configuration.name
        return try await store.read { work in
            try queues.filter { queue in
                try work.document(
                    DrainedQueue.self,
                    in: settingsCollection,
                    idOrAlias: drainedKey(name, plan: plan.id, queue: queue)
                ) == nil
            }
        }
    }

    /// Records a drain marker that arrived on `queue`, in the batch's transaction.
    func recordDrained(_ marker: PartitionDrained, queue: String, _ work: any UnitOfWork, _ now: Date) throws {
        try work.save(
            DrainedQueue(queue: queue, drainedAt: now),
            in: Self.settingsCollection,
            id: Self.drainedKey(configuration.name, plan: marker.plan, queue: queue),
            at: now
        )
        logger.info("partition queue drained", metadata: ["queue": "\(queue)", "plan": "\(marker.plan)"])
    }
}

/// The record of a drain marker a node committed.
struct DrainedQueue: Codable, Sendable, Hashable {
    var queue: String
    var drainedAt: Date
}
