import Baton
import BatonNode
import Foundation
import GRDB

extension ParkedMessage {
    init(row: Row) throws {
        self.init(
            orderingKey: row["ordering_key"],
            messageID: row["message_id"],
            exchange: row["exchange"],
            routingKey: row["routing_key"],
            messageType: row["message_type"],
            contentType: row["content_type"],
            correlationID: row["correlation_id"],
            timestamp: (row["timestamp"] as Int64?).map(Date.init(millisecondsSince1970:)),
            headers: try WireJSON.decode([String: String].self, from: row["headers"]),
            body: row["body"],
            attempts: row["attempts"],
            nextAttemptAt: (row["next_attempt_at"] as Int64?).map(Date.init(millisecondsSince1970:)),
            deadLetterID: row["dead_letter_id"],
            lastError: row["last_error"]
        )
        sequence = row["sequence"]
    }
}

extension SQLiteUnitOfWork {
    /// Holds a message in the store; it was (or is about to be) acknowledged to the broker in this transaction.
    /// - Parameters:
    ///   - message: The message, with its attempts and next attempt (or none: it waits behind its key).
    ///   - now: When it was parked.
    func park(_ message: ParkedMessage, at now: Date) throws {
        try run(
            """
            INSERT INTO parked_messages (ordering_key, message_id, exchange, routing_key, message_type, content_type,
                correlation_id, timestamp, headers, body, attempts, next_attempt_at, dead_letter_id, last_error,
                parked_at, owner)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                message.orderingKey, message.messageID, message.exchange, message.routingKey, message.messageType,
                message.contentType, message.correlationID, message.timestamp?.millisecondsSince1970,
                try WireJSON.encode(message.headers), message.body, message.attempts,
                message.nextAttemptAt?.millisecondsSince1970, message.deadLetterID, message.lastError,
                now.millisecondsSince1970, owner,
            ]
        )
    }

    /// Whether the store holds any message (one cheap lookup: the consume path skips the per-message checks
    /// when it holds none).
    func hasParkedMessages() throws -> Bool {
        try exists("SELECT 1 FROM parked_messages WHERE owner = ? LIMIT 1", [owner])
    }

    /// Whether a message with this id is held already (a redelivery of one parked before its ack).
    func isParked(messageID: String) throws -> Bool {
        try exists("SELECT 1 FROM parked_messages WHERE message_id = ? AND owner = ?", [messageID, owner])
    }

    /// Whether messages of this ordering key are held: a new one must wait behind them.
    func isBlocked(orderingKey: String) throws -> Bool {
        try exists("SELECT 1 FROM parked_messages WHERE ordering_key = ? AND owner = ? LIMIT 1", [orderingKey, owner])
    }

    /// Held messages due for an attempt at `time`, oldest first (only the first of each key is ever due).
    func dueParkedMessages(before time: Date, limit: Int) throws -> [ParkedMessage] {
        try Row.fetchAll(
            try statement(
                """
                SELECT * FROM parked_messages WHERE next_attempt_at <= ? AND dead_letter_id IS NULL AND owner = ?
                ORDER BY next_attempt_at, sequence LIMIT ?
                """
            ),
            arguments: [time.millisecondsSince1970, owner, limit]
        ).map(ParkedMessage.init(row:))
    }

    /// When the next held message is due, if any.
    func nextParkedAttempt() throws -> Date? {
        try Int64.fetchOne(
            try statement(
                """
                SELECT MIN(next_attempt_at) FROM parked_messages
                WHERE next_attempt_at IS NOT NULL AND dead_letter_id IS NULL AND owner = ?
                """
            ),
            arguments: [owner]
        ).map(Date.init(millisecondsSince1970:))
    }

    /// Records a failed attempt of a held message: it is tried again at `time`.
    func retryParkedMessage(_ sequence: Int64, at time: Date, error: String) throws {
        try run(
            "UPDATE parked_messages SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE sequence = ?",
            [time.millisecondsSince1970, error, sequence]
        )
    }

    /// Records that a held message failed its last attempt into dead letter `id`: it stays, first of its key,
    /// and its key's later messages wait until the dead letter is replayed.
    func deadLetterParkedMessage(_ sequence: Int64, deadLetter id: Int64, error: String) throws {
        try run(
            """
            UPDATE parked_messages SET attempts = attempts + 1, next_attempt_at = NULL, dead_letter_id = ?,
                last_error = ?
            WHERE sequence = ?
            """,
            [id, error, sequence]
        )
    }

    /// Lets a held message go (handled, or dropped as handled before): the next message of its key, if any, is
    /// due at `now`.
    func releaseParkedMessage(_ message: ParkedMessage, at now: Date) throws {
        try run("DELETE FROM parked_messages WHERE sequence = ?", [message.sequence])
        guard let key = message.orderingKey else { return }
        try run(
            """
            UPDATE parked_messages SET next_attempt_at = ? WHERE sequence =
                (SELECT MIN(sequence) FROM parked_messages WHERE ordering_key = ? AND owner = ?)
                AND dead_letter_id IS NULL
            """,
            [now.millisecondsSince1970, key, owner]
        )
    }

    /// Every held message, oldest first.
    func parkedMessages(limit: Int) throws -> [ParkedMessage] {
        try Row.fetchAll(
            db,
            sql: "SELECT * FROM parked_messages WHERE owner = ? ORDER BY sequence LIMIT ?",
            arguments: [owner, limit]
        ).map(ParkedMessage.init(row:))
    }

    /// Sets a message held under dead letter `id` due again at `now`, with fresh attempts.
    /// - Returns: Whether the store held such a message.
    func rearmParkedMessage(deadLetter id: Int64, at now: Date) throws -> Bool {
        try run(
            "UPDATE parked_messages SET attempts = 0, next_attempt_at = ?, dead_letter_id = NULL WHERE dead_letter_id = ?",
            [now.millisecondsSince1970, id]
        )
        return db.changesCount > 0
    }
}
