import Baton
import BatonNode
import Foundation
import GRDB

/// One transaction's view of a ``SQLiteStore``: the store port's unit of work over one GRDB database
/// connection, valid only inside the closure it was handed to.
struct SQLiteUnitOfWork: UnitOfWork {
    let db: Database
    /// Whose outbox rows, held messages and timers these are (``SQLiteStore/owner``).
    let owner: String
    /// The file's queues (``SQLiteTransport``): a message a queue takes is written there instead of the outbox.
    let queues: StoreQueues
    /// Collects the outbox rows this transaction queues, when its writer hands them to a relay.
    let queued: QueuedMessages?
    /// The process instances' rows this transaction looked up or wrote.
    let instanceRows = InstanceRows()

    init(db: Database, store: SQLiteStore, queued: QueuedMessages? = nil) {
        self.db = db
        owner = store.owner
        queues = store.queues
        self.queued = queued
    }

    /// Runs a statement whose text never changes, compiled once per connection and reused, in this transaction.
    func run(_ sql: String, _ arguments: [any SQLiteArgument]) throws {
        try db.cachedStatement(sql: sql).run(binding: arguments, in: db)
    }

    /// A cached statement to fetch with.
    func statement(_ sql: String) throws -> Statement {
        try db.cachedStatement(sql: sql)
    }

    /// The first row of a query whose text never changes (compiled once per connection), read by `read`.
    func firstRow<T>(
        _ sql: String,
        _ arguments: [any SQLiteArgument],
        _ read: (ColumnReader) throws -> T
    ) throws -> T? {
        try db.cachedStatement(sql: sql).firstRow(binding: arguments, in: db, read)
    }

    /// Whether a query whose text never changes returns a row.
    func exists(_ sql: String, _ arguments: [any SQLiteArgument]) throws -> Bool {
        try firstRow(sql, arguments) { _ in true } ?? false
    }

    /// Every row of a query whose text never changes, each read by `read`.
    func allRows<T>(
        _ sql: String,
        _ arguments: [any SQLiteArgument],
        _ read: (ColumnReader) throws -> T
    ) throws -> [T] {
        try db.cachedStatement(sql: sql).allRows(binding: arguments, in: db, read)
    }

    /// Runs `body` in a savepoint: if it throws, only its own changes are rolled back, and the error is
    /// rethrown. Lets one transaction hold a batch of messages whose handlers may fail independently.
    func inSavepoint(_ body: () throws -> Void) throws {
        var failure: (any Error)?
        let queuedBefore = queued?.messages.count ?? 0
        defer {
            if failure != nil {
                queued?.messages.removeSubrange(queuedBefore...)
                instanceRows.forget()
            }
        }
        try db.inSavepoint {
            do {
                try body()
                return .commit
            } catch {
                failure = error
                return .rollback
            }
        }
        if let failure { throw failure }
    }

    // MARK: Inbox

    /// Whether `consumer` has handled the message already (a redelivery or a re-sent copy).
    func hasHandled(_ messageID: String, consumer: String) throws -> Bool {
        try exists("SELECT 1 FROM inbox WHERE consumer = ? AND message_id = ?", [consumer, messageID])
    }

    /// Records that `consumer` handled the message; commits with the handler's effects.
    func markHandled(_ messageID: String, consumer: String, issuedAt: Date, at time: Date) throws {
        try run(
            "INSERT INTO inbox (consumer, message_id, issued_at, handled_at) VALUES (?, ?, ?, ?)",
            [consumer, messageID, issuedAt.timeIntervalSince1970, time.timeIntervalSince1970]
        )
    }

    /// Forgets handled messages issued before `time`, oldest first (one range of `inbox_issued`): the owner's own
    /// (its name is its consumer's) in a file several nodes share, each with its own window; all in a store of
    /// one node.
    func forgetHandled(issuedBefore time: Date, limit: Int) throws -> Int {
        try run(
            """
            DELETE FROM inbox WHERE (consumer, message_id) IN (
                SELECT consumer, message_id FROM inbox INDEXED BY inbox_issued
                WHERE issued_at < ?1 AND (?3 = '' OR consumer = ?3) ORDER BY issued_at LIMIT ?2)
            """,
            [time.timeIntervalSince1970, limit, owner]
        )
        return db.changesCount
    }

    // MARK: Outbox

    /// Queues a message for the relay. A key still waiting for the relay is not queued twice. When the file's
    /// ``SQLiteTransport`` routes it, it goes into the queues that take it instead, in this transaction (an event
    /// none takes is dropped, as a broker drops it; a command none takes waits in the outbox, refused by the
    /// transport until a queue takes it).
    /// - Parameters:
    ///   - envelope: The message.
    ///   - exchange: Where it goes.
    ///   - routingKey: Its routing key.
    ///   - key: The de-duplication key; the message id unless the same message is sent on purpose again
    ///     (a dead letter, a replay).
    func enqueue(_ envelope: Envelope, exchange: String, routingKey: String, key: String?) throws {
        if let takers = queues.route(exchange: exchange, routingKey: routingKey),
            !takers.isEmpty || exchange != Routing.commandExchange
        {
            try write(
                OutgoingMessage(exchange: exchange, routingKey: routingKey, envelope: envelope),
                to: takers,
                once: true
            )
            return
        }
        try run(
            """
            INSERT INTO outbox (message_id, exchange, routing_key, envelope, created_at, scope, owner)
            VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING
            """,
            [
                key ?? envelope.messageID, exchange, routingKey, envelope.storedRecord,
                envelope.timestamp.timeIntervalSince1970,
                OutboxMessage.orderScope(exchange: exchange, routingKey: routingKey, envelope: envelope), owner,
            ]
        )
        if let queued, db.changesCount > 0 {
            queued.messages.append(
                OutboxMessage(
                    sequence: db.lastInsertedRowID,
                    exchange: exchange,
                    routingKey: routingKey,
                    envelope: envelope,
                    wasRefused: false
                )
            )
        }
    }

    /// The oldest messages not yet confirmed by the broker and not waiting out a retry delay, in the order
    /// they were queued, without those behind an earlier row of their scope that waits (`outbox_scope`).
    /// - Parameters:
    ///   - limit: At most this many.
    ///   - now: Wall-clock time; rows whose next attempt is later are left for later.
    func pendingOutbox(limit: Int, readyAt now: Date) throws -> [OutboxMessage] {
        try Row.fetchAll(
            try statement(
                """
                SELECT sequence, exchange, routing_key, envelope, refused FROM outbox AS row
                WHERE sent_at IS NULL AND owner = ?3 AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
                    AND NOT EXISTS (
                        SELECT 1 FROM outbox AS earlier
                        WHERE earlier.scope = row.scope AND earlier.sequence < row.sequence
                            AND earlier.sent_at IS NULL AND earlier.next_attempt_at > ?1)
                ORDER BY sequence LIMIT ?2
                """
            ),
            arguments: [now.millisecondsSince1970, limit, owner]
        ).map { row in
            OutboxMessage(
                sequence: row["sequence"],
                exchange: row["exchange"],
                routingKey: row["routing_key"],
                envelope: try Envelope(storedRecord: row["envelope"]),
                wasRefused: row["refused"]
            )
        }
    }

    /// How many messages not yet sent have a sequence up to `sequence`, without `sent` (a range of
    /// `outbox_pending`; the exclusions as one JSON array, so that the statement stays the same).
    func unsentOutboxCount(through sequence: Int64, excluding sent: Set<Int64>) throws -> Int {
        guard !sent.isEmpty else {
            return try Int.fetchOne(
                try statement("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND sequence <= ? AND owner = ?"),
                arguments: [sequence, owner]
            ) ?? 0
        }
        let excluded = Self.jsonArray(sent)
        return try Int.fetchOne(
            try statement(
                """
                SELECT COUNT(*) FROM outbox
                WHERE sent_at IS NULL AND sequence <= ? AND sequence NOT IN (SELECT value FROM json_each(?))
                    AND owner = ?
                """
            ),
            arguments: [sequence, excluded, owner]
        ) ?? 0
    }

    /// The messages not yet sent of the given scopes up to `sequence` (a range of `outbox_scope` per scope).
    func unsentOutbox(scopes: Set<String>, through sequence: Int64) throws -> [(scope: String, sequence: Int64)] {
        guard !scopes.isEmpty else { return [] }
        return try Row.fetchAll(
            db,
            sql: """
                SELECT scope, sequence FROM outbox
                WHERE scope IN (\(scopes.map { _ in "?" }.joined(separator: ","))) AND sequence <= ? AND sent_at IS NULL
                    AND owner = ?
                """,
            arguments: StatementArguments(Array(scopes)) + [sequence, owner]
        ).map { (scope: $0[0], sequence: $0[1]) }
    }

    /// Records failed publishes: each row waits 0.1 s, doubling per failure up to 30 s, before its next try,
    /// so rows that cannot be published (no queue for a command yet) never hold up the others.
    /// - Parameters:
    ///   - sequences: The rows.
    ///   - now: When they failed.
    ///   - refused: The broker refused them (rather than the connection failing): from now on each is
    ///     published on its own (``OutboxMessage/wasRefused``).
    func markFailed(_ sequences: [Int64], at now: Date, refused: Bool) throws {
        for sequence in sequences {
            try run(
                """
                UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ? + MIN(30000, 100 << MIN(attempts, 9)),
                    refused = refused OR ?
                WHERE sequence = ?
                """,
                [now.millisecondsSince1970, refused, sequence]
            )
        }
    }

    /// When the earliest row waiting out a retry delay may be tried again, if any.
    func nextOutboxAttempt() throws -> Date? {
        try Int64.fetchOne(
            try statement(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE sent_at IS NULL AND next_attempt_at IS NOT NULL AND owner = ?"
            ),
            arguments: [owner]
        ).map(Date.init(millisecondsSince1970:))
    }

    /// Deletes relayed messages (the sequences as one JSON array: one cached statement for any number).
    func removeSent(_ sequences: [Int64]) throws {
        guard !sequences.isEmpty else { return }
        try run("DELETE FROM outbox WHERE sequence IN (SELECT value FROM json_each(?))", [Self.jsonArray(sequences)])
    }

    /// Sequences as a JSON array, for `json_each`.
    static func jsonArray(_ sequences: some Collection<Int64>) -> String {
        "[" + sequences.map(String.init).joined(separator: ",") + "]"
    }

    /// How many messages wait for the relay.
    func pendingOutboxCount() throws -> Int {
        try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND owner = ?", arguments: [owner])
            ?? 0
    }

    func statistics(idleSince: Date) throws -> StoreStatistics {
        var statistics = StoreStatistics()
        if let outbox = try Row.fetchOne(
            db,
            sql: "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE sent_at IS NULL AND owner = ?",
            arguments: [owner]
        ) {
            statistics.pendingOutbox = outbox[0]
            statistics.oldestPendingOutbox = (outbox[1] as Double?).map(Date.init(timeIntervalSince1970:))
        }
        statistics.openDeadLetters =
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL") ?? 0
        let counts = try Row.fetchAll(
            db,
            sql:
                "SELECT process_manager, lifecycle, COUNT(*) FROM process_instances GROUP BY process_manager, lifecycle"
        )
        for row in counts {
            guard let lifecycle = ProcessLifecycle(rawValue: row[1]) else { continue }
            statistics.instances[row[0], default: [:]][lifecycle] = row[2]
        }
        let open = ProcessLifecycle.allCases.filter { !$0.isClosed }
        let idle = try Row.fetchAll(
            db,
            sql: """
                SELECT process_manager, COUNT(*) FROM process_instances
                WHERE lifecycle IN (\(open.map { _ in "?" }.joined(separator: ","))) AND updated_at < ?
                GROUP BY process_manager
                """,
            arguments: StatementArguments(open.map(\.rawValue)) + [idleSince.timeIntervalSince1970]
        )
        for row in idle { statistics.idleInstances[row[0]] = row[1] }
        return statistics
    }

    /// The key of every message waiting for the relay, in the order queued.
    func outboxMessageIDs() throws -> [String] {
        try String.fetchAll(
            db,
            sql: "SELECT message_id FROM outbox WHERE owner = ? ORDER BY sequence",
            arguments: [owner]
        )
    }
}

/// The outbox rows one write transaction queued, in order (see ``SQLiteStore/writeHandingOverOutbox(_:)``).
final class QueuedMessages {
    var messages: [OutboxMessage] = []
}

/// What one transaction learned of process instances' rows: each one's row id, or that it has none. Loading an
/// instance learns it, so that recording its transition updates the row by its id, or inserts it, instead of an
/// upsert that returns the id, which costs nearly twice as much (SQLite runs a `RETURNING` statement to its end
/// into a table of its own; it was half of what recording a transition cost). Valid only inside its transaction;
/// forgotten when a savepoint rolls back (an insert it saw may be undone) or a row is deleted.
final class InstanceRows {
    /// An instance's row, as this transaction knows it.
    enum Known {
        /// The row's id (`process_instances.id`).
        case row(Int64)
        /// No row.
        case absent
    }

    private struct Key: Hashable {
        let processManager: String
        let instanceID: String
    }

    private var known: [Key: Known] = [:]

    /// What is known of the row of `instanceID` of `processManager`; `nil` if nothing.
    subscript(processManager: String, instanceID: String) -> Known? {
        get { known[Key(processManager: processManager, instanceID: instanceID)] }
        set { known[Key(processManager: processManager, instanceID: instanceID)] = newValue }
    }

    /// Forgets everything: the next write of an instance finds its row by its key again.
    func forget() {
        known.removeAll()
    }
}

extension DeadLetter {
    init(row: Row) throws {
        self.init(
            messageID: row["message_id"],
            messageType: row["message_type"],
            exchange: row["exchange"],
            routingKey: row["routing_key"],
            headers: try WireJSON.decode([String: String].self, from: row["headers"]),
            body: row["body"],
            reason: row["reason"],
            handler: row["handler"],
            attempts: row["attempts"],
            deadAt: Date(timeIntervalSince1970: row["dead_at"])
        )
        id = row["id"]
        replayedAt = (row["replayed_at"] as Double?).map(Date.init(timeIntervalSince1970:))
    }
}
