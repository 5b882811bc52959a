import BatonNode
import Foundation
import GRDBSQLite

/// Checkpoints a store's WAL from a thread of its own, so that no commit does it.
///
/// SQLite's automatic checkpoint runs inside the commit that crosses its threshold: the writer — a node's thread,
/// and every delivery waiting behind it — copies every page changed since the last checkpoint into the database
/// file and syncs it before it goes on, which grows with the file. This thread runs a passive checkpoint (it
/// copies what no reader still needs and never waits for a lock) once a second on a connection of its own, while
/// the writer goes on; the writer starts the WAL over once a checkpoint has copied all of it. The connection opens
/// through SQLite's default VFS, like the store's, and syncs the WAL before it copies and the file after.
final class Checkpoints: @unchecked Sendable {
    private let interval: TimeInterval
    private let condition = NSCondition()
    // Guarded by `condition`.
    private var stopping = false
    private var stopped = false

    /// Opens a connection to the store at `databasePath` and starts the checkpointing thread on it, one
    /// checkpoint every `interval` seconds.
    /// - Throws: ``CheckpointsError`` if the file cannot be opened for writing.
    init(databasePath: String, interval: TimeInterval = 1) throws {
        self.interval = interval
        // A connection opens its file lazily: a first read makes it see the file is in WAL mode (until then a
        // checkpoint does nothing).
        var db: OpaquePointer?
        guard sqlite3_open_v2(databasePath, &db, SQLITE_OPEN_READWRITE, nil) == SQLITE_OK,
            sqlite3_exec(db, "SELECT count(*) FROM sqlite_master", nil, nil, nil) == SQLITE_OK
        else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(db)
            throw CheckpointsError(description: "cannot open \(databasePath) to checkpoint it: \(message)")
        }
        let connection = Connection(handle: db)
        Thread { [self] in
            nameThisThread("baton-checkpoint")
            run(on: connection)
        }.start()
    }

    /// Stops the thread and returns once its connection is closed (after the checkpoint it is running, if any):
    /// the store's own connections close after it, and the last of them ends the WAL as SQLite does.
    func stop() {
        condition.withLock {
            stopping = true
            condition.broadcast()
            while !stopped { condition.wait() }
        }
    }

    private func run(on connection: Connection) {
        defer {
            sqlite3_close(connection.handle)
            condition.withLock {
                stopped = true
                condition.broadcast()
            }
        }
        while true {
            let stop = condition.withLock {
                if !stopping { _ = condition.wait(until: Date(timeIntervalSinceNow: interval)) }
                return stopping
            }
            if stop { return }
            // Busy (another checkpoint runs) or failed: the next second tries again; the WAL keeps every commit.
            _ = sqlite3_wal_checkpoint_v2(connection.handle, nil, SQLITE_CHECKPOINT_PASSIVE, nil, nil)
        }
    }
}

/// The checkpointing thread's connection, handed to it once.
private struct Connection: @unchecked Sendable {
    let handle: OpaquePointer?
}

/// A store file that cannot be checkpointed.
struct CheckpointsError: Error, CustomStringConvertible {
    var description: String
}
