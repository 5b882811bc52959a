import Baton
import BatonNode
import Foundation
import PostgresNIO

/// Dead letters and held messages.
extension PostgresUnitOfWork {
    // MARK: Dead letters

    private func deadLetters(where condition: String, _ binds: [PostgresData]) throws -> [DeadLetter] {
        try query(
            """
            SELECT id, message_id, message_type, exchange, routing_key, headers, body, reason, handler, attempts,
                dead_at, replayed_at
            FROM dead_letters WHERE \(condition)
            """,
            binds
        ).map { row in
            let (
                id, messageID, messageType, exchange, routingKey, headers, body, reason, handler, attempts, deadAt,
                replayedAt
            ) = try row.decode(
                (Int64, String, String, String, String, Data, Data, String, String, Int32, Int64, Int64?).self
            )
            var letter = DeadLetter(
                messageID: messageID,
                messageType: messageType,
                exchange: exchange,
                routingKey: routingKey,
                headers: try WireJSON.decode([String: String].self, from: headers),
                body: body,
                reason: reason,
                handler: handler,
                attempts: Int(attempts),
                deadAt: Date(millisecondsSince1970: deadAt)
            )
            letter.id = id
            letter.replayedAt = replayedAt.map(Date.init(millisecondsSince1970:))
            return letter
        }
    }

    @discardableResult
    func addDeadLetter(_ letter: DeadLetter) throws -> Int64 {
        try query(
            """
            INSERT INTO dead_letters (message_id, message_type, exchange, routing_key, headers, body, reason, handler,
                attempts, dead_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id
            """,
            [
                .init(string: letter.messageID), .init(string: letter.messageType), .init(string: letter.exchange),
                .init(string: letter.routingKey), .init(bytes: [UInt8](try WireJSON.encode(letter.headers))),
                .init(bytes: [UInt8](letter.body)), .init(string: letter.reason), .init(string: letter.handler),
                .init(int32: Int32(letter.attempts)), .init(int64: letter.deadAt.millisecondsSince1970),
            ]
        ).first?.decode(Int64.self) ?? 0
    }

    func hasOpenDeadLetter(messageID: String) throws -> Bool {
        try !query(
            "SELECT 1 FROM dead_letters WHERE message_id = $1 AND replayed_at IS NULL LIMIT 1",
            [.init(string: messageID)]
        ).isEmpty
    }

    func deadLetters(includeReplayed: Bool, limit: Int) throws -> [DeadLetter] {
        try deadLetters(
            where: "($1 OR replayed_at IS NULL) ORDER BY id DESC LIMIT $2",
            [.init(bool: includeReplayed), .init(int: limit)]
        )
    }

    func deadLetter(id: Int64) throws -> DeadLetter? {
        try deadLetters(where: "id = $1", [.init(int64: id)]).first
    }

    func markReplayed(deadLetter id: Int64, at time: Date) throws {
        try query(
            "UPDATE dead_letters SET replayed_at = $1 WHERE id = $2",
            [.init(int64: time.millisecondsSince1970), .init(int64: id)]
        )
    }

    // MARK: Held messages

    private static func optional(_ text: String?) -> PostgresData { text.map(PostgresData.init(string:)) ?? .null }

    private static func optional(_ number: Int64?) -> PostgresData { number.map(PostgresData.init(int64:)) ?? .null }

    private func parked(where condition: String, _ binds: [PostgresData]) throws -> [ParkedMessage] {
        try query(
            """
            SELECT sequence, ordering_key, message_id, exchange, routing_key, message_type, content_type,
                correlation_id, timestamp, headers, body, attempts, next_attempt_at, dead_letter_id, last_error
            FROM parked_messages WHERE \(condition)
            """,
            binds
        ).map { row in
            let (
                sequence, orderingKey, messageID, exchange, routingKey, messageType, contentType, correlationID,
                timestamp, headers, body, attempts, nextAttemptAt, deadLetterID, lastError
            ) = try row.decode(
                (
                    Int64, String?, String, String, String, String?, String?, String?, Int64?, Data, Data, Int32,
                    Int64?, Int64?, String?
                ).self
            )
            var message = ParkedMessage(
                orderingKey: orderingKey,
                messageID: messageID,
                exchange: exchange,
                routingKey: routingKey,
                messageType: messageType,
                contentType: contentType,
                correlationID: correlationID,
                timestamp: timestamp.map(Date.init(millisecondsSince1970:)),
                headers: try WireJSON.decode([String: String].self, from: headers),
                body: body,
                attempts: Int(attempts),
                nextAttemptAt: nextAttemptAt.map(Date.init(millisecondsSince1970:)),
                deadLetterID: deadLetterID,
                lastError: lastError
            )
            message.sequence = sequence
            return message
        }
    }

    func park(_ message: ParkedMessage, at now: Date) throws {
        try query(
            """
            INSERT INTO parked_messages (ordering_key, message_id, exchange, routing_key, message_type, content_type,
                correlation_id, timestamp, headers, body, attempts, next_attempt_at, dead_letter_id, last_error,
                parked_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
            """,
            [
                Self.optional(message.orderingKey), .init(string: message.messageID), .init(string: message.exchange),
                .init(string: message.routingKey), Self.optional(message.messageType),
                Self.optional(message.contentType), Self.optional(message.correlationID),
                Self.optional(message.timestamp?.millisecondsSince1970),
                .init(bytes: [UInt8](try WireJSON.encode(message.headers))),
                .init(bytes: [UInt8](message.body)),
                .init(int32: Int32(message.attempts)), Self.optional(message.nextAttemptAt?.millisecondsSince1970),
                Self.optional(message.deadLetterID), Self.optional(message.lastError),
                .init(int64: now.millisecondsSince1970),
            ]
        )
    }

    func hasParkedMessages() throws -> Bool {
        try !query("SELECT 1 FROM parked_messages LIMIT 1").isEmpty
    }

    func isParked(messageID: String) throws -> Bool {
        try !query("SELECT 1 FROM parked_messages WHERE message_id = $1 LIMIT 1", [.init(string: messageID)]).isEmpty
    }

    func isBlocked(orderingKey: String) throws -> Bool {
        try !query("SELECT 1 FROM parked_messages WHERE ordering_key = $1 LIMIT 1", [.init(string: orderingKey)])
            .isEmpty
    }

    func dueParkedMessages(before time: Date, limit: Int) throws -> [ParkedMessage] {
        try parked(
            where: """
                next_attempt_at <= $1 AND dead_letter_id IS NULL ORDER BY next_attempt_at, sequence LIMIT $2
                """,
            [.init(int64: time.millisecondsSince1970), .init(int: limit)]
        )
    }

    func claimDueParkedMessages(before time: Date, limit: Int) throws -> [ParkedMessage] {
        try parked(
            where: """
                next_attempt_at <= $1 AND dead_letter_id IS NULL ORDER BY next_attempt_at, sequence LIMIT $2
                FOR UPDATE SKIP LOCKED
                """,
            [.init(int64: time.millisecondsSince1970), .init(int: limit)]
        )
    }

    func nextParkedAttempt() throws -> Date? {
        try query(
            """
            SELECT MIN(next_attempt_at) FROM parked_messages WHERE next_attempt_at IS NOT NULL AND dead_letter_id IS NULL
            """
        ).first?.decode(Int64?.self).map(Date.init(millisecondsSince1970:))
    }

    func retryParkedMessage(_ sequence: Int64, at time: Date, error: String) throws {
        try query(
            "UPDATE parked_messages SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2 WHERE sequence = $3",
            [.init(int64: time.millisecondsSince1970), .init(string: error), .init(int64: sequence)]
        )
    }

    func deadLetterParkedMessage(_ sequence: Int64, deadLetter id: Int64, error: String) throws {
        try query(
            """
            UPDATE parked_messages SET attempts = attempts + 1, next_attempt_at = NULL, dead_letter_id = $1,
                last_error = $2
            WHERE sequence = $3
            """,
            [.init(int64: id), .init(string: error), .init(int64: sequence)]
        )
    }

    func releaseParkedMessage(_ message: ParkedMessage, at now: Date) throws {
        try query("DELETE FROM parked_messages WHERE sequence = $1", [.init(int64: message.sequence)])
        guard let key = message.orderingKey else { return }
        try query(
            """
            UPDATE parked_messages SET next_attempt_at = $1 WHERE dead_letter_id IS NULL AND sequence =
                (SELECT MIN(sequence) FROM parked_messages WHERE ordering_key = $2)
            """,
            [.init(int64: now.millisecondsSince1970), .init(string: key)]
        )
    }

    func parkedMessages(limit: Int) throws -> [ParkedMessage] {
        try parked(where: "TRUE ORDER BY sequence LIMIT $1", [.init(int: limit)])
    }

    func rearmParkedMessage(deadLetter id: Int64, at now: Date) throws -> Bool {
        try !query(
            """
            UPDATE parked_messages SET attempts = 0, next_attempt_at = $1, dead_letter_id = NULL
            WHERE dead_letter_id = $2 RETURNING sequence
            """,
            [.init(int64: now.millisecondsSince1970), .init(int64: id)]
        ).isEmpty
    }
}
