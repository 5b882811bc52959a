import Baton
import BatonNode
import Foundation
import GRDB
import Testing

@testable import BatonSQLite

/// A store an earlier release wrote (schema v6) is brought under retention when it is opened: its inbox records
/// count from when they were handled, the sent outbox rows it kept are deleted, pending ones stay and get their
/// order scopes.
@Suite struct RetentionUpgradeTests {
    @Test func aStoreOfTheReleaseBeforeRetentionIsUpgradedWithoutLosingWhatMatters() async throws {
        let (path, database) = try storeOfAnEarlierRelease(upTo: "v6-instance-listing")
        defer { try? FileManager.default.removeItem(at: path) }
        try await database.write { db in
            try db.execute(sql: "INSERT INTO inbox (consumer, message_id, handled_at) VALUES ('c', 'm-1', 100)")
            for (id, sent) in [("sent", 200.0 as Double?), ("pending", nil), ("other", nil)] {
                try db.execute(
                    sql: """
                        INSERT INTO outbox (message_id, exchange, routing_key, envelope, created_at, sent_at)
                        VALUES (?, 'x', 'k', ?, 100, ?)
                        """,
                    arguments: [
                        id,
                        Envelope(
                            messageID: id,
                            messageType: "t",
                            correlationID: "key-\(id)",
                            timestamp: Date(),
                            payload: Data("{}".utf8)
                        ).storedRecord, sent,
                    ]
                )
            }
        }
        try database.close()

        let store = try SQLiteStore(path: path.path)
        try await store.read { work throws in
            #expect(try work.hasHandled("m-1", consumer: "c"))
            #expect(try work.outboxMessageIDs() == ["pending", "other"], "the sent row went, the pending ones stay")
        }
        let pending = try await store.read { try $0.pendingOutbox(limit: 10) }
        let now = Date()
        try await store.write { try $0.markFailed([pending[0].sequence], at: now) }
        let ready = try await store.read { try $0.pendingOutbox(limit: 10, readyAt: now) }
        #expect(ready.map(\.envelope.messageID) == ["other"], "another key's row is not behind the waiting one")
        let forgotten = try await store.write {
            try $0.forgetHandled(issuedBefore: Date(timeIntervalSince1970: 101), limit: 10)
        }
        #expect(forgotten == 1, "an old record counts from when it was handled")
    }
}
