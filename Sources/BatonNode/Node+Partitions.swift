import Baton
import Foundation

/// Partitions: a service's input split over N queues by a hash of each message's partition key, each queue
/// consumed by one replica at a time, so that the messages of one key are handled one after the other, in the
/// order their emitter committed them.
///
/// The services publish to the shared exchanges as always; exchange-to-exchange bindings feed a
/// consistent-hash exchange of the service's, which hashes ``BatonHeader/partitionKey`` (a second one hashes
/// the `message_id` of external producers' messages, which carry no such header) onto quorum queues with a
/// single active consumer. Everything of one partition count is named after it (`orders.p4`, `orders.p4.0` …
/// `orders.p4.3`), so that a new count can be bound beside the old one while the old queues drain.
extension Node {
    /// The partition counts a service may run with.
    public static let partitionCounts = 1...64

    /// ``partitionCounts`` in words, for messages: `a count from 1 to 64`.
    public static var partitionCountsText: String {
        "a count from \(partitionCounts.lowerBound) to \(partitionCounts.upperBound)"
    }

    /// The name prefix of a partition count's exchanges and queues: `<queue>.p<count>`.
    public static func partitionPrefix(queue: String, partitions: Int) -> String {
        "\(queue).p\(partitions)"
    }

    /// The queues a node consumes: its queue, or its partitions' queues.
    public var inputQueues: [String] { Self.inputQueues(configuration) }

    /// The queues a node with this configuration consumes: its queue, or its partitions' queues.
    public static func inputQueues(_ configuration: Configuration) -> [String] {
        guard configuration.partitions > 1 else { return [configuration.queue] }
        let prefix = partitionPrefix(queue: configuration.queue, partitions: configuration.partitions)
        return (0..<configuration.partitions).map { "\(prefix).\($0)" }
    }

    /// The partitioned shape of a node's topology (see ``topology(configuration:handlers:)``).
    static func partitionedTopology(configuration: Configuration, handlers: [any NodeHandler]) -> Topology {
        let prefix = partitionPrefix(queue: configuration.queue, partitions: configuration.partitions)
        let (internalExchange, externalExchange) = (prefix, "\(prefix).external")
        let deadLetters = "\(configuration.name).dead-letters"
        let batonExchanges = Set(Routing.exchanges.map(\.name))
        let sources = handlers.flatMap(\.bindings).map { ($0.exchange, $0.bindingKey) }
        let hasExternalInput = sources.contains { !batonExchanges.contains($0.0) }
        var exchanges = [
            Topology.Exchange(internalExchange, kind: .consistentHash, hashedBy: .header(BatonHeader.partitionKey))
        ]
        if hasExternalInput {
            exchanges.append(.init(externalExchange, kind: .consistentHash, hashedBy: .messageID))
        }
        let queues = inputQueues(configuration).map {
            Topology.Queue(
                $0,
                kind: .quorum,
                hasSingleActiveConsumer: true,
                deliveryLimit: configuration.deliveryLimit,
                deadLetterExchange: Routing.deadLetterExchange,
                deadLetterRoutingKey: configuration.name
            )
        }
        // A consistent-hash binding's key is the queue's weight on the ring: every partition weighs the same.
        let partitionBindings = exchanges.flatMap { exchange in
            queues.map { Topology.Binding(queue: $0.name, exchange: exchange.name, bindingKey: "1") }
        }
        let feeds =
            sources.map { exchange, key in
                Topology.ExchangeBinding(
                    source: exchange,
                    destination: batonExchanges.contains(exchange) ? internalExchange : externalExchange,
                    bindingKey: key
                )
            } + [.init(source: Routing.nodeExchange, destination: internalExchange, bindingKey: configuration.name)]
        return Topology(
            exchanges: Routing.exchanges + handlers.flatMap(\.exchanges) + exchanges,
            queues: queues + [.init(deadLetters, kind: .quorum)],
            bindings: partitionBindings + [
                .init(queue: deadLetters, exchange: Routing.deadLetterExchange, bindingKey: configuration.name)
            ],
            exchangeBindings: feeds
        )
    }

    /// Records the node's partition count in its store when none is recorded, and refuses to run with another
    /// one: replicas of one service must split its input the same way, or one key's messages would reach two
    /// replicas at once.
    /// - Throws: ``NodeError`` naming both counts.
    func checkPartitionCount() async throws {
        let partitions = configuration.partitions
        let key = Self.partitionCountKey(configuration.name)
        let recorded = try await store.write { work -> Int? in
            if let recorded = try work.document(PartitionCount.self, in: Self.settingsCollection, idOrAlias: key) {
                return recorded.partitions
            }
            try work.save(PartitionCount(partitions: partitions), in: Self.settingsCollection, id: key, at: Date())
            return nil
        }
        if let recorded, recorded != partitions {
            throw NodeError(
                message:
                    "this replica of '\(configuration.name)' was started with \(partitions) partition(s), but its store says the service runs with \(recorded): start every replica with --partitions \(recorded) (a count cannot be changed while its queues may hold messages)"
            )
        }
    }

    /// The store's collection of the node's own settings.
    static let settingsCollection = "baton.settings"

    /// The settings document that holds a node's partition count.
    static func partitionCountKey(_ name: String) -> String { "\(name).partitions" }

    /// The partition count a service's store records (`nil`: none yet; the first node to start records its own).
    public static func recordedPartitions(of name: String, in store: any Store) async throws -> Int? {
        try await store.read { work in
            try work.document(PartitionCount.self, in: settingsCollection, idOrAlias: partitionCountKey(name))?
                .partitions
        }
    }

    /// Records a service's partition count (the last step of a re-partitioning).
    public static func recordPartitions(_ partitions: Int, of name: String, in store: any Store) async throws {
        try await store.write { work in
            try work.save(
                PartitionCount(partitions: partitions),
                in: settingsCollection,
                id: partitionCountKey(name),
                at: Date()
            )
        }
    }
}

/// The partition count a service's store records.
struct PartitionCount: Codable, Sendable, Hashable {
    var partitions: Int
}
