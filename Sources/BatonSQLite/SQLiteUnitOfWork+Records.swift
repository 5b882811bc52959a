import Baton
import BatonNode
import Foundation
import GRDB

/// Dead letters and read-model documents.
extension SQLiteUnitOfWork {
    // MARK: Dead letters

    /// Stores a dead letter.
    /// - Returns: Its id.
    @discardableResult
    func addDeadLetter(_ letter: DeadLetter) throws -> Int64 {
        try run(
            """
            INSERT INTO dead_letters (message_id, message_type, exchange, routing_key, headers, body, reason, handler,
                attempts, dead_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                letter.messageID, letter.messageType, letter.exchange, letter.routingKey,
                try WireJSON.encode(letter.headers),
                letter.body, letter.reason, letter.handler, letter.attempts, letter.deadAt.timeIntervalSince1970,
            ]
        )
        return db.lastInsertedRowID
    }

    /// Whether a message id already has a dead letter that was not replayed (a redelivery of it is dropped).
    func hasOpenDeadLetter(messageID: String) throws -> Bool {
        try exists("SELECT 1 FROM dead_letters WHERE message_id = ? AND replayed_at IS NULL", [messageID])
    }

    /// Dead letters, newest first.
    func deadLetters(includeReplayed: Bool, limit: Int) throws -> [DeadLetter] {
        try Row.fetchAll(
            db,
            sql: """
                SELECT * FROM dead_letters \(includeReplayed ? "" : "WHERE replayed_at IS NULL")
                ORDER BY id DESC LIMIT ?
                """,
            arguments: [limit]
        ).map(DeadLetter.init(row:))
    }

    /// One dead letter.
    func deadLetter(id: Int64) throws -> DeadLetter? {
        try Row.fetchOne(db, sql: "SELECT * FROM dead_letters WHERE id = ?", arguments: [id]).map(DeadLetter.init(row:))
    }

    // MARK: Documents (read models)

    func saveDocument(
        _ body: Data,
        in collection: String,
        id: String,
        alias: String?,
        status: String?,
        at time: Date
    ) throws {
        try run(
            """
            INSERT INTO documents (collection, id, alias, status, body, updated_at) VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (collection, id) DO UPDATE SET
                alias = excluded.alias, status = excluded.status, body = excluded.body, updated_at = excluded.updated_at
            """,
            [collection, id, alias, status, body, time.timeIntervalSince1970]
        )
    }

    func documentBody(in collection: String, idOrAlias key: String) throws -> Data? {
        // Two lookups, each on its own index: one query with `id = ? OR alias = ?` scans the whole collection
        // (found by the benchmark: the cost of every order grew with the number of orders), and so does the
        // alias lookup unless told its index (without statistics the planner prefers the primary key's prefix).
        if let body = try firstRow(
            "SELECT body FROM documents WHERE collection = ? AND id = ?",
            [collection, key],
            { $0.data(0) }
        ) {
            return body
        }
        return try firstRow(
            "SELECT body FROM documents INDEXED BY documents_alias WHERE collection = ? AND alias = ? LIMIT 1",
            [collection, key],
            { $0.data(0) }
        )
    }

    func documentBodies(in collection: String, status: String?, limit: Int) throws -> [Data] {
        if let status {
            return try Data.fetchAll(
                try statement(
                    """
                    SELECT body FROM documents INDEXED BY documents_status WHERE collection = ? AND status = ?
                    ORDER BY rowid LIMIT ?
                    """
                ),
                arguments: [collection, status, limit]
            )
        }
        // In rowid order, up to the limit: a store holds a collection or two.
        return try Data.fetchAll(
            try statement("SELECT body FROM documents NOT INDEXED WHERE collection = ? ORDER BY rowid LIMIT ?"),
            arguments: [collection, limit]
        )
    }

    /// Marks a dead letter replayed.
    func markReplayed(deadLetter id: Int64, at time: Date) throws {
        try run(
            "UPDATE dead_letters SET replayed_at = ? WHERE id = ?",
            [time.timeIntervalSince1970, id]
        )
    }
}
