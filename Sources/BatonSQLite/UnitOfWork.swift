import Baton
import Foundation
import GRDB

/// One transaction's view of the store. Obtained from ``SQLiteStore/write(_:)`` or ``SQLiteStore/read(_:)``;
/// valid only inside that closure.
public struct UnitOfWork {
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
    public func inSavepoint(_ body: () throws -> Void) throws {
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
    public func hasHandled(_ messageID: String, consumer: String) throws -> Bool {
        try Bool.fetchOne(
            try statement("SELECT 1 FROM inbox WHERE consumer = ? AND message_id = ?"),
            arguments: [consumer, messageID]
        ) ?? false
    }

    /// Records that `consumer` handled the message; commits with the handler's effects.
    public func markHandled(_ messageID: String, consumer: String, at time: Date) throws {
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
    public func enqueue(_ envelope: Envelope, exchange: String, routingKey: String, key: String? = nil) throws {
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
    public func pendingOutbox(limit: Int, readyAt now: Date = .distantFuture) throws -> [OutboxMessage] {
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
    public func markFailed(_ sequences: [Int64], at now: Date, refused: Bool = false) throws {
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
    public func nextOutboxAttempt() throws -> Date? {
        try Int64.fetchOne(
            try statement(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE sent_at IS NULL AND next_attempt_at IS NOT NULL"
            )
        ).map(Date.init(millisecondsSince1970:))
    }

    /// Marks relayed messages as sent.
    public func markSent(_ sequences: [Int64], at time: Date) throws {
        guard !sequences.isEmpty else { return }
        try db.execute(
            sql:
                "UPDATE outbox SET sent_at = ? WHERE sequence IN (\(sequences.map { _ in "?" }.joined(separator: ",")))",
            arguments: StatementArguments([time.timeIntervalSince1970] + sequences)
        )
    }

    /// How many messages wait for the relay.
    public func pendingOutboxCount() throws -> Int {
        try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL") ?? 0
    }

    /// Every queued message id with the number of times it appears (for crash tests: always 1).
    public func outboxMessageIDs() throws -> [String] {
        try String.fetchAll(db, sql: "SELECT message_id FROM outbox ORDER BY sequence")
    }

    // MARK: Aggregate streams

    /// Appends events to a stream, checking that nobody appended since the writer read it.
    /// - Parameters:
    ///   - events: The envelopes, in order.
    ///   - stream: The stream name, e.g. `order-o-1`.
    ///   - expectedVersion: The stream's length the writer saw (0 for a new stream).
    /// - Throws: ``ConcurrencyError`` if the stream has grown meanwhile.
    public func append(_ events: [Envelope], to stream: String, expectedVersion: Int64) throws {
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
    public func streamVersion(_ stream: String) throws -> Int64 {
        try Int64.fetchOne(try statement("SELECT MAX(position) FROM streams WHERE stream = ?"), arguments: [stream])
            ?? 0
    }

    /// A stream's events in order, as (type, JSON payload).
    public func readStream(_ stream: String) throws -> [(messageType: String, payload: Data)] {
        try Row.fetchAll(
            try statement("SELECT message_type, payload FROM streams WHERE stream = ? ORDER BY position"),
            arguments: [stream]
        ).map { ($0["message_type"], $0["payload"]) }
    }

    // MARK: Process managers

    /// An instance as stored: its committed version and its state after its latest transition. One lookup;
    /// no handler runs.
    /// - Returns: `nil` if the instance does not exist.
    public func storedInstance(_ instanceID: String, processManager: String) throws -> StoredInstance? {
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

    /// The committed version of an instance, or `nil` if it does not exist (one indexed lookup: lets a cache
    /// check that what it holds is what is stored).
    public func instanceVersion(_ instanceID: String, processManager: String) throws -> Int64? {
        try Int64.fetchOne(
            try statement("SELECT version FROM process_instances WHERE process_manager = ? AND instance_id = ?"),
            arguments: [processManager, instanceID]
        )
    }

    /// The transitions of an instance after `version`, in order (its timeline).
    public func transitions(
        of processManager: String,
        instance instanceID: String,
        after version: Int64 = 0
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
    /// loading reads), updates timers and associations, and queues what it issued in the outbox.
    /// - Parameters:
    ///   - transition: What the engine decided.
    ///   - instance: The instance after it.
    ///   - engine: The process manager.
    ///   - route: Where each issued message goes (exchange, routing key).
    public func record<State>(
        _ transition: ProcessTransition,
        instance: ProcessInstance<State>,
        of engine: ProcessEngine<State>,
        route: (IssuedMessage) -> (exchange: String, routingKey: String)
    ) throws {
        let name = engine.definition.name
        let time = transition.at.timeIntervalSince1970
        try run(
            "INSERT INTO process_transitions (process_manager, instance_id, version, record) VALUES (?, ?, ?, ?)",
            [name, instance.id, transition.version, try JSONEncoder.baton.encode(transition)]
        )
        try run(
            """
            INSERT INTO process_instances (process_manager, instance_id, lifecycle, version, started_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (process_manager, instance_id) DO UPDATE SET
                lifecycle = excluded.lifecycle, version = excluded.version, updated_at = excluded.updated_at
            """,
            [name, instance.id, instance.lifecycle.rawValue, instance.version, time, time]
        )
        try run(
            """
            INSERT INTO process_snapshots (process_manager, instance_id, version, instance) VALUES (?, ?, ?, ?)
            ON CONFLICT (process_manager, instance_id) DO UPDATE SET
                version = excluded.version, instance = excluded.instance
            """,
            [name, instance.id, instance.version, try JSONEncoder.baton.encode(instance)]
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
                    [name, instance.id, timer, dueAt.millisecondsSince1970, dueAt.millisecondsSince1970]
                )
            case .cancel(let timer):
                try run(
                    "DELETE FROM timers WHERE process_manager = ? AND instance_id = ? AND name = ?",
                    [name, instance.id, timer]
                )
            }
        }
        for (association, value) in transition.associations {
            try run(
                """
                INSERT INTO process_associations (process_manager, name, value, instance_id) VALUES (?, ?, ?, ?)
                ON CONFLICT (process_manager, name, value) DO UPDATE SET instance_id = excluded.instance_id
                """,
                [name, association, value, instance.id]
            )
        }
        for message in transition.issued {
            let destination = route(message)
            try enqueue(message.envelope, exchange: destination.exchange, routingKey: destination.routingKey)
        }
    }

    /// The instance associated with `value` under `name`, if any.
    public func instance(associatedWith value: String, as name: String, processManager: String) throws -> String? {
        try String.fetchOne(
            try statement(
                "SELECT instance_id FROM process_associations WHERE process_manager = ? AND name = ? AND value = ?"
            ),
            arguments: [processManager, name, value]
        )
    }

    /// Instances of a process manager, most recently changed first.
    public func instances(
        of processManager: String,
        openOnly: Bool = false,
        limit: Int = 1000
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
    public func deleteTimer(_ timer: DueTimer) throws {
        try run(
            "DELETE FROM timers WHERE process_manager = ? AND instance_id = ? AND name = ? AND due_at = ?",
            [timer.processManager, timer.instanceID, timer.name, timer.dueAt.millisecondsSince1970]
        )
    }

    /// The pending timer to try first, if any (parked timers wait for their dead letter's replay).
    public func nextTimer() throws -> DueTimer? {
        try dueTimers(before: .distantFuture, limit: 1).first
    }

    /// Timers whose next attempt is at or before `time`, earliest first; parked timers are not among them.
    public func dueTimers(before time: Date, limit: Int) throws -> [DueTimer] {
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
    public func retryTimer(_ timer: DueTimer, at time: Date) throws {
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
    public func parkTimer(_ timer: DueTimer, deadLetter id: Int64) throws {
        try run(
            """
            UPDATE timers SET attempts = attempts + 1, dead_letter_id = ?
            WHERE process_manager = ? AND instance_id = ? AND name = ? AND due_at = ?
            """,
            [id, timer.processManager, timer.instanceID, timer.name, timer.dueAt.millisecondsSince1970]
        )
    }

    /// The timers parked under dead letters.
    public func parkedTimers() throws -> [DueTimer] {
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
    public func addDeadLetter(_ letter: DeadLetter) throws -> Int64 {
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
    public func hasOpenDeadLetter(messageID: String) throws -> Bool {
        try Bool.fetchOne(
            try statement("SELECT 1 FROM dead_letters WHERE message_id = ? AND replayed_at IS NULL"),
            arguments: [messageID]
        ) ?? false
    }

    /// Dead letters, newest first.
    public func deadLetters(includeReplayed: Bool = false, limit: Int = 1000) throws -> [DeadLetter] {
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
    public func deadLetter(id: Int64) throws -> DeadLetter? {
        try Row.fetchOne(db, sql: "SELECT * FROM dead_letters WHERE id = ?", arguments: [id]).map(DeadLetter.init(row:))
    }

    /// Queues a dead letter to be published again, with its original id and type, and marks it replayed.
    /// - Parameters:
    ///   - id: The dead letter.
    ///   - now: The business time of the replay.
    ///   - route: Where to publish it: exchange, routing key and headers to add to its own.
    /// - Returns: `false` if there is no such dead letter or it was replayed already.
    @discardableResult
    public func replayDeadLetter(
        id: Int64,
        at now: Date,
        route: (DeadLetter) -> (exchange: String, routingKey: String, headers: [String: String])
    ) throws -> Bool {
        guard let letter = try deadLetter(id: id), letter.replayedAt == nil else { return false }
        if try rearmParkedMessage(deadLetter: id, at: now) {
            // A message held in the store: tried again from there, ahead of the messages of its instance that
            // wait behind it; it never goes back through the broker.
            try markReplayed(deadLetter: id, at: now)
            return true
        }
        if letter.messageType == DueTimer.deadLetterType {
            // A parked timer fires again now, with fresh attempts; one its instance rescheduled or cancelled
            // meanwhile is gone, and there is nothing to fire.
            try run(
                "UPDATE timers SET attempts = 0, fire_at = ?, dead_letter_id = NULL WHERE dead_letter_id = ?",
                [now.millisecondsSince1970, id]
            )
            try markReplayed(deadLetter: id, at: now)
            return true
        }
        let (exchange, routingKey, extraHeaders) = route(letter)
        let envelope = Envelope(
            messageID: letter.messageID,
            messageType: letter.messageType,
            timestamp: now,
            headers: letter.headers.merging(extraHeaders) { _, added in added },
            payload: letter.body
        )
        try enqueue(envelope, exchange: exchange, routingKey: routingKey, key: "replay:\(id)")
        try markReplayed(deadLetter: id, at: now)
        return true
    }

    // MARK: Documents (read models)

    /// Stores a read-model document (replacing the one with the same id).
    /// - Parameters:
    ///   - document: The value, stored as JSON.
    ///   - collection: e.g. `orders`.
    ///   - id: Its id in the collection.
    ///   - alias: A second key it can be found by (e.g. a checkout id).
    ///   - status: A value to filter listings by.
    ///   - time: When it changed.
    public func save<D: Encodable>(
        _ document: D,
        in collection: String,
        id: String,
        alias: String? = nil,
        status: String? = nil,
        at time: Date
    ) throws {
        try run(
            """
            INSERT INTO documents (collection, id, alias, status, body, updated_at) VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (collection, id) DO UPDATE SET
                alias = excluded.alias, status = excluded.status, body = excluded.body, updated_at = excluded.updated_at
            """,
            [collection, id, alias, status, try JSONEncoder.baton.encode(document), time.timeIntervalSince1970]
        )
    }

    /// The document with this id or, if none has it, the one with this alias.
    public func document<D: Decodable>(_ type: D.Type, in collection: String, idOrAlias key: String) throws -> D? {
        // Two lookups, each on its own index: one query with `id = ? OR alias = ?` scans the whole collection
        // (found by the benchmark: the cost of every order grew with the number of orders), and so does the
        // alias lookup unless told its index (without statistics the planner prefers the primary key's prefix).
        var body = try Data.fetchOne(
            try statement("SELECT body FROM documents WHERE collection = ? AND id = ?"),
            arguments: [collection, key]
        )
        if body == nil {
            body = try Data.fetchOne(
                try statement(
                    "SELECT body FROM documents INDEXED BY documents_alias WHERE collection = ? AND alias = ? LIMIT 1"
                ),
                arguments: [collection, key]
            )
        }
        return try body.map { try JSONDecoder.baton.decode(D.self, from: $0) }
    }

    /// The documents of a collection, optionally with one status, ordered by id.
    public func documents<D: Decodable>(
        _ type: D.Type,
        in collection: String,
        status: String? = nil,
        limit: Int = 100_000
    ) throws -> [D] {
        let bodies: [Data]
        if let status {
            bodies = try Data.fetchAll(
                try statement(
                    "SELECT body FROM documents INDEXED BY documents_status WHERE collection = ? AND status = ? ORDER BY id LIMIT ?"
                ),
                arguments: [collection, status, limit]
            )
        } else {
            bodies = try Data.fetchAll(
                try statement("SELECT body FROM documents WHERE collection = ? ORDER BY id LIMIT ?"),
                arguments: [collection, limit]
            )
        }
        return try bodies.map { try JSONDecoder.baton.decode(D.self, from: $0) }
    }

    /// Marks a dead letter replayed.
    public func markReplayed(deadLetter id: Int64, at time: Date) throws {
        try run(
            "UPDATE dead_letters SET replayed_at = ? WHERE id = ?",
            [time.timeIntervalSince1970, id]
        )
    }
}

/// An instance's row in the store.
public struct StoredInstance: Sendable, Hashable {
    /// Its committed version (the number of transitions).
    public var version: Int64
    /// The instance (JSON) as it was after its latest transition.
    public var state: Data?
    /// For an instance that last moved before the store kept the state of every transition: a snapshot of an
    /// earlier version, if one was taken (the transitions after it rebuild the rest once).
    public var earlierState: Data?
}

/// A message waiting in the outbox.
public struct OutboxMessage: Sendable, Hashable {
    /// Its position in the outbox.
    public var sequence: Int64
    /// Where it goes.
    public var exchange: String
    /// Its routing key.
    public var routingKey: String
    /// The message.
    public var envelope: Envelope
    /// The broker refused it before: it is published on its own, so that a refusal (which closes the channel
    /// over everything in flight) costs no other message anything.
    public var wasRefused: Bool
}

/// The outbox rows one write transaction queued, in order (see ``SQLiteStore/writeHandingOverOutbox(_:)``).
final class QueuedMessages {
    var messages: [OutboxMessage] = []
}

/// A timer that is due or pending.
public struct DueTimer: Sendable, Hashable {
    /// The message type of a timer's dead letter (it has no message of its own).
    public static let deadLetterType = "baton.timer"

    /// The process manager.
    public var processManager: String
    /// The instance.
    public var instanceID: String
    /// The timer's name.
    public var name: String
    /// When it is due (the business deadline its instance set).
    public var dueAt: Date
    /// When it is tried next: `dueAt`, or later after failed attempts.
    public var nextAttemptAt: Date
    /// Failed attempts so far.
    public var attempts: Int

    /// Creates a timer.
    public init(
        processManager: String,
        instanceID: String,
        name: String,
        dueAt: Date,
        nextAttemptAt: Date? = nil,
        attempts: Int = 0
    ) {
        self.processManager = processManager
        self.instanceID = instanceID
        self.name = name
        self.dueAt = dueAt
        self.nextAttemptAt = nextAttemptAt ?? dueAt
        self.attempts = attempts
    }
}

/// An instance in a listing.
public struct InstanceSummary: Sendable, Hashable, Codable {
    /// The instance id.
    public var instanceID: String
    /// Where it is.
    public var lifecycle: ProcessLifecycle
    /// How many transitions it has had.
    public var version: Int64
    /// When it started.
    public var startedAt: Date
    /// When it last moved.
    public var updatedAt: Date
}

/// A message that could not be handled, kept with the reason.
public struct DeadLetter: Sendable, Hashable, Codable {
    /// The store's id for it (0 before it is stored).
    public var id: Int64
    /// The message id (may be empty for a message that had none).
    public var messageID: String
    /// Its type property (empty if it had none, as external producers' messages).
    public var messageType: String
    /// The exchange it was published to.
    public var exchange: String
    /// The routing key it was published with.
    public var routingKey: String
    /// Its headers, as text.
    public var headers: [String: String]
    /// Its body.
    public var body: Data
    /// Why it was dead-lettered.
    public var reason: String
    /// The handler that failed (or the stage that refused it: `decode`, `subscriber`).
    public var handler: String
    /// How many times handling was attempted.
    public var attempts: Int
    /// When it was dead-lettered.
    public var deadAt: Date
    /// When it was replayed, if it was.
    public var replayedAt: Date?

    /// Creates a dead letter.
    public init(
        messageID: String,
        messageType: String,
        exchange: String,
        routingKey: String,
        headers: [String: String],
        body: Data,
        reason: String,
        handler: String,
        attempts: Int,
        deadAt: Date
    ) {
        self.id = 0
        self.messageID = messageID
        self.messageType = messageType
        self.exchange = exchange
        self.routingKey = routingKey
        self.headers = headers
        self.body = body
        self.reason = reason
        self.handler = handler
        self.attempts = attempts
        self.deadAt = deadAt
    }

    init(row: Row) throws {
        id = row["id"]
        messageID = row["message_id"]
        messageType = row["message_type"]
        exchange = row["exchange"]
        routingKey = row["routing_key"]
        headers = try JSONDecoder.baton.decode([String: String].self, from: row["headers"])
        body = row["body"]
        reason = row["reason"]
        handler = row["handler"]
        attempts = row["attempts"]
        deadAt = Date(timeIntervalSince1970: row["dead_at"])
        replayedAt = (row["replayed_at"] as Double?).map(Date.init(timeIntervalSince1970:))
    }
}

/// Another writer appended to a stream after this writer read it.
public struct ConcurrencyError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The stream.
    public var stream: String
    /// The version the writer expected.
    public var expectedVersion: Int64
    /// The version found.
    public var actualVersion: Int64

    /// Creates the error.
    public init(stream: String, expectedVersion: Int64, actualVersion: Int64) {
        self.stream = stream
        self.expectedVersion = expectedVersion
        self.actualVersion = actualVersion
    }

    public var description: String {
        "stream '\(stream)' is at version \(actualVersion), the writer expected \(expectedVersion)"
    }
}
