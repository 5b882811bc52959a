import Baton
import BatonNode
import Foundation
import GRDB

/// One transaction's view of a ``SQLiteStore``: the store port's unit of work over one GRDB database
/// connection, valid only inside the closure it was handed to.
struct SQLiteUnitOfWork: UnitOfWork {
    let db: Database
    /// Collects the outbox rows this transaction queues, when its writer hands them to a relay.
    let queued: QueuedMessages?

    init(db: Database, queued: QueuedMessages? = nil) {
        self.db = db
        self.queued = queued
    }

    /// Runs a statement whose text never changes, compiled once per connection and reused.
    func run(_ sql: String, _ arguments: StatementArguments) throws {
        try db.cachedStatement(sql: sql).execute(arguments: arguments)
    }

    /// A cached statement to fetch with.
    func statement(_ sql: String) throws -> Statement {
        try db.cachedStatement(sql: sql)
    }

    /// Runs `body` in a savepoint: if it throws, only its own changes are rolled back, and the error is
    /// rethrown. Lets one transaction hold a batch of messages whose handlers may fail independently.
    func inSavepoint(_ body: () throws -> Void) throws {
        var failure: (any Error)?
        let queuedBefore = queued?.messages.count ?? 0
        defer { if failure != nil { queued?.messages.removeSubrange(queuedBefore...) } }
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
        try Bool.fetchOne(
            try statement("SELECT 1 FROM inbox WHERE consumer = ? AND message_id = ?"),
            arguments: [consumer, messageID]
        ) ?? false
    }

    /// Records that `consumer` handled the message; commits with the handler's effects.
    func markHandled(_ messageID: String, consumer: String, at time: Date) throws {
        try run(
            "INSERT INTO inbox (consumer, message_id, handled_at) VALUES (?, ?, ?)",
            [consumer, messageID, time.timeIntervalSince1970]
        )
    }

    // MARK: Outbox

    /// Queues a message for the relay. A key queued before (a handler that ran again) is not queued twice.
    /// - Parameters:
    ///   - envelope: The message.
    ///   - exchange: Where it goes.
    ///   - routingKey: Its routing key.
    ///   - key: The de-duplication key; the message id unless the same message is sent on purpose again
    ///     (a dead letter, a replay).
    func enqueue(_ envelope: Envelope, exchange: String, routingKey: String, key: String?) throws {
        try run(
            """
            INSERT INTO outbox (message_id, exchange, routing_key, envelope, created_at)
            VALUES (?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING
            """,
            [
                key ?? envelope.messageID, exchange, routingKey, try JSONEncoder.baton.encode(envelope),
                envelope.timestamp.timeIntervalSince1970,
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
    /// they were queued.
    /// - Parameters:
    ///   - limit: At most this many.
    ///   - now: Wall-clock time; rows whose next attempt is later are left for later.
    func pendingOutbox(limit: Int, readyAt now: Date) throws -> [OutboxMessage] {
        try Row.fetchAll(
            try statement(
                """
                SELECT sequence, exchange, routing_key, envelope, refused FROM outbox
                WHERE sent_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= ?)
                ORDER BY sequence LIMIT ?
                """
            ),
            arguments: [now.millisecondsSince1970, limit]
        ).map { row in
            OutboxMessage(
                sequence: row["sequence"],
                exchange: row["exchange"],
                routingKey: row["routing_key"],
                envelope: try JSONDecoder.baton.decode(Envelope.self, from: row["envelope"]),
                wasRefused: row["refused"]
            )
        }
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
                "SELECT MIN(next_attempt_at) FROM outbox WHERE sent_at IS NULL AND next_attempt_at IS NOT NULL"
            )
        ).map(Date.init(millisecondsSince1970:))
    }

    /// Marks relayed messages as sent.
    func markSent(_ sequences: [Int64], at time: Date) throws {
        guard !sequences.isEmpty else { return }
        try db.execute(
            sql:
                "UPDATE outbox SET sent_at = ? WHERE sequence IN (\(sequences.map { _ in "?" }.joined(separator: ",")))",
            arguments: StatementArguments([time.timeIntervalSince1970] + sequences)
        )
    }

    /// How many messages wait for the relay.
    func pendingOutboxCount() throws -> Int {
        try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL") ?? 0
    }

    /// Every queued message id with the number of times it appears (for crash tests: always 1).
    func outboxMessageIDs() throws -> [String] {
        try String.fetchAll(db, sql: "SELECT message_id FROM outbox ORDER BY sequence")
    }

    // MARK: Aggregate streams

    /// Appends events to a stream, checking that nobody appended since the writer read it.
    /// - Parameters:
    ///   - events: The envelopes, in order.
    ///   - stream: The stream name, e.g. `order-o-1`.
    ///   - expectedVersion: The stream's length the writer saw (0 for a new stream).
    /// - Throws: ``ConcurrencyError`` if the stream has grown meanwhile.
    func append(_ events: [Envelope], to stream: String, expectedVersion: Int64) throws {
        let current = try streamVersion(stream)
        guard current == expectedVersion else {
            throw ConcurrencyError(stream: stream, expectedVersion: expectedVersion, actualVersion: current)
        }
        for (offset, event) in events.enumerated() {
            try run(
                """
                INSERT INTO streams (stream, position, message_id, message_type, payload, recorded_at)
                VALUES (?, ?, ?, ?, ?, ?)
                """,
                [
                    stream, expectedVersion + Int64(offset) + 1, event.messageID, event.messageType, event.payload,
                    event.timestamp.timeIntervalSince1970,
                ]
            )
        }
    }

    /// The number of events in a stream (0 if it does not exist).
    func streamVersion(_ stream: String) throws -> Int64 {
        try Int64.fetchOne(try statement("SELECT MAX(position) FROM streams WHERE stream = ?"), arguments: [stream])
            ?? 0
    }

    /// A stream's events in order, as (type, JSON payload).
    func readStream(_ stream: String) throws -> [(messageType: String, payload: Data)] {
        try Row.fetchAll(
            try statement("SELECT message_type, payload FROM streams WHERE stream = ? ORDER BY position"),
            arguments: [stream]
        ).map { ($0["message_type"], $0["payload"]) }
    }

    // MARK: Process managers

    /// An instance as stored: its committed version and its state after its latest transition. One lookup;
    /// no handler runs.
    /// - Returns: `nil` if the instance does not exist.
    func storedInstance(_ instanceID: String, processManager: String) throws -> StoredInstance? {
        try Row.fetchOne(
            try statement(
                """
                SELECT i.version, s.version AS state_version, s.instance FROM process_instances i
                LEFT JOIN process_snapshots s ON s.process_manager = i.process_manager AND s.instance_id = i.instance_id
                WHERE i.process_manager = ? AND i.instance_id = ?
                """
            ),
            arguments: [processManager, instanceID]
        ).map { row in
            let version: Int64 = row["version"]
            let stateVersion: Int64? = row["state_version"]
            return StoredInstance(
                version: version,
                state: stateVersion == version ? row["instance"] : nil,
                earlierState: stateVersion != version ? row["instance"] : nil
            )
        }
    }

    /// The transitions of an instance after `version`, in order (its timeline).
    func transitions(
        of processManager: String,
        instance instanceID: String,
        after version: Int64
    ) throws
        -> [ProcessTransition]
    {
        try Data.fetchAll(
            try statement(
                """
                SELECT record FROM process_transitions
                WHERE process_manager = ? AND instance_id = ? AND version > ? ORDER BY version
                """
            ),
            arguments: [processManager, instanceID, version]
        ).map { try JSONDecoder.baton.decode(ProcessTransition.self, from: $0) }
    }

    /// Stores a transition: appends it to the instance's stream, stores the instance's state after it (what
    /// loading reads), updates timers and associations, and queues what it issued in the outbox. The unique key
    /// on (process manager, instance, version) refuses a second writer of the same version.
    func record(
        _ transition: ProcessTransition,
        processManager name: String,
        instanceID: String,
        lifecycle: ProcessLifecycle,
        state: Data,
        route: (IssuedMessage) -> (exchange: String, routingKey: String)
    ) throws {
        let time = transition.at.timeIntervalSince1970
        try run(
            "INSERT INTO process_transitions (process_manager, instance_id, version, record) VALUES (?, ?, ?, ?)",
            [name, instanceID, transition.version, try JSONEncoder.baton.encode(transition)]
        )
        try run(
            """
            INSERT INTO process_instances (process_manager, instance_id, lifecycle, version, started_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (process_manager, instance_id) DO UPDATE SET
                lifecycle = excluded.lifecycle, version = excluded.version, updated_at = excluded.updated_at
            """,
            [name, instanceID, lifecycle.rawValue, transition.version, time, time]
        )
        try run(
            """
            INSERT INTO process_snapshots (process_manager, instance_id, version, instance) VALUES (?, ?, ?, ?)
            ON CONFLICT (process_manager, instance_id) DO UPDATE SET
                version = excluded.version, instance = excluded.instance
            """,
            [name, instanceID, transition.version, state]
        )
        for operation in transition.timers {
            switch operation {
            case .schedule(let timer, let dueAt):
                try run(
                    """
                    INSERT INTO timers (process_manager, instance_id, name, due_at, fire_at) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (process_manager, instance_id, name) DO UPDATE SET
                        due_at = excluded.due_at, fire_at = excluded.fire_at, attempts = 0, dead_letter_id = NULL
                    """,
                    [name, instanceID, timer, dueAt.millisecondsSince1970, dueAt.millisecondsSince1970]
                )
            case .cancel(let timer):
                try run(
                    "DELETE FROM timers WHERE process_manager = ? AND instance_id = ? AND name = ?",
                    [name, instanceID, timer]
                )
            }
        }
        for (association, value) in transition.associations {
            try run(
                """
                INSERT INTO process_associations (process_manager, name, value, instance_id) VALUES (?, ?, ?, ?)
                ON CONFLICT (process_manager, name, value) DO UPDATE SET instance_id = excluded.instance_id
                """,
                [name, association, value, instanceID]
            )
        }
        for message in transition.issued {
            let destination = route(message)
            try enqueue(message.envelope, exchange: destination.exchange, routingKey: destination.routingKey)
        }
    }

    /// The instance associated with `value` under `name`, if any.
    func instance(associatedWith value: String, as name: String, processManager: String) throws -> String? {
        try String.fetchOne(
            try statement(
                "SELECT instance_id FROM process_associations WHERE process_manager = ? AND name = ? AND value = ?"
            ),
            arguments: [processManager, name, value]
        )
    }

    /// Instances of a process manager, most recently changed first.
    func instances(
        of processManager: String,
        openOnly: Bool,
        limit: Int
    ) throws
        -> [InstanceSummary]
    {
        let filter = openOnly ? "AND lifecycle NOT IN ('completed', 'failed')" : ""
        return try Row.fetchAll(
            db,
            sql: """
                SELECT instance_id, lifecycle, version, started_at, updated_at FROM process_instances
                WHERE process_manager = ? \(filter) ORDER BY updated_at DESC, instance_id LIMIT ?
                """,
            arguments: [processManager, limit]
        ).map {
            InstanceSummary(
                instanceID: $0["instance_id"],
                lifecycle: ProcessLifecycle(rawValue: $0["lifecycle"]) ?? .failed,
                version: $0["version"],
                startedAt: Date(timeIntervalSince1970: $0["started_at"]),
                updatedAt: Date(timeIntervalSince1970: $0["updated_at"])
            )
        }
    }

    // MARK: Timers

    /// Removes a timer row that no longer matches its instance (a stale firing).
    func deleteTimer(_ timer: DueTimer) throws {
        try run(
            "DELETE FROM timers WHERE process_manager = ? AND instance_id = ? AND name = ? AND due_at = ?",
            [timer.processManager, timer.instanceID, timer.name, timer.dueAt.millisecondsSince1970]
        )
    }

    /// Timers whose next attempt is at or before `time`, earliest first; parked timers are not among them.
    func dueTimers(before time: Date, limit: Int) throws -> [DueTimer] {
        try Row.fetchAll(
            try statement(
                """
                SELECT process_manager, instance_id, name, due_at, fire_at, attempts FROM timers
                WHERE fire_at <= ? AND dead_letter_id IS NULL ORDER BY fire_at LIMIT ?
                """
            ),
            arguments: [time.millisecondsSince1970, limit]
        ).map {
            DueTimer(
                processManager: $0["process_manager"],
                instanceID: $0["instance_id"],
                name: $0["name"],
                dueAt: Date(millisecondsSince1970: $0["due_at"]),
                nextAttemptAt: Date(millisecondsSince1970: $0["fire_at"]),
                attempts: $0["attempts"]
            )
        }
    }

    /// Records a failed firing: the timer is tried again at `time`, on its own, and the others go on.
    /// - Parameters:
    ///   - timer: The timer as it was due.
    ///   - time: Its next attempt (business time).
    func retryTimer(_ timer: DueTimer, at time: Date) throws {
        try run(
            """
            UPDATE timers SET attempts = attempts + 1, fire_at = ?
            WHERE process_manager = ? AND instance_id = ? AND name = ? AND due_at = ?
            """,
            [
                time.millisecondsSince1970, timer.processManager, timer.instanceID, timer.name,
                timer.dueAt.millisecondsSince1970,
            ]
        )
    }

    /// Parks a timer that failed its last attempt under its dead letter: it fires again when that is replayed
    /// (``replayDeadLetter(id:at:route:)``), or never if its instance reschedules or cancels it first.
    func parkTimer(_ timer: DueTimer, deadLetter id: Int64) throws {
        try run(
            """
            UPDATE timers SET attempts = attempts + 1, dead_letter_id = ?
            WHERE process_manager = ? AND instance_id = ? AND name = ? AND due_at = ?
            """,
            [id, timer.processManager, timer.instanceID, timer.name, timer.dueAt.millisecondsSince1970]
        )
    }

    /// The timers parked under dead letters.
    func parkedTimers() throws -> [DueTimer] {
        try Row.fetchAll(
            db,
            sql: """
                SELECT process_manager, instance_id, name, due_at, fire_at, attempts FROM timers
                WHERE dead_letter_id IS NOT NULL ORDER BY dead_letter_id
                """
        ).map {
            DueTimer(
                processManager: $0["process_manager"],
                instanceID: $0["instance_id"],
                name: $0["name"],
                dueAt: Date(millisecondsSince1970: $0["due_at"]),
                nextAttemptAt: Date(millisecondsSince1970: $0["fire_at"]),
                attempts: $0["attempts"]
            )
        }
    }

    // MARK: Dead letters

    /// Stores a dead letter.
    /// - Returns: Its id.
    @discardableResult
    func addDeadLetter(_ letter: DeadLetter) throws -> Int64 {
        try run(
            """
            INSERT INTO dead_letters (message_id, message_type, exchange, routing_key, headers, body, reason, handler,
                attempts, dead_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                letter.messageID, letter.messageType, letter.exchange, letter.routingKey,
                try JSONEncoder.baton.encode(letter.headers),
                letter.body, letter.reason, letter.handler, letter.attempts, letter.deadAt.timeIntervalSince1970,
            ]
        )
        return db.lastInsertedRowID
    }

    /// Whether a message id already has a dead letter that was not replayed (a redelivery of it is dropped).
    func hasOpenDeadLetter(messageID: String) throws -> Bool {
        try Bool.fetchOne(
            try statement("SELECT 1 FROM dead_letters WHERE message_id = ? AND replayed_at IS NULL"),
            arguments: [messageID]
        ) ?? false
    }

    /// Dead letters, newest first.
    func deadLetters(includeReplayed: Bool, limit: Int) throws -> [DeadLetter] {
        try Row.fetchAll(
            db,
            sql: """
                SELECT * FROM dead_letters \(includeReplayed ? "" : "WHERE replayed_at IS NULL")
                ORDER BY id DESC LIMIT ?
                """,
            arguments: [limit]
        ).map(DeadLetter.init(row:))
    }

    /// One dead letter.
    func deadLetter(id: Int64) throws -> DeadLetter? {
        try Row.fetchOne(db, sql: "SELECT * FROM dead_letters WHERE id = ?", arguments: [id]).map(DeadLetter.init(row:))
    }

    /// Sets the timer parked under dead letter `id` due at `now` again, with fresh attempts.
    func rearmTimer(deadLetter id: Int64, at now: Date) throws -> Bool {
        try run(
            "UPDATE timers SET attempts = 0, fire_at = ?, dead_letter_id = NULL WHERE dead_letter_id = ?",
            [now.millisecondsSince1970, id]
        )
        return db.changesCount > 0
    }

    // MARK: Documents (read models)

    func saveDocument(
        _ body: Data,
        in collection: String,
        id: String,
        alias: String?,
        status: String?,
        at time: Date
    ) throws {
        try run(
            """
            INSERT INTO documents (collection, id, alias, status, body, updated_at) VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (collection, id) DO UPDATE SET
                alias = excluded.alias, status = excluded.status, body = excluded.body, updated_at = excluded.updated_at
            """,
            [collection, id, alias, status, body, time.timeIntervalSince1970]
        )
    }

    func documentBody(in collection: String, idOrAlias key: String) throws -> Data? {
        // Two lookups, each on its own index: one query with `id = ? OR alias = ?` scans the whole collection
        // (found by the benchmark: the cost of every order grew with the number of orders), and so does the
        // alias lookup unless told its index (without statistics the planner prefers the primary key's prefix).
        if let body = try Data.fetchOne(
            try statement("SELECT body FROM documents WHERE collection = ? AND id = ?"),
            arguments: [collection, key]
        ) {
            return body
        }
        return try Data.fetchOne(
            try statement(
                "SELECT body FROM documents INDEXED BY documents_alias WHERE collection = ? AND alias = ? LIMIT 1"
            ),
            arguments: [collection, key]
        )
    }

    func documentBodies(in collection: String, status: String?, limit: Int) throws -> [Data] {
        if let status {
            return try Data.fetchAll(
                try statement(
                    "SELECT body FROM documents INDEXED BY documents_status WHERE collection = ? AND status = ? ORDER BY id LIMIT ?"
                ),
                arguments: [collection, status, limit]
            )
        }
        return try Data.fetchAll(
            try statement("SELECT body FROM documents WHERE collection = ? ORDER BY id LIMIT ?"),
            arguments: [collection, limit]
        )
    }

    /// Marks a dead letter replayed.
    func markReplayed(deadLetter id: Int64, at time: Date) throws {
        try run(
            "UPDATE dead_letters SET replayed_at = ? WHERE id = ?",
            [time.timeIntervalSince1970, id]
        )
    }
}

/// The outbox rows one write transaction queued, in order (see ``SQLiteStore/writeHandingOverOutbox(_:)``).
final class QueuedMessages {
    var messages: [OutboxMessage] = []
}

extension DeadLetter {
    init(row: Row) throws {
        self.init(
            messageID: row["message_id"],
            messageType: row["message_type"],
            exchange: row["exchange"],
            routingKey: row["routing_key"],
            headers: try JSONDecoder.baton.decode([String: String].self, from: row["headers"]),
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
