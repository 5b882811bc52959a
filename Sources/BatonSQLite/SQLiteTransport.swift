import Baton
import BatonNode
import Foundation
import GRDB
import Synchronization

/// The transport port over a SQLite store's file: its queues are rows of the file (`queue_messages`), routed by
/// the exchanges and bindings declared in it, which the file keeps like a broker keeps durable ones.
///
/// For several nodes of one process that share the file (``SQLiteStore/shared(by:)``): a message one of them
/// issues is written into the queues that take it by the transaction that issued it — no outbox row, no relay —
/// and its receiver deletes it in the transaction that handles it — no inbox row, no acknowledgement. So it is
/// handled once by construction: a crash at any instant leaves it either unhandled and in its queue, or handled
/// and gone. A message published through ``publish(_:)`` (from outside the nodes: a producer, a test, a
/// benchmark's driver) may come twice from its producer, so its receiver records it in the inbox as usual. A
/// node on another store may consume these queues too: it takes a message the usual way (its inbox, then an
/// acknowledgement that deletes the row).
///
/// It routes direct, topic and fanout exchanges and the default exchange (straight into the queue named by the
/// routing key). Consistent-hash and headers exchanges, exchange-to-exchange bindings and single-active-consumer
/// queues are refused when declared: they spread a partitioned service over replicas, which one process does
/// not have.
public final class SQLiteTransport: Transport {
    private let store: SQLiteStore
    private var queues: StoreQueues { store.queues }

    /// Serves the queues of `store`'s file, with the exchanges, queues and bindings declared in it before and
    /// every message still in its queues; from now on a transaction of any handle of the file
    /// (``SQLiteStore/shared(by:)``) writes a message these queues take straight into them.
    /// - Throws: A SQLite error if the file cannot be read.
    public init(store: SQLiteStore) throws {
        self.store = store
        try store.readNow { db in try store.queues.load(db) }
    }

    public func declare(_ topology: Topology) async throws {
        try queues.check(topology)
        try await store.writeDatabase { db in
            for exchange in topology.exchanges {
                try db.execute(
                    sql: "INSERT INTO queue_exchanges (name, kind) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    arguments: [exchange.name, exchange.kind.rawValue]
                )
            }
            for queue in topology.queues {
                try db.execute(
                    sql: "INSERT INTO queue_names (name) VALUES (?) ON CONFLICT DO NOTHING",
                    arguments: [queue.name]
                )
            }
            for binding in topology.bindings {
                try db.execute(
                    sql:
                        "INSERT INTO queue_bindings (exchange, queue, binding_key) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    arguments: [binding.exchange, binding.queue, binding.bindingKey]
                )
            }
        }
        queues.add(topology)
    }

    public func verify(_ topology: Topology) async throws {
        try queues.verify(topology)
    }

    public func publish(_ messages: [OutgoingMessage]) async -> [PublishOutcome] {
        var outcomes: [PublishOutcome] = []
        var writes: [(message: OutgoingMessage, queues: [String])] = []
        for message in messages {
            guard let takers = queues.route(exchange: message.exchange, routingKey: message.routingKey) else {
                outcomes.append(.refused("no exchange '\(message.exchange)'"))
                continue
            }
            if takers.isEmpty && message.exchange == Routing.commandExchange {
                outcomes.append(.failed("no queue took the command '\(message.routingKey)'"))
                continue
            }
            writes.append((message, takers))
            outcomes.append(.confirmed)
        }
        guard !writes.isEmpty else { return outcomes }
        do {
            try await store.writeDatabase { [store] db in
                let work = SQLiteUnitOfWork(db: db, store: store)
                for (message, takers) in writes { try work.write(message, to: takers, once: false) }
            }
            return outcomes
        } catch {
            return outcomes.map { $0 == .confirmed ? .failed("not written to the store: \(error)") : $0 }
        }
    }

    public func subscribe(queues names: [String], prefetch: Int) async throws -> any MessageSource {
        precondition(prefetch > 0, "prefetch must be positive")
        if let missing = names.first(where: { !queues.hasQueue($0) }) {
            throw TransportError(code: .notFound, message: "no queue '\(missing)'")
        }
        return QueueSource(store: store, queues: names, prefetch: prefetch)
    }

    /// How many messages a queue holds: waiting, or delivered and not yet taken.
    public func messageCount(_ queue: String) async throws -> Int {
        try await store.readDatabase { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM queue_messages WHERE queue = ?", arguments: [queue]) ?? 0
        }
    }
}

extension SQLiteUnitOfWork {
    /// Writes a message into queues, in this transaction; their consumers are woken when it commits.
    /// - Parameter once: A transaction wrote it (no other copy of it can exist), rather than a producer.
    func write(_ message: OutgoingMessage, to takers: [String], once: Bool) throws {
        guard !takers.isEmpty else { return }
        let record = message.envelope.storedRecord
        for queue in takers {
            try run(
                """
                INSERT INTO queue_messages (queue, exchange, routing_key, content_type, envelope, once)
                VALUES (?, ?, ?, ?, ?, ?)
                """,
                [queue, message.exchange, message.routingKey, message.contentType, record, once]
            )
        }
        queues.afterCommit(of: db) { $0.wake.formUnion(takers) }
    }
}

/// The queues a store file holds for ``SQLiteTransport``: the exchanges and bindings declared in it, and which
/// of their messages are delivered. Shared by every handle of the file; empty (and routing nothing) until a
/// transport serves the file.
final class StoreQueues: Sendable {
    private struct Routes {
        var exchanges: [String: Topology.Exchange.Kind] = [:]
        var queues: Set<String> = []
        var bindings: [String: [(queue: String, key: String)]] = [:]
        /// Routes worked out before, by exchange and routing key (a handful of message names, matched once).
        var cache: [String: [String: [String]]] = [:]
    }

    /// What the transaction being written did to the queues, acted on when it commits: the queues it wrote into,
    /// the delivered rows it took.
    struct Pending {
        var wake: Set<String> = []
        var taken: [Int64] = []
        var isHooked = false
    }

    /// A consumer: its queues, what it holds (delivered, not settled, not taken by a committed transaction).
    private struct Consumer {
        var queues: Set<String>
        var prefetch: Int
        var signal: Signal
        var held: Set<Int64> = []
    }

    private struct Deliveries {
        /// Per queue, the highest sequence handed out.
        var delivered: [String: Int64] = [:]
        /// Delivered rows, with their queue and consumer.
        var inFlight: [Int64: (queue: String, consumer: Int)] = [:]
        /// Given back by a consumer: delivered again first.
        var returned: [Int64: String] = [:]
        /// Acknowledged rows no transaction took, to delete.
        var toDelete: [Int64] = []
        var isDeleting = false
        var consumers: [Int: Consumer] = [:]
        var nextConsumer = 0

        /// Ends a delivery; returns the consumer's signal (it has room again).
        mutating func settle(_ sequence: Int64) -> (queue: String, signal: Signal?)? {
            guard let (queue, consumer) = inFlight.removeValue(forKey: sequence) else { return nil }
            consumers[consumer]?.held.remove(sequence)
            return (queue, consumers[consumer]?.signal)
        }
    }

    private let routes = Mutex<Routes?>(nil)
    private let pending = Mutex(Pending())
    private let deliveries = Mutex(Deliveries())

    /// Takes the exchanges, queues and bindings the file holds: from now on it routes.
    func load(_ db: Database) throws {
        var topology = Topology()
        for row in try Row.fetchAll(db, sql: "SELECT name, kind FROM queue_exchanges") {
            guard let kind = Topology.Exchange.Kind(rawValue: row[1]) else { continue }
            topology.exchanges.append(.init(row[0], kind: kind))
        }
        topology.queues = try String.fetchAll(db, sql: "SELECT name FROM queue_names").map { .init($0) }
        topology.bindings = try Row.fetchAll(db, sql: "SELECT exchange, queue, binding_key FROM queue_bindings").map {
            .init(queue: $0[1], exchange: $0[0], bindingKey: $0[2])
        }
        routes.withLock { $0 = $0 ?? Routes() }
        add(topology)
    }

    /// Refuses what this transport cannot route, and an exchange declared before with another kind.
    func check(_ topology: Topology) throws {
        for exchange in topology.exchanges where ![.direct, .topic, .fanout].contains(exchange.kind) {
            throw TransportError(
                code: .conflict,
                message:
                    "exchange '\(exchange.name)' is \(exchange.kind.rawValue): the store's transport routes direct, topic and fanout exchanges"
            )
        }
        if let binding = topology.exchangeBindings.first {
            throw TransportError(
                code: .conflict,
                message:
                    "the store's transport binds no exchange to another ('\(binding.source)' to '\(binding.destination)')"
            )
        }
        if let queue = topology.queues.first(where: \.hasSingleActiveConsumer) {
            throw TransportError(
                code: .conflict,
                message:
                    "queue '\(queue.name)' has a single active consumer: the store's transport serves one process, without partitions"
            )
        }
        try routes.withLock { routes in
            for exchange in topology.exchanges {
                if let kind = routes?.exchanges[exchange.name], kind != exchange.kind {
                    throw TransportError(
                        code: .conflict,
                        message: "exchange '\(exchange.name)' exists with another type"
                    )
                }
            }
            let declared = Set(topology.exchanges.map(\.name))
            for binding in topology.bindings
            where !(declared.contains(binding.exchange) || routes?.exchanges[binding.exchange] != nil) {
                throw TransportError(code: .notFound, message: "bind: no exchange '\(binding.exchange)'")
            }
        }
    }

    /// Adds what a topology declares (after ``check(_:)``, once the file holds it).
    func add(_ topology: Topology) {
        routes.withLock { routes in
            var current = routes ?? Routes()
            for exchange in topology.exchanges { current.exchanges[exchange.name] = exchange.kind }
            current.queues.formUnion(topology.queues.map(\.name))
            for binding in topology.bindings
            where !(current.bindings[binding.exchange] ?? []).contains(where: {
                $0.queue == binding.queue && $0.key == binding.bindingKey
            }) {
                current.bindings[binding.exchange, default: []].append((binding.queue, binding.bindingKey))
            }
            current.cache = [:]
            routes = current
        }
    }

    func verify(_ topology: Topology) throws {
        try routes.withLock { routes in
            let missing =
                topology.exchanges.first { routes?.exchanges[$0.name] == nil }.map { "exchange '\($0.name)'" }
                ?? topology.queues.first { routes?.queues.contains($0.name) != true }.map { "queue '\($0.name)'" }
            if let missing { throw TransportError(code: .notFound, message: "no \(missing)") }
        }
    }

    func hasQueue(_ name: String) -> Bool {
        routes.withLock { $0?.queues.contains(name) ?? false }
    }

    /// The queues a message goes to, each once; `nil` when no transport serves the file (the outbox holds the
    /// message, as in any store) or the exchange does not exist (the outbox holds it, and this transport refuses
    /// the relay's publish).
    func route(exchange: String, routingKey: String) -> [String]? {
        routes.withLock { routes -> [String]? in
            guard routes != nil else { return nil }
            if let known = routes!.cache[exchange]?[routingKey] { return known }
            let takers: [String]
            if exchange.isEmpty {
                takers = routes!.queues.contains(routingKey) ? [routingKey] : []
            } else {
                guard let kind = routes!.exchanges[exchange] else { return nil }
                var matched: [String] = []
                for (queue, key) in routes!.bindings[exchange] ?? [] where !matched.contains(queue) {
                    let matches =
                        switch kind {
                        case .fanout: true
                        case .topic: Topology.topicMatches(pattern: key, key: routingKey)
                        default: key == routingKey
                        }
                    if matches { matched.append(queue) }
                }
                takers = matched
            }
            routes!.cache[exchange, default: [:]][routingKey] = takers
            return takers
        }
    }

    /// Notes what the transaction being written did, to act on when it commits (once per transaction: the
    /// file has one writer).
    func afterCommit(of db: Database, _ note: (inout Pending) -> Void) {
        let hook = pending.withLock { pending -> Bool in
            note(&pending)
            defer { pending.isHooked = true }
            return !pending.isHooked
        }
        guard hook else { return }
        db.afterNextTransaction { [self] _ in
            let done = pending.withLock { pending in
                defer { pending = Pending() }
                return pending
            }
            // A row a committed transaction took is settled: its consumer has room again at once, not only once
            // the disk has the commit (a power loss takes back the taking with the handling).
            let signals = deliveries.withLock { deliveries in
                done.taken.compactMap { deliveries.settle($0)?.signal }
                    + deliveries.consumers.values.filter { !$0.queues.isDisjoint(with: done.wake) }.map(\.signal)
            }
            for signal in signals { signal.notify() }  // a second notification of one signal changes nothing
        } onRollback: { [self] _ in
            pending.withLock { $0 = Pending() }
        }
    }

    func addConsumer(_ queues: [String], prefetch: Int, signal: Signal) -> Int {
        deliveries.withLock { deliveries in
            deliveries.nextConsumer += 1
            deliveries.consumers[deliveries.nextConsumer] = Consumer(
                queues: Set(queues),
                prefetch: prefetch,
                signal: signal
            )
            return deliveries.nextConsumer
        }
    }

    /// How many more rows a consumer may take (`nil` once it is cancelled), where each of its queues' delivery
    /// stands, and its queues' given-back rows.
    func positions(
        _ consumer: Int,
        _ queues: [String]
    ) -> (room: Int, delivered: [String: Int64], returned: [Int64])? {
        deliveries.withLock { deliveries in
            guard let state = deliveries.consumers[consumer] else { return nil }
            return (
                state.prefetch - state.held.count,
                Dictionary(uniqueKeysWithValues: queues.map { ($0, deliveries.delivered[$0] ?? 0) }),
                deliveries.returned.filter { queues.contains($0.value) }.keys.sorted()
            )
        }
    }

    /// Hands out to `consumer` the rows read that no other consumer took meanwhile, up to `limit`, in sequence
    /// order.
    func take(_ rows: [QueuedRow], for consumer: Int, limit: Int) -> [QueuedRow] {
        deliveries.withLock { deliveries in
            guard deliveries.consumers[consumer] != nil else { return [] }
            var taken: [QueuedRow] = []
            for row in rows.sorted(by: { $0.sequence < $1.sequence }) where taken.count < limit {
                if deliveries.returned.removeValue(forKey: row.sequence) != nil {
                    taken.append(row.redelivered())
                } else if row.sequence > deliveries.delivered[row.queue] ?? 0 {
                    deliveries.delivered[row.queue] = row.sequence
                    taken.append(row)
                } else {
                    continue
                }
                deliveries.inFlight[row.sequence] = (row.queue, consumer)
                deliveries.consumers[consumer]?.held.insert(row.sequence)
            }
            return taken
        }
    }

    /// Settles a delivered row: acknowledged (deleted, unless a committed transaction took it: then it is
    /// settled already) or given back.
    /// - Returns: Whether rows wait to be deleted and nobody deletes them yet.
    func settle(_ sequence: Int64, accept: Bool) -> Bool {
        let (flush, signal) = deliveries.withLock { deliveries -> (Bool, Signal?) in
            guard let (queue, signal) = deliveries.settle(sequence) else { return (false, nil) }
            if !accept {
                deliveries.returned[sequence] = queue
                return (false, signal)
            }
            deliveries.toDelete.append(sequence)
            defer { deliveries.isDeleting = true }
            return (!deliveries.isDeleting, signal)
        }
        signal?.notify()
        return flush
    }

    /// The acknowledged rows to delete now; none left ends the deleting.
    func rowsToDelete() -> [Int64] {
        deliveries.withLock { deliveries in
            defer { deliveries.toDelete = [] }
            if deliveries.toDelete.isEmpty { deliveries.isDeleting = false }
            return deliveries.toDelete
        }
    }

    /// Ends a consumer: what it holds goes back to its queues, for the other consumers.
    func removeConsumer(_ id: Int) {
        let signals = deliveries.withLock { deliveries -> [Signal] in
            guard let removed = deliveries.consumers.removeValue(forKey: id) else { return [] }
            for sequence in removed.held {
                guard let (queue, _) = deliveries.inFlight.removeValue(forKey: sequence) else { continue }
                deliveries.returned[sequence] = queue
            }
            return deliveries.consumers.values.map(\.signal) + [removed.signal]
        }
        for signal in signals { signal.notify() }
    }

    /// Notes, in the transaction being written, that it deletes a delivered row.
    func noteTaken(_ sequence: Int64, in db: Database) {
        afterCommit(of: db) { $0.taken.append(sequence) }
    }
}

/// A row of `queue_messages` as read.
struct QueuedRow: Sendable {
    var sequence: Int64
    var queue: String
    var message: OutgoingMessage
    var once: Bool
    var isRedelivered = false

    /// The columns a query selects to read a row with ``init(_:)``, in its order.
    static let columns = "sequence, queue, exchange, routing_key, content_type, envelope, once"

    /// Reads a row selected as ``columns``.
    init(_ row: ColumnReader) throws {
        sequence = row.int64(0)
        queue = row.text(1)
        message = OutgoingMessage(
            exchange: row.text(2),
            routingKey: row.text(3),
            envelope: try Envelope(storedRecord: row.data(5)),
            contentType: row.text(4)
        )
        once = row.int64(6) != 0
    }

    func redelivered() -> QueuedRow {
        var row = self
        row.isRedelivered = true
        return row
    }
}

/// A consumer of queues of the file: reads the rows past what was delivered (and those given back), at most the
/// prefetch unsettled, and waits for a commit that writes into its queues (or for a second to pass: another
/// process may write into the file).
private final class QueueSource: MessageSource, Sendable {
    private let store: SQLiteStore
    private let queues: [String]
    private let signal = Signal()
    private let id: Int

    init(store: SQLiteStore, queues: [String], prefetch: Int) {
        self.store = store
        self.queues = queues
        id = store.queues.addConsumer(queues, prefetch: prefetch, signal: signal)
    }

    func nextBatch(maxCount: Int) async throws -> [IncomingMessage]? {
        while true {
            guard let (room, delivered, returned) = store.queues.positions(id, queues) else { return nil }
            try Task.checkCancellation()
            if room > 0 {
                let limit = min(room, maxCount)
                // On the calling thread (the node's own), as its transactions are: a batch read is short.
                let rows = try store.readNow { db in
                    var rows: [QueuedRow] = []
                    if !returned.isEmpty {
                        rows += try db.cachedStatement(
                            sql: """
                                SELECT \(QueuedRow.columns) FROM queue_messages
                                WHERE sequence IN (SELECT value FROM json_each(?))
                                """
                        ).allRows(binding: [SQLiteUnitOfWork.jsonArray(returned.prefix(limit))], in: db, QueuedRow.init)
                    }
                    for queue in queues where rows.count < limit {
                        rows += try db.cachedStatement(
                            sql: """
                                SELECT \(QueuedRow.columns) FROM queue_messages
                                WHERE queue = ? AND sequence > ? ORDER BY sequence LIMIT ?
                                """
                        ).allRows(binding: [queue, delivered[queue] ?? 0, limit], in: db, QueuedRow.init)
                    }
                    return rows
                }
                let taken = store.queues.take(rows, for: id, limit: limit)
                if !taken.isEmpty { return taken.map(incoming) }
            }
            await withTaskGroup(of: Void.self) { [signal] group in
                group.addTask { await signal.wait() }
                group.addTask { try? await Task.sleep(for: .seconds(1)) }
                await group.next()
                group.cancelAll()
            }
        }
    }

    func cancel() async {
        store.queues.removeConsumer(id)
    }

    private func settle(_ sequence: Int64, accept: Bool) {
        guard store.queues.settle(sequence, accept: accept) else { return }
        Task { [store] in await Self.deleteAcknowledged(store) }
    }

    /// Deletes acknowledged rows that no transaction took, until none is left (on a failure, they stay: a
    /// later start delivers them again, and their consumer's inbox knows them).
    private static func deleteAcknowledged(_ store: SQLiteStore) async {
        while true {
            let sequences = store.queues.rowsToDelete()
            guard !sequences.isEmpty else { return }
            try? await store.writeDatabase { db in
                try db.execute(
                    sql: "DELETE FROM queue_messages WHERE sequence IN (SELECT value FROM json_each(?))",
                    arguments: [SQLiteUnitOfWork.jsonArray(sequences)]
                )
            }
        }
    }

    private func incoming(_ row: QueuedRow) -> IncomingMessage {
        let queues = store.queues
        let sequence = row.sequence
        return IncomingMessage(
            delivering: row.message,
            isRedelivered: row.isRedelivered,
            isWrittenOnce: row.once,
            settle: { [self] accept in settle(sequence, accept: accept) },
            takeInTransaction: { work in
                guard let work = work as? SQLiteUnitOfWork, work.queues === queues else { return false }
                try work.run("DELETE FROM queue_messages WHERE sequence = ?", [sequence])
                queues.noteTaken(sequence, in: work.db)
                return true
            }
        )
    }
}
