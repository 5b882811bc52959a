import Baton
import BatonNode
import Foundation
import GRDB
import GRDBSQLite

/// The store port's embedded adapter: one SQLite file in WAL mode holding its aggregate streams, process-manager
/// streams, inbox, outbox, timers, dead letters and read models (documents). Every batch of handled messages is
/// one transaction; the outbox relay and the timer scheduler read it concurrently. Its commits reach the disk
/// in groups by default (``SyncMode/grouped``).
public final class SQLiteStore: Store {
    /// How a store's commits reach the disk.
    public enum SyncMode: Sendable {
        /// Each transaction syncs the WAL as it commits (`synchronous=FULL`): the writer waits for the disk.
        case eachCommit
        /// Transactions commit without a sync (`synchronous=NORMAL`) and a thread of the store syncs the WAL,
        /// one sync for every commit since the last: the node's thread goes on with its next batch meanwhile,
        /// and acknowledges and relays a batch once the sync that covers it ends. ``write(_:)`` and
        /// ``writeHandingOverOutbox(_:)`` return once their commit is on the disk, as with the other.
        case grouped
    }

    /// The path of the database file.
    public let path: String
    /// Whose rows of the tables a node keeps to itself (outbox, held messages, timers) this handle reads and
    /// writes: empty for a store of one node; the node's name for each of several nodes sharing the file
    /// (``shared(by:)``).
    public let owner: String
    private let pool: DatabasePool
    /// The syncing thread, when commits are grouped.
    private let walSync: WALSync?
    /// The queues the file holds for ``SQLiteTransport``, shared by every handle of the file.
    let queues: StoreQueues
    /// The handle that opened the file, for one that shares it (``shared(by:)``): kept, so that the file's
    /// syncing thread, which that one stops as it goes, outlives every handle.
    private let opener: SQLiteStore?

    /// The page cache's limit when none is given: 64 MiB per connection.
    public static let defaultPageCacheMiB = 64

    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    ///
    /// An existing file is checked first, without changing it: it must be a SQLite database, hold Baton's
    /// tables or none, and have no migration this release does not know; to serve, it must also pass SQLite's
    /// `quick_check` (which reads the whole file once).
    /// - Parameters:
    ///   - path: The database file; its directory must exist.
    ///   - readOnly: Open for reading only (operator tools reading a running service's store).
    ///   - sync: How commits reach the disk; grouped by default. Either way, what a node acknowledges
    ///     or publishes was on the disk first.
    ///   - pageCacheMiB: The most memory SQLite's page cache may take per connection (the writer's, and each
    ///     reader's), in MiB; it grows only as pages are used.
    /// - Throws: ``SQLiteStoreError`` for a file that is not a Baton store this release can use; the SQLite
    ///   error if the file cannot be opened or migrated.
    public init(
        path: String,
        readOnly: Bool = false,
        sync: SyncMode = .grouped,
        pageCacheMiB: Int = SQLiteStore.defaultPageCacheMiB
    ) throws {
        precondition(pageCacheMiB > 0, "a page cache of \(pageCacheMiB) MiB")
        try Self.check(existingFileAt: path, thoroughly: !readOnly)
        var configuration = Configuration()
        configuration.readonly = readOnly
        configuration.busyMode = .timeout(10)
        let grouped = sync == .grouped && !readOnly
        configuration.prepareDatabase { db in
            // WAL (set by DatabasePool): with synchronous=FULL a transaction syncs the WAL as it commits; with
            // NORMAL, `WALSync` syncs it for many. Either way a commit is on the disk before anything acts on
            // it outside the store, which the ack-after-commit promise relies on.
            if !db.configuration.readonly {
                try db.execute(sql: grouped ? "PRAGMA synchronous = NORMAL" : "PRAGMA synchronous = FULL")
            }
            // Savepoints (one per handled message) journal the pages they change: in memory, not in a temporary
            // file created, written and deleted per transaction (with the default, the statement journal spilled
            // to such a file past 64 KiB: three times the WAL's writes, found by the benchmark's profile).
            try db.execute(sql: "PRAGMA temp_store = MEMORY")
            // Up to 64 MiB of pages per connection by default instead of SQLite's 2 MB: the writer keeps the
            // indexes' pages that a message's transaction touches at random (inbox, instances, outbox keys)
            // instead of reading them again from the file. A cache grows only as pages are used.
            try db.execute(sql: "PRAGMA cache_size = -\(pageCacheMiB * 1024)")
            // A checkpoint copies every page changed since the last one from the WAL back into the file and syncs
            // both, in the commit that crosses the threshold: every 10,000 pages (a WAL of up to 40 MB) instead
            // of SQLite's 1,000, a page that messages change again and again (an index's, an instance's) is
            // copied once where it was copied ten times. Durability does not change (a commit is synced before
            // anything acts on it); the embedded benchmark gained 6–12%.
            try db.execute(sql: "PRAGMA wal_autocheckpoint = 10000")
        }
        self.path = path
        pool = try DatabasePool(path: path, configuration: configuration)
        if grouped {
            // The file SQLite opened, links resolved: its WAL is beside it.
            let file = pool.writeWithoutTransaction { db in
                sqlite3_db_filename(db.sqliteConnection, "main").map { String(cString: $0) } ?? path
            }
            walSync = WALSync(databasePath: file)
        } else {
            walSync = nil
        }
        if !readOnly { try Self.migrator.migrate(pool) }
        owner = ""
        queues = StoreQueues()
        opener = nil
    }

    private init(sharing store: SQLiteStore, owner: String) {
        let opener = store.opener ?? store
        path = opener.path
        pool = opener.pool
        walSync = opener.walSync
        queues = opener.queues
        self.opener = opener
        self.owner = owner
    }

    /// The same file for one of several nodes in a process that share it: one writer and one syncing thread for
    /// all, so that a message between them can be a row of ``SQLiteTransport`` that the receiver takes in the
    /// transaction that handles it. Each node's outbox rows, held messages and timers are its own (named by
    /// `owner`), and its retention forgets only its own inbox records (its consumer's: `owner`); its streams,
    /// instances, inbox, dead letters and documents are in the common tables, so the nodes' process-manager and
    /// collection names must differ.
    /// - Parameter owner: The node's name.
    public func shared(by owner: String) -> SQLiteStore {
        SQLiteStore(sharing: self, owner: owner)
    }

    deinit {
        if opener == nil { walSync?.stop() }
    }

    /// Runs `body` in one write transaction: everything it does commits together or not at all. Returns once
    /// the commit is on the disk.
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws (the transaction is rolled back), or a SQLite error.
    public func write<T: Sendable>(_ body: @escaping @Sendable (any UnitOfWork) throws -> T) async throws -> T {
        let (value, durability) = try await pool.writeWithoutTransaction { db in
            try self.transaction(db) { try body(SQLiteUnitOfWork(db: db, store: self)) }
        }
        try await durability.reached()
        return value
    }

    /// Runs `body` in a transaction on the writer, `db`; with grouped syncs, takes the commit's ticket before
    /// another transaction can commit. After a failed sync, refuses to: nothing it commits could be trusted to
    /// reach the disk.
    private func transaction<T>(_ db: Database, _ body: () throws -> T) throws -> (T, BatonNode.Durability) {
        if let failure = walSync?.failure { throw failure }
        var value: T?
        try db.inTransaction {
            value = try body()
            return .commit
        }
        return (value!, walSync?.committed() ?? .reached)
    }

    /// Like ``write(_:)``, without waiting for the disk: the transaction commits, and reaches the disk with the
    /// next durable one (or a checkpoint). For bookkeeping whose loss on power failure costs only a repeat —
    /// the relay's deletion of sent rows (a row that comes back is re-sent under its id, and its consumers drop
    /// it) and retention (a removal that comes back is repeated).
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws (the transaction is rolled back), or a SQLite error.
    public func writeWithoutWaitingForDisk<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> T {
        // Grouped, every commit is NORMAL and the next sync covers this one; after a failed sync it is refused
        // like any other.
        if walSync != nil {
            return try await pool.writeWithoutTransaction { db in
                try self.transaction(db) { try body(SQLiteUnitOfWork(db: db, store: self)) }.0
            }
        }
        return try await pool.writeWithoutTransaction { db in
            // In WAL mode, synchronous=NORMAL commits without an fsync; the next FULL commit syncs the log
            // with this transaction in it.
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
            let result = Result {
                var value: T?
                try db.inTransaction {
                    value = try body(SQLiteUnitOfWork(db: db, store: self))
                    return .commit
                }
                return value!
            }
            try db.execute(sql: "PRAGMA synchronous = FULL")
            return try result.get()
        }
    }

    /// Like ``write(_:)``, and also returns the outbox rows the transaction queued — committed, not yet sent,
    /// in order — so that a relay can publish them without reading them back. Rows of a savepoint that rolled
    /// back are not among them.
    /// - Returns: What `body` returns, and the rows.
    /// - Throws: What `body` throws (the transaction is rolled back), or a SQLite error.
    public func writeHandingOverOutbox<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> (T, [OutboxMessage]) {
        let (value, queued, durability) = try await writeHandingOverOutboxBeforeDisk(body)
        try await durability.reached()
        return (value, queued)
    }

    /// Like ``writeHandingOverOutbox(_:)``, returning once the transaction commits: with grouped syncs, its
    /// ``BatonNode/Durability`` is reached when the sync that covers it ends.
    ///
    /// The node's transaction: it runs on the calling thread, which it blocks until the commit — the node's own
    /// thread (`NodeExecutor`), which saves the two thread hops of handing it to the writer's queue and
    /// resuming the caller (the embedded benchmark ran about a quarter faster). Another caller blocks its thread
    /// as long (a cooperative one of the process, for a handler-sized transaction).
    public func writeHandingOverOutboxBeforeDisk<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> (T, [OutboxMessage], BatonNode.Durability) {
        let ((value, queued), durability) = try writeOnThisThread { db in
            let queued = QueuedMessages()
            let value = try body(SQLiteUnitOfWork(db: db, store: self, queued: queued))
            return (value, queued.messages)
        }
        return (value, queued, durability)
    }

    /// Waits until a sync that begins after the call ends (with grouped durability; else every commit synced
    /// itself).
    public func waitForDisk() async throws {
        try await walSync?.waitForSync()
    }

    /// GRDB's synchronous write (which runs on the calling thread when the writer is free), out of an
    /// asynchronous context that would pick the asynchronous one; with the commit's ticket.
    private func writeOnThisThread<T>(_ body: (Database) throws -> T) throws -> (T, BatonNode.Durability) {
        try pool.writeWithoutTransaction { db in try transaction(db) { try body(db) } }
    }

    /// Reads on the calling thread (a transport setting itself up from what the file holds, its consumers' batches).
    func readNow<T>(_ body: (Database) throws -> T) throws -> T {
        try pool.read(body)
    }

    /// Reads the file on a snapshot, on a reader's thread (``SQLiteTransport``'s counts).
    func readDatabase<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await pool.read(body)
    }

    /// Runs `body` in a write transaction on the calling thread, and returns once the commit is on the disk
    /// (``SQLiteTransport``'s declarations and publishes).
    func writeDatabase<T: Sendable>(_ body: (Database) throws -> T) async throws -> T {
        let (value, durability) = try writeOnThisThread(body)
        try await durability.reached()
        return value
    }

    /// How many syncs the syncing thread ran, when commits are grouped.
    var syncCount: Int? { walSync?.syncCount }

    /// Runs `body` on a read-only snapshot, concurrently with writes.
    public func read<T: Sendable>(_ body: @escaping @Sendable (any UnitOfWork) throws -> T) async throws -> T {
        try await pool.read { db in try body(SQLiteUnitOfWork(db: db, store: self)) }
    }

    /// Refuses, without writing to it, a file at `path` that is not a Baton store this release can use.
    private static func check(existingFileAt path: String, thoroughly: Bool) throws {
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        guard size > 0 else { return }  // a new store
        var configuration = Configuration()
        configuration.readonly = true
        do {
            let file = try DatabaseQueue(path: path, configuration: configuration)
            defer { try? file.close() }
            try file.read { db in
                if thoroughly {
                    let problems = try String.fetchAll(db, sql: "PRAGMA quick_check(3)")
                    guard problems == ["ok"] else {
                        throw SQLiteStoreError(.damaged, "\(path) is damaged: \(problems.joined(separator: "; "))")
                    }
                }
                let tables = try String.fetchAll(
                    db,
                    sql:
                        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
                guard !tables.isEmpty else { return }
                guard tables.contains("grdb_migrations") else {
                    throw SQLiteStoreError(
                        .foreign,
                        "\(path) is a SQLite database but not a Baton store (its tables: \(tables.prefix(5).joined(separator: ", ")))"
                    )
                }
                let known = Set(migrator.migrations)
                let unknown = try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations")
                    .filter { !known.contains($0) }
                guard unknown.isEmpty else {
                    throw SQLiteStoreError(
                        .newer,
                        "\(path) was written by a newer release of Baton (schema \(unknown.joined(separator: ", ")), which this one does not know): run that release, or a later one"
                    )
                }
            }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_NOTADB {
            throw SQLiteStoreError(.notADatabase, "\(path) is not a SQLite database")
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CORRUPT {
            throw SQLiteStoreError(.damaged, "\(path) is damaged: \(error.message ?? "\(error.resultCode)")")
        }
    }

    static var migrator: DatabaseMigrator {
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
        // Transition records and snapshots are rows of a kilobyte or more: a table WITHOUT ROWID keeps them in
        // its key's b-tree, where every insert splits pages of big cells (about 2.6 KB of pages per row of 1 KB,
        // found by the benchmark). Ordinary rowid tables append them; a unique index keeps the key.
        migrator.registerMigration("v3-rowid-records") { db in
            try db.execute(
                sql: """
                    CREATE TABLE process_transitions_v3 (
                        process_manager TEXT NOT NULL, instance_id TEXT NOT NULL, version INTEGER NOT NULL,
                        record BLOB NOT NULL);
                    INSERT INTO process_transitions_v3 (process_manager, instance_id, version, record)
                        SELECT process_manager, instance_id, version, record FROM process_transitions;
                    DROP TABLE process_transitions;
                    ALTER TABLE process_transitions_v3 RENAME TO process_transitions;
                    CREATE UNIQUE INDEX process_transitions_key
                        ON process_transitions (process_manager, instance_id, version);
                    CREATE TABLE process_snapshots_v3 (
                        process_manager TEXT NOT NULL, instance_id TEXT NOT NULL, version INTEGER NOT NULL,
                        instance BLOB NOT NULL);
                    INSERT INTO process_snapshots_v3 (process_manager, instance_id, version, instance)
                        SELECT process_manager, instance_id, version, instance FROM process_snapshots;
                    DROP TABLE process_snapshots;
                    ALTER TABLE process_snapshots_v3 RENAME TO process_snapshots;
                    CREATE UNIQUE INDEX process_snapshots_key ON process_snapshots (process_manager, instance_id);
                    """
            )
        }
        // A timer whose handler fails is retried on its own: its next attempt (`fire_at`) and attempts are stored
        // with it; after the last one it is parked under its dead letter until that is replayed.
        migrator.registerMigration("v4-timer-retries") { db in
            try db.execute(
                sql: """
                    ALTER TABLE timers ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE timers ADD COLUMN fire_at INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE timers ADD COLUMN dead_letter_id INTEGER;
                    UPDATE timers SET fire_at = due_at;
                    DROP INDEX timers_due;
                    CREATE INDEX timers_fire ON timers (fire_at) WHERE dead_letter_id IS NULL;
                    CREATE INDEX timers_dead_letter ON timers (dead_letter_id) WHERE dead_letter_id IS NOT NULL;
                    """
            )
        }
        // Messages the store holds instead of the queue: a failed one waiting for its next attempt (off the
        // consume path), or one waiting behind an earlier message of its instance (ordering_key) that failed.
        migrator.registerMigration("v5-parked-messages") { db in
            try db.execute(
                sql: """
                    CREATE TABLE parked_messages (
                        sequence INTEGER PRIMARY KEY AUTOINCREMENT, ordering_key TEXT, message_id TEXT NOT NULL,
                        exchange TEXT NOT NULL, routing_key TEXT NOT NULL, message_type TEXT, content_type TEXT,
                        correlation_id TEXT, timestamp INTEGER, headers BLOB NOT NULL, body BLOB NOT NULL,
                        attempts INTEGER NOT NULL, next_attempt_at INTEGER, dead_letter_id INTEGER, last_error TEXT,
                        parked_at INTEGER NOT NULL);
                    CREATE INDEX parked_messages_key ON parked_messages (ordering_key, sequence);
                    CREATE INDEX parked_messages_id ON parked_messages (message_id);
                    CREATE INDEX parked_messages_due ON parked_messages (next_attempt_at)
                        WHERE next_attempt_at IS NOT NULL AND dead_letter_id IS NULL;
                    CREATE INDEX parked_messages_dead_letter ON parked_messages (dead_letter_id)
                        WHERE dead_letter_id IS NOT NULL;
                    """
            )
        }
        // Listing instances by lifecycle, most recently changed first, as the console pages through them.
        migrator.registerMigration("v6-instance-listing") { db in
            try db.execute(
                sql: """
                    DROP INDEX process_instances_open;
                    CREATE INDEX process_instances_listed
                        ON process_instances (process_manager, lifecycle, updated_at DESC, instance_id);
                    """
            )
        }
        // Retention: the inbox is pruned by the handled messages' own timestamps; sent outbox rows are deleted
        // (those an earlier release kept go now); a purged instance leaves a tombstone (`purged_at`). Two partial
        // indexes find the closed instances not purged yet, and the tombstones, oldest first; a third finds an
        // instance's associations when its tombstone goes.
        migrator.registerMigration("v7-retention") { db in
            try db.execute(
                sql: """
                    ALTER TABLE inbox ADD COLUMN issued_at REAL NOT NULL DEFAULT 0;
                    UPDATE inbox SET issued_at = handled_at;
                    CREATE INDEX inbox_issued ON inbox (issued_at);
                    DELETE FROM outbox WHERE sent_at IS NOT NULL;
                    ALTER TABLE process_instances ADD COLUMN purged_at REAL;
                    CREATE INDEX process_instances_unpurged ON process_instances (process_manager, updated_at)
                        WHERE purged_at IS NULL AND lifecycle IN ('completed', 'failed');
                    CREATE INDEX process_instances_tombstones ON process_instances (process_manager, purged_at)
                        WHERE purged_at IS NOT NULL;
                    CREATE INDEX process_associations_instance ON process_associations (process_manager, instance_id);
                    """
            )
        }
        // The relay keeps each message's order scope (its partition key and where it goes) with it: a row is
        // published only when no earlier row of its scope is unsent, whichever process or run queued that one.
        migrator.registerMigration("v8-outbox-order-scope") { db in
            try db.execute(sql: "ALTER TABLE outbox ADD COLUMN scope TEXT NOT NULL DEFAULT ''")
            for row in try Row.fetchAll(db, sql: "SELECT sequence, exchange, routing_key, envelope FROM outbox") {
                let scope = OutboxMessage.orderScope(
                    exchange: row["exchange"],
                    routingKey: row["routing_key"],
                    envelope: try Envelope(storedRecord: row["envelope"])
                )
                try db.execute(
                    sql: "UPDATE outbox SET scope = ? WHERE sequence = ?",
                    arguments: [scope, row["sequence"] as Int64]
                )
            }
            try db.execute(sql: "CREATE INDEX outbox_scope ON outbox (scope, sequence) WHERE sent_at IS NULL")
        }
        // Aggregate streams without the unique index on their events' ids: an event's id derives from the message
        // that caused it, which the inbox records in the same transaction, so a repeated message never reaches the
        // append; the index only wrote a random-key b-tree page per event (a quarter of orders' WAL pages).
        migrator.registerMigration("v9-streams-without-message-index") { db in
            try db.execute(
                sql: """
                    CREATE TABLE streams_v9 (
                        stream TEXT NOT NULL, position INTEGER NOT NULL, message_id TEXT NOT NULL,
                        message_type TEXT NOT NULL, payload BLOB NOT NULL, recorded_at REAL NOT NULL,
                        PRIMARY KEY (stream, position)) WITHOUT ROWID;
                    INSERT INTO streams_v9 SELECT stream, position, message_id, message_type, payload, recorded_at
                        FROM streams;
                    DROP TABLE streams;
                    ALTER TABLE streams_v9 RENAME TO streams;
                    """
            )
        }
        // An instance's state in its own row: loading it is one lookup and recording a transition writes one
        // row, where the separate table cost two b-trees more (the state's rows and their key, about a tenth of
        // a process manager's WAL pages). `state_version` is the version the state is of: below `version` only
        // in a store that predates states kept with every transition.
        migrator.registerMigration("v10-state-in-instance-row") { db in
            try db.execute(
                sql: """
                    ALTER TABLE process_instances ADD COLUMN state_version INTEGER;
                    ALTER TABLE process_instances ADD COLUMN state BLOB;
                    UPDATE process_instances SET state_version = s.version, state = s.instance
                        FROM process_snapshots s
                        WHERE s.process_manager = process_instances.process_manager
                            AND s.instance_id = process_instances.instance_id;
                    DROP TABLE process_snapshots;
                    """
            )
        }
        // Nodes of one process may share a file (`shared(by:)`): each keeps its outbox rows, held messages and
        // timers apart by owner (empty for a store of one node). Messages between them are rows of
        // `queue_messages` (`SQLiteTransport`), taken in the receiver's transaction; `once` marks a row a
        // transaction wrote (no other copy of it can exist), as opposed to one published from outside.
        migrator.registerMigration("v11-shared-store-queues") { db in
            try db.execute(
                sql: """
                    ALTER TABLE outbox ADD COLUMN owner TEXT NOT NULL DEFAULT '';
                    ALTER TABLE parked_messages ADD COLUMN owner TEXT NOT NULL DEFAULT '';
                    ALTER TABLE timers ADD COLUMN owner TEXT NOT NULL DEFAULT '';
                    CREATE TABLE queue_messages (
                        sequence INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, exchange TEXT NOT NULL,
                        routing_key TEXT NOT NULL, content_type TEXT NOT NULL, envelope BLOB NOT NULL,
                        once INTEGER NOT NULL);
                    CREATE INDEX queue_messages_queue ON queue_messages (queue, sequence);
                    CREATE TABLE queue_exchanges (name TEXT PRIMARY KEY, kind TEXT NOT NULL) WITHOUT ROWID;
                    CREATE TABLE queue_names (name TEXT PRIMARY KEY) WITHOUT ROWID;
                    CREATE TABLE queue_bindings (
                        exchange TEXT NOT NULL, queue TEXT NOT NULL, binding_key TEXT NOT NULL,
                        PRIMARY KEY (exchange, queue, binding_key)) WITHOUT ROWID;
                    """
            )
        }
        // The rows that change with every step of a workflow (an instance's state, its timers, a read model's
        // document) in rowid tables, in the order they were inserted: the rows of the workflows in flight, all
        // started lately, share the table's last pages. Keyed by their ids (random ones, an order's), a step
        // wrote a page at random for each, once the table outgrew what one transaction's messages share: the
        // run-length effect the benchmark measured. A unique index keeps each key; a step does not change it.
        migrator.registerMigration("v12-rows-in-start-order") { db in
            try db.execute(
                sql: """
                    CREATE TABLE process_instances_v12 (
                        process_manager TEXT NOT NULL, instance_id TEXT NOT NULL, lifecycle TEXT NOT NULL,
                        version INTEGER NOT NULL, started_at REAL NOT NULL, updated_at REAL NOT NULL, purged_at REAL,
                        state_version INTEGER, state BLOB);
                    INSERT INTO process_instances_v12 SELECT process_manager, instance_id, lifecycle, version,
                        started_at, updated_at, purged_at, state_version, state FROM process_instances ORDER BY started_at;
                    DROP TABLE process_instances;
                    ALTER TABLE process_instances_v12 RENAME TO process_instances;
                    CREATE UNIQUE INDEX process_instances_key ON process_instances (process_manager, instance_id);
                    CREATE INDEX process_instances_listed
                        ON process_instances (process_manager, lifecycle, updated_at DESC, instance_id);
                    CREATE INDEX process_instances_unpurged ON process_instances (process_manager, updated_at)
                        WHERE purged_at IS NULL AND lifecycle IN ('completed', 'failed');
                    CREATE INDEX process_instances_tombstones ON process_instances (process_manager, purged_at)
                        WHERE purged_at IS NOT NULL;

                    CREATE TABLE timers_v12 (
                        process_manager TEXT NOT NULL, instance_id TEXT NOT NULL, name TEXT NOT NULL,
                        due_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, fire_at INTEGER NOT NULL DEFAULT 0,
                        dead_letter_id INTEGER, owner TEXT NOT NULL DEFAULT '');
                    INSERT INTO timers_v12 SELECT process_manager, instance_id, name, due_at, attempts, fire_at,
                        dead_letter_id, owner FROM timers ORDER BY fire_at;
                    DROP TABLE timers;
                    ALTER TABLE timers_v12 RENAME TO timers;
                    CREATE UNIQUE INDEX timers_key ON timers (process_manager, instance_id, name);
                    CREATE INDEX timers_fire ON timers (fire_at) WHERE dead_letter_id IS NULL;
                    CREATE INDEX timers_dead_letter ON timers (dead_letter_id) WHERE dead_letter_id IS NOT NULL;

                    CREATE TABLE documents_v12 (
                        collection TEXT NOT NULL, id TEXT NOT NULL, alias TEXT, status TEXT, body BLOB NOT NULL,
                        updated_at REAL NOT NULL);
                    INSERT INTO documents_v12 SELECT collection, id, alias, status, body, updated_at FROM documents
                        ORDER BY updated_at;
                    DROP TABLE documents;
                    ALTER TABLE documents_v12 RENAME TO documents;
                    CREATE UNIQUE INDEX documents_key ON documents (collection, id);
                    CREATE INDEX documents_alias ON documents (collection, alias);
                    CREATE INDEX documents_status ON documents (collection, status, id);
                    """
            )
        }
        // What hangs off an instance or a stream keyed by its integer id instead of its name (an order's id, at
        // random): an instance's transitions and timers, the index of its associations, a stream's events (in a
        // rowid table, as the transitions are). A workflow in flight started lately, so its id is among the last
        // and each step writes the last pages of these keys; keyed by name, each step wrote a page at random in
        // each (the transitions' key, the timers' key, orders' streams), what was left of the run-length effect
        // after v12. Only an instance's first step and a stream's first event still write a name's key. The ids
        // are declared (`INTEGER PRIMARY KEY`), which VACUUM keeps. Transitions and timers go with their
        // instance's row (no release wrote one without it). Documents by status are listed in the order they were
        // first saved (their rowids, in every index) instead of by id: a document's status changes with its
        // workflow's steps, and each change moved its entry at random.
        migrator.registerMigration("v13-keys-by-instance-row") { db in
            try db.execute(
                sql: """
                    CREATE TABLE process_instances_v13 (
                        id INTEGER PRIMARY KEY, process_manager TEXT NOT NULL, instance_id TEXT NOT NULL,
                        lifecycle TEXT NOT NULL, version INTEGER NOT NULL, started_at REAL NOT NULL,
                        updated_at REAL NOT NULL, purged_at REAL, state_version INTEGER, state BLOB);
                    INSERT INTO process_instances_v13 SELECT rowid, process_manager, instance_id, lifecycle, version,
                        started_at, updated_at, purged_at, state_version, state FROM process_instances ORDER BY rowid;
                    DROP TABLE process_instances;
                    ALTER TABLE process_instances_v13 RENAME TO process_instances;
                    CREATE UNIQUE INDEX process_instances_key ON process_instances (process_manager, instance_id);
                    CREATE INDEX process_instances_listed
                        ON process_instances (process_manager, lifecycle, updated_at DESC, instance_id);
                    CREATE INDEX process_instances_unpurged ON process_instances (process_manager, updated_at)
                        WHERE purged_at IS NULL AND lifecycle IN ('completed', 'failed');
                    CREATE INDEX process_instances_tombstones ON process_instances (process_manager, purged_at)
                        WHERE purged_at IS NOT NULL;

                    CREATE TABLE process_transitions_v13 (
                        instance INTEGER NOT NULL, version INTEGER NOT NULL, record BLOB NOT NULL);
                    INSERT INTO process_transitions_v13 SELECT i.id, t.version, t.record
                        FROM process_transitions t JOIN process_instances i
                            ON i.process_manager = t.process_manager AND i.instance_id = t.instance_id
                        ORDER BY t.rowid;
                    DROP TABLE process_transitions;
                    ALTER TABLE process_transitions_v13 RENAME TO process_transitions;
                    CREATE UNIQUE INDEX process_transitions_key ON process_transitions (instance, version);

                    CREATE TABLE timers_v13 (
                        instance INTEGER NOT NULL, process_manager TEXT NOT NULL, instance_id TEXT NOT NULL,
                        name TEXT NOT NULL, due_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                        fire_at INTEGER NOT NULL DEFAULT 0, dead_letter_id INTEGER, owner TEXT NOT NULL DEFAULT '');
                    INSERT INTO timers_v13 SELECT i.id, t.process_manager, t.instance_id, t.name, t.due_at, t.attempts,
                        t.fire_at, t.dead_letter_id, t.owner
                        FROM timers t JOIN process_instances i
                            ON i.process_manager = t.process_manager AND i.instance_id = t.instance_id
                        ORDER BY t.rowid;
                    DROP TABLE timers;
                    ALTER TABLE timers_v13 RENAME TO timers;
                    CREATE UNIQUE INDEX timers_key ON timers (instance, name);
                    CREATE INDEX timers_fire ON timers (fire_at) WHERE dead_letter_id IS NULL;
                    CREATE INDEX timers_dead_letter ON timers (dead_letter_id) WHERE dead_letter_id IS NOT NULL;

                    ALTER TABLE process_associations ADD COLUMN instance INTEGER;
                    UPDATE process_associations SET instance = (
                        SELECT id FROM process_instances i WHERE i.process_manager = process_associations.process_manager
                            AND i.instance_id = process_associations.instance_id);
                    DROP INDEX process_associations_instance;
                    CREATE INDEX process_associations_instance ON process_associations (instance);

                    CREATE TABLE stream_names (
                        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, version INTEGER NOT NULL);
                    INSERT INTO stream_names (name, version)
                        SELECT stream, MAX(position) FROM streams GROUP BY stream ORDER BY MIN(recorded_at), stream;
                    CREATE TABLE streams_v13 (
                        stream INTEGER NOT NULL, position INTEGER NOT NULL, message_id TEXT NOT NULL,
                        message_type TEXT NOT NULL, payload BLOB NOT NULL, recorded_at REAL NOT NULL);
                    INSERT INTO streams_v13 SELECT n.id, s.position, s.message_id, s.message_type, s.payload,
                        s.recorded_at FROM streams s JOIN stream_names n ON n.name = s.stream ORDER BY n.id, s.position;
                    DROP TABLE streams;
                    ALTER TABLE streams_v13 RENAME TO streams;
                    CREATE UNIQUE INDEX streams_key ON streams (stream, position);

                    DROP INDEX documents_status;
                    CREATE INDEX documents_status ON documents (collection, status);
                    """
            )
        }
        return migrator
    }
}

/// Why a file cannot be used as a SQLite store: one line for an operator.
public struct SQLiteStoreError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong with the file.
    public enum Kind: Sendable, Hashable {
        /// Not a SQLite database at all.
        case notADatabase
        /// A SQLite database that fails its integrity check (truncated, overwritten).
        case damaged
        /// A SQLite database of something else.
        case foreign
        /// A Baton store with a schema this release does not know.
        case newer
    }

    /// What is wrong with the file.
    public var kind: Kind
    /// The line for the operator.
    public var message: String

    /// Creates an error.
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}
