import Baton
import BatonNode
import BatonTestSupport
import BatonTesting
import Foundation
import Logging
import Testing

/// Partitions in memory: what a node records of its partition count, and the partitioned topology's routing.
/// (Against the broker: `PartitionTests`.)
@Suite struct PartitionedNodeTests {
    private func node(partitions: Int, store: any Store, transport: InProcessTransport) throws -> Node {
        var configuration = Node.Configuration(name: "orders-pm")
        configuration.partitions = partitions
        return Node(
            configuration: configuration,
            store: store,
            transport: transport,
            handlers: [try ProcessManagerHost(orderProcess())],
            logger: Logger(label: "partitions-test")
        )
    }

    /// The first replica records its count; one started with another count refuses to run and says why, one
    /// with the same count runs. Without the check the second replica would consume other queues than the
    /// first, and one order's messages could reach both.
    @Test func aReplicaWithAnotherPartitionCountRefusesToStart() async throws {
        let (store, transport) = (InMemoryStore(), InProcessTransport())
        let first = try node(partitions: 4, store: store, transport: transport)
        let running = Task { try await first.run() }
        #expect(try await eventually { try await Node.recordedPartitions(of: "orders-pm", in: store) == 4 })

        // The other count: refused at once (a node that ran instead is stopped after 10 s, and the test fails).
        let other = try node(partitions: 2, store: store, transport: transport)
        let refusal = await withTaskGroup(of: String?.self) { group in
            group.addTask {
                do {
                    try await other.run()
                    return "it ran"
                } catch {
                    return "\(error)"
                }
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(10))
                return nil
            }
            let first = await group.next() ?? nil
            other.stop()
            group.cancelAll()
            return first
        }
        let expected = "started with 2 partition(s), but its store says the service runs with 4"
        #expect(refusal?.contains(expected) == true, "\(refusal ?? "still running after 10 s")")

        let same = try node(partitions: 4, store: store, transport: transport)
        let sameRunning = Task { try await same.run() }
        #expect(try await eventually { same.readiness.isReady })
        same.stop()
        try await sameRunning.value
        first.stop()
        try await running.value
    }

    /// The partitioned topology in memory: every message of one key lands in one partition queue, whichever
    /// exchange it was published to, and the keys spread over the partitions.
    @Test func messagesOfOneKeyLandInOnePartition() async throws {
        let transport = InProcessTransport()
        let node = try node(partitions: 4, store: InMemoryStore(), transport: transport)
        try await transport.declare(node.topology)
        let messages = (0..<40).map { index in
            OutgoingMessage(
                exchange: Routing.eventExchange,
                routingKey: index.isMultiple(of: 2) ? OrderPlaced.messageName : PaymentReceived.messageName,
                envelope: Envelope(
                    messageID: "message-\(index)",
                    messageType: index.isMultiple(of: 2) ? OrderPlaced.messageType : PaymentReceived.messageType,
                    correlationID: "order-\(index % 8)",
                    timestamp: Date(),
                    payload: Data("{}".utf8)
                )
            )
        }
        #expect(await transport.publish(messages).allSatisfy { $0 == .confirmed })
        var partitionOfKey: [String: Set<String>] = [:]
        for queue in node.inputQueues {
            for message in transport.readyMessages(queue) {
                partitionOfKey[message.envelope.partitionKey, default: []].insert(queue)
            }
        }
        #expect(node.inputQueues == (0..<4).map { "orders-pm.p4.\($0)" })
        #expect(partitionOfKey.count == 8 && partitionOfKey.values.allSatisfy { $0.count == 1 }, "\(partitionOfKey)")
        #expect(Set(partitionOfKey.values.flatMap { $0 }).count >= 2, "the keys spread: \(partitionOfKey)")
        #expect(node.inputQueues.map { transport.readyCount($0) }.reduce(0, +) == 40, "each message once")
    }

    /// A re-partitioning's drain marker counts only when it comes straight into a queue the node consumes
    /// (through the default exchange, an operator's): one sent to the node by name — which any service may
    /// publish, and which names the node's queue when it has one — is dead-lettered with the reason and records
    /// nothing. Without the check a forged marker
    /// would let replicas of a new count take their queues before the old ones are drained.
    @Test func aDrainMarkerFromElsewhereIsDeadLettered() async throws {
        let (store, transport) = (InMemoryStore(), InProcessTransport())
        let node = try node(partitions: 1, store: store, transport: transport)
        let running = Task { try await node.run() }
        #expect(try await eventually { node.readiness.isReady })
        let plan = RepartitionPlan(from: 1, to: 4)
        try await Node.saveRepartitionPlan(plan, of: "orders-pm", in: store)
        // Sent to the node by name; and dressed as a replay from the default exchange.
        let forged = [[:], [BatonHeader.originalExchange: "", BatonHeader.originalRoutingKey: "orders-pm"]].enumerated()
            .map { index, headers in
                OutgoingMessage(
                    exchange: Routing.nodeExchange,
                    routingKey: "orders-pm",
                    envelope: Envelope(
                        messageID: "forged-marker-\(index)",
                        messageType: PartitionDrained.messageType,
                        timestamp: Date(),
                        headers: headers,
                        payload: MessageRegistry.encode(PartitionDrained(plan: plan.id, queue: "orders-pm"))
                    )
                )
            }
        #expect(await transport.publish(forged) == [.confirmed, .confirmed])
        #expect(try await eventually { try await store.read { try $0.deadLetters().count } == 2 })
        let reasons = try await store.read { try $0.deadLetters().map(\.reason) }
        #expect(reasons.allSatisfy { $0.contains("straight into a queue this node consumes") }, "\(reasons)")
        let undrained = try await Node.undrainedQueues(
            of: plan,
            configuration: Node.Configuration(name: "orders-pm"),
            in: store
        )
        #expect(undrained == ["orders-pm"], "the forged marker recorded nothing")
        node.stop()
        try await running.value
    }
}
