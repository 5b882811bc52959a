import Baton
import BatonNode
import BatonTestSupport
import BatonTesting
import Foundation
import Logging
import Synchronization
import Testing

private struct PostEntry: Command {
    static let messageName = "ledger.PostEntry"
    var account: String
    var number: Int
}
private struct PostEntries: Command {
    static let messageName = "ledger.PostEntries"
    var account: String
    var numbers: [Int]
}
private struct EntryPosted: Event {
    static let messageName = "ledger.EntryPosted"
    var account: String
    var number: Int
    var partitionKey: String? { account }
}

/// The in-process broker, but the first publishes of chosen messages fail (a nack, a lost connection).
private final class FlakyTransport: Transport {
    let inner = InProcessTransport()
    private let failuresLeft: Mutex<[String: Int]>
    let failures = Atomic<Int>(0)

    init(failing messageID: String, times: Int) {
        failuresLeft = Mutex([messageID: times])
    }

    func declare(_ topology: Topology) async throws { try await inner.declare(topology) }
    func verify(_ topology: Topology) async throws { try await inner.verify(topology) }
    func subscribe(queues: [String], prefetch: Int) async throws -> any MessageSource {
        try await inner.subscribe(queues: queues, prefetch: prefetch)
    }

    func publish(_ messages: [OutgoingMessage]) async -> [PublishOutcome] {
        let failing = failuresLeft.withLock { left in
            messages.map { message in
                guard let count = left[message.envelope.messageID], count > 0 else { return false }
                left[message.envelope.messageID] = count - 1
                return true
            }
        }
        var passed = await inner.publish(zip(messages, failing).filter { !$0.1 }.map(\.0)).makeIterator()
        return failing.map { fails in
            if fails {
                failures.add(1, ordering: .relaxed)
                return .failed("the broker nacked it")
            }
            return passed.next()!
        }
    }
}

/// The in-process broker, but the confirms of chosen messages are held until the test releases them (a slow
/// broker): every message is delivered at once.
private final class SlowConfirmsTransport: Transport {
    let inner = InProcessTransport()
    private let held: Mutex<(ids: Set<String>, waiting: [CheckedContinuation<Void, Never>])>

    init(holding messageIDs: Set<String>) {
        held = Mutex((messageIDs, []))
    }

    /// Confirms the held messages, and every later one at once.
    func release() {
        let waiting = held.withLock { held in
            held.ids = []
            defer { held.waiting = [] }
            return held.waiting
        }
        for continuation in waiting { continuation.resume() }
    }

    func declare(_ topology: Topology) async throws { try await inner.declare(topology) }
    func verify(_ topology: Topology) async throws { try await inner.verify(topology) }
    func subscribe(queues: [String], prefetch: Int) async throws -> any MessageSource {
        try await inner.subscribe(queues: queues, prefetch: prefetch)
    }

    func publish(_ messages: [OutgoingMessage]) async -> [PublishOutcome] {
        let outcomes = await inner.publish(messages)
        await withCheckedContinuation { continuation in
            let hold = held.withLock { held in
                guard messages.contains(where: { held.ids.contains($0.envelope.messageID) }) else { return false }
                held.waiting.append(continuation)
                return true
            }
            if !hold { continuation.resume() }
        }
        return outcomes
    }
}

/// A ledger node over a store and a transport, with an observer queue bound to its events.
private struct Ledger {
    let node: Node
    let broker: InProcessTransport
    let running: Task<Void, any Error>

    init(store: any Store, transport: any Transport, broker: InProcessTransport) async throws {
        node = Node(
            configuration: Node.Configuration(name: "ledger"),
            store: store,
            transport: transport,
            handlers: [
                MessageHandlerHost.command(PostEntry.self, name: "post-entry") { entry, context in
                    context.publish(EntryPosted(account: entry.account, number: entry.number))
                },
                MessageHandlerHost.command(PostEntries.self, name: "post-entries") { entries, context in
                    for number in entries.numbers {
                        context.publish(EntryPosted(account: entries.account, number: number))
                    }
                },
            ],
            logger: Logger(label: "relay-order")
        )
        self.broker = broker
        try await transport.declare(node.topology)
        try await broker.declare(
            Topology(
                queues: [.init("observer")],
                bindings: [.init(queue: "observer", exchange: Routing.eventExchange, bindingKey: "ledger.#")]
            )
        )
        running = Task { [node] in try await node.run() }
    }

    /// When the commands were sent, the same for all: the ids of the events they cause derive from it.
    static let sentAt = Date()

    /// The id of the `index`-th event that the handler `handler` publishes for the command `commandID`.
    static func eventID(_ handler: String, answering commandID: String, _ index: Int) -> String {
        MessageID.derived(at: sentAt, from: handler, commandID, String(index))
    }

    /// Sends the node a command, as another service would.
    func send(_ command: some Command, id: String) async {
        let envelope = Envelope(
            messageID: id,
            messageType: type(of: command).messageType,
            timestamp: Self.sentAt,
            payload: MessageRegistry.encode(command)
        )
        let message = OutgoingMessage(
            exchange: Routing.commandExchange,
            routingKey: type(of: command).messageName,
            envelope: envelope
        )
        #expect(await broker.publish([message]) == [.confirmed])
    }

    /// The entries the observer received once `count` have, in order (`a0`: account `a`, number 0).
    func observed(_ count: Int) async throws -> [String] {
        #expect(try await eventually { broker.readyCount("observer") >= count })
        return try broker.readyMessages("observer").map {
            let entry = try JSONDecoder.baton.decode(EntryPosted.self, from: $0.envelope.payload)
            return "\(entry.account)\(entry.number)"
        }
    }

    func stop() async throws {
        node.stop()
        try await running.value
    }

    /// Queues an entry in a store as the ledger's relay would find it: committed by another replica, or by a
    /// run before a restart.
    static func queue(_ account: String, _ number: Int, in store: any Store) async throws -> Int64 {
        var envelope = Envelope(
            messageID: "entry-\(account)-\(number)",
            messageType: EntryPosted.messageType,
            timestamp: Date(),
            payload: MessageRegistry.encode(EntryPosted(account: account, number: number))
        )
        envelope.headers[partitionKeyHeader] = account
        return try await store.writeHandingOverOutbox { [envelope] work in
            try work.enqueue(envelope, exchange: Routing.eventExchange, routingKey: EntryPosted.messageName)
        }.1[0].sequence
    }
}

/// A store that counts the transactions written without waiting for the disk (the relay's own, retention's).
private final class CountingStore: Store {
    let inner: any Store
    let writesWithoutWaiting = Atomic<Int>(0)

    init(_ inner: any Store) { self.inner = inner }

    func write<T: Sendable>(_ body: @escaping @Sendable (any UnitOfWork) throws -> T) async throws -> T {
        try await inner.write(body)
    }
    func writeHandingOverOutbox<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> (T, [OutboxMessage]) {
        try await inner.writeHandingOverOutbox(body)
    }
    func writeWithoutWaitingForDisk<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> T {
        writesWithoutWaiting.add(1, ordering: .relaxed)
        return try await inner.writeWithoutWaitingForDisk(body)
    }
    func read<T: Sendable>(_ body: @escaping @Sendable (any UnitOfWork) throws -> T) async throws -> T {
        try await inner.read(body)
    }
    func claimOutbox(limit: Int, readyAt now: Date) async throws -> (rows: [OutboxMessage], nextAttempt: Date?) {
        try await inner.claimOutbox(limit: limit, readyAt: now)
    }
}

/// A store whose batch commits reach the disk only when the test says so: one that groups its syncs, on a disk
/// that has stalled.
private final class StalledDiskStore: Store {
    struct SyncFailed: Error {}

    let inner = InMemoryStore()
    private let disk = Mutex<
        (outcome: Result<Void, any Error>?, waiting: [@Sendable (Result<Void, any Error>) -> Void])
    >(
        (nil, [])
    )

    /// The disk catches up: every commit so far, and every later one at once, is on it.
    func resume() { settle(.success(())) }

    /// The sync fails: no commit so far is on the disk, and the store takes no more (as the SQLite store does).
    func failSync() { settle(.failure(SyncFailed())) }

    private func settle(_ outcome: Result<Void, any Error>) {
        let waiting = disk.withLock { disk in
            disk.outcome = outcome
            defer { disk.waiting = [] }
            return disk.waiting
        }
        for action in waiting { action(outcome) }
    }

    private var durability: Durability {
        Durability { [self] action in
            let outcome = disk.withLock { disk in
                if disk.outcome == nil { disk.waiting.append(action) }
                return disk.outcome
            }
            if let outcome { action(outcome) }
        }
    }

    /// Not held: the node's start writes through here before the stall begins.
    func write<T: Sendable>(_ body: @escaping @Sendable (any UnitOfWork) throws -> T) async throws -> T {
        try await inner.write(body)
    }
    func writeHandingOverOutbox<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> (T, [OutboxMessage]) {
        let (value, queued, durability) = try await writeHandingOverOutboxBeforeDisk(body)
        try await durability.reached()
        return (value, queued)
    }
    func writeHandingOverOutboxBeforeDisk<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> (T, [OutboxMessage], Durability) {
        if case .failure(let error) = disk.withLock({ $0.outcome }) { throw error }
        let (value, queued) = try await inner.writeHandingOverOutbox(body)
        return (value, queued, durability)
    }
    func waitForDisk() async throws {
        try await durability.reached()
    }
    func writeWithoutWaitingForDisk<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> T {
        try await inner.writeWithoutWaitingForDisk(body)
    }
    func read<T: Sendable>(_ body: @escaping @Sendable (any UnitOfWork) throws -> T) async throws -> T {
        try await inner.read(body)
    }
}

/// The relay keeps each partition key's order through failed publishes: whichever run or replica queued the
/// earlier row, and within one publish round.
@Suite struct RelayOrderTests {
    /// An event that fails to go out holds back the later events of its key (and only of its key) until it is
    /// confirmed: a partitioned receiver sees account `a`'s entries in the order they were posted. Without the
    /// hold, entry 1 goes out while entry 0 waits out its retry delay.
    @Test func aFailedPublishHoldsBackTheLaterMessagesOfItsKeyOnly() async throws {
        let firstEventID = Ledger.eventID("post-entry", answering: "post-a-0", 0)
        let transport = FlakyTransport(failing: firstEventID, times: 3)
        let ledger = try await Ledger(store: InMemoryStore(), transport: transport, broker: transport.inner)
        await ledger.send(PostEntry(account: "a", number: 0), id: "post-a-0")
        #expect(try await eventually { transport.failures.load(ordering: .relaxed) >= 1 })
        await ledger.send(PostEntry(account: "a", number: 1), id: "post-a-1")
        await ledger.send(PostEntry(account: "b", number: 0), id: "post-b-0")
        let observed = try await ledger.observed(3)
        #expect(observed == ["b0", "a0", "a1"], "a's entries in order, b's not held back: \(observed)")
        #expect(transport.failures.load(ordering: .relaxed) == 3)
        try await ledger.stop()
    }

    /// A commit that is not on the disk yet is neither acknowledged nor published, though the relay reads the
    /// table meanwhile (at least once a second) and finds its row; once the disk catches up, both go. Fails
    /// with the relay's wait after a table read removed (the read publishes the row), and with the row handed
    /// over or the delivery acknowledged at the commit.
    @Test func nothingOfACommitGoesOutBeforeItIsOnTheDisk() async throws {
        let (store, broker, ledger) = try await Self.commandCommittedOnAStalledDisk()
        try await Task.sleep(for: .milliseconds(1_500))  // past the relay's table read of every second
        #expect(broker.readyCount("observer") == 0, "nothing published before its commit is on the disk")
        #expect(broker.unsettledCount("ledger") == 1, "the command is not acknowledged before then either")
        store.resume()
        #expect(try await ledger.observed(1) == ["a0"])
        #expect(try await eventually { broker.unsettledCount("ledger") == 0 }, "acknowledged once on the disk")
        try await ledger.stop()
    }

    /// A batch whose sync fails is neither acknowledged nor published: it is requeued, and since the store takes
    /// no more commits it stays unacknowledged (tried again with a backoff) instead of being acknowledged on a
    /// commit that may not be on the disk. Fails with the batch acknowledged when its sync fails.
    @Test func aBatchWhoseSyncFailsIsNeitherAcknowledgedNorPublished() async throws {
        let (store, broker, ledger) = try await Self.commandCommittedOnAStalledDisk()
        store.failSync()
        try await Task.sleep(for: .milliseconds(1_500))  // the requeued command delivered again, the relay's read
        #expect(broker.readyCount("observer") == 0, "nothing published from a commit that did not reach the disk")
        #expect(broker.unsettledCount("ledger") == 1, "the command is not acknowledged")
        try await ledger.stop()
        #expect(broker.readyCount("ledger") == 1, "the stopped node gave it back")
    }

    /// A ledger on a store whose disk has stalled, once it has committed a command (its event's row in the
    /// outbox) that is not on the disk yet.
    private static func commandCommittedOnAStalledDisk() async throws
        -> (StalledDiskStore, InProcessTransport, Ledger)
    {
        let store = StalledDiskStore()
        let broker = InProcessTransport()
        let ledger = try await Ledger(store: store, transport: broker, broker: broker)
        await ledger.send(PostEntry(account: "a", number: 0), id: "post-a-0")
        #expect(try await eventually { try await store.read { try $0.pendingOutboxCount() } == 1 }, "committed")
        return (store, broker, ledger)
    }

    /// A relay that starts over rows a run before it left — the first of a key waiting out its retry, a later
    /// one ready — publishes the later one only after the first. The hold is the store's, not the relay's
    /// memory: without it, `a1` goes out at once (the table read returns every ready row).
    @Test func aRestartedRelayKeepsALaterRowBehindOneWaitingOutItsRetry() async throws {
        let store = InMemoryStore()
        let first = try await Ledger.queue("a", 0, in: store)
        _ = try await Ledger.queue("a", 1, in: store)
        _ = try await Ledger.queue("b", 0, in: store)
        try await store.write { work in
            for _ in 0..<5 { try work.markFailed([first], at: Date()) }  // the next try in 1.6 s
        }
        let broker = InProcessTransport()
        let ledger = try await Ledger(store: store, transport: broker, broker: broker)
        let observed = try await ledger.observed(3)
        #expect(observed.filter { $0.hasPrefix("a") } == ["a0", "a1"] && observed.contains("b0"), "\(observed)")
        try await ledger.stop()
    }

    /// A row the broker refused before goes on its own; a later row of its key read with it in one round
    /// waits for its confirm. Without waves, the later row goes in the round's batch and the refused one
    /// alone after it.
    @Test func aRowRefusedBeforeGoesBeforeTheLaterRowsOfItsKeyReadWithIt() async throws {
        let store = InMemoryStore()
        let first = try await Ledger.queue("a", 0, in: store)
        _ = try await Ledger.queue("a", 1, in: store)
        try await store.write { work in try work.markFailed([first], at: Date(timeIntervalSinceNow: -60), refused: true)
        }
        #expect(try await store.read { try $0.pendingOutbox(limit: 10, readyAt: Date()) }.count == 2)
        let broker = InProcessTransport()
        let ledger = try await Ledger(store: store, transport: broker, broker: broker)
        let observed = try await ledger.observed(2)
        #expect(observed == ["a0", "a1"], "\(observed)")
        try await ledger.stop()
    }

    /// A row this relay handed over to itself waits behind an earlier unsent row of its key in the table —
    /// one another replica of the service queued and failed to publish. Without asking the table, the handed
    /// over `a1` goes out at once.
    @Test func aHandedOverRowWaitsBehindAnotherReplicasEarlierRow() async throws {
        let store = InMemoryStore()
        let first = try await Ledger.queue("a", 0, in: store)
        try await store.write { work in
            for _ in 0..<5 { try work.markFailed([first], at: Date()) }  // the next try in 1.6 s
        }
        let broker = InProcessTransport()
        let ledger = try await Ledger(store: store, transport: broker, broker: broker)
        await ledger.send(PostEntry(account: "a", number: 1), id: "post-a-1")
        await ledger.send(PostEntry(account: "b", number: 0), id: "post-b-0")
        let observed = try await ledger.observed(3)
        #expect(observed.filter { $0.hasPrefix("a") } == ["a0", "a1"] && observed.contains("b0"), "\(observed)")
        try await ledger.stop()
    }

    /// The rows the broker confirmed are deleted by the node's next transaction, not by one of the relay's own:
    /// while commands keep coming (each 25 ms after the event of the one before went out, so each publish
    /// round has rows to delete) the relay writes next to nothing, and when they stop it deletes the last rows
    /// itself. Without the deletions riding along, it writes once per round (40), or once per wait for them
    /// (about 20); with them, a few, and up to 10 when the machine is so loaded that a 25 ms sleep outlasts the
    /// marks' 50 ms delay (seen once in a full suite's run).
    @Test func theNextTransactionDeletesTheRowsTheBrokerConfirmed() async throws {
        let store = CountingStore(InMemoryStore())
        let broker = InProcessTransport()
        let ledger = try await Ledger(store: store, transport: broker, broker: broker)
        for number in 0..<40 {
            await ledger.send(PostEntry(account: "a", number: number), id: "post-a-\(number)")
            _ = try await ledger.observed(number + 1)
            try await Task.sleep(for: .milliseconds(25))
        }
        let ownWrites = store.writesWithoutWaiting.load(ordering: .relaxed)
        #expect(ownWrites < 15, "\(ownWrites) transactions of the relay's own for 40 rounds")
        #expect(try await eventually { try await store.read { try $0.pendingOutboxCount() } == 0 })
        #expect(store.writesWithoutWaiting.load(ordering: .relaxed) > ownWrites, "the last rows: by the relay")
        #expect(try await ledger.observed(40).count == 40, "each row sent once")
        try await ledger.stop()
    }

    /// Two entries of one key committed together go out in one round; when the broker nacks the first, the
    /// second is not published in that round (it would be taken before the first). Without waves, `a1` is
    /// confirmed beside the nacked `a0`.
    @Test func aNackInARoundHoldsBackTheLaterRowsOfItsKeyInThatRound() async throws {
        let firstEventID = Ledger.eventID("post-entries", answering: "post-a", 0)
        let transport = FlakyTransport(failing: firstEventID, times: 1)
        let ledger = try await Ledger(store: InMemoryStore(), transport: transport, broker: transport.inner)
        await ledger.send(PostEntries(account: "a", numbers: [0, 1]), id: "post-a")
        let observed = try await ledger.observed(2)
        #expect(observed == ["a0", "a1"], "\(observed)")
        #expect(transport.failures.load(ordering: .relaxed) == 1)
        try await ledger.stop()
    }

    /// While the broker has not confirmed a round, the relay publishes the next rows (a window, not a round
    /// trip), except those of an order scope the outstanding round has a row of: `b0` goes out while `a0`'s
    /// confirm is outstanding, `a1` only after it. Fails with one round at a time (`b0` waits too), and with
    /// the window but no hold by scope (`a1` goes out before `a0` is confirmed).
    @Test func theRelayPublishesWhileAConfirmIsOutstandingButNotTheRowsOfItsScope() async throws {
        let transport = SlowConfirmsTransport(holding: [Ledger.eventID("post-entry", answering: "post-a-0", 0)])
        let ledger = try await Ledger(store: InMemoryStore(), transport: transport, broker: transport.inner)
        await ledger.send(PostEntry(account: "a", number: 0), id: "post-a-0")
        #expect(try await ledger.observed(1) == ["a0"], "published; its confirm is held")
        await ledger.send(PostEntry(account: "a", number: 1), id: "post-a-1")
        await ledger.send(PostEntry(account: "b", number: 0), id: "post-b-0")
        #expect(try await ledger.observed(2) == ["a0", "b0"], "b0 does not wait for a0's confirm")
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await ledger.observed(2) == ["a0", "b0"], "a1 waits for a0's confirm")
        transport.release()
        #expect(try await ledger.observed(3) == ["a0", "b0", "a1"])
        try await ledger.stop()
    }
}
