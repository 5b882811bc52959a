import Baton
import BatonNode
import Dispatch
import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresNIO
import Synchronization

/// The store port over PostgreSQL, through postgres-nio. Each transaction's synchronous body runs on a thread
/// of its own (a lane: one connection and one serial dispatch queue), never on the cooperative pool, and waits
/// there for each statement. Transactions on different lanes run concurrently; the database's keys refuse the
/// losers of a race (a stream position, an instance version, an inbox id). Not yet for replicas: the relay and
/// the deadline loop claim no rows (`FOR UPDATE SKIP LOCKED` comes with the scale-out work).
public final class PostgresStore: Store {
    /// A connection with the thread its transactions run on.
    private struct Lane: Sendable {
        let connection: PostgresConnection
        let queue: DispatchQueue
    }

    private let lanes: [Lane]
    private let nextLane = Atomic<Int>(0)

    private init(lanes: [Lane]) {
        self.lanes = lanes
    }

    /// Connects `connections` lanes and creates the tables the store needs (if the database user may).
    /// - Parameters:
    ///   - configuration: Where the database is and who connects.
    ///   - schema: The schema the service's tables live in (created if missing); the user's default if `nil`.
    ///   - connections: How many transactions may run at once.
    ///   - logger: Where postgres-nio logs.
    /// - Throws: The connection's or the migration's error.
    public static func connect(
        configuration: PostgresConnection.Configuration,
        schema: String? = nil,
        connections: Int = 2,
        logger: Logger
    ) async throws -> PostgresStore {
        precondition(connections >= 1, "a store needs a connection")
        precondition(
            schema?.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" } ?? true,
            "a schema name is letters, digits and underscores"
        )
        var lanes: [Lane] = []
        do {
            for index in 0..<connections {
                let connection = try await PostgresConnection.connect(
                    configuration: configuration,
                    id: index,
                    logger: logger
                )
                lanes.append(Lane(connection: connection, queue: DispatchQueue(label: "baton.postgres.\(index)")))
                if let schema {
                    try await connection.query("CREATE SCHEMA IF NOT EXISTS \(unescaped: schema)", logger: logger)
                    try await connection.query("SET search_path TO \(unescaped: schema)", logger: logger)
                }
            }
            let store = PostgresStore(lanes: lanes)
            try await store.migrate()
            return store
        } catch {
            for lane in lanes { try? await lane.connection.close() }
            throw error
        }
    }

    /// Closes every connection.
    public func close() async {
        for lane in lanes { try? await lane.connection.close() }
    }

    private func migrate() async throws {
        try await write { work in
            try (work as! PostgresUnitOfWork).execute(Self.schema)
        }
    }

    private static let schema = """
        CREATE TABLE IF NOT EXISTS inbox (
            consumer TEXT NOT NULL, message_id TEXT NOT NULL, handled_at BIGINT NOT NULL,
            PRIMARY KEY (consumer, message_id));
        CREATE TABLE IF NOT EXISTS outbox (
            sequence BIGSERIAL PRIMARY KEY, message_id TEXT NOT NULL UNIQUE, exchange TEXT NOT NULL,
            routing_key TEXT NOT NULL, envelope BYTEA NOT NULL, created_at BIGINT NOT NULL, sent_at BIGINT,
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at BIGINT, refused BOOLEAN NOT NULL DEFAULT FALSE);
        CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sequence) WHERE sent_at IS NULL;
        CREATE TABLE IF NOT EXISTS documents (
            collection TEXT NOT NULL, id TEXT NOT NULL, alias TEXT, status TEXT, body BYTEA NOT NULL,
            updated_at BIGINT NOT NULL, PRIMARY KEY (collection, id));
        CREATE INDEX IF NOT EXISTS documents_alias ON documents (collection, alias);
        CREATE INDEX IF NOT EXISTS documents_status ON documents (collection, status, id);
        CREATE TABLE IF NOT EXISTS streams (
            stream TEXT NOT NULL, position BIGINT NOT NULL, message_id TEXT NOT NULL UNIQUE,
            message_type TEXT NOT NULL, payload BYTEA NOT NULL, recorded_at BIGINT NOT NULL,
            PRIMARY KEY (stream, position));
        CREATE TABLE IF NOT EXISTS process_instances (
            process_manager TEXT NOT NULL, instance_id TEXT NOT NULL, lifecycle TEXT NOT NULL, version BIGINT NOT NULL,
            started_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, state BYTEA NOT NULL,
            PRIMARY KEY (process_manager, instance_id));
        CREATE INDEX IF NOT EXISTS process_instances_recent
            ON process_instances (process_manager, updated_at DESC, instance_id);
        CREATE TABLE IF NOT EXISTS process_transitions (
            process_manager TEXT NOT NULL, instance_id TEXT NOT NULL, version BIGINT NOT NULL, record BYTEA NOT NULL,
            PRIMARY KEY (process_manager, instance_id, version));
        CREATE TABLE IF NOT EXISTS process_associations (
            process_manager TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, instance_id TEXT NOT NULL,
            PRIMARY KEY (process_manager, name, value));
        CREATE TABLE IF NOT EXISTS timers (
            process_manager TEXT NOT NULL, instance_id TEXT NOT NULL, name TEXT NOT NULL, due_at BIGINT NOT NULL,
            fire_at BIGINT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, dead_letter_id BIGINT,
            PRIMARY KEY (process_manager, instance_id, name));
        CREATE INDEX IF NOT EXISTS timers_fire ON timers (fire_at) WHERE dead_letter_id IS NULL;
        CREATE TABLE IF NOT EXISTS dead_letters (
            id BIGSERIAL PRIMARY KEY, message_id TEXT NOT NULL, message_type TEXT NOT NULL, exchange TEXT NOT NULL,
            routing_key TEXT NOT NULL, headers BYTEA NOT NULL, body BYTEA NOT NULL, reason TEXT NOT NULL,
            handler TEXT NOT NULL, attempts INTEGER NOT NULL, dead_at BIGINT NOT NULL, replayed_at BIGINT);
        CREATE INDEX IF NOT EXISTS dead_letters_open ON dead_letters (message_id) WHERE replayed_at IS NULL;
        CREATE TABLE IF NOT EXISTS parked_messages (
            sequence BIGSERIAL PRIMARY KEY, ordering_key TEXT, message_id TEXT NOT NULL, exchange TEXT NOT NULL,
            routing_key TEXT NOT NULL, message_type TEXT, content_type TEXT, correlation_id TEXT, timestamp BIGINT,
            headers BYTEA NOT NULL, body BYTEA NOT NULL, attempts INTEGER NOT NULL, next_attempt_at BIGINT,
            dead_letter_id BIGINT, last_error TEXT, parked_at BIGINT NOT NULL);
        CREATE INDEX IF NOT EXISTS parked_messages_key ON parked_messages (ordering_key, sequence);
        CREATE INDEX IF NOT EXISTS parked_messages_id ON parked_messages (message_id);
        CREATE INDEX IF NOT EXISTS parked_messages_due ON parked_messages (next_attempt_at)
            WHERE next_attempt_at IS NOT NULL AND dead_letter_id IS NULL;
        """

    public func write<T: Sendable>(_ body: @escaping @Sendable (any UnitOfWork) throws -> T) async throws -> T {
        try await transaction(body).0
    }

    public func writeHandingOverOutbox<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> (T, [OutboxMessage]) {
        try await transaction(body)
    }

    public func writeWithoutWaitingForDisk<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> T {
        try await transaction(body, begin: "BEGIN; SET LOCAL synchronous_commit = off").0
    }

    public func read<T: Sendable>(_ body: @escaping @Sendable (any UnitOfWork) throws -> T) async throws -> T {
        try await transaction(body, begin: "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").0
    }

    /// Runs `body` in a transaction on the next lane's thread.
    private func transaction<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T,
        begin: String = "BEGIN"
    ) async throws -> (T, [OutboxMessage]) {
        let lane = lanes[nextLane.add(1, ordering: .relaxed).oldValue % lanes.count]
        return try await withCheckedThrowingContinuation { continuation in
            lane.queue.async {
                let work = PostgresUnitOfWork(connection: lane.connection)
                do {
                    try work.execute(begin)
                    let value = try body(work)
                    try work.execute("COMMIT")
                    continuation.resume(returning: (value, work.queued))
                } catch {
                    try? work.execute("ROLLBACK")
                    continuation.resume(throwing: error)
                }
            }
        }
    }
}

/// Why the PostgreSQL store could not do something.
public struct PostgresStoreError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong.
    public var message: String

    public var description: String { message }
}

/// One transaction of a ``PostgresStore``, on its lane's thread: each statement is sent and waited for there.
final class PostgresUnitOfWork: UnitOfWork {
    let connection: PostgresConnection
    private(set) var queued: [OutboxMessage] = []
    private var savepoints = 0

    init(connection: PostgresConnection) {
        self.connection = connection
    }

    /// Runs a statement and waits for its rows (on the lane's thread, never on an event loop).
    @discardableResult
    func query(_ sql: String, _ binds: [PostgresData] = []) throws -> [PostgresRow] {
        try connection.query(sql, binds).wait().rows
    }

    /// Runs statements without parameters, one after the other (separated by semicolons; none of Baton's
    /// has a semicolon inside).
    func execute(_ sql: String) throws {
        for statement in sql.split(separator: ";") where !statement.allSatisfy(\.isWhitespace) {
            try query(String(statement))
        }
    }

    func inSavepoint(_ body: () throws -> Void) throws {
        savepoints += 1
        let name = "baton_\(savepoints)"
        let queuedBefore = queued.count
        try execute("SAVEPOINT \(name)")
        do {
            try body()
            try execute("RELEASE SAVEPOINT \(name)")
        } catch {
            try execute("ROLLBACK TO SAVEPOINT \(name); RELEASE SAVEPOINT \(name)")
            queued.removeSubrange(queuedBefore...)
            throw error
        }
    }

    // MARK: Inbox

    func hasHandled(_ messageID: String, consumer: String) throws -> Bool {
        try !query(
            "SELECT 1 FROM inbox WHERE consumer = $1 AND message_id = $2",
            [.init(string: consumer), .init(string: messageID)]
        )
        .isEmpty
    }

    func markHandled(_ messageID: String, consumer: String, at time: Date) throws {
        try query(
            "INSERT INTO inbox (consumer, message_id, handled_at) VALUES ($1, $2, $3)",
            [.init(string: consumer), .init(string: messageID), .init(int64: time.millisecondsSince1970)]
        )
    }

    // MARK: Outbox

    func enqueue(_ envelope: Envelope, exchange: String, routingKey: String, key: String?) throws {
        let rows = try query(
            """
            INSERT INTO outbox (message_id, exchange, routing_key, envelope, created_at) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (message_id) DO NOTHING RETURNING sequence
            """,
            [
                .init(string: key ?? envelope.messageID), .init(string: exchange), .init(string: routingKey),
                .init(bytes: [UInt8](envelope.storedRecord)),
                .init(int64: envelope.timestamp.millisecondsSince1970),
            ]
        )
        if let sequence = try rows.first?.decode(Int64.self) {
            queued.append(
                OutboxMessage(
                    sequence: sequence,
                    exchange: exchange,
                    routingKey: routingKey,
                    envelope: envelope,
                    wasRefused: false
                )
            )
        }
    }

    func pendingOutbox(limit: Int, readyAt now: Date) throws -> [OutboxMessage] {
        try query(
            """
            SELECT sequence, exchange, routing_key, envelope, refused FROM outbox
            WHERE sent_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= $1)
            ORDER BY sequence LIMIT $2
            """,
            [.init(int64: now.millisecondsSince1970), .init(int: limit)]
        ).map { row in
            let (sequence, exchange, routingKey, envelope, refused) = try row.decode(
                (Int64, String, String, Data, Bool).self
            )
            return OutboxMessage(
                sequence: sequence,
                exchange: exchange,
                routingKey: routingKey,
                envelope: try Envelope(storedRecord: envelope),
                wasRefused: refused
            )
        }
    }

    func markFailed(_ sequences: [Int64], at now: Date, refused: Bool) throws {
        guard !sequences.isEmpty else { return }
        try query(
            """
            UPDATE outbox SET attempts = attempts + 1,
                next_attempt_at = $1 + LEAST(30000, 100 << LEAST(attempts, 9)), refused = refused OR $2
            WHERE sequence = ANY($3)
            """,
            [
                .init(int64: now.millisecondsSince1970), .init(bool: refused),
                .init(array: sequences.map { PostgresData(int64: $0) }, elementType: .int8),
            ]
        )
    }

    func nextOutboxAttempt() throws -> Date? {
        try query(
            "SELECT MIN(next_attempt_at) AS next FROM outbox WHERE sent_at IS NULL AND next_attempt_at IS NOT NULL"
        )
        .first?.decode(Int64?.self).map(Date.init(millisecondsSince1970:))
    }

    func markSent(_ sequences: [Int64], at time: Date) throws {
        guard !sequences.isEmpty else { return }
        try query(
            "UPDATE outbox SET sent_at = $1 WHERE sequence = ANY($2)",
            [
                .init(int64: time.millisecondsSince1970),
                .init(array: sequences.map { PostgresData(int64: $0) }, elementType: .int8),
            ]
        )
    }

    func pendingOutboxCount() throws -> Int {
        Int(try query("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").first?.decode(Int64.self) ?? 0)
    }

    func outboxMessageIDs() throws -> [String] {
        try query("SELECT message_id FROM outbox ORDER BY sequence").map { try $0.decode(String.self) }
    }

    // MARK: Documents

    func saveDocument(
        _ body: Data,
        in collection: String,
        id: String,
        alias: String?,
        status: String?,
        at time: Date
    )
        throws
    {
        try query(
            """
            INSERT INTO documents (collection, id, alias, status, body, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (collection, id) DO UPDATE SET
                alias = excluded.alias, status = excluded.status, body = excluded.body, updated_at = excluded.updated_at
            """,
            [
                .init(string: collection), .init(string: id), alias.map(PostgresData.init(string:)) ?? .null,
                status.map(PostgresData.init(string:)) ?? .null, .init(bytes: [UInt8](body)),
                .init(int64: time.millisecondsSince1970),
            ]
        )
    }

    func documentBody(in collection: String, idOrAlias key: String) throws -> Data? {
        let rows = try query(
            """
            SELECT body FROM documents WHERE collection = $1 AND id = $2
            UNION ALL (SELECT body FROM documents WHERE collection = $1 AND alias = $2 ORDER BY id LIMIT 1)
            LIMIT 1
            """,
            [.init(string: collection), .init(string: key)]
        )
        return try rows.first?.decode(Data.self)
    }

    func documentBodies(in collection: String, status: String?, limit: Int) throws -> [Data] {
        try query(
            """
            SELECT body FROM documents WHERE collection = $1 AND ($2::TEXT IS NULL OR status = $2)
            ORDER BY id LIMIT $3
            """,
            [.init(string: collection), status.map(PostgresData.init(string:)) ?? .null, .init(int: limit)]
        ).map { try $0.decode(Data.self) }
    }
}
