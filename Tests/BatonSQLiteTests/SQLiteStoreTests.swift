import Baton
import BatonNode
import BatonTestSupport
import Foundation
import GRDB
import Testing

@testable import BatonSQLite

/// The SQLite store passes the store port's conformance suite, on files on disk.
@Suite struct SQLiteStoreConformanceTests {
    @Test(arguments: StoreConformance.Case.allCases)
    func conforms(_ check: StoreConformance.Case) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("baton-store-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try await StoreConformance {
            try SQLiteStore(path: directory.appendingPathComponent("store.sqlite").path)
        }.run(check)
    }
}

/// What only the SQLite store promises.
@Suite struct SQLiteStoreTests {
    private let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
        "baton-store-\(UUID().uuidString)"
    )

    private func openStore() throws -> SQLiteStore {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return try SQLiteStore(path: directory.appendingPathComponent("store.sqlite").path)
    }

    private func envelope(_ id: String) -> Envelope {
        Envelope(messageID: id, messageType: "test.Thing.v1", timestamp: Date(), payload: Data("{}".utf8))
    }

    private struct Refused: Error {}

    /// The page cache's limit is the one asked for (64 MiB when none is), on the writer and the readers alike.
    @Test func thePageCacheIsSizedAsAsked() async throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("store.sqlite").path
        func limits(_ store: SQLiteStore) async throws -> [Int?] {
            let sql = "PRAGMA cache_size"
            return [
                try store.readNow { try Int.fetchOne($0, sql: sql) },
                try await store.writeDatabase { try Int.fetchOne($0, sql: sql) },
            ]
        }
        #expect(try await limits(SQLiteStore(path: path)) == [-65_536, -65_536], "in KiB, negative")
        #expect(try await limits(SQLiteStore(path: path, pageCacheMiB: 512)) == [-524_288, -524_288])
    }

    @Test func marksWrittenWithoutWaitingForTheDiskAreCommittedAndLaterWritesStillAre() async throws {
        let store = try openStore()
        defer { try? FileManager.default.removeItem(at: directory) }
        let (_, handed) = try await store.writeHandingOverOutbox { [self] work in
            try work.enqueue(envelope("a"), exchange: "x", routingKey: "k")
            try work.enqueue(envelope("b"), exchange: "x", routingKey: "k")
        }
        try await store.writeWithoutWaitingForDisk { try $0.removeSent([handed[0].sequence]) }
        try await store.write { [self] in try $0.enqueue(envelope("c"), exchange: "x", routingKey: "k") }
        let pending = try await store.read { try $0.pendingOutbox(limit: 10) }
        #expect(pending.map(\.envelope.messageID) == ["b", "c"])
        await #expect(throws: Refused.self) {
            try await store.writeWithoutWaitingForDisk { _ in throw Refused() }
        }
    }

    private struct Note: Codable, Sendable, Equatable {
        var text: String
    }
}
