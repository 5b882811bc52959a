import Baton
import BatonNode
import Foundation
import Synchronization

/// The store port in memory: the same semantics as the SQLite store (transactions, savepoints, versions,
/// unique inbox and outbox keys), for fast tests of nodes and handlers and for the conformance suite. Writers
/// are serialised; a transaction works on a copy of the state that replaces it on commit.
public final class InMemoryStore: Store {
    private let state = Mutex(StoreState())

    /// Creates an empty store.
    public init() {}

    public func write<T: Sendable>(_ body: @escaping @Sendable (any UnitOfWork) throws -> T) async throws -> T {
        try commit(body).0
    }

    public func writeHandingOverOutbox<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> (T, [OutboxMessage]) {
        try commit(body)
    }

    public func writeWithoutWaitingForDisk<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> T {
        try commit(body).0
    }

    public func read<T: Sendable>(_ body: @escaping @Sendable (any UnitOfWork) throws -> T) async throws -> T {
        try body(InMemoryUnitOfWork(state.withLock { $0 }, readOnly: true))
    }

    /// Runs a write transaction on a copy of the state, which replaces the state if `body` returns.
    private func commit<T>(_ body: (any UnitOfWork) throws -> T) throws -> (T, [OutboxMessage]) {
        try state.withLock { state in
            let work = InMemoryUnitOfWork(state, readOnly: false)
            let value = try body(work)
            state = work.state
            return (value, work.queued)
        }
    }
}

/// Everything an ``InMemoryStore`` holds.
struct StoreState {
    struct InstanceKey: Hashable {
        var processManager: String
        var instanceID: String
    }

    struct Instance {
        var lifecycle: ProcessLifecycle
        var version: Int64
        var startedAt: Date
        var updatedAt: Date
        var state: Data
        var transitions: [ProcessTransition] = []
        var purgedAt: Date?
    }

    struct TimerKey: Hashable {
        var processManager: String
        var instanceID: String
        var name: String
    }

    struct Timer {
        var dueAt: Date
        var fireAt: Date
        var attempts = 0
        var deadLetterID: Int64?
    }

    struct OutboxRow {
        var message: OutboxMessage
        var key: String
        var attempts = 0
        var nextAttemptAt: Date?
    }

    struct Document {
        /// Its place in the order documents were first saved.
        var saved: Int
        var alias: String?
        var status: String?
        var body: Data
    }

    /// Handled message keys with their messages' timestamps.
    var inbox: [String: Date] = [:]
    var outbox: [OutboxRow] = []
    var nextOutboxSequence: Int64 = 1
    var streams: [String: [(messageType: String, payload: Data)]] = [:]
    var instances: [InstanceKey: Instance] = [:]
    var associations: [String: String] = [:]
    var timers: [TimerKey: Timer] = [:]
    var deadLetters: [DeadLetter] = []
    var parked: [ParkedMessage] = []
    var nextParkedSequence: Int64 = 1
    var documents: [String: [String: Document]] = [:]
    /// How many documents were ever saved first.
    var documentsSaved = 0
}

/// Why the in-memory store refused a write: what a database's unique key or a read-only transaction would.
struct InMemoryStoreError: Error, CustomStringConvertible {
    var description: String
}

/// A transaction of an ``InMemoryStore``: its own copy of the state.
final class InMemoryUnitOfWork: UnitOfWork {
    var state: StoreState
    private(set) var queued: [OutboxMessage] = []
    private let readOnly: Bool

    init(_ state: StoreState, readOnly: Bool) {
        self.state = state
        self.readOnly = readOnly
    }

    /// Applies a change to the transaction's state; a read transaction refuses it.
    func mutate<T>(_ change: (inout StoreState) throws -> T) throws -> T {
        guard !readOnly else { throw InMemoryStoreError(description: "a read transaction cannot write") }
        return try change(&state)
    }

    func inSavepoint(_ body: () throws -> Void) throws {
        let (saved, savedQueue) = (state, queued)
        do {
            try body()
        } catch {
            (state, queued) = (saved, savedQueue)
            throw error
        }
    }

    // MARK: Inbox

    private static func inboxKey(_ messageID: String, _ consumer: String) -> String { "\(consumer)\u{1f}\(messageID)" }

    func hasHandled(_ messageID: String, consumer: String) throws -> Bool {
        state.inbox[Self.inboxKey(messageID, consumer)] != nil
    }

    func markHandled(_ messageID: String, consumer: String, issuedAt: Date, at time: Date) throws {
        try mutate { state in
            guard state.inbox.updateValue(issuedAt, forKey: Self.inboxKey(messageID, consumer)) == nil else {
                throw InMemoryStoreError(description: "inbox: \(consumer) handled \(messageID) already")
            }
        }
    }

    func forgetHandled(issuedBefore time: Date, limit: Int) throws -> Int {
        try mutate { state in
            let doomed = state.inbox.filter { $0.value < time }.sorted { $0.value < $1.value }.prefix(limit)
            for (key, _) in doomed { state.inbox[key] = nil }
            return doomed.count
        }
    }

    // MARK: Outbox

    func enqueue(_ envelope: Envelope, exchange: String, routingKey: String, key: String?) throws {
        try mutate { state in
            let key = key ?? envelope.messageID
            guard !state.outbox.contains(where: { $0.key == key }) else { return }
            let message = OutboxMessage(
                sequence: state.nextOutboxSequence,
                exchange: exchange,
                routingKey: routingKey,
                envelope: envelope,
                wasRefused: false
            )
            state.nextOutboxSequence += 1
            state.outbox.append(.init(message: message, key: key))
            queued.append(message)
        }
    }

    func pendingOutbox(limit: Int, readyAt now: Date) throws -> [OutboxMessage] {
        var waiting: Set<String> = []
        var ready: [OutboxMessage] = []
        for row in state.outbox where ready.count < limit {
            let scope = row.message.orderScope
            if let next = row.nextAttemptAt, next > now {
                waiting.insert(scope)
            } else if !waiting.contains(scope) {
                ready.append(row.message)
            }
        }
        return ready
    }

    func unsentOutboxCount(through sequence: Int64, excluding sent: Set<Int64>) throws -> Int {
        state.outbox.count { $0.message.sequence <= sequence && !sent.contains($0.message.sequence) }
    }

    func unsentOutbox(scopes: Set<String>, through sequence: Int64) throws -> [(scope: String, sequence: Int64)] {
        state.outbox.lazy.filter { $0.message.sequence <= sequence }
            .map { (scope: $0.message.orderScope, sequence: $0.message.sequence) }
            .filter { scopes.contains($0.scope) }
    }

    func markFailed(_ sequences: [Int64], at now: Date, refused: Bool) throws {
        try mutate { state in
            for index in state.outbox.indices where sequences.contains(state.outbox[index].message.sequence) {
                let delay = min(30_000, 100 << min(state.outbox[index].attempts, 9))
                state.outbox[index].attempts += 1
                state.outbox[index].nextAttemptAt = Date(
                    millisecondsSince1970: now.millisecondsSince1970 + Int64(delay)
                )
                state.outbox[index].message.wasRefused = state.outbox[index].message.wasRefused || refused
            }
        }
    }

    func nextOutboxAttempt() throws -> Date? {
        state.outbox.compactMap(\.nextAttemptAt).min()
    }

    func removeSent(_ sequences: [Int64]) throws {
        try mutate { state in
            let sent = Set(sequences)
            state.outbox.removeAll { sent.contains($0.message.sequence) }
        }
    }

    func pendingOutboxCount() throws -> Int {
        state.outbox.count
    }

    func outboxMessageIDs() throws -> [String] {
        state.outbox.map(\.key)
    }

    func statistics(idleSince: Date) throws -> StoreStatistics {
        var statistics = StoreStatistics()
        let pending = state.outbox
        statistics.pendingOutbox = pending.count
        statistics.oldestPendingOutbox = pending.map(\.message.envelope.timestamp).min()
        statistics.openDeadLetters = state.deadLetters.count { $0.replayedAt == nil }
        for (key, instance) in state.instances {
            statistics.instances[key.processManager, default: [:]][instance.lifecycle, default: 0] += 1
            if !instance.lifecycle.isClosed, instance.updatedAt < idleSince {
                statistics.idleInstances[key.processManager, default: 0] += 1
            }
        }
        return statistics
    }
}
