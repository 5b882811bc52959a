import Baton
import BatonNode
import BatonTestSupport
import Foundation
import GRDB
import Testing

@testable import BatonSQLite

/// A store an earlier release wrote is brought to this release's schema when it is opened, and keeps what it
/// holds. (The retention upgrade has its own suite.)
@Suite struct SchemaUpgradeTests {
    /// v8 → v9: the streams lose their unique index on event ids, and keep every event, in order.
    @Test func aStoreWithTheEventIdIndexKeepsItsStreamsWithoutIt() async throws {
        let (path, database) = try storeOfAnEarlierRelease(upTo: "v8-outbox-order-scope")
        defer { try? FileManager.default.removeItem(at: path) }
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
        #expect(try upgraded.read(indexes) == ["c"], "only the key's (a unique index since v13)")
    }

    /// v9 → v10: the states in their own table move into the instances' rows, each with the version it is of
    /// (an older store's earlier state stays an earlier state, for the transitions after it to complete).
    @Test func aStoreWithStatesInTheirOwnTableKeepsThemInTheInstancesRows() async throws {
        let (path, database) = try storeOfAnEarlierRelease(upTo: "v9-streams-without-message-index")
        defer { try? FileManager.default.removeItem(at: path) }
        try await database.write { db in
            for (instance, stateVersion) in [("current", 3), ("earlier", 1), ("none", nil)] as [(String, Int?)] {
                try db.execute(
                    sql: """
                        INSERT INTO process_instances (process_manager, instance_id, lifecycle, version, started_at,
                            updated_at) VALUES ('p', ?, 'running', 3, 100, 100)
                        """,
                    arguments: [instance]
                )
                if let stateVersion {
                    try db.execute(
                        sql:
                            "INSERT INTO process_snapshots (process_manager, instance_id, version, instance) VALUES ('p', ?, ?, ?)",
                        arguments: [instance, stateVersion, Data("state of \(instance)".utf8)]
                    )
                }
            }
        }
        try database.close()

        let store = try SQLiteStore(path: path.path)
        let stored = try await store.read { work in
            try ["current", "earlier", "none"].map { try work.storedInstance($0, processManager: "p") }
        }
        #expect(
            stored == [
                StoredInstance(version: 3, state: Data("state of current".utf8)),
                StoredInstance(version: 3, state: nil, earlierState: Data("state of earlier".utf8)),
                StoredInstance(version: 3, state: nil),
            ]
        )
        let upgraded = try DatabaseQueue(path: path.path)
        defer { try? upgraded.close() }
        let stateTableLeft = try await upgraded.read { db in try db.tableExists("process_snapshots") }
        #expect(!stateTableLeft)
    }

    /// v10 → v11: a store of one node keeps its outbox rows, held messages and timers as its own (no owner), and
    /// gains the tables of the queues nodes sharing it keep.
    @Test func aStoreOfOneNodeKeepsItsOutboxHeldMessagesAndTimersAsItsOwn() async throws {
        let (path, database) = try storeOfAnEarlierRelease(upTo: "v10-state-in-instance-row")
        defer { try? FileManager.default.removeItem(at: path) }
        try await database.write { db in
            try db.execute(
                sql: """
                    INSERT INTO outbox (message_id, exchange, routing_key, envelope, created_at, scope)
                        VALUES ('m-1', 'baton.commands', 'test.Do', ?, 100, 'test.Do');
                    INSERT INTO parked_messages (ordering_key, message_id, exchange, routing_key, headers, body,
                        attempts, next_attempt_at, parked_at) VALUES ('key', 'held', 'x', 'k', '{}', '{}', 1, 100, 100);
                    INSERT INTO process_instances (process_manager, instance_id, lifecycle, version, started_at,
                        updated_at) VALUES ('p', 'i', 'running', 1, 100, 100);
                    INSERT INTO timers (process_manager, instance_id, name, due_at, fire_at)
                        VALUES ('p', 'i', 't', 100, 100);
                    """,
                arguments: [
                    Envelope(messageID: "m-1", messageType: "test.Do.v1", timestamp: Date(), payload: Data("{}".utf8))
                        .storedRecord
                ]
            )
        }
        try database.close()

        let store = try SQLiteStore(path: path.path)
        try await store.read { work throws in
            #expect(try work.pendingOutbox(limit: 10).map(\.envelope.messageID) == ["m-1"])
            #expect(try work.isBlocked(orderingKey: "key"))
            #expect(try work.dueTimers(before: Date(millisecondsSince1970: 200), limit: 10).map(\.name) == ["t"])
        }
        #expect(try await SQLiteTransport(store: store).messageCount("any") == 0, "the queues' table is there")
    }

    /// v11 → v12: instances, timers and documents move into rowid tables with their keys in unique indexes, and
    /// keep every row and what finds it: an instance by id and in the listing, a tombstone, a due timer and a
    /// parked one, a document by id, alias and status; a key taken is still taken (an upsert changes the row).
    @Test func aStoreWithRowsKeyedByIdKeepsThemInStartOrder() async throws {
        let (path, database) = try storeOfAnEarlierRelease(upTo: "v11-shared-store-queues")
        defer { try? FileManager.default.removeItem(at: path) }
        try await database.write { db in
            try db.execute(
                sql: """
                    INSERT INTO process_instances (process_manager, instance_id, lifecycle, version, started_at,
                        updated_at, state_version, state) VALUES ('p', 'open', 'running', 2, 100, 110, 2, 'state');
                    INSERT INTO process_instances (process_manager, instance_id, lifecycle, version, started_at,
                        updated_at, purged_at, state_version, state)
                        VALUES ('p', 'purged', 'completed', 4, 50, 60, 70, 4, 'last');
                    INSERT INTO timers (process_manager, instance_id, name, due_at, fire_at, owner)
                        VALUES ('p', 'open', 'step', 100, 100, '');
                    INSERT INTO timers (process_manager, instance_id, name, due_at, fire_at, attempts, dead_letter_id)
                        VALUES ('p', 'open', 'parked', 90, 90, 3, 7);
                    INSERT INTO documents (collection, id, alias, status, body, updated_at)
                        VALUES ('orders', 'o-1', 'c-1', 'shipped', '{"id":"o-1"}', 100);
                    """
            )
        }
        try database.close()

        let store = try SQLiteStore(path: path.path)
        try await store.read { work throws in
            #expect(
                try work.storedInstance("open", processManager: "p")
                    == StoredInstance(version: 2, state: Data("state".utf8))
            )
            #expect(try work.instanceVersion("purged", processManager: "p") == 4)
            #expect(try work.instances(of: "p").map(\.instanceID) == ["open", "purged"])
            #expect(try work.dueTimers(before: Date(millisecondsSince1970: 200), limit: 10).map(\.name) == ["step"])
            #expect(try work.documentBody(in: "orders", idOrAlias: "c-1") == Data(#"{"id":"o-1"}"#.utf8))
            #expect(try work.documentBodies(in: "orders", status: "shipped", limit: 10).count == 1)
        }
        try await store.write { work in
            try work.saveDocument(Data("{}".utf8), in: "orders", id: "o-1", alias: nil, status: "done", at: Date())
        }
        let upgraded = try DatabaseQueue(path: path.path)
        defer { try? upgraded.close() }
        let (documents, unique) = try await upgraded.read { db in
            (
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM documents"),
                try String.fetchAll(
                    db,
                    sql: """
                        SELECT il.name FROM sqlite_master t, pragma_index_list(t.name) il
                        WHERE t.type = 'table' AND t.name IN ('process_instances', 'timers', 'documents') AND il."unique"
                        ORDER BY il.name
                        """
                )
            )
        }
        #expect(documents == 1, "the upsert changed the one row")
        #expect(unique == ["documents_key", "process_instances_key", "timers_key"])
    }

    /// v12 → v13: transitions, timers, associations and events move to keys by their instance's or stream's id,
    /// and keep every row, in order, and what they refuse: a transition's version taken, a stream's stale
    /// version; a timer rescheduled changes its row. Documents by status are listed in the order first saved.
    @Test func aStoreKeyedByNamesKeepsItsRowsKeyedByInstanceAndStream() async throws {
        let (path, database) = try storeOfAnEarlierRelease(upTo: "v12-rows-in-start-order")
        defer { try? FileManager.default.removeItem(at: path) }
        try await database.write { db in
            for (instance, version) in [("open", 1), ("open", 2), ("other", 1)] {
                try db.execute(
                    sql:
                        "INSERT INTO process_transitions (process_manager, instance_id, version, record) VALUES ('pm', ?, ?, ?)",
                    arguments: [instance, version, StoreConformance.transition(Int64(version)).storedRecord]
                )
            }
            try db.execute(
                sql: """
                    INSERT INTO process_instances (process_manager, instance_id, lifecycle, version, started_at,
                        updated_at, state_version, state) VALUES ('pm', 'other', 'running', 1, 90, 90, 1, 'other');
                    INSERT INTO process_instances (process_manager, instance_id, lifecycle, version, started_at,
                        updated_at, state_version, state) VALUES ('pm', 'open', 'running', 2, 100, 110, 2, 'state');
                    INSERT INTO timers (process_manager, instance_id, name, due_at, fire_at)
                        VALUES ('pm', 'open', 'step', 100, 100);
                    INSERT INTO process_associations (process_manager, name, value, instance_id)
                        VALUES ('pm', 'tracking', 'T-1', 'open');
                    INSERT INTO streams (stream, position, message_id, message_type, payload, recorded_at) VALUES
                        ('order-b', 1, 'e-3', 't', 'b1', 90), ('order-a', 1, 'e-1', 't', 'a1', 100),
                        ('order-a', 2, 'e-2', 't', 'a2', 110);
                    INSERT INTO documents (collection, id, status, body, updated_at) VALUES
                        ('orders', 'o-2', 'open', 'second', 100), ('orders', 'o-1', 'open', 'first', 90);
                    """
            )
        }
        try database.close()

        let store = try SQLiteStore(path: path.path)
        try await store.read { work throws in
            #expect(try work.transitions(of: "pm", instance: "open", after: 0).map(\.version) == [1, 2])
            #expect(try work.transitions(of: "pm", instance: "other", after: 0).map(\.version) == [1])
            #expect(
                try work.dueTimers(before: Date(millisecondsSince1970: 200), limit: 10).map(\.instanceID) == ["open"]
            )
            #expect(try work.readStream("order-a").map(\.payload) == [Data("a1".utf8), Data("a2".utf8)])
            #expect(try work.streamVersion("order-b") == 1)
            #expect(try work.streamVersion("order-c") == 0)
            #expect(try work.instance(associatedWith: "T-1", as: "tracking", processManager: "pm") == "open")
        }
        await #expect(throws: (any Error).self, "version 2 of the instance is taken") {
            try await store.write { try StoreConformance.record(StoreConformance.transition(2), $0, instance: "open") }
        }
        await #expect(throws: ConcurrencyError.self) {
            try await store.write {
                try $0.append([StoreConformance.envelope("e-4")], to: "order-a", expectedVersion: 1)
            }
        }
        try await store.write { work in
            try StoreConformance.record(
                StoreConformance.transition(
                    3,
                    timers: [.schedule(name: "step", dueAt: Date(millisecondsSince1970: 150))]
                ),
                work,
                instance: "open"
            )
            try work.append([StoreConformance.envelope("e-4")], to: "order-a", expectedVersion: 2)
        }
        try await store.read { work throws in
            #expect(try work.transitions(of: "pm", instance: "open", after: 1).map(\.version) == [2, 3])
            let timers = try work.dueTimers(before: Date(millisecondsSince1970: 200), limit: 10)
            #expect(timers.map(\.dueAt) == [Date(millisecondsSince1970: 150)], "the one row, rescheduled")
            #expect(try work.streamVersion("order-a") == 3)
            #expect(
                try work.documentBodies(in: "orders", status: "open", limit: 10) == [
                    Data("second".utf8), Data("first".utf8),
                ]
            )
        }
    }
}

/// A store file at a new temporary path with the schema an earlier release left: its migrations up to and
/// including `migration`. The caller removes the file.
func storeOfAnEarlierRelease(upTo migration: String) throws -> (URL, DatabasePool) {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("upgrade-\(UUID().uuidString).sqlite")
    let database = try DatabasePool(path: path.path)
    try SQLiteStore.migrator.migrate(database, upTo: migration)
    return (path, database)
}
