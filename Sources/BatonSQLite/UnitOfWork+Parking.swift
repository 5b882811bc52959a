import Baton
import Foundation
import GRDB

/// A message the store holds instead of the queue: its handler failed and it waits for its next attempt, or it
/// waits behind an earlier message of its instance that failed. Held messages were acknowledged to the broker in
/// the transaction that parked them; the node tries them again from here.
public struct ParkedMessage: Sendable, Hashable {
    /// Its position: messages of one ordering key are handled in this order.
    public var sequence: Int64
    /// The instance (or aggregate) it belongs to, whose later messages wait behind it; `nil` when it has none
    /// (it is retried on its own).
    public var orderingKey: String?
    /// The message id.
    public var messageID: String
    /// The exchange it arrived on.
    public var exchange: String
    /// Its routing key.
    public var routingKey: String
    /// Its type property.
    public var messageType: String?
    /// Its content type property.
    public var contentType: String?
    /// Its correlation id property.
    public var correlationID: String?
    /// Its timestamp property.
    public var timestamp: Date?
    /// Its headers.
    public var headers: [String: String]
    /// Its body.
    public var body: Data
    /// Failed attempts so far.
    public var attempts: Int
    /// When it is tried next; `nil` while it waits behind an earlier message of its key, or is dead-lettered.
    public var nextAttemptAt: Date?
    /// The dead letter it failed into: it blocks its key until that is replayed.
    public var deadLetterID: Int64?
    /// The error of its last attempt.
    public var lastError: String?

    /// Creates a parked message (`sequence` is assigned when it is stored).
    public init(
        orderingKey: String?,
        messageID: String,
        exchange: String,
        routingKey: String,
        messageType: String?,
        contentType: String?,
        correlationID: String?,
        timestamp: Date?,
        headers: [String: String],
        body: Data,
        attempts: Int,
        nextAttemptAt: Date?,
        deadLetterID: Int64? = nil,
        lastError: String? = nil
    ) {
        self.sequence = 0
        self.orderingKey = orderingKey
        self.messageID = messageID
        self.exchange = exchange
        self.routingKey = routingKey
        self.messageType = messageType
        self.contentType = contentType
        self.correlationID = correlationID
        self.timestamp = timestamp
        self.headers = headers
        self.body = body
        self.attempts = attempts
        self.nextAttemptAt = nextAttemptAt
        self.deadLetterID = deadLetterID
        self.lastError = lastError
    }

    init(row: Row) throws {
        sequence = row["sequence"]
        orderingKey = row["ordering_key"]
        messageID = row["message_id"]
        exchange = row["exchange"]
        routingKey = row["routing_key"]
        messageType = row["message_type"]
        contentType = row["content_type"]
        correlationID = row["correlation_id"]
        timestamp = (row["timestamp"] as Int64?).map(Date.init(millisecondsSince1970:))
        headers = try JSONDecoder.baton.decode([String: String].self, from: row["headers"])
        body = row["body"]
        attempts = row["attempts"]
        nextAttemptAt = (row["next_attempt_at"] as Int64?).map(Date.init(millisecondsSince1970:))
        deadLetterID = row["dead_letter_id"]
        lastError = row["last_error"]
    }
}

extension UnitOfWork {
    /// Holds a message in the store; it was (or is about to be) acknowledged to the broker in this transaction.
    /// - Parameters:
    ///   - message: The message, with its attempts and next attempt (or none: it waits behind its key).
    ///   - now: When it was parked.
    public func park(_ message: ParkedMessage, at now: Date) throws {
        try run(
            """
            INSERT INTO parked_messages (ordering_key, message_id, exchange, routing_key, message_type, content_type,
                correlation_id, timestamp, headers, body, attempts, next_attempt_at, dead_letter_id, last_error,
                parked_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                message.orderingKey, message.messageID, message.exchange, message.routingKey, message.messageType,
                message.contentType, message.correlationID, message.timestamp?.millisecondsSince1970,
                try JSONEncoder.baton.encode(message.headers), message.body, message.attempts,
                message.nextAttemptAt?.millisecondsSince1970, message.deadLetterID, message.lastError,
                now.millisecondsSince1970,
            ]
        )
    }

    /// Whether the store holds any message (one cheap lookup: the consume path skips the per-message checks
    /// when it holds none).
    public func hasParkedMessages() throws -> Bool {
        try Bool.fetchOne(try statement("SELECT 1 FROM parked_messages LIMIT 1")) ?? false
    }

    /// Whether a message with this id is held already (a redelivery of one parked before its ack).
    public func isParked(messageID: String) throws -> Bool {
        try Bool.fetchOne(try statement("SELECT 1 FROM parked_messages WHERE message_id = ?"), arguments: [messageID])
            ?? false
    }

    /// Whether messages of this ordering key are held: a new one must wait behind them.
    public func isBlocked(orderingKey: String) throws -> Bool {
        try Bool.fetchOne(
            try statement("SELECT 1 FROM parked_messages WHERE ordering_key = ? LIMIT 1"),
            arguments: [orderingKey]
        ) ?? false
    }

    /// Held messages due for an attempt at `time`, oldest first (only the first of each key is ever due).
    public func dueParkedMessages(before time: Date, limit: Int) throws -> [ParkedMessage] {
        try Row.fetchAll(
            try statement(
                """
                SELECT * FROM parked_messages WHERE next_attempt_at <= ? AND dead_letter_id IS NULL
                ORDER BY next_attempt_at, sequence LIMIT ?
                """
            ),
            arguments: [time.millisecondsSince1970, limit]
        ).map(ParkedMessage.init(row:))
    }

    /// When the next held message is due, if any.
    public func nextParkedAttempt() throws -> Date? {
        try Int64.fetchOne(
            try statement(
                "SELECT MIN(next_attempt_at) FROM parked_messages WHERE next_attempt_at IS NOT NULL AND dead_letter_id IS NULL"
            )
        ).map(Date.init(millisecondsSince1970:))
    }

    /// Records a failed attempt of a held message: it is tried again at `time`.
    public func retryParkedMessage(_ sequence: Int64, at time: Date, error: String) throws {
        try run(
            "UPDATE parked_messages SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE sequence = ?",
            [time.millisecondsSince1970, error, sequence]
        )
    }

    /// Records that a held message failed its last attempt into dead letter `id`: it stays, first of its key,
    /// and its key's later messages wait until the dead letter is replayed.
    public func deadLetterParkedMessage(_ sequence: Int64, deadLetter id: Int64, error: String) throws {
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
    public func releaseParkedMessage(_ message: ParkedMessage, at now: Date) throws {
        try run("DELETE FROM parked_messages WHERE sequence = ?", [message.sequence])
        guard let key = message.orderingKey else { return }
        try run(
            """
            UPDATE parked_messages SET next_attempt_at = ? WHERE sequence =
                (SELECT MIN(sequence) FROM parked_messages WHERE ordering_key = ?) AND dead_letter_id IS NULL
            """,
            [now.millisecondsSince1970, key]
        )
    }

    /// Every held message, oldest first.
    public func parkedMessages(limit: Int = 1000) throws -> [ParkedMessage] {
        try Row.fetchAll(db, sql: "SELECT * FROM parked_messages ORDER BY sequence LIMIT ?", arguments: [limit])
            .map(ParkedMessage.init(row:))
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
