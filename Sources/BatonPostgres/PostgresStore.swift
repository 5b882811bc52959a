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
/// losers of a race (a stream position, an instance version, an inbox id).
///
/// Replicas of a service share one store: the relay leases the outbox rows it publishes (rows a transaction
/// queues are leased to its own process from the start), and due timers and held messages are claimed with
/// `FOR UPDATE SKIP LOCKED` by the transaction that acts on them, so a timer fires in one replica and the rows
/// a dead replica leased are relayed by another once the lease ends. A lane whose connection broke connects
/// again before its next transaction.
public final class PostgresStore: Store {
    /// What a store is opened for.
    public enum Access: Sendable {
        /// Serving: the schema and its tables are created or brought up to date at connect.
        case readWrite
        /// Reading (operator commands): nothing is created; the connection's transactions are read-only, and
        /// a schema without the store's tables is an error.
        case readOnly
    }

    /// A connection with the thread its transactions run on; the connection is replaced only on that thread.
    private final class Lane: @unchecked Sendable {
        let id: Int
        let queue: DispatchQueue
        var connection: PostgresConnection?

        init(id: Int) {
            self.id = id
            queue = DispatchQueue(label: "baton.postgres.\(id)")
        }
    }

    private let lanes: [Lane]
    private let nextLane = Atomic<Int>(0)
    private let configuration: PostgresConnection.Configuration
    private let schema: String?
    private let access: Access
    /// How errors name the database (never with its password).
    let location: String
    private let logger: Logger
    /// Who holds an outbox lease: this store object (one per process).
    let owner = UUID().uuidString.lowercased()
    /// How long the relay's lease on an outbox row lasts.
    let outboxLease: Duration
    /// How long a lane waits for the answer to one statement (lock waits included) before it gives up on its
    /// connection.
    let answerTimeout: Duration = .seconds(30)

    private init(
        configuration: PostgresConnection.Configuration,
        schema: String?,
        access: Access,
        connections: Int,
        outboxLease: Duration,
        location: String,
        logger: Logger
    ) {
        self.configuration = configuration
        self.schema = schema
        self.access = access
        self.outboxLease = outboxLease
        self.location = location
        self.logger = logger
        lanes = (0..<connections).map(Lane.init(id:))
    }

    /// Connects to the database a URL names (see ``connect(configuration:schema:access:connections:outboxLease:logger:)``).
    public static func connect(
        url: PostgresDatabaseURL,
        schema: String? = nil,
        access: Access = .readWrite,
        connections: Int = 2,
        outboxLease: Duration = .seconds(15),
        logger: Logger
    ) async throws(PostgresStoreError) -> PostgresStore {
        try await connect(
            configuration: url.configuration(),
            schema: schema,
            access: access,
            connections: connections,
            outboxLease: outboxLease,
            location: url.description,
            logger: logger
        )
    }

    /// Connects `connections` lanes and, to serve, creates the tables the store needs (if the database user may).
    /// - Parameters:
    ///   - configuration: Where the database is and who connects.
    ///   - schema: The schema the service's tables live in (created to serve if missing); the user's default
    ///     if `nil`.
    ///   - access: Serving, or reading only.
    ///   - connections: How many transactions may run at once.
    ///   - outboxLease: How long another process sharing the store leaves an outbox row this one leased.
    ///   - location: How errors name the database (never with a password).
    ///   - logger: Where postgres-nio logs.
    /// - Throws: ``PostgresStoreError``: the server unreachable or refusing, the schema missing for a read,
    ///   the migration failing.
    public static func connect(
        configuration: PostgresConnection.Configuration,
        schema: String? = nil,
        access: Access = .readWrite,
        connections: Int = 2,
        outboxLease: Duration = .seconds(15),
        location: String? = nil,
        logger: Logger
    ) async throws(PostgresStoreError) -> PostgresStore {
        precondition(connections >= 1, "a store needs a connection")
        precondition(
            schema?.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" } ?? true,
            "a schema name is letters, digits and underscores"
        )
        let store = PostgresStore(
            configuration: configuration,
            schema: schema,
            access: access,
            connections: connections,
            outboxLease: outboxLease,
            location: location
                ?? "postgres://\(configuration.username)@\(configuration.host ?? "?")/\(configuration.database ?? "")",
            logger: logger
        )
        do {
            switch access {
            case .readWrite: try await store.migrate()
            case .readOnly: try await store.checkSchema()
            }
            return store
        } catch {
            await store.close()
            throw PostgresStoreError.explaining(error, "PostgreSQL at \(store.location)")
        }
    }

    /// Closes every connection.
    public func close() async {
        for lane in lanes {
            let connection = await withCheckedContinuation { continuation in
                lane.queue.async {
                    continuation.resume(returning: lane.connection)
                    lane.connection = nil
                }
            }
            try? await connection?.close()
        }
    }

    /// Creates the schema and its tables, or adds what an earlier release lacked; replicas starting together
    /// take turns (an advisory lock: `CREATE … IF NOT EXISTS` alone races). An upgrade locks tables that running
    /// replicas of the earlier release write, and may lose a deadlock with one of them: it is tried again.
    private func migrate() async throws {
        for attempt in 1... {
            do {
                return try await migrateOnce()
            } catch let conflict as PostgresConflict where attempt < 5 {
                logger.warning(
                    "schema upgrade lost a race with a running replica; trying again",
                    metadata: ["error": "\(conflict)", "attempt": "\(attempt)"]
                )
                try await Task.sleep(for: .milliseconds(100 * attempt))
            }
        }
    }

    private func migrateOnce() async throws {
        let lock = "baton.migrate.\(schema ?? "")"
        _ = try await transaction { work in
            let work = work as! PostgresUnitOfWork
            try work.query("SELECT pg_advisory_xact_lock(hashtext($1))", [.init(string: lock)])
            if let schema = self.schema {
                // Created only if missing: CREATE SCHEMA asks for the database's CREATE privilege even when the
                // schema exists, and a deployment's service role owns its schema without having it.
                let exists = try !work.query("SELECT 1 FROM pg_namespace WHERE nspname = $1", [.init(string: schema)])
                    .isEmpty
                if !exists { try work.execute("CREATE SCHEMA \(schema)") }
                try work.execute("SET LOCAL search_path TO \(schema)")
            }
            if try work.hasTable("inbox", lacking: "issued_at") { try work.execute(Self.retentionUpgrade) }
            if try work.hasTable("documents", lacking: "saved") { try work.execute(Self.documentsSavedUpgrade) }
            try work.execute(Self.schema)
            try work.fillOrderScopes()
        }
    }

    /// Tables of a release before retention: the inbox is pruned by the messages' own timestamps (an earlier
    /// record counts from when it was handled), and sent outbox rows, kept until then, are deleted.
    private static let retentionUpgrade = """
        ALTER TABLE inbox ADD COLUMN issued_at BIGINT;
        UPDATE inbox SET issued_at = handled_at;
        ALTER TABLE inbox ALTER COLUMN issued_at SET NOT NULL;
        DELETE FROM outbox WHERE sent_at IS NOT NULL
        """

    /// Documents of a release that listed them by id: listed in the order first saved from now on (the rows
    /// there are numbered in the table's order).
    private static let documentsSavedUpgrade = """
        ALTER TABLE documents ADD COLUMN saved BIGSERIAL;
        DROP INDEX IF EXISTS documents_status
        """

    /// Checks that the service's tables are there, for a read.
    private func checkSchema() async throws {
        let table = schema.map { "\($0).outbox" } ?? "outbox"
        let found = try await read { work in
            try (work as! PostgresUnitOfWork).query("SELECT to_regclass($1)::TEXT", [.init(string: table)])
                .first?.decode(String?.self) ?? nil
        }
        guard found != nil else {
            throw PostgresStoreError(
                .missingSchema,
                "PostgreSQL at \(location) has no \(schema.map { "schema '\($0)'" } ?? "Baton tables")"
            )
        }
    }

    public func claimOutbox(limit: Int, readyAt now: Date) async throws -> (rows: [OutboxMessage], nextAttempt: Date?) {
        try await write { work in
            let work = work as! PostgresUnitOfWork
            return (try work.claimOutbox(limit: limit, readyAt: now), try work.nextOutboxAttempt())
        }
    }

    private static let schema = """
        CREATE TABLE IF NOT EXISTS inbox (
            consumer TEXT NOT NULL, message_id TEXT NOT NULL, issued_at BIGINT NOT NULL, handled_at BIGINT NOT NULL,
            PRIMARY KEY (consumer, message_id));
        CREATE TABLE IF NOT EXISTS outbox (
            sequence BIGSERIAL PRIMARY KEY, message_id TEXT NOT NULL UNIQUE, exchange TEXT NOT NULL,
            routing_key TEXT NOT NULL, envelope BYTEA NOT NULL, created_at BIGINT NOT NULL, sent_at BIGINT,
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at BIGINT, refused BOOLEAN NOT NULL DEFAULT FALSE);
        ALTER TABLE outbox ADD COLUMN IF NOT EXISTS claimed_by TEXT;
        ALTER TABLE outbox ADD COLUMN IF NOT EXISTS claimed_until BIGINT;
        ALTER TABLE outbox ADD COLUMN IF NOT EXISTS scope TEXT;
        CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sequence) WHERE sent_at IS NULL;
        CREATE INDEX IF NOT EXISTS outbox_scope ON outbox (scope, sequence) WHERE sent_at IS NULL;
        CREATE TABLE IF NOT EXISTS documents (
            collection TEXT NOT NULL, id TEXT NOT NULL, alias TEXT, status TEXT, body BYTEA NOT NULL,
            updated_at BIGINT NOT NULL, saved BIGSERIAL, PRIMARY KEY (collection, id));
        CREATE INDEX IF NOT EXISTS documents_alias ON documents (collection, alias);
        -- Listed in the order they were first saved (`saved`), as in a SQLite store.
        CREATE INDEX IF NOT EXISTS documents_status_saved ON documents (collection, status, saved);
        CREATE INDEX IF NOT EXISTS documents_saved ON documents (collection, saved);
        CREATE TABLE IF NOT EXISTS streams (
            stream TEXT NOT NULL, position BIGINT NOT NULL, message_id TEXT NOT NULL,
            message_type TEXT NOT NULL, payload BYTEA NOT NULL, recorded_at BIGINT NOT NULL,
            PRIMARY KEY (stream, position));
        -- An event's id derives from its cause, which the inbox records in the same transaction: no unique index.
        ALTER TABLE streams DROP CONSTRAINT IF EXISTS streams_message_id_key;
        CREATE TABLE IF NOT EXISTS process_instances (
            process_manager TEXT NOT NULL, instance_id TEXT NOT NULL, lifecycle TEXT NOT NULL, version BIGINT NOT NULL,
            started_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, state BYTEA NOT NULL,
            PRIMARY KEY (process_manager, instance_id));
        CREATE INDEX IF NOT EXISTS process_instances_recent
            ON process_instances (process_manager, updated_at DESC, instance_id);
        CREATE INDEX IF NOT EXISTS process_instances_listed
            ON process_instances (process_manager, lifecycle, updated_at DESC, instance_id);
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
        -- Retention: the inbox by the messages' own timestamps, closed instances not purged yet and tombstones
        -- (purged_at) oldest first, an instance's associations when its tombstone goes (no semicolon in here).
        CREATE INDEX IF NOT EXISTS inbox_issued ON inbox (issued_at);
        ALTER TABLE process_instances ADD COLUMN IF NOT EXISTS purged_at BIGINT;
        CREATE INDEX IF NOT EXISTS process_instances_unpurged ON process_instances (process_manager, updated_at, instance_id)
            WHERE purged_at IS NULL AND lifecycle IN ('completed', 'failed');
        CREATE INDEX IF NOT EXISTS process_instances_tombstones ON process_instances (process_manager, purged_at)
            WHERE purged_at IS NOT NULL;
        CREATE INDEX IF NOT EXISTS process_associations_instance ON process_associations (process_manager, instance_id);
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
        try await transaction(
            body,
            begin: "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY",
            readOnly: true
        ).0
    }

    /// Runs `body` in a transaction on the next lane's thread, connecting the lane first if it has no
    /// connection (the first use, or the last one broke).
    private func transaction<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T,
        begin: String = "BEGIN",
        readOnly: Bool = false
    ) async throws -> (T, [OutboxMessage]) {
        let lane = lanes[nextLane.add(1, ordering: .relaxed).oldValue % lanes.count]
        return try await withCheckedThrowingContinuation { continuation in
            lane.queue.async { [self] in
                let connection: PostgresConnection
                do {
                    connection = try self.connection(of: lane)
                } catch {
                    continuation.resume(throwing: error)
                    return
                }
                let work = PostgresUnitOfWork(connection: connection, store: self, locksReads: !readOnly)
                do {
                    try work.execute(begin)
                    let value = try body(work)
                    try work.execute("COMMIT")
                    continuation.resume(returning: (value, work.queued))
                } catch {
                    if connection.isClosed || (error as? PostgresStoreError)?.kind == .unreachable {
                        lane.connection = nil  // the server rolls back what the broken connection began
                        connection.close().whenComplete { _ in }
                    } else {
                        try? work.execute("ROLLBACK")
                    }
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    /// The lane's open connection: the one it has, or a new one with the session set up (on the lane's thread).
    private func connection(of lane: Lane) throws -> PostgresConnection {
        if let connection = lane.connection, !connection.isClosed { return connection }
        lane.connection = nil
        let connection: PostgresConnection
        do {
            connection = try PostgresConnection.connect(
                on: PostgresConnection.defaultEventLoopGroup.any(),
                configuration: configuration,
                id: lane.id,
                logger: logger
            ).wait()
        } catch {
            throw PostgresStoreError.explaining(error, "cannot reach PostgreSQL at \(location)")
        }
        do {
            if let schema { _ = try connection.query("SET search_path TO \(schema)", []).wait() }
            if access == .readOnly { _ = try connection.query("SET default_transaction_read_only = on", []).wait() }
        } catch {
            let closing: EventLoopFuture<Void> = connection.close()
            closing.whenComplete { _ in }
            throw PostgresStoreError.explaining(error, "PostgreSQL at \(location)")
        }
        lane.connection = connection
        return connection
    }
}

/// One transaction of a ``PostgresStore``, on its lane's thread: each statement is sent and waited for there.
final class PostgresUnitOfWork: UnitOfWork {
    let connection: PostgresConnection
    let store: PostgresStore
    /// A write transaction: what it reads to change is locked until it ends.
    let locksReads: Bool
    private(set) var queued: [OutboxMessage] = []
    private var savepoints = 0

    init(connection: PostgresConnection, store: PostgresStore, locksReads: Bool) {
        self.connection = connection
        self.store = store
        self.locksReads = locksReads
    }

    /// Runs a statement and waits for its rows (on the lane's thread, never on an event loop).
    ///
    /// The wait is bounded (``PostgresStore/answerTimeout``): postgres-nio drops a statement written while its
    /// connection is closing without ever completing it, and a lane must not hang on that. A statement left
    /// unanswered closes its connection; the lane connects again for its next transaction.
    /// - Throws: ``PostgresStoreError`` with the server's message.
    @discardableResult
    func query(_ sql: String, _ binds: [PostgresData] = []) throws -> [PostgresRow] {
        let answered = DispatchSemaphore(value: 0)
        let answer = Mutex<Result<PostgresQueryResult, any Error>?>(nil)
        connection.query(sql, binds).whenComplete { result in
            answer.withLock { $0 = result }
            answered.signal()
        }
        let timeout = store.answerTimeout.components
        let deadline = DispatchTime.now() + .seconds(Int(timeout.seconds))
        guard answered.wait(timeout: deadline) == .success, let result = answer.withLock({ $0 }) else {
            connection.close().whenComplete { _ in }
            throw PostgresStoreError(
                .unreachable,
                "PostgreSQL did not answer within \(store.answerTimeout); the connection is closed and opened again"
            )
        }
        do {
            return try result.get().rows
        } catch {
            let explained = PostgresStoreError.explaining(error, "PostgreSQL at \(store.location)")
            throw PostgresConflict(explained) ?? explained
        }
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

    func markHandled(_ messageID: String, consumer: String, issuedAt: Date, at time: Date) throws {
        try query(
            "INSERT INTO inbox (consumer, message_id, issued_at, handled_at) VALUES ($1, $2, $3, $4)",
            [
                .init(string: consumer), .init(string: messageID), .init(int64: issuedAt.millisecondsSince1970),
                .init(int64: time.millisecondsSince1970),
            ]
        )
    }

    /// Forgets handled messages issued before `time`, oldest first; replicas pruning at once skip each
    /// other's rows instead of waiting for them.
    func forgetHandled(issuedBefore time: Date, limit: Int) throws -> Int {
        try query(
            """
            DELETE FROM inbox WHERE (consumer, message_id) IN (
                SELECT consumer, message_id FROM inbox WHERE issued_at < $1 ORDER BY issued_at LIMIT $2
                FOR UPDATE SKIP LOCKED)
            RETURNING 1
            """,
            [.init(int64: time.millisecondsSince1970), .init(int: limit)]
        ).count
    }

    // MARK: Outbox

    func enqueue(_ envelope: Envelope, exchange: String, routingKey: String, key: String?) throws {
        let rows = try query(
            """
            INSERT INTO outbox (message_id, exchange, routing_key, envelope, created_at, claimed_by, claimed_until, scope)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (message_id) DO NOTHING RETURNING sequence
            """,
            [
                .init(string: key ?? envelope.messageID), .init(string: exchange), .init(string: routingKey),
                .init(bytes: [UInt8](envelope.storedRecord)),
                .init(int64: envelope.timestamp.millisecondsSince1970), .init(string: store.owner),
                .init(int64: leaseEnd(from: Date())),
                .init(string: OutboxMessage.orderScope(exchange: exchange, routingKey: routingKey, envelope: envelope)),
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
            SELECT sequence, exchange, routing_key, envelope, refused FROM outbox AS row
            WHERE sent_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= $1)
                AND NOT EXISTS (
                    SELECT 1 FROM outbox AS earlier
                    WHERE earlier.scope = row.scope AND earlier.sequence < row.sequence
                        AND earlier.sent_at IS NULL AND earlier.next_attempt_at > $1)
            ORDER BY sequence LIMIT $2
            """,
            [.init(int64: now.millisecondsSince1970), .init(int: limit)]
        ).map(outboxMessage)
    }

    /// The oldest pending rows ready at `now` that no other store object holds a live lease on, leased to this
    /// one, without those behind an earlier row of their scope that waits out a retry or that another holds.
    /// Claims take turns (an advisory lock): each sees the leases of those before it, so two replicas never
    /// take rows of one scope at once. Rows another transaction is marking right now are skipped, not waited for.
    func claimOutbox(limit: Int, readyAt now: Date) throws -> [OutboxMessage] {
        try query("SELECT pg_advisory_xact_lock(hashtext('baton.outbox.' || current_schema()))")
        let now = now.millisecondsSince1970
        return try query(
            """
            UPDATE outbox SET claimed_by = $1, claimed_until = $2
            WHERE sequence IN (
                SELECT sequence FROM outbox AS row
                WHERE sent_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= $3)
                    AND (claimed_until IS NULL OR claimed_until <= $3 OR claimed_by = $1)
                    AND NOT EXISTS (
                        SELECT 1 FROM outbox AS earlier
                        WHERE earlier.scope = row.scope AND earlier.sequence < row.sequence AND earlier.sent_at IS NULL
                            AND (earlier.next_attempt_at > $3 OR (earlier.claimed_until > $3 AND earlier.claimed_by <> $1)))
                ORDER BY sequence LIMIT $4 FOR UPDATE SKIP LOCKED)
            RETURNING sequence, exchange, routing_key, envelope, refused
            """,
            [.init(string: store.owner), .init(int64: leaseEnd(from: now)), .init(int64: now), .init(int: limit)]
        ).map(outboxMessage).sorted { $0.sequence < $1.sequence }
    }

    /// Whether the current schema has `table` without `column`: the table of an earlier release, to upgrade.
    func hasTable(_ table: String, lacking column: String) throws -> Bool {
        try !query(
            """
            SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1
                AND NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                    AND table_name = $1 AND column_name = $2)
            """,
            [.init(string: table), .init(string: column)]
        ).isEmpty
    }

    /// Gives rows an earlier release queued their order scope (at migration, before any relay runs).
    func fillOrderScopes() throws {
        for row in try query("SELECT sequence, exchange, routing_key, envelope FROM outbox WHERE scope IS NULL") {
            let (sequence, exchange, routingKey, envelope) = try row.decode((Int64, String, String, Data).self)
            let scope = OutboxMessage.orderScope(
                exchange: exchange,
                routingKey: routingKey,
                envelope: try Envelope(storedRecord: envelope)
            )
            try query(
                "UPDATE outbox SET scope = $1 WHERE sequence = $2",
                [.init(string: scope), .init(int64: sequence)]
            )
        }
    }

    func unsentOutboxCount(through sequence: Int64, excluding sent: Set<Int64>) throws -> Int {
        Int(
            try query(
                "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND sequence <= $1 AND NOT (sequence = ANY($2))",
                [.init(int64: sequence), .init(array: sent.map { PostgresData(int64: $0) }, elementType: .int8)]
            )
            .first?.decode(Int64.self) ?? 0
        )
    }

    func unsentOutbox(scopes: Set<String>, through sequence: Int64) throws -> [(scope: String, sequence: Int64)] {
        guard !scopes.isEmpty else { return [] }
        return try query(
            "SELECT scope, sequence FROM outbox WHERE scope = ANY($1) AND sequence <= $2 AND sent_at IS NULL",
            [.init(array: scopes.map { PostgresData(string: $0) }, elementType: .text), .init(int64: sequence)]
        ).map { row in
            let (scope, sequence) = try row.decode((String, Int64).self)
            return (scope: scope, sequence: sequence)
        }
    }

    /// When a lease taken at `time` ends, in milliseconds since 1970 (wall-clock time).
    private func leaseEnd(from time: Date) -> Int64 {
        leaseEnd(from: time.millisecondsSince1970)
    }

    private func leaseEnd(from milliseconds: Int64) -> Int64 {
        let lease = store.outboxLease.components
        return milliseconds + lease.seconds * 1000 + lease.attoseconds / 1_000_000_000_000_000
    }

    private func outboxMessage(_ row: PostgresRow) throws -> OutboxMessage {
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

    /// Failed rows lose their lease: after their retry delay, any replica's relay may take them.
    func markFailed(_ sequences: [Int64], at now: Date, refused: Bool) throws {
        guard !sequences.isEmpty else { return }
        try query(
            """
            UPDATE outbox SET attempts = attempts + 1, claimed_by = NULL, claimed_until = NULL,
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

    func removeSent(_ sequences: [Int64]) throws {
        guard !sequences.isEmpty else { return }
        try query(
            "DELETE FROM outbox WHERE sequence = ANY($1)",
            [.init(array: sequences.map { PostgresData(int64: $0) }, elementType: .int8)]
        )
    }

    func pendingOutboxCount() throws -> Int {
        Int(try query("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").first?.decode(Int64.self) ?? 0)
    }

    func outboxMessageIDs() throws -> [String] {
        try query("SELECT message_id FROM outbox ORDER BY sequence").map { try $0.decode(String.self) }
    }

    func statistics(idleSince: Date) throws -> StoreStatistics {
        var statistics = StoreStatistics()
        if let outbox = try query("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE sent_at IS NULL").first {
            let (count, oldest) = try outbox.decode((Int64, Int64?).self)
            statistics.pendingOutbox = Int(count)
            statistics.oldestPendingOutbox = oldest.map(Date.init(millisecondsSince1970:))
        }
        let letters = try query("SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL").first
        statistics.openDeadLetters = Int(try letters?.decode(Int64.self) ?? 0)
        let counts = try query(
            "SELECT process_manager, lifecycle, COUNT(*) FROM process_instances GROUP BY process_manager, lifecycle"
        )
        for row in counts {
            let (processManager, lifecycle, count) = try row.decode((String, String, Int64).self)
            guard let lifecycle = ProcessLifecycle(rawValue: lifecycle) else { continue }
            statistics.instances[processManager, default: [:]][lifecycle] = Int(count)
        }
        let open = ProcessLifecycle.allCases.filter { !$0.isClosed }.map { "'\($0.rawValue)'" }
        let idle = try query(
            """
            SELECT process_manager, COUNT(*) FROM process_instances
            WHERE lifecycle IN (\(open.joined(separator: ","))) AND updated_at < $1 GROUP BY process_manager
            """,
            [.init(int64: idleSince.millisecondsSince1970)]
        )
        for row in idle {
            let (processManager, count) = try row.decode((String, Int64).self)
            statistics.idleInstances[processManager] = Int(count)
        }
        return statistics
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

    /// In a write transaction the document is locked until it ends (`FOR UPDATE`): a replica that read it to
    /// change it waits for this one's commit, then reads what it committed — no lost update.
    func documentBody(in collection: String, idOrAlias key: String) throws -> Data? {
        let lock = locksReads ? " FOR UPDATE" : ""
        let binds: [PostgresData] = [.init(string: collection), .init(string: key)]
        if let body = try query("SELECT body FROM documents WHERE collection = $1 AND id = $2\(lock)", binds).first {
            return try body.decode(Data.self)
        }
        return try query(
            "SELECT body FROM documents WHERE collection = $1 AND alias = $2 ORDER BY id LIMIT 1\(lock)",
            binds
        ).first?.decode(Data.self)
    }

    func documentBodies(in collection: String, status: String?, limit: Int) throws -> [Data] {
        try query(
            """
            SELECT body FROM documents WHERE collection = $1 AND ($2::TEXT IS NULL OR status = $2)
            ORDER BY saved LIMIT $3
            """,
            [.init(string: collection), status.map(PostgresData.init(string:)) ?? .null, .init(int: limit)]
        ).map { try $0.decode(Data.self) }
    }
}
