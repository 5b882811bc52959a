import Baton
import BatonSQLite
import Foundation
import Testing

/// The store's own promises that the node's fast paths rely on (SQLite files on disk).
@Suite struct StoreTests {
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

    @Test func aTransactionHandsOverExactlyTheOutboxRowsItCommitted() async throws {
        let store = try openStore()
        defer { try? FileManager.default.removeItem(at: directory) }
        try await store.write { try $0.enqueue(envelope("earlier"), exchange: "x", routingKey: "k") }
        let (_, handed) = try await store.writeHandingOverOutbox { [self] work in
            try work.enqueue(envelope("kept-1"), exchange: "x", routingKey: "k")
            try? work.inSavepoint {
                try work.enqueue(envelope("rolled-back"), exchange: "x", routingKey: "k")
                throw Refused()
            }
            try work.enqueue(envelope("earlier"), exchange: "x", routingKey: "k")  // queued before: not again
            try work.enqueue(envelope("kept-2"), exchange: "y", routingKey: "k2")
        }
        let pending = try await store.read { try $0.pendingOutbox(limit: 10) }
        #expect(pending.map(\.envelope.messageID) == ["earlier", "kept-1", "kept-2"])
        #expect(handed.map(\.envelope.messageID) == ["kept-1", "kept-2"])
        #expect(handed.map(\.sequence) == pending.dropFirst().map(\.sequence))
        #expect(handed.map(\.exchange) == ["x", "y"])
    }

    @Test func aRolledBackTransactionHandsOverNothing() async throws {
        let store = try openStore()
        defer { try? FileManager.default.removeItem(at: directory) }
        await #expect(throws: Refused.self) {
            _ = try await store.writeHandingOverOutbox { [self] work in
                try work.enqueue(envelope("lost"), exchange: "x", routingKey: "k")
                throw Refused()
            }
        }
        #expect(try await store.read { try $0.pendingOutboxCount() } == 0)
    }

    @Test func marksWrittenWithoutWaitingForTheDiskAreCommittedAndLaterWritesStillAre() async throws {
        let store = try openStore()
        defer { try? FileManager.default.removeItem(at: directory) }
        let (_, handed) = try await store.writeHandingOverOutbox { [self] work in
            try work.enqueue(envelope("a"), exchange: "x", routingKey: "k")
            try work.enqueue(envelope("b"), exchange: "x", routingKey: "k")
        }
        try await store.writeWithoutWaitingForDisk { try $0.markSent([handed[0].sequence], at: Date()) }
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

    @Test func aDocumentIsFoundByItsIdBeforeAnotherDocumentsAlias() async throws {
        let store = try openStore()
        defer { try? FileManager.default.removeItem(at: directory) }
        try await store.write { work in
            try work.save(Note(text: "first"), in: "notes", id: "n-1", alias: "n-2", at: Date())
            try work.save(Note(text: "second"), in: "notes", id: "n-2", alias: "chk-2", at: Date())
            try work.save(Note(text: "elsewhere"), in: "other", id: "x", alias: "chk-9", at: Date())
        }
        let found = try await store.read { work in
            try ["n-1", "n-2", "chk-2", "chk-9", "missing"].map {
                try work.document(Note.self, in: "notes", idOrAlias: $0)?.text
            }
        }
        #expect(found == ["first", "second", "second", nil, nil])
    }
}
