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
}
