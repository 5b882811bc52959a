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

    /// What a step of a workflow changes (its instance's state, its transition, its timer, its read model's
    /// document, an aggregate's event) lies in the order the instance or stream began, so the steps of the
    /// workflows in flight, all started lately, write a few pages where steps of instances at random write a page
    /// for each row. With the transitions, timers and events keyed by their instance's or stream's name and the
    /// documents by status listed by id (before `v13-keys-by-instance-row`), the latest 100 wrote 630–670 pages
    /// and 100 at random 1,100 (now about 100 and 830): a key's b-tree a page per row, once it outgrows what one
    /// transaction shares.
    @Test func theStepsOfTheLatestInstancesShareTheirPages() async throws {
        let store = try openStore()
        defer { try? FileManager.default.removeItem(at: directory) }
        let ids = (0..<20_000).map { _ in UUID().uuidString.lowercased() }
        let state = Data(repeating: UInt8(ascii: "s"), count: 600)
        let event = Envelope(messageID: "e", messageType: "test.Happened.v1", timestamp: Date(), payload: state)
        /// Records `transition` (at `time`) of instance `id`, saves its order's document with `status` and
        /// appends an event to its order's stream.
        @Sendable func step(
            _ id: String,
            _ transition: ProcessTransition,
            at time: Date,
            status: String,
            _ work: any UnitOfWork
        ) throws {
            var transition = transition
            transition.at = time
            try work.record(
                transition,
                processManager: "pm",
                instanceID: id,
                lifecycle: .running,
                state: state,
                route: StoreConformance.route
            )
            try work.saveDocument(state, in: "orders", id: id, alias: nil, status: status, at: time)
            try work.append([event], to: "order-\(id)", expectedVersion: transition.version - 1)
        }
        let start = StoreConformance.transition(
            1,
            timers: [.schedule(name: "t", dueAt: Date(timeIntervalSince1970: 1))]
        )
        for chunk in stride(from: 0, to: ids.count, by: 5_000) {
            try await store.write { work in
                for (index, id) in ids[chunk..<chunk + 5_000].enumerated() {
                    let time = Date(timeIntervalSince1970: Double(chunk + index) / 1000)
                    try step(id, start, at: time, status: "new", work)
                }
            }
        }
        let walPath = directory.appendingPathComponent("store.sqlite-wal").path
        /// The pages one transaction writes that moves each instance a step (from version 1 to 2), cancelling its
        /// timer, and appends an event to each one's stream.
        func pagesWritten(stepping instances: [String]) async throws -> Int {
            _ = try await DatabaseQueue(path: directory.appendingPathComponent("store.sqlite").path)
                .writeWithoutTransaction { try $0.checkpoint(.truncate) }
            let next = StoreConformance.transition(2, timers: [.cancel(name: "t")])
            try await store.write { work in
                for id in instances { try step(id, next, at: Date(), status: "shipped", work) }
            }
            let walBytes = try #require(try FileManager.default.attributesOfItem(atPath: walPath)[.size] as? Int)
            return (walBytes - 32) / (4096 + 24)
        }
        let latest = try await pagesWritten(stepping: Array(ids.suffix(100)))
        let atRandom = try await pagesWritten(stepping: Array(ids.prefix(19_900).shuffled().prefix(100)))
        #expect(atRandom >= 500, "a page per row of the five tables: \(atRandom)")
        #expect(Double(latest) < 0.2 * Double(atRandom), "\(latest) pages for the latest 100, \(atRandom) at random")
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
