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
                deadLetterRoutingKey: deliveryLimitQueue(configuration.name)
            )
        }
        let pastLimit = deliveryLimitQueue(configuration.name)
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
            queues: queues + [.init(deadLetters, kind: .quorum), .init(pastLimit, kind: .quorum)],
            bindings: partitionBindings + [
                .init(queue: deadLetters, exchange: Routing.deadLetterExchange, bindingKey: configuration.name),
                .init(queue: pastLimit, exchange: Routing.deadLetterExchange, bindingKey: pastLimit),
            ],
            exchangeBindings: feeds
        )
    }

    /// Where a partitioned node's queues dead-letter what they delivered past their delivery limit (through
    /// ``Routing/deadLetterExchange``, this name as the routing key): the node consumes it beside its
    /// partitions and records each message as a dead letter, as if its handler had given up on it.
    public static func deliveryLimitQueue(_ name: String) -> String { "\(name).delivery-limit" }

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

    /// The bindings that bring a node its input: its queue's bindings or, partitioned, the feeds of its
    /// partition exchanges. What a re-partitioning moves from one count to the other.
    public static func inputFeeds(configuration: Configuration, handlers: [any NodeHandler]) -> Topology {
        let topology = topology(configuration: configuration, handlers: handlers)
        guard configuration.partitions > 1 else {
            return Topology(bindings: topology.bindings.filter { $0.queue == configuration.queue })
        }
        return Topology(exchangeBindings: topology.exchangeBindings)
    }

    /// A node's topology without its input's feeds: what a replica of the old count declares while a
    /// re-partitioning drains its queues (binding them again would feed them anew).
    static func topologyWithoutFeeds(configuration: Configuration, handlers: [any NodeHandler]) -> Topology {
        var topology = topology(configuration: configuration, handlers: handlers)
        let feeds = inputFeeds(configuration: configuration, handlers: handlers)
        topology.bindings.removeAll { feeds.bindings.contains($0) }
        topology.exchangeBindings.removeAll { feeds.exchangeBindings.contains($0) }
        return topology
    }
}

/// The partition count a service's store records.
struct PartitionCount: Codable, Sendable, Hashable {
    var partitions: Int
}
