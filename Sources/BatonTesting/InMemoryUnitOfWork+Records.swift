import Baton
import BatonNode
import Foundation

/// Dead letters, held messages and read-model documents.
extension InMemoryUnitOfWork {
    // MARK: Dead letters

    @discardableResult
    func addDeadLetter(_ letter: DeadLetter) throws -> Int64 {
        try mutate { state in
            var letter = letter
            letter.id = Int64(state.deadLetters.count + 1)
            state.deadLetters.append(letter)
            return letter.id
        }
    }

    func hasOpenDeadLetter(messageID: String) throws -> Bool {
        state.deadLetters.contains { $0.messageID == messageID && $0.replayedAt == nil }
    }

    func deadLetters(includeReplayed: Bool, limit: Int) throws -> [DeadLetter] {
        Array(state.deadLetters.reversed().filter { includeReplayed || $0.replayedAt == nil }.prefix(limit))
    }

    func deadLetter(id: Int64) throws -> DeadLetter? {
        state.deadLetters.first { $0.id == id }
    }

    func markReplayed(deadLetter id: Int64, at time: Date) throws {
        try mutate { state in
            for index in state.deadLetters.indices where state.deadLetters[index].id == id {
                state.deadLetters[index].replayedAt = time
            }
        }
    }

    // MARK: Held messages

    func park(_ message: ParkedMessage, at now: Date) throws {
        try mutate { state in
            var message = message
            message.sequence = state.nextParkedSequence
            state.nextParkedSequence += 1
            state.parked.append(message)
        }
    }

    func hasParkedMessages() throws -> Bool { !state.parked.isEmpty }

    func isParked(messageID: String) throws -> Bool { state.parked.contains { $0.messageID == messageID } }

    func isBlocked(orderingKey: String) throws -> Bool { state.parked.contains { $0.orderingKey == orderingKey } }

    func dueParkedMessages(before time: Date, limit: Int) throws -> [ParkedMessage] {
        Array(
            state.parked.filter { $0.deadLetterID == nil && ($0.nextAttemptAt.map { $0 <= time } ?? false) }
                .sorted { ($0.nextAttemptAt!, $0.sequence) < ($1.nextAttemptAt!, $1.sequence) }.prefix(limit)
        )
    }

    func nextParkedAttempt() throws -> Date? {
        state.parked.filter { $0.deadLetterID == nil }.compactMap(\.nextAttemptAt).min()
    }

    private func updateParked(_ sequence: Int64, _ change: (inout ParkedMessage) -> Void) throws {
        try mutate { state in
            for index in state.parked.indices where state.parked[index].sequence == sequence {
                change(&state.parked[index])
            }
        }
    }

    func retryParkedMessage(_ sequence: Int64, at time: Date, error: String) throws {
        try updateParked(sequence) { message in
            message.attempts += 1
            message.nextAttemptAt = time
            message.lastError = error
        }
    }

    func deadLetterParkedMessage(_ sequence: Int64, deadLetter id: Int64, error: String) throws {
        try updateParked(sequence) { message in
            message.attempts += 1
            message.nextAttemptAt = nil
            message.deadLetterID = id
            message.lastError = error
        }
    }

    func releaseParkedMessage(_ message: ParkedMessage, at now: Date) throws {
        try mutate { state in
            state.parked.removeAll { $0.sequence == message.sequence }
            guard let key = message.orderingKey,
                let next = state.parked.firstIndex(where: { $0.orderingKey == key }),
                state.parked[next].deadLetterID == nil
            else { return }
            state.parked[next].nextAttemptAt = now
        }
    }

    func parkedMessages(limit: Int) throws -> [ParkedMessage] {
        Array(state.parked.prefix(limit))
    }

    func rearmParkedMessage(deadLetter id: Int64, at now: Date) throws -> Bool {
        guard let message = state.parked.first(where: { $0.deadLetterID == id }) else { return false }
        try mutate { state in
            for index in state.parked.indices where state.parked[index].sequence == message.sequence {
                state.parked[index].attempts = 0
                state.parked[index].nextAttemptAt = now
                state.parked[index].deadLetterID = nil
            }
        }
        return true
    }

    // MARK: Documents

    func saveDocument(
        _ body: Data,
        in collection: String,
        id: String,
        alias: String?,
        status: String?,
        at time: Date
    )
        throws
    {
        try mutate { state in
            let existing = state.documents[collection]?[id]
            if existing == nil { state.documentsSaved += 1 }  // a new document is numbered after the others
            state.documents[collection, default: [:]][id] = .init(
                saved: existing?.saved ?? state.documentsSaved,
                alias: alias,
                status: status,
                body: body
            )
        }
    }

    func documentBody(in collection: String, idOrAlias key: String) throws -> Data? {
        guard let documents = state.documents[collection] else { return nil }
        return documents[key]?.body ?? documents.sorted { $0.key < $1.key }.first { $0.value.alias == key }?.value.body
    }

    func documentBodies(in collection: String, status: String?, limit: Int) throws -> [Data] {
        Array(
            (state.documents[collection] ?? [:]).filter { status == nil || $0.value.status == status }
                .sorted { $0.value.saved < $1.value.saved }.prefix(limit).map(\.value.body)
        )
    }
}
