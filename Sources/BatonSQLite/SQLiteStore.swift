import Baton
import Foundation
import GRDB

/// A service's embedded store: one SQLite file in WAL mode holding its aggregate streams, process-manager
/// streams, inbox, outbox, timers, dead letters and read models (documents). Every handled message is one transaction
/// (``write(_:)``); the outbox relay and the timer scheduler read it concurrently.
public final class SQLiteStore: Sendable {
    /// The path of the database file.
    public let path: String
    private let pool: DatabasePool

    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    /// - Parameter path: The database file; its directory must exist.
    /// - Throws: The SQLite error if the file cannot be opened or migrated.
    /// - Parameter readOnly: Open for reading only (operator tools reading a running service's store).
    public init(path: String, readOnly: Bool = false) throws {
        var configuration = Configuration()
        configuration.readonly = readOnly
        configuration.busyMode = .timeout(10)
        configuration.prepareDatabase { db in
            // WAL (set by DatabasePool) with synchronous=FULL: a committed transaction survives power loss,
            // which the ack-after-commit promise relies on.
            if !db.configuration.readonly { try db.execute(sql: "PRAGMA synchronous = FULL") }
        }
        self.path = path
        pool = try DatabasePool(path: path, configuration: configuration)
        if !readOnly { try Self.migrator.migrate(pool) }
    }

    /// Runs `body` in one write transaction: everything it does commits together or not at all.
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws (the transaction is rolled back), or a SQLite error.
    public func write<T: Sendable>(_ body: @escaping @Sendable (UnitOfWork) throws -> T) async throws -> T {
        try await pool.write { db in try body(UnitOfWork(db: db)) }
    }

    /// Runs `body` on a read-only snapshot, concurrently with writes.
    public func read<T: Sendable>(_ body: @escaping @Sendable (UnitOfWork) throws -> T) async throws -> T {
        try await pool.read { db in try body(UnitOfWork(db: db)) }
    }

    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE inbox (
                        consumer TEXT NOT NULL, message_id TEXT NOT NULL, handled_at REAL NOT NULL,
                        PRIMARY KEY (consumer, message_id)) WITHOUT ROWID;
                    CREATE TABLE outbox (
                        sequence INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL UNIQUE,
                        exchange TEXT NOT NULL, routing_key TEXT NOT NULL, envelope BLOB NOT NULL,
                        created_at REAL NOT NULL, sent_at REAL,
                        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER);
                    CREATE INDEX outbox_pending ON outbox (sequence) WHERE sent_at IS NULL;
                    CREATE TABLE process_instances (
                        process_manager TEXT NOT NULL, instance_id TEXT NOT NULL, lifecycle TEXT NOT NULL,
                        version INTEGER NOT NULL, started_at REAL NOT NULL, updated_at REAL NOT NULL,
                        PRIMARY KEY (process_manager, instance_id)) WITHOUT ROWID;
                    CREATE INDEX process_instances_open ON process_instances (process_manager, lifecycle);
                    CREATE TABLE process_transitions (
                        process_manager TEXT NOT NULL, instance_id TEXT NOT NULL, version INTEGER NOT NULL,
                        record BLOB NOT NULL,
                        PRIMARY KEY (process_manager, instance_id, version)) WITHOUT ROWID;
                    CREATE TABLE process_snapshots (
                        process_manager TEXT NOT NULL, instance_id TEXT NOT NULL, version INTEGER NOT NULL,
                        instance BLOB NOT NULL,
                        PRIMARY KEY (process_manager, instance_id)) WITHOUT ROWID;
                    CREATE TABLE process_associations (
                        process_manager TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
                        instance_id TEXT NOT NULL,
                        PRIMARY KEY (process_manager, name, value)) WITHOUT ROWID;
                    CREATE TABLE timers (
                        process_manager TEXT NOT NULL, instance_id TEXT NOT NULL, name TEXT NOT NULL,
                        due_at INTEGER NOT NULL,
                        PRIMARY KEY (process_manager, instance_id, name)) WITHOUT ROWID;
                    CREATE INDEX timers_due ON timers (due_at);
                    CREATE TABLE streams (
                        stream TEXT NOT NULL, position INTEGER NOT NULL, message_id TEXT NOT NULL UNIQUE,
                        message_type TEXT NOT NULL, payload BLOB NOT NULL, recorded_at REAL NOT NULL,
                        PRIMARY KEY (stream, position)) WITHOUT ROWID;
                    CREATE TABLE dead_letters (
                        id INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, message_type TEXT NOT NULL,
                        exchange TEXT NOT NULL,
                        routing_key TEXT NOT NULL, headers BLOB NOT NULL, body BLOB NOT NULL, reason TEXT NOT NULL,
                        handler TEXT NOT NULL, attempts INTEGER NOT NULL, dead_at REAL NOT NULL, replayed_at REAL);
                    CREATE TABLE documents (
                        collection TEXT NOT NULL, id TEXT NOT NULL, alias TEXT, status TEXT, body BLOB NOT NULL,
                        updated_at REAL NOT NULL,
                        PRIMARY KEY (collection, id)) WITHOUT ROWID;
                    CREATE INDEX documents_alias ON documents (collection, alias);
                    CREATE INDEX documents_status ON documents (collection, status, id);
                    """
            )
        }
        // A row the broker refused (a permission, a missing exchange) is published on its own from then on: a
        // refusal closes the channel over every message in flight with it.
        migrator.registerMigration("v2-outbox-refused") { db in
            try db.execute(sql: "ALTER TABLE outbox ADD COLUMN refused INTEGER NOT NULL DEFAULT 0")
        }
        return migrator
    }
}
