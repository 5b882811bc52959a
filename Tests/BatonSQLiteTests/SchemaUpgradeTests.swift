import Baton
import BatonNode
import Foundation
import GRDB
import Testing

@testable import BatonSQLite

/// A store an earlier release wrote (schema v8) loses its streams' unique index on event ids when it is
/// opened, and keeps every event, in order.
@Suite struct StreamsUpgradeTests {
    @Test func aStoreWithTheEventIdIndexKeepsItsStreamsWithoutIt() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("upgrade-\(UUID().uuidString).sqlite")
        defer { try? FileManager.default.removeItem(at: path) }
        let database = try DatabasePool(path: path.path)
        try SQLiteStore.migrator.migrate(database, upTo: "v8-outbox-order-scope")
        try await database.write { db in
            for (stream, position, id) in [("order-a", 1, "e-1"), ("order-a", 2, "e-2"), ("order-b", 1, "e-3")] {
                try db.execute(
                    sql: """
                        INSERT INTO streams (stream, position, message_id, message_type, payload, recorded_at)
                        VALUES (?, ?, ?, 't', ?, 100)
                        """,
                    arguments: [stream, position, id, Data(#"{"id":"\#(id)"}"#.utf8)]
                )
            }
        }
        /// How each of the table's indexes came to be: `pk` for its key, `u` for a unique column.
        func indexes(_ db: Database) throws -> [String] {
            try String.fetchAll(db, sql: "SELECT origin FROM pragma_index_list('streams') ORDER BY origin")
        }
        #expect(try database.read(indexes) == ["pk", "u"], "v8: the key's and the event id's")
        try database.close()

        let store = try SQLiteStore(path: path.path)
        try await store.read { work throws in
            #expect(
                try work.readStream("order-a").map(\.payload)
                    == [#"{"id":"e-1"}"#, #"{"id":"e-2"}"#].map { Data($0.utf8) }
            )
            #expect(try work.streamVersion("order-b") == 1)
        }
        let upgraded = try DatabaseQueue(path: path.path)
        defer { try? upgraded.close() }
        #expect(try upgraded.read(indexes) == ["pk"], "only the key's")
    }
}
