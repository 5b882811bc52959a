import BatonNode
import Foundation
import GRDBSQLite

/// Group durability for a store in WAL mode whose transactions commit with `synchronous=NORMAL` (no sync of
/// their own): a thread of its own syncs the WAL file, and one sync covers every transaction committed before
/// it began — so a writer goes on with its next transaction while the disk works, and many commits share one
/// sync where each had its own.
///
/// Each commit takes a ticket (``committed()``), in commit order; its ``Durability`` is reached when a sync
/// that began after the ticket was taken ends. The WAL is synced through SQLite's default VFS (a handle of
/// its own on the file, as SQLite opens it), so a VFS that wraps the default one sees the syncs: the
/// power-loss tests' VFS, which drops every write no sync covered.
///
/// A sync that fails leaves the store's later commits in doubt (the kernel may have dropped the pages it
/// could not write): every waiting and later ticket fails with the error, and ``failure`` stays set.
final class WALSync: @unchecked Sendable {
    private struct Waiter {
        var ticket: UInt64
        var action: @Sendable (Result<Void, any Error>) -> Void
    }

    private let databasePath: String
    private let condition = NSCondition()
    // Guarded by `condition`.
    private var issued: UInt64 = 0
    private var synced: UInt64 = 0
    private var waiters: [Waiter] = []
    private var syncFailure: (any Error)?
    private var stopping = false
    private var syncs = 0

    /// Starts the syncing thread for the store at `databasePath`.
    init(databasePath: String) {
        self.databasePath = databasePath
        Thread { [self] in
            nameThisThread("baton-wal-sync")
            run()
        }.start()
    }

    /// Stops the thread once the commits so far are synced.
    func stop() {
        condition.withLock {
            stopping = true
            condition.signal()
        }
    }

    /// The error of a sync that failed, after which no commit of this store is taken as durable.
    var failure: (any Error)? { condition.withLock { syncFailure } }

    /// How many syncs ran.
    var syncCount: Int { condition.withLock { syncs } }

    /// Takes the ticket of a transaction that has just committed (call it before another can commit).
    func committed() -> Durability {
        let ticket = condition.withLock {
            issued += 1
            condition.signal()
            return issued
        }
        return Durability { [self] action in notify(ticket, action) }
    }

    /// Waits until a sync that begins after this call ends: it covers every transaction committed before.
    func waitForSync() async throws {
        try await committed().reached()
    }

    private func notify(_ ticket: UInt64, _ action: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        let result: Result<Void, any Error>? = condition.withLock {
            if let syncFailure { return .failure(syncFailure) }
            if ticket <= synced { return .success(()) }
            waiters.append(Waiter(ticket: ticket, action: action))
            return nil
        }
        if let result { action(result) }
    }

    private func run() {
        var wal: WALFile?
        while true {
            condition.lock()
            while synced == issued && !stopping { condition.wait() }
            if synced == issued {  // stopping, and nothing left to sync
                condition.unlock()
                break
            }
            let target = issued
            if syncFailure != nil {  // every ticket failed already
                synced = target
                condition.unlock()
                continue
            }
            condition.unlock()

            let result = Result {
                if wal == nil { wal = try WALFile(databasePath: databasePath) }
                try wal!.sync()
            }
            let ready: [Waiter] = condition.withLock {
                syncs += 1
                switch result {
                case .success:
                    synced = target
                    // In commit order (two writers may register theirs the other way round).
                    let ready = waiters.filter { $0.ticket <= target }.sorted { $0.ticket < $1.ticket }
                    waiters.removeAll { $0.ticket <= target }
                    return ready
                case .failure(let error):
                    syncFailure = error
                    synced = target
                    defer { waiters.removeAll() }
                    return waiters
                }
            }
            for waiter in ready { waiter.action(result) }
        }
        wal?.close()
    }
}

/// The WAL file beside a database file, opened through SQLite's default VFS, for syncing.
private final class WALFile {
    private let walPath: String
    private let file: UnsafeMutablePointer<sqlite3_file>
    /// The names SQLite's VFS expects (a database name with its journal and WAL names after it); the VFS keeps
    /// a pointer into them while the file is open.
    private let names: sqlite3_filename

    init(databasePath: String) throws {
        let walPath = databasePath + "-wal"
        // The WAL's directory entry, once: a WAL created since the directory was last synced must survive too.
        let directory = open(URL(fileURLWithPath: walPath).deletingLastPathComponent().path, O_RDONLY)
        if directory >= 0 {
            defer { Foundation.close(directory) }
            guard fsync(directory) == 0 else {
                throw WALSyncError("cannot sync the directory of \(walPath): errno \(errno)")
            }
        }
        guard let vfs = sqlite3_vfs_find(nil) else { throw WALSyncError("SQLite has no default VFS") }
        guard let names = sqlite3_create_filename(databasePath, databasePath + "-journal", walPath, 0, nil) else {
            throw WALSyncError("out of memory naming \(walPath)")
        }
        let file = UnsafeMutableRawPointer.allocate(byteCount: Int(vfs.pointee.szOsFile), alignment: 16)
            .bindMemory(to: sqlite3_file.self, capacity: 1)
        file.pointee.pMethods = nil
        var flags: Int32 = 0
        let code = vfs.pointee.xOpen(
            vfs,
            sqlite3_filename_wal(names),
            file,
            SQLITE_OPEN_READWRITE | SQLITE_OPEN_WAL,
            &flags
        )
        guard code == SQLITE_OK else {
            if let methods = file.pointee.pMethods { _ = methods.pointee.xClose(file) }
            file.deallocate()
            sqlite3_free_filename(names)
            throw WALSyncError("cannot open \(walPath) to sync it (SQLite error \(code))")
        }
        self.walPath = walPath
        self.file = file
        self.names = names
    }

    func sync() throws {
        let code = file.pointee.pMethods.pointee.xSync(file, SQLITE_SYNC_NORMAL | SQLITE_SYNC_DATAONLY)
        guard code == SQLITE_OK else { throw WALSyncError("syncing \(walPath) failed (SQLite error \(code))") }
    }

    func close() {
        _ = file.pointee.pMethods.pointee.xClose(file)
        file.deallocate()
        sqlite3_free_filename(names)
    }
}

/// A failure to put a store's WAL on the disk.
struct WALSyncError: Error, CustomStringConvertible {
    var description: String

    init(_ description: String) {
        self.description = description
    }
}
