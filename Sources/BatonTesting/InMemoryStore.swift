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
        var sentAt: Date?
        var attempts = 0
        var nextAttemptAt: Date?
    }

    struct Document {
        var alias: String?
        var status: String?
        var body: Data
    }

    var inbox: Set<String> = []
    var outbox: [OutboxRow] = []
    var nextOutboxSequence: Int64 = 1
    var streams: [String: [(messageType: String, payload: Data)]] = [:]
    var eventIDs: Set<String> = []
    var instances: [InstanceKey: Instance] = [:]
    var associations: [String: String] = [:]
    var timers: [TimerKey: Timer] = [:]
    var deadLetters: [DeadLetter] = []
    var parked: [ParkedMessage] = []
    var nextParkedSequence: Int64 = 1
    var documents: [String: [String: Document]] = [:]
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

    private func mutate<T>(_ change: (inout StoreState) throws -> T) throws -> T {
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
        state.inbox.contains(Self.inboxKey(messageID, consumer))
    }

    func markHandled(_ messageID: String, consumer: String, at time: Date) throws {
        try mutate { state in
            guard state.inbox.insert(Self.inboxKey(messageID, consumer)).inserted else {
                throw InMemoryStoreError(description: "inbox: \(consumer) handled \(messageID) already")
            }
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
        Array(
            state.outbox.lazy.filter { $0.sentAt == nil && ($0.nextAttemptAt.map { $0 <= now } ?? true) }
                .map(\.message).prefix(limit)
        )
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
        state.outbox.filter { $0.sentAt == nil }.compactMap(\.nextAttemptAt).min()
    }

    func markSent(_ sequences: [Int64], at time: Date) throws {
        try mutate { state in
            for index in state.outbox.indices where sequences.contains(state.outbox[index].message.sequence) {
                state.outbox[index].sentAt = time
            }
        }
    }

    func pendingOutboxCount() throws -> Int {
        state.outbox.count { $0.sentAt == nil }
    }

    func outboxMessageIDs() throws -> [String] {
        state.outbox.map(\.key)
    }

    // MARK: Aggregate streams

    func append(_ events: [Envelope], to stream: String, expectedVersion: Int64) throws {
        try mutate { state in
            let current = Int64(state.streams[stream]?.count ?? 0)
            guard current == expectedVersion else {
                throw ConcurrencyError(stream: stream, expectedVersion: expectedVersion, actualVersion: current)
            }
            for event in events {
                guard state.eventIDs.insert(event.messageID).inserted else {
                    throw InMemoryStoreError(description: "streams: event \(event.messageID) is recorded already")
                }
                state.streams[stream, default: []].append((event.messageType, event.payload))
            }
        }
    }

    func streamVersion(_ stream: String) throws -> Int64 {
        Int64(state.streams[stream]?.count ?? 0)
    }

    func readStream(_ stream: String) throws -> [(messageType: String, payload: Data)] {
        state.streams[stream] ?? []
    }

    // MARK: Process instances

    func storedInstance(_ instanceID: String, processManager: String) throws -> StoredInstance? {
        state.instances[.init(processManager: processManager, instanceID: instanceID)].map {
            StoredInstance(version: $0.version, state: $0.state)
        }
    }

    func transitions(
        of processManager: String,
        instance instanceID: String,
        after version: Int64
    ) throws
        -> [ProcessTransition]
    {
        (state.instances[.init(processManager: processManager, instanceID: instanceID)]?.transitions ?? [])
            .filter { $0.version > version }
    }

    func record(
        _ transition: ProcessTransition,
        processManager: String,
        instanceID: String,
        lifecycle: ProcessLifecycle,
        state instanceState: Data,
        route: (IssuedMessage) -> (exchange: String, routingKey: String)
    ) throws {
        try mutate { state in
            let key = StoreState.InstanceKey(processManager: processManager, instanceID: instanceID)
            var instance =
                state.instances[key]
                ?? .init(
                    lifecycle: lifecycle,
                    version: 0,
                    startedAt: transition.at,
                    updatedAt: transition.at,
                    state: instanceState
                )
            guard !instance.transitions.contains(where: { $0.version == transition.version }) else {
                throw InMemoryStoreError(
                    description:
                        "instance \(instanceID) of \(processManager) has a transition \(transition.version) already"
                )
            }
            instance.transitions.append(transition)
            instance.lifecycle = lifecycle
            instance.version = transition.version
            instance.updatedAt = transition.at
            instance.state = instanceState
            state.instances[key] = instance
            for operation in transition.timers {
                switch operation {
                case .schedule(let name, let dueAt):
                    state.timers[.init(processManager: processManager, instanceID: instanceID, name: name)] = .init(
                        dueAt: dueAt,
                        fireAt: dueAt
                    )
                case .cancel(let name):
                    state.timers[.init(processManager: processManager, instanceID: instanceID, name: name)] = nil
                }
            }
            for (association, value) in transition.associations {
                state.associations[Self.associationKey(processManager, association, value)] = instanceID
            }
        }
        for message in transition.issued {
            let destination = route(message)
            try enqueue(message.envelope, exchange: destination.exchange, routingKey: destination.routingKey, key: nil)
        }
    }

    private static func associationKey(_ processManager: String, _ name: String, _ value: String) -> String {
        [processManager, name, value].joined(separator: "\u{1f}")
    }

    func instance(associatedWith value: String, as name: String, processManager: String) throws -> String? {
        state.associations[Self.associationKey(processManager, name, value)]
    }

    func instances(of processManager: String, openOnly: Bool, limit: Int) throws -> [InstanceSummary] {
        let summaries = state.instances.filter { key, instance in
            key.processManager == processManager && (!openOnly || !instance.lifecycle.isClosed)
        }.map { key, instance in
            InstanceSummary(
                instanceID: key.instanceID,
                lifecycle: instance.lifecycle,
                version: instance.version,
                startedAt: instance.startedAt,
                updatedAt: instance.updatedAt
            )
        }
        return Array(
            summaries.sorted { ($0.updatedAt, $1.instanceID) > ($1.updatedAt, $0.instanceID) }.prefix(limit)
        )
    }

    // MARK: Timers

    private func dueTimer(_ key: StoreState.TimerKey, _ timer: StoreState.Timer) -> DueTimer {
        DueTimer(
            processManager: key.processManager,
            instanceID: key.instanceID,
            name: key.name,
            dueAt: timer.dueAt,
            nextAttemptAt: timer.fireAt,
            attempts: timer.attempts
        )
    }

    /// The timer under `timer`'s key, if it still has `timer`'s deadline.
    private func key(of timer: DueTimer) -> StoreState.TimerKey? {
        let key = StoreState.TimerKey(
            processManager: timer.processManager,
            instanceID: timer.instanceID,
            name: timer.name
        )
        guard state.timers[key]?.dueAt.millisecondsSince1970 == timer.dueAt.millisecondsSince1970 else { return nil }
        return key
    }

    func dueTimers(before time: Date, limit: Int) throws -> [DueTimer] {
        Array(
            state.timers.filter { $0.value.deadLetterID == nil && $0.value.fireAt <= time }
                .sorted { $0.value.fireAt < $1.value.fireAt }.prefix(limit).map(dueTimer)
        )
    }

    func deleteTimer(_ timer: DueTimer) throws {
        guard let key = key(of: timer) else { return }
        try mutate { $0.timers[key] = nil }
    }

    func retryTimer(_ timer: DueTimer, at time: Date) throws {
        guard let key = key(of: timer) else { return }
        try mutate { state in
            state.timers[key]?.attempts += 1
            state.timers[key]?.fireAt = time
        }
    }

    func parkTimer(_ timer: DueTimer, deadLetter id: Int64) throws {
        guard let key = key(of: timer) else { return }
        try mutate { state in
            state.timers[key]?.attempts += 1
            state.timers[key]?.deadLetterID = id
        }
    }

    func parkedTimers() throws -> [DueTimer] {
        state.timers.filter { $0.value.deadLetterID != nil }.sorted { $0.value.deadLetterID! < $1.value.deadLetterID! }
            .map(dueTimer)
    }

    func rearmTimer(deadLetter id: Int64, at now: Date) throws -> Bool {
        guard let key = state.timers.first(where: { $0.value.deadLetterID == id })?.key else { return false }
        try mutate { state in
            state.timers[key]?.attempts = 0
            state.timers[key]?.fireAt = now
            state.timers[key]?.deadLetterID = nil
        }
        return true
    }

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
        try mutate { $0.documents[collection, default: [:]][id] = .init(alias: alias, status: status, body: body) }
    }

    func documentBody(in collection: String, idOrAlias key: String) throws -> Data? {
        guard let documents = state.documents[collection] else { return nil }
        return documents[key]?.body ?? documents.sorted { $0.key < $1.key }.first { $0.value.alias == key }?.value.body
    }

    func documentBodies(in collection: String, status: String?, limit: Int) throws -> [Data] {
        Array(
            (state.documents[collection] ?? [:]).filter { status == nil || $0.value.status == status }
                .sorted { $0.key < $1.key }.prefix(limit).map(\.value.body)
        )
    }
}
