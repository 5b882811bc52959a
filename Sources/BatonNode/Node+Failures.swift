import Baton
import Foundation
import Logging

/// Failures that stay alone: a message whose handler throws is held in the store (and acknowledged, so the
/// queue flows on), retried with the node's ``RetryPolicy`` off the consume path, then dead-lettered. While it
/// is held, later messages of its instance wait behind it in order; a dead-lettered one holds them until its
/// dead letter is replayed.
extension Node {
    /// The first attempt of a delivery failed: holds it for its next attempt, or dead-letters it (a permanent
    /// failure, or no attempt left).
    /// - Returns: What became of it, and whether it is now held in the store.
    func firstAttemptFailed(
        _ incoming: IncomingMessage,
        _ envelope: Envelope,
        _ handlers: [any NodeHandler],
        key: String?,
        error: any Error,
        _ work: any UnitOfWork,
        _ now: Date
    ) throws -> (MessageOutcome, held: Bool) {
        let reason = "\(error)"
        if error is NewerStateError {
            // Its instance was stored by a later release: kept, in its place, until a node that knows it runs.
            try postpone(incoming, key: key, reason: reason, work, now)
            return (.postponed, true)
        }
        if let delay = retryDelay(after: error, attempt: 1) {
            try hold(incoming, key: key, attempts: 1, nextAttemptAt: now.adding(delay), error: reason, work, now)
            logger.warning(
                "handler failed; retrying",
                metadata: [
                    "baton.message_id": "\(envelope.messageID)", "attempt": "1", "retry_in": "\(delay)",
                    "error": "\(reason)",
                ]
            )
            return (.retrying, true)
        }
        let names = handlers.map(\.name).joined(separator: ",")
        let id = try deadLetter(incoming, reason: reason, handler: names, attempts: 1, work, now)
        logMessageDeadLettered(envelope.messageID, attempts: 1, reason: reason)
        guard let key, let id else { return (.deadLettered, false) }
        // Its instance's later messages wait behind it until the dead letter is replayed.
        try hold(incoming, key: key, attempts: 1, nextAttemptAt: nil, deadLetter: id, error: reason, work, now)
        return (.deadLettered, true)
    }

    /// Keeps a message this node cannot handle yet (a newer version of it, or of its instance's state) in the
    /// store, to be tried again after the longest retry delay, for as long as it takes: an upgraded node on this
    /// store handles it then. No attempt is counted.
    func postpone(
        _ incoming: IncomingMessage,
        key: String? = nil,
        reason: String,
        _ work: any UnitOfWork,
        _ now: Date
    ) throws {
        if let messageID = incoming.messageID, try work.isParked(messageID: messageID) { return }
        try hold(
            incoming,
            key: key,
            attempts: 0,
            nextAttemptAt: now.adding(configuration.retry.maximumDelay),
            error: reason,
            work,
            now
        )
        logger.warning(
            "message postponed: newer than this node",
            metadata: ["baton.message_id": "\(incoming.messageID ?? "")", "reason": "\(reason)"]
        )
    }

    /// Holds a delivery in the store.
    func hold(
        _ incoming: IncomingMessage,
        key: String?,
        attempts: Int,
        nextAttemptAt: Date?,
        deadLetter: Int64? = nil,
        error: String?,
        _ work: any UnitOfWork,
        _ now: Date
    ) throws {
        try work.park(
            ParkedMessage(
                orderingKey: key,
                messageID: incoming.messageID ?? "",
                exchange: incoming.exchange,
                routingKey: incoming.routingKey,
                messageType: incoming.messageType,
                contentType: incoming.contentType,
                correlationID: incoming.correlationID,
                timestamp: incoming.timestamp,
                headers: incoming.headers,
                body: incoming.body,
                attempts: attempts,
                nextAttemptAt: nextAttemptAt?.roundedToMilliseconds,
                deadLetterID: deadLetter,
                lastError: error
            ),
            at: now
        )
    }

    /// Tries the held messages due at `now` (100 at most), in one transaction, each in its own savepoint: a
    /// success lets the next message of its instance go; a failure waits out its next delay, or is dead-lettered.
    /// - Returns: How many it claimed.
    func retryDueHeldMessages(now: Date) async throws -> Int {
        try await commit { [self] work in
            let messages = try work.claimDueParkedMessages(before: now, limit: 100)
            for held in messages {
                let incoming = IncomingMessage(
                    exchange: held.exchange,
                    routingKey: held.routingKey,
                    body: held.body,
                    messageID: held.messageID,
                    messageType: held.messageType,
                    contentType: held.contentType,
                    correlationID: held.correlationID,
                    timestamp: held.timestamp,
                    headers: held.headers,
                    isRedelivered: true,
                    settle: { _ in }  // acknowledged when it was held
                )
                switch prepare(incoming) {
                case .postpone(let incoming, let reason):
                    // Still too new: kept afresh (its attempts count failures of a handler, not this wait).
                    try work.releaseParkedMessage(held, at: now)
                    try postpone(incoming, reason: reason, work, now)
                case .drained, .pastDeliveryLimit:
                    try work.releaseParkedMessage(held, at: now)  // never held: nothing to do
                case .reject(_, let reason, let stage):
                    // The code changed since it was held (its type is gone, its schema is stricter).
                    try heldMessageFailed(held, error: Rejection(reason), handler: stage, work, now)
                case .handle(_, let envelope, let message, let handlers):
                    if try work.hasHandled(envelope.messageID, consumer: configuration.name) {
                        try work.releaseParkedMessage(held, at: now)
                        continue
                    }
                    do {
                        try handle(message, envelope, handlers, work, now)
                        try work.releaseParkedMessage(held, at: now)
                    } catch let conflict as any StoreConflict {
                        throw conflict  // the round is run again, no attempt counted
                    } catch let error as NewerStateError {
                        let retry = now.adding(configuration.retry.maximumDelay).roundedToMilliseconds
                        try work.retryParkedMessage(held.sequence, at: retry, error: "\(error)")
                    } catch {
                        try heldMessageFailed(
                            held,
                            error: error,
                            handler: handlers.map(\.name).joined(separator: ","),
                            work,
                            now
                        )
                    }
                }
            }
            return messages.count
        }
    }

    /// When a failed handler is tried again, or `nil` when it is not (a permanent failure, or its last attempt):
    /// the one rule for first attempts, held messages and timers.
    func retryDelay(after error: any Error, attempt: Int) -> Duration? {
        error is any PermanentFailure ? nil : configuration.retry.delay(afterAttempt: attempt)
    }

    private func heldMessageFailed(
        _ held: ParkedMessage,
        error: any Error,
        handler: String,
        _ work: any UnitOfWork,
        _ now: Date
    ) throws {
        let reason = "\(error)"
        let attempts = held.attempts + 1
        if let delay = retryDelay(after: error, attempt: attempts) {
            try work.retryParkedMessage(held.sequence, at: now.adding(delay).roundedToMilliseconds, error: reason)
            logger.warning(
                "handler failed; retrying",
                metadata: [
                    "baton.message_id": "\(held.messageID)", "attempt": "\(attempts)", "retry_in": "\(delay)",
                    "error": "\(reason)",
                ]
            )
            return
        }
        let id = try deadLetter(
            DeadLetter(
                messageID: held.messageID,
                messageType: held.messageType ?? "",
                exchange: held.exchange,
                routingKey: held.routingKey,
                headers: held.headers,
                body: held.body,
                reason: reason,
                handler: handler,
                attempts: attempts,
                deadAt: now
            ),
            correlationID: held.correlationID,
            work
        )
        logMessageDeadLettered(held.messageID, attempts: attempts, reason: reason)
        if held.orderingKey == nil {
            // Nothing waits behind it: the dead letter keeps it, and a replay sends it through the broker.
            try work.releaseParkedMessage(held, at: now)
        } else {
            try work.deadLetterParkedMessage(held.sequence, deadLetter: id, error: reason)
        }
    }

    func logMessageDeadLettered(_ messageID: String, attempts: Int, reason: String) {
        logger.error(
            "message dead-lettered",
            metadata: ["baton.message_id": "\(messageID)", "attempts": "\(attempts)", "error": "\(reason)"]
        )
    }

    /// Records a dead letter of a delivery and queues it for the dead-letter exchange, unless the same message
    /// is dead-lettered already and not replayed (a redelivery).
    /// - Returns: The dead letter's id, or `nil` if the message had one already.
    @discardableResult
    func deadLetter(
        _ incoming: IncomingMessage,
        reason: String,
        handler: String,
        attempts: Int,
        _ work: any UnitOfWork,
        _ now: Date
    ) throws -> Int64? {
        if let messageID = incoming.messageID, !messageID.isEmpty, try work.hasOpenDeadLetter(messageID: messageID) {
            return nil
        }
        return try deadLetter(
            DeadLetter(
                messageID: incoming.messageID ?? "",
                messageType: incoming.messageType ?? "",
                exchange: incoming.exchange,
                routingKey: incoming.routingKey,
                headers: incoming.headers,
                body: incoming.body,
                reason: reason,
                handler: handler,
                attempts: attempts,
                deadAt: now
            ),
            correlationID: incoming.correlationID,
            work
        )
    }

    /// Records a dead letter and queues it for the dead-letter exchange, with the reason in its headers.
    /// - Returns: Its id.
    @discardableResult
    func deadLetter(_ letter: DeadLetter, correlationID: String?, _ work: any UnitOfWork) throws -> Int64 {
        let id = try work.addDeadLetter(letter)
        var headers = letter.headers
        headers[BatonHeader.deadLetterReason] = letter.reason
        headers[BatonHeader.deadLetterHandler] = letter.handler
        headers[BatonHeader.deadLetterAttempts] = String(letter.attempts)
        headers[BatonHeader.originalExchange] = letter.exchange
        headers[BatonHeader.originalRoutingKey] = letter.routingKey
        headers[BatonHeader.deadLetteredAt] = ISO8601Milliseconds.format(letter.deadAt)
        let envelope = Envelope(
            messageID: letter.messageID.isEmpty ? "dead-letter-\(configuration.name)-\(id)" : letter.messageID,
            messageType: letter.messageType.isEmpty ? "unknown" : letter.messageType,
            correlationID: correlationID,
            timestamp: letter.deadAt,
            headers: headers,
            payload: letter.body
        )
        try work.enqueue(
            envelope,
            exchange: Routing.deadLetterExchange,
            routingKey: configuration.name,
            key: "dead-letter:\(configuration.name):\(id)"
        )
        try replyFailure(of: letter, id: id, correlationID: correlationID, work)
        return id
    }

    /// For a dead-lettered command a process issued (it names its process manager): queues the
    /// ``CommandFailed`` reply that tells the issuing instance, in the dead letter's transaction.
    private func replyFailure(of letter: DeadLetter, id: Int64, correlationID: String?, _ work: any UnitOfWork) throws {
        guard let processManager = letter.headers[processManagerHeader], let instanceID = correlationID,
            !letter.messageID.isEmpty
        else { return }
        let failure = CommandFailed(
            commandType: letter.messageType,
            commandID: letter.messageID,
            reason: letter.reason,
            refusedBy: "\(configuration.name)/\(letter.handler)",
            attempts: letter.attempts,
            processManager: processManager,
            instanceID: instanceID,
            causation: [letter.messageID] + (letter.headers[BatonHeader.causationID].map { [$0] } ?? [])
        )
        let envelope = Envelope(
            // One reply per dead-lettering: a replayed command that fails again is reported again.
            messageID: MessageID.derived(from: "command-failed", configuration.name, String(id)),
            messageType: CommandFailed.messageType,
            correlationID: instanceID,
            causationID: letter.messageID,
            timestamp: letter.deadAt,
            payload: MessageRegistry.encode(failure)
        )
        try work.enqueue(
            envelope,
            exchange: Routing.eventExchange,
            routingKey: CommandFailed.routingKey(for: processManager),
            key: "command-failed:\(configuration.name):\(id)"
        )
    }

    /// Sends a dead letter back to where it was first published, with its original id; the node handles it
    /// like a new delivery.
    /// - Throws: ``NodeError`` if there is no such dead letter or it was replayed already.
    public func replayDeadLetter(id: Int64) async throws {
        let now = businessNow()
        let name = configuration.name
        let replayed = try await commit { try $0.replayDeadLetter(id: id, to: name, at: now) }
        deadlines.wake()  // a parked timer may be due again
        guard replayed else { throw NodeError(message: "no dead letter with id \(id) waiting for a replay") }
    }
}
