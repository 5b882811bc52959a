import Baton
import BatonNode
import BatonSQLite
import Foundation
import GRDB
import Testing

/// A file that is not a store this release can use is refused with one line, and left as it was: not a
/// database, a damaged store, another application's database, a store of a newer release.
@Suite struct StoreFileTests {
    private let directory = FileManager.default.temporaryDirectory.appendingPathComponent("baton-file-\(UUID())")

    private func path(_ name: String) throws -> String {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory.appendingPathComponent(name).path
    }

    /// Opens `path` as a store, for serving and for reading, and checks both are refused as `kind` with a
    /// one-line message naming the file, and the file's bytes are unchanged (and, unless it is a Baton store,
    /// already in WAL mode, no write-ahead log was started beside it).
    private func expectRefused(_ path: String, as kind: SQLiteStoreError.Kind, mentioning words: String) throws {
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        for readOnly in [false, true] {
            #expect {
                _ = try SQLiteStore(path: path, readOnly: readOnly)
            } throws: { error in
                guard let error = error as? SQLiteStoreError else { return false }
                return error.kind == kind && error.message.contains(path) && error.message.contains(words)
                    && !error.message.contains("\n")
            }
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before, "the file is unchanged")
        if kind != .newer {
            #expect(!FileManager.default.fileExists(atPath: path + "-wal"), "no write-ahead log was started")
        }
    }

    /// A store with some of everything in it.
    private func makeStore(_ path: String) async throws {
        let store = try SQLiteStore(path: path)
        try await store.write { work in
            for index in 0..<200 {
                try work.markHandled("m-\(index)", consumer: "c", issuedAt: Date(), at: Date())
                try work.save(["padding": String(repeating: "x", count: 500)], in: "docs", id: "d-\(index)", at: Date())
            }
        }
        // Checkpointed into the main file, as after a clean stop.
        _ = try await store.write { _ in }
    }

    @Test func aFileThatIsNotADatabaseIsRefused() throws {
        let file = try path("noise.sqlite")
        try Data((0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7919) }).write(to: URL(fileURLWithPath: file))
        try expectRefused(file, as: .notADatabase, mentioning: "is not a SQLite database")
        try? FileManager.default.removeItem(at: directory)
    }

    @Test func anotherApplicationsDatabaseIsRefused() throws {
        let file = try path("crm.sqlite")
        let other = try DatabaseQueue(path: file)
        try other.write { try $0.execute(sql: "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)") }
        try other.close()
        try expectRefused(file, as: .foreign, mentioning: "not a Baton store (its tables: customers)")
        try? FileManager.default.removeItem(at: directory)
    }

    @Test func aStoreOfANewerReleaseIsRefused() async throws {
        let file = try path("newer.sqlite")
        try await makeStore(file)
        let raw = try DatabaseQueue(path: file)
        try await raw.write {
            try $0.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v99-from-the-future')")
        }
        try raw.close()
        for suffix in ["-wal", "-shm"] { try? FileManager.default.removeItem(atPath: file + suffix) }
        try expectRefused(file, as: .newer, mentioning: "newer release of Baton (schema v99-from-the-future")
        try? FileManager.default.removeItem(at: directory)
    }

    @Test func aTruncatedStoreIsRefusedToServe() async throws {
        let file = try path("truncated.sqlite")
        try await makeStore(file)
        for suffix in ["-wal", "-shm"] { try? FileManager.default.removeItem(atPath: file + suffix) }
        let whole = try Data(contentsOf: URL(fileURLWithPath: file))
        #expect(whole.count > 64 * 1024)
        try whole.prefix(whole.count / 2).write(to: URL(fileURLWithPath: file))
        let before = try Data(contentsOf: URL(fileURLWithPath: file))
        #expect {
            _ = try SQLiteStore(path: file)
        } throws: { error in
            (error as? SQLiteStoreError)?.kind == .damaged && "\(error)".contains("is damaged")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: file)) == before, "the file is unchanged")
        try? FileManager.default.removeItem(at: directory)
    }
}
