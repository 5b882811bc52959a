import BatonNode
import Foundation
import Testing

@testable import BatonSQLite

/// Group durability's bookkeeping: a commit is durable once a sync that began after it ends; a failed sync fails
/// every commit after it. (That the node acknowledges and relays only what is durable is the crash probe's
/// power-loss test.)
@Suite struct WALSyncTests {
    @Test func concurrentWritesEachReturnOnceASyncCoversThem() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("baton-wal-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let store = try SQLiteStore(path: directory.appendingPathComponent("store.sqlite").path)
        let writes = 40
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<writes {
                group.addTask {
                    try await store.write { work in
                        try work.markHandled("m-\(index)", consumer: "test", issuedAt: Date(), at: Date())
                    }
                }
            }
            try await group.waitForAll()
        }
        let syncs = try #require(store.syncCount)
        #expect((1...writes).contains(syncs), "one sync per commit at most, shared when they come together: \(syncs)")
        let handled = try await store.read { work in
            try (0..<writes).filter { try work.hasHandled("m-\($0)", consumer: "test") }.count
        }
        #expect(handled == writes)
        #expect(
            try SQLiteStore(path: directory.appendingPathComponent("other.sqlite").path, sync: .eachCommit)
                .syncCount == nil,
            "a store that syncs each commit has no syncing thread"
        )
    }

    @Test func aFailedSyncFailsItsCommitsAndEveryLaterOne() async throws {
        let sync = WALSync(databasePath: "/nonexistent-\(UUID())/store.sqlite")
        defer { sync.stop() }
        await #expect(throws: WALSyncError.self) { try await sync.committed().reached() }
        #expect(sync.failure != nil, "the store takes no more commits")
        await #expect(throws: WALSyncError.self, "a later commit is not durable either") {
            try await sync.committed().reached()
        }
    }

    /// A real store whose WAL cannot be synced (its name now leads to a directory, which the syncing thread
    /// cannot open; SQLite's connections keep the file they opened): the commit that needed the sync fails, and
    /// the store commits nothing after it — its bookkeeping writes that do not wait for the disk included.
    @Test func aStoreWhoseSyncFailedCommitsNothingMore() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("baton-wal-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("store.sqlite").path
        let store = try SQLiteStore(path: path)
        let wal = path + "-wal"
        try FileManager.default.moveItem(atPath: wal, toPath: wal + "-moved")
        try FileManager.default.createDirectory(atPath: wal, withIntermediateDirectories: false)

        func mark(_ id: String) -> @Sendable (any UnitOfWork) throws -> Void {
            { work in try work.markHandled(id, consumer: "test", issuedAt: Date(), at: Date()) }
        }
        await #expect(throws: WALSyncError.self) { try await store.write(mark("m-1")) }
        await #expect(throws: WALSyncError.self) { try await store.write(mark("m-2")) }
        await #expect(throws: WALSyncError.self, "bookkeeping commits no more than the rest") {
            try await store.writeWithoutWaitingForDisk(mark("m-3"))
        }
        // Readers open connections of their own: they need the WAL back where it was.
        try FileManager.default.removeItem(atPath: wal)
        try FileManager.default.moveItem(atPath: wal + "-moved", toPath: wal)
        let committed = try await store.read { work in
            try ["m-1", "m-2", "m-3"].filter { try work.hasHandled($0, consumer: "test") }
        }
        #expect(committed == ["m-1"], "only the commit the failed sync was for reached SQLite")
    }
}
