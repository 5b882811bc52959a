import Baton
import BatonAMQP
import BatonAMQPTransport
import BatonNode
import BatonSQLite
import BatonTestSupport
import Foundation
import Logging
import Synchronization
import Testing

// A ledger: entries are posted to accounts, and an account's entries must be applied in the order they were
// posted (a balance that goes negative on the way is refused).

private struct PostEntry: Command {
    static let messageName = "ledger.PostEntry"
    var account: String
    var number: Int
    var partitionKey: String? { account }
}
private struct TillReceipt: Message {
    static let messageName = "tills.Receipt"
    var receipt: String
}
/// What the ledger has applied to one account, in the order it applied it.
private struct Applied: Codable, Sendable {
    var account: String
    var numbers: [Int]
}

/// Partitions against the real broker: the consistent-hash exchanges, quorum queues with a single active
/// consumer, replicas that fail over, the delivery limit.
@Suite(.serialized) struct PartitionTests {
    /// Per account, entries are applied in the order they were posted, though 16 accounts are spread over 4
    /// partitions and the replica that handles them stops halfway (its partitions fail over to the other).
    /// Without the partition key (every entry keyed alone, by its id) the accounts' entries land in every
    /// partition and the standby replica takes over mid-account: `orderHolds` fails.
    @Test func eachKeyIsHandledInPostingOrderThroughAFailover() async throws {
        try await Ledger.with(name: "partition-order") { ledger in
            try await ledger.declare()
            let (accounts, perAccount) = (16, 30)
            var posted: [OutgoingMessage] = []
            for number in 0..<perAccount {
                for account in 0..<accounts { posted.append(ledger.entry(account: "acct-\(account)", number: number)) }
            }
            let outcomes = await ledger.transport.publish(posted)
            #expect(outcomes.allSatisfy { $0 == .confirmed })

            // The accounts are spread: every entry sits in one partition, and more than one holds some.
            let depths = try await ledger.partitionDepths()
            #expect(depths.reduce(0, +) == accounts * perAccount, "one copy of each entry: \(depths)")
            #expect(depths.filter { $0 > 0 }.count >= 2, "the accounts are spread over the partitions: \(depths)")

            // Replica A takes every partition (it consumes first); B stands by. A stops after a hundred entries.
            let replicaA = try await ledger.startReplica()
            #expect(try await eventually { try await ledger.appliedCount() >= 100 })
            let replicaB = try await ledger.startReplica()
            try await Task.sleep(for: .milliseconds(200))  // B's consumers registered: standing by
            try await replicaA.stop()
            let handledByA = try await ledger.appliedCount()
            #expect(handledByA < accounts * perAccount, "A stopped before the end (\(handledByA))")

            #expect(try await eventually { try await ledger.appliedCount() == accounts * perAccount })
            let applied = try await ledger.applied()
            let orderHolds = applied.values.allSatisfy { $0 == Array(0..<perAccount) }
            #expect(
                orderHolds,
                "every account's entries applied once, in order: \(applied.filter { $0.value != Array(0..<perAccount) })"
            )
            try await replicaB.stop()
        }
    }

    /// An external producer sets no partition key: its messages are spread by their `message_id` over the same
    /// partitions, through an exchange of their own, and every one is handled.
    @Test func externalMessagesWithoutAKeyAreSpreadByTheirID() async throws {
        try await Ledger.with(name: "partition-external") { ledger in
            try await ledger.declare()
            let receipts = (0..<40).map { index in
                AMQPOutgoingMessage(
                    exchange: "tills",
                    routingKey: "receipt",
                    body: Array(#"{"receipt":"r-\#(index)"}"#.utf8),
                    properties: AMQPProperties(contentType: "application/json", messageID: "receipt-\(index)")
                )
            }
            for result in await ledger.connection.publish(contentsOf: receipts) { try result.get() }
            let depths = try await ledger.partitionDepths()
            #expect(depths.reduce(0, +) == 40, "each receipt in one partition: \(depths)")
            #expect(depths.filter { $0 > 0 }.count >= 2, "spread by message id: \(depths)")

            let replica = try await ledger.startReplica()
            #expect(try await eventually { try await ledger.appliedCount() == 40 })
            try await replica.stop()
        }
    }

    /// A consumer that dies with a message unacknowledged returns it; past the queue's delivery limit the
    /// broker dead-letters it — at least once, to the node's delivery-limit queue: nothing is lost. The node
    /// records it as a dead letter (where it was published, why, how often it was delivered), sends the copy
    /// with the reason to its dead-letter queue like any other, and a replay handles it. (The node's default
    /// limit is 1,000; this queue's is 2.) Without the node consuming that queue the store records nothing.
    @Test func aMessagePastTheDeliveryLimitIsDeadLetteredNotLost() async throws {
        try await Ledger.with(name: "partition-limit", partitions: 2, deliveryLimit: 2) { ledger in
            try await ledger.declare()
            let outcomes = await ledger.transport.publish([ledger.entry(account: "acct-doomed", number: 0)])
            #expect(outcomes == [.confirmed])
            let depths = try await ledger.partitionDepths()
            let partition = try #require(depths.firstIndex(of: 1), "one partition holds it: \(depths)")
            let queue = ledger.partitionQueues[partition]

            // Three consumers, each killed (its connection dropped) while it holds the message.
            for _ in 0..<3 {
                let doomed = try await AMQPConnection.connect(
                    configuration: .init(url: ledger.url),
                    logger: ledger.logger
                )
                let consumer = try await doomed.consume(queue: queue, prefetch: 1)
                let delivery = try await consumer.next(timeout: .seconds(10))
                #expect(delivery != nil, "the message is delivered again")
                await doomed.close()
            }
            let pastLimit = Node.deliveryLimitQueue("ledger")
            #expect(try await eventually { try await ledger.connection.inspectQueue(pastLimit).messages == 1 })
            #expect(try await ledger.connection.inspectQueue(queue).messages == 0)

            // The node records it and passes the copy on, with the reason, to its dead-letter queue.
            let replica = try await ledger.startReplica()
            let letters = { @Sendable in try await ledger.store.read { try $0.deadLetters() } }
            #expect(try await eventually { try await letters().count == 1 })
            let letter = try #require(try await letters().first)
            #expect(letter.messageID == "acct-doomed-0")
            #expect(letter.exchange == Routing.commandExchange && letter.routingKey == PostEntry.messageName)
            #expect(letter.reason.contains("after 2 deliveries"), "\(letter.reason)")
            #expect(letter.handler == "delivery-limit" && letter.attempts == 2)
            #expect(try await ledger.connection.inspectQueue(pastLimit).messages == 0)
            let deadLetters = "ledger.dead-letters"
            #expect(try await eventually { try await ledger.connection.inspectQueue(deadLetters).messages == 1 })
            let consumer = try await ledger.connection.consume(queue: deadLetters, prefetch: 1)
            let copy = try #require(try await consumer.next(timeout: .seconds(10)))
            #expect(copy.properties.headers[BatonHeader.deadLetterReason]?.stringValue == letter.reason)
            copy.ack()
            await consumer.cancel()

            // Replayed, it is handled.
            try await replica.node.replayDeadLetter(id: letter.id)
            #expect(try await eventually { try await ledger.applied()["acct-doomed"] == [0] })
            try await replica.stop()
        }
    }
}

/// Changing the partition count of a running service (`repartition`): drain, then rebind.
@Suite(.serialized) struct RepartitionTests {
    /// Entries keep coming while the ledger goes from 2 partitions to 3: replica A (2) handles the backlog of
    /// the old queues, B (3) starts meanwhile and waits for them to drain before it takes its own. Every
    /// account's entries are applied once, in posting order; the store records 3; the old queues and
    /// exchanges are gone once A stops. Without the markers (B consuming its queues at once) B applies later
    /// entries of an account before A has applied its earlier ones, and `orderHolds` fails.
    @Test func aRunningServiceChangesItsPartitionCountKeepingEachKeysOrder() async throws {
        try await Ledger.with(name: "repartition", partitions: 2) { ledger in
            try await ledger.declare()
            let (accounts, perAccount) = (12, 50)
            let replicaA = try await ledger.startReplica()
            // Entries arrive faster than A applies them (12 every 10 ms, 2 ms each): its queues hold a backlog.
            let posting = Task {
                for number in 0..<perAccount {
                    let round = (0..<accounts).map { ledger.entry(account: "acct-\($0)", number: number) }
                    let outcomes = await ledger.transport.publish(round)
                    guard outcomes.allSatisfy({ $0 == .confirmed }) else { return false }
                    try await Task.sleep(for: .milliseconds(10))
                }
                return true
            }
            #expect(try await eventually { try await ledger.appliedCount() >= 60 })

            let (repartitioning, changing) = try await ledger.startRepartitioning(to: 3, settle: .milliseconds(200))
            let replicaB = try await ledger.startReplica(partitions: 3)

            // A still consumes the old queues: the count is switched, but they stay.
            let outcome = try await changing.value
            guard case .switched(let kept) = outcome else {
                Issue.record("the count did not change: \(outcome)")
                return
            }
            #expect(kept.count == 2, "A's two queues are kept while it consumes them: \(kept)")
            #expect(try await Node.recordedPartitions(of: "ledger", in: ledger.store) == 3)
            #expect(try await posting.value, "every entry was confirmed")

            try await replicaA.stop()
            #expect(try await eventually { try await ledger.appliedCount() == accounts * perAccount })
            let applied = try await ledger.applied()
            let orderHolds = applied.values.allSatisfy { $0 == Array(0..<perAccount) }
            #expect(
                orderHolds,
                "every account's entries applied once, in order: \(applied.filter { $0.value != Array(0..<perAccount) })"
            )

            // Run again: nothing consumes the old queues now, so they and their exchange go.
            #expect(try await repartitioning.run(to: 3, waitingAtMost: .seconds(10)) == .switched(kept: [:]))
            #expect(try await Node.repartitionPlan(of: "ledger", in: ledger.store)?.state == .finished)
            for queue in ["ledger.p2.0", "ledger.p2.1"] {
                await #expect(throws: AMQPError.self, "\(queue) is deleted") {
                    try await ledger.connection.inspectQueue(queue)
                }
            }
            #expect(try await repartitioning.run(to: 3, waitingAtMost: .seconds(10)) == .unchanged)
            try await replicaB.stop()
        }
    }

    /// From one queue to partitions: the single queue is the old count, drained by the replica that consumes
    /// it, then deleted with its bindings. A replica with a count that is neither refuses to start. Then back to
    /// one queue: the partitions go, and the delivery-limit queue with them.
    @Test func aSingleQueueBecomesPartitions() async throws {
        try await Ledger.with(name: "repartition-single", partitions: 1) { ledger in
            try await ledger.declare()
            let single = try await ledger.startReplica()
            let outcomes = await ledger.transport.publish(
                (0..<20).map { ledger.entry(account: "acct-\($0 % 4)", number: $0 / 4) }
            )
            #expect(outcomes.allSatisfy { $0 == .confirmed })
            let (repartitioning, changing) = try await ledger.startRepartitioning(to: 4, settle: .milliseconds(100))
            let neither = try await ledger.startReplica(partitions: 2)
            await #expect(throws: NodeError.self, "a replica with 2 partitions refuses while 1 → 4 is in progress") {
                try await neither.running.value
            }
            await neither.connection.close()
            guard case .switched = try await changing.value else {
                Issue.record("the count did not change")
                return
            }
            try await single.stop()
            let partitioned = try await ledger.startReplica(partitions: 4)
            // The broker counts the stopped replica's consumer gone a moment after its connection closed.
            #expect(
                try await eventually {
                    try await repartitioning.run(to: 4, waitingAtMost: .seconds(10)) == .switched(kept: [:])
                }
            )
            await #expect(throws: AMQPError.self, "the single queue is deleted") {
                try await ledger.connection.inspectQueue("ledger")
            }
            // New entries reach the partitions, through the feeds the change bound.
            let more = await ledger.transport.publish((5..<8).map { ledger.entry(account: "acct-0", number: $0) })
            #expect(more.allSatisfy { $0 == .confirmed })
            #expect(try await eventually { try await ledger.appliedCount() == 23 })
            #expect(try await ledger.applied()["acct-0"] == Array(0..<8))

            // And back to one queue: the partitions, their exchange and the delivery-limit queue go.
            let (back, returning) = try await ledger.startRepartitioning(to: 1, settle: .milliseconds(100))
            let again = try await ledger.startReplica(partitions: 1)
            guard case .switched = try await returning.value else {
                Issue.record("the count did not change back")
                return
            }
            try await partitioned.stop()
            // The replica of one queue lets the old queues go within a second of the switch.
            #expect(
                try await eventually { try await back.run(to: 1, waitingAtMost: .seconds(10)) == .switched(kept: [:]) }
            )
            for queue in (0..<4).map({ "ledger.p4.\($0)" }) + ["ledger.delivery-limit"] {
                await #expect(throws: AMQPError.self, "\(queue) is deleted") {
                    try await ledger.connection.inspectQueue(queue)
                }
            }
            let last = await ledger.transport.publish([ledger.entry(account: "acct-0", number: 8)])
            #expect(last == [.confirmed])
            #expect(try await eventually { try await ledger.applied()["acct-0"] == Array(0..<9) })
            try await again.stop()
        }
    }
}

/// A ledger service on its own virtual host: its store, its partitioned topology, replicas of its node.
private struct Ledger {
    let url: String
    let connection: AMQPConnection
    let transport: AMQPTransport
    let store: SQLiteStore
    let configuration: Node.Configuration
    let logger: Logger
    /// Every replica the test started.
    let replicas = StartedReplicas()

    static func with(
        name: String,
        partitions: Int = 4,
        deliveryLimit: Int = 1_000,
        _ body: (Ledger) async throws -> Void
    ) async throws {
        let virtualHost = TestBroker.unique(name)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(virtualHost)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try await TestBroker.makeVirtualHost(virtualHost)
        defer { try? FileManager.default.removeItem(at: directory) }
        var logger = Logger(label: name)
        logger.logLevel = .critical
        let url = TestBroker.url(virtualHost: virtualHost)
        let connection = try await AMQPConnection.connect(configuration: .init(url: url), logger: logger)
        var configuration = Node.Configuration(name: "ledger")
        configuration.partitions = partitions
        configuration.deliveryLimit = deliveryLimit
        let ledger = Ledger(
            url: url,
            connection: connection,
            transport: AMQPTransport(connection: connection),
            store: try SQLiteStore(path: directory.appendingPathComponent("ledger.sqlite").path),
            configuration: configuration,
            logger: logger
        )
        do {
            try await body(ledger)
        } catch {
            await ledger.replicas.stopAll()
            await connection.close()
            await TestBroker.deleteVirtualHost(virtualHost)
            throw error
        }
        await ledger.replicas.stopAll()
        await connection.close()
        await TestBroker.deleteVirtualHost(virtualHost)
    }

    static let handlers: [any NodeHandler] = [
        MessageHandlerHost.command(PostEntry.self, name: "post-entry") { entry, context in
            var applied =
                try context.work.document(Applied.self, in: "ledger", idOrAlias: entry.account)
                ?? Applied(account: entry.account, numbers: [])
            applied.numbers.append(entry.number)
            try context.work.save(applied, in: "ledger", id: entry.account, at: context.now)
            Thread.sleep(forTimeInterval: 0.002)  // slow enough to stop a replica halfway
        },
        MessageHandlerHost.subscriber(TillReceipt.self, name: "tills", exchange: "tills", routingKey: "receipt") {
            receipt,
            context in
            try context.work.save(
                Applied(account: receipt.receipt, numbers: [0]),
                in: "ledger",
                id: receipt.receipt,
                at: context.now
            )
        },
    ]

    var partitionQueues: [String] {
        (0..<configuration.partitions).map {
            "\(Node.partitionPrefix(queue: "ledger", partitions: configuration.partitions)).\($0)"
        }
    }

    func declare() async throws {
        try await transport.declare(Node.topology(configuration: configuration, handlers: Self.handlers))
    }

    /// A running replica of the ledger's node.
    struct Replica {
        let node: Node
        let connection: AMQPConnection
        let running: Task<Void, any Error>

        /// Stops it gracefully (it requeues what it has not handled) and closes its connection, also when the
        /// node ended with an error (rethrown after).
        func stop() async throws {
            running.cancel()
            let ended = await running.result
            await connection.close()
            try ended.get()
        }
    }

    /// Starts a replica of the ledger's node, on its own connection, sharing the store.
    func startReplica(partitions: Int? = nil) async throws -> Replica {
        let connection = try await AMQPConnection.connect(configuration: .init(url: url), logger: logger)
        var configuration = configuration
        configuration.partitions = partitions ?? configuration.partitions
        let node = Node(
            configuration: configuration,
            store: store,
            transport: AMQPTransport(connection: connection),
            handlers: Self.handlers,
            logger: logger
        )
        let replica = Replica(node: node, connection: connection, running: Task { try await node.run() })
        replicas.add(replica)
        return replica
    }

    /// Starts changing the ledger's partition count on the test's (administrator) connection, and returns
    /// once the change has recorded its plan: replicas of the new count may start.
    func startRepartitioning(
        to count: Int,
        settle: Duration
    ) async throws -> (Repartitioning, Task<Repartitioning.Outcome, any Error>) {
        let repartitioning = Repartitioning(
            configuration: configuration,
            handlers: Self.handlers,
            store: store,
            connection: connection,
            settle: settle
        )
        let changing = Task { try await repartitioning.run(to: count, waitingAtMost: .seconds(60)) }
        let planned = try await eventually {
            try await Node.repartitionPlan(of: "ledger", in: store)?.state == .draining
        }
        #expect(planned, "the change records its plan")
        return (repartitioning, changing)
    }

    func entry(account: String, number: Int) -> OutgoingMessage {
        OutgoingMessage(
            exchange: Routing.commandExchange,
            routingKey: PostEntry.messageName,
            envelope: Envelope(
                messageID: "\(account)-\(number)",
                messageType: PostEntry.messageType,
                timestamp: Date(),
                headers: [partitionKeyHeader: account],
                payload: MessageRegistry.encode(PostEntry(account: account, number: number))
            )
        )
    }

    func partitionDepths() async throws -> [Int] {
        var depths: [Int] = []
        for queue in partitionQueues { depths.append(try await connection.inspectQueue(queue).messages) }
        return depths
    }

    func applied() async throws -> [String: [Int]] {
        try await store.read { work in
            Dictionary(
                uniqueKeysWithValues: try work.documents(Applied.self, in: "ledger").map { ($0.account, $0.numbers) }
            )
        }
    }

    func appliedCount() async throws -> Int {
        try await store.read { work in try work.documents(Applied.self, in: "ledger").map(\.numbers.count).reduce(0, +)
        }
    }
}

/// The replicas a test started, so that those a failing test left running are stopped at its end: a connection
/// still open at deinit fails an assertion, which would take the whole test process down.
private final class StartedReplicas: Sendable {
    private let started = Mutex<[Ledger.Replica]>([])

    func add(_ replica: Ledger.Replica) {
        started.withLock { $0.append(replica) }
    }

    /// Stops every replica (one stopped already ends at once; closing its connection again is harmless).
    func stopAll() async {
        for replica in started.withLock({ $0 }) { try? await replica.stop() }
    }
}
