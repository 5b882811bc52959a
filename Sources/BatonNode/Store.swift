import Baton
import Foundation

/// The store port: a service's durable state — aggregate streams, process instances, inbox, outbox, timers,
/// dead letters, held messages and read-model documents — changed only in transactions. Adapters: SQLite
/// (`SQLiteStore`, in `BatonSQLite`, the embedded default) and memory (`InMemoryStore`, in `BatonTesting`);
/// `StoreConformance` checks that they behave alike, races included.
///
/// A transaction's body is synchronous: the runtime hands it everything a batch needs, and handlers stay pure.
/// An adapter over an asynchronous client runs the body on a thread of its own and waits for each statement
/// there (never on the cooperative pool).
public protocol Store: Sendable {
    /// Runs `body` in one write transaction: everything it does commits together or not at all. Writers are
    /// serialised, or the adapter detects conflicts (stream and instance versions, inbox ids) and throws.
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws (the transaction is rolled back), or the adapter's error.
    func write<T: Sendable>(_ body: @escaping @Sendable (any UnitOfWork) throws -> T) async throws -> T
    /// Like ``write(_:)``, and also returns the outbox rows the transaction queued — committed, not yet sent,
    /// in order, without those of savepoints that rolled back — so that a relay can publish them without
    /// reading them back.
    func writeHandingOverOutbox<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> (T, [OutboxMessage])
    /// Like ``writeHandingOverOutbox(_:)``, and may return as soon as the transaction commits, before it is on
    /// the disk: the ``Durability`` says when it is. Until then nothing outside the store may act on the commit —
    /// no acknowledgement of what it handled, no publishing of its rows — since a power failure could still
    /// take it back. A store that syncs every commit returns ``Durability/reached`` (the default). The node's
    /// transactions come through here, from the node's own thread: an adapter may run the body on the calling
    /// thread and block it until the commit (the SQLite one does).
    func writeHandingOverOutboxBeforeDisk<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> (T, [OutboxMessage], Durability)
    /// Waits until every transaction that committed before the call is on the disk: a relay that read rows from
    /// the table waits for this before it publishes them. Nothing to wait for in a store that syncs every
    /// commit (the default).
    func waitForDisk() async throws
    /// Like ``write(_:)``, for bookkeeping whose loss on power failure costs only a repeat (the relay's deletion
    /// of sent rows, retention): the adapter may commit it without waiting for the disk.
    func writeWithoutWaitingForDisk<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> T
    /// Runs `body` on a consistent snapshot, concurrently with writes. It must not write.
    func read<T: Sendable>(_ body: @escaping @Sendable (any UnitOfWork) throws -> T) async throws -> T
    /// The relay's table read: the oldest pending rows ready at `now` (as ``UnitOfWork/pendingOutbox(limit:readyAt:)``)
    /// and when the earliest row waiting out a retry may go. A store that processes share (replicas of one
    /// service) leases the rows to this process, so another's relay skips them until they are marked or the
    /// lease ends (its holder died); rows this process queued are leased to it from the start. Like the
    /// waiting ones, a row another process holds keeps the later rows of its order scope back, and claims take
    /// turns so that two never take rows of one scope at once. A store that one process owns just reads them
    /// (the default).
    func claimOutbox(limit: Int, readyAt now: Date) async throws -> (rows: [OutboxMessage], nextAttempt: Date?)
}

extension Store {
    public func writeHandingOverOutboxBeforeDisk<T: Sendable>(
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> (T, [OutboxMessage], Durability) {
        let (value, queued) = try await writeHandingOverOutbox(body)
        return (value, queued, .reached)
    }

    public func waitForDisk() async throws {}

    public func claimOutbox(limit: Int, readyAt now: Date) async throws -> (rows: [OutboxMessage], nextAttempt: Date?) {
        try await read { (try $0.pendingOutbox(limit: limit, readyAt: now), try $0.nextOutboxAttempt()) }
    }
}

/// One transaction's view of a ``Store``; valid only inside the closure it was handed to.
public protocol UnitOfWork {
    /// Runs `body` in a savepoint: if it throws, only its own changes are rolled back (outbox rows included),
    /// and the error is rethrown. Lets one transaction hold a batch of messages that fail independently.
    func inSavepoint(_ body: () throws -> Void) throws

    // MARK: Inbox

    /// Whether `consumer` has handled the message already (a redelivery or a re-sent copy).
    func hasHandled(_ messageID: String, consumer: String) throws -> Bool
    /// Records that `consumer` handled the message; commits with the handler's effects.
    /// - Parameters:
    ///   - messageID: The message's id.
    ///   - consumer: Who handled it.
    ///   - issuedAt: The message's own timestamp, which retention counts from (every copy of a message carries
    ///     the same one, so a copy young enough to be taken finds its record: see ``forgetHandled(issuedBefore:limit:)``).
    ///   - time: When it was handled.
    /// - Throws: If it is recorded already (a concurrent writer handled it first).
    func markHandled(_ messageID: String, consumer: String, issuedAt: Date, at time: Date) throws
    /// Forgets handled messages issued before `time` (the inbox's retention window): at most `limit` of them,
    /// oldest first. A node refuses a message issued before its window instead of trusting the inbox with it.
    /// - Returns: How many records went.
    func forgetHandled(issuedBefore time: Date, limit: Int) throws -> Int

    // MARK: Outbox

    /// Queues a message for the relay. A key still waiting for the relay is not queued twice; a sent row is
    /// gone (the inbox keeps a handled message from running twice, so its messages are not issued again).
    /// - Parameters:
    ///   - envelope: The message.
    ///   - exchange: Where it goes.
    ///   - routingKey: Its routing key.
    ///   - key: The de-duplication key; the message id when `nil`, another key when the same message is sent
    ///     on purpose again (a dead letter, a replay).
    func enqueue(_ envelope: Envelope, exchange: String, routingKey: String, key: String?) throws
    /// The oldest messages not yet sent and not waiting out a retry delay at `now`, in the order queued —
    /// without those behind an earlier row of their ``OutboxMessage/orderScope`` that waits out its delay.
    func pendingOutbox(limit: Int, readyAt now: Date) throws -> [OutboxMessage]
    /// How many messages not yet sent have a sequence up to `sequence`, not counting `sent` (rows the relay
    /// sent whose deletion has not committed yet).
    func unsentOutboxCount(through sequence: Int64, excluding sent: Set<Int64>) throws -> Int
    /// The messages not yet sent of the given order scopes with a sequence up to `sequence`, as
    /// (scope, sequence), in no particular order.
    func unsentOutbox(scopes: Set<String>, through sequence: Int64) throws -> [(scope: String, sequence: Int64)]
    /// Records failed publishes: each row waits 0.1 s, doubling per failure up to 30 s, before its next try;
    /// with `refused`, each is published on its own from then on.
    func markFailed(_ sequences: [Int64], at now: Date, refused: Bool) throws
    /// When the earliest row waiting out a retry delay may be tried again, if any.
    func nextOutboxAttempt() throws -> Date?
    /// Deletes relayed messages: the broker confirmed them.
    func removeSent(_ sequences: [Int64]) throws
    /// How many messages wait for the relay.
    func pendingOutboxCount() throws -> Int
    /// The key of every message waiting for the relay, in the order queued.
    func outboxMessageIDs() throws -> [String]
    /// Counts for metrics: the outbox, open dead letters, instances by lifecycle, and open instances whose
    /// last transition is older than `idleSince`. Aggregates only; a few index scans.
    func statistics(idleSince: Date) throws -> StoreStatistics

    // MARK: Aggregate streams

    /// Appends events to a stream, checking that nobody appended since the writer read it. Event ids are not
    /// checked: each derives from the message that caused it, which the inbox records in the same transaction.
    /// - Throws: ``ConcurrencyError`` if the stream is not at `expectedVersion`.
    func append(_ events: [Envelope], to stream: String, expectedVersion: Int64) throws
    /// The number of events in a stream (0 if it does not exist).
    func streamVersion(_ stream: String) throws -> Int64
    /// A stream's events in order, as (type, JSON payload).
    func readStream(_ stream: String) throws -> [(messageType: String, payload: Data)]

    // MARK: Process instances

    /// An instance as stored: its committed version and its state after its latest transition; `nil` if it
    /// does not exist.
    func storedInstance(_ instanceID: String, processManager: String) throws -> StoredInstance?
    /// An instance's committed version alone, or `nil` if it does not exist: lets a cache check that what it
    /// holds is what is stored without reading the state.
    func instanceVersion(_ instanceID: String, processManager: String) throws -> Int64?
    /// The transitions of an instance after `version`, in order (its timeline).
    func transitions(
        of processManager: String,
        instance instanceID: String,
        after version: Int64
    ) throws
        -> [ProcessTransition]
    /// Stores a transition with the instance's state after it, its timer changes and associations, and
    /// queues what it issued.
    /// - Throws: If the instance already has a transition of that version (another writer moved it).
    func record(
        _ transition: ProcessTransition,
        processManager: String,
        instanceID: String,
        lifecycle: ProcessLifecycle,
        state: Data,
        route: (IssuedMessage) -> (exchange: String, routingKey: String)
    ) throws
    /// The instance associated with `value` under `name`, if any.
    func instance(associatedWith value: String, as name: String, processManager: String) throws -> String?
    /// Instances of a process manager that match `filter`, most recently changed first.
    func instances(of processManager: String, matching filter: InstanceFilter, limit: Int) throws -> [InstanceSummary]
    /// Purges closed instances last changed before `time` and not purged yet (retention): their timelines
    /// (transitions) and timers go, and each leaves a tombstone — lifecycle, version, state and associations —
    /// so that a late reply still finds its instance closed and gets its after-close handling.
    /// - Parameters:
    ///   - processManager: The process manager.
    ///   - time: Instances closed before this go.
    ///   - now: The purge's time (the tombstones' age counts from it).
    ///   - limit: How many at most.
    /// - Returns: The purged instances' ids, at most `limit`, oldest first.
    func purgeInstances(of processManager: String, closedBefore time: Date, at now: Date, limit: Int) throws -> [String]
    /// Deletes the tombstones of instances purged before `time`: at most `limit`, oldest first. A reply for one
    /// of them finds no instance (its handler's `whenMissing` decides).
    /// - Returns: How many went.
    func removeTombstones(of processManager: String, purgedBefore time: Date, limit: Int) throws -> Int

    // MARK: Timers

    /// Timers whose next attempt is at or before `time`, earliest first; parked timers are not among them.
    func dueTimers(before time: Date, limit: Int) throws -> [DueTimer]
    /// Like ``dueTimers(before:limit:)``, in a write transaction that will act on them: in a store that
    /// processes share, each is locked until the transaction ends and a concurrent one skips it, so a timer
    /// fires in one replica only. A store whose writers are serialised just lists them (the default).
    func claimDueTimers(before time: Date, limit: Int) throws -> [DueTimer]
    /// Removes a timer that no longer matches its instance (a stale firing).
    func deleteTimer(_ timer: DueTimer) throws
    /// Records a failed firing: the timer is tried again at `time`, on its own.
    func retryTimer(_ timer: DueTimer, at time: Date) throws
    /// Puts a firing off until `time` without counting an attempt (the instance is busy, or newer than the node).
    func deferTimer(_ timer: DueTimer, to time: Date) throws
    /// Parks a timer that failed its last attempt under its dead letter.
    func parkTimer(_ timer: DueTimer, deadLetter id: Int64) throws
    /// The timers parked under dead letters.
    func parkedTimers() throws -> [DueTimer]
    /// Sets the timer parked under dead letter `id` due at `now` again, with fresh attempts.
    /// - Returns: Whether there was one.
    func rearmTimer(deadLetter id: Int64, at now: Date) throws -> Bool

    // MARK: Dead letters

    /// Stores a dead letter; returns its id.
    @discardableResult func addDeadLetter(_ letter: DeadLetter) throws -> Int64
    /// Whether a message id has a dead letter that was not replayed.
    func hasOpenDeadLetter(messageID: String) throws -> Bool
    /// Dead letters, newest first.
    func deadLetters(includeReplayed: Bool, limit: Int) throws -> [DeadLetter]
    /// One dead letter.
    func deadLetter(id: Int64) throws -> DeadLetter?
    /// Marks a dead letter replayed.
    func markReplayed(deadLetter id: Int64, at time: Date) throws

    // MARK: Held messages

    /// Holds a message in the store.
    func park(_ message: ParkedMessage, at now: Date) throws
    /// Whether the store holds any message.
    func hasParkedMessages() throws -> Bool
    /// Whether a message with this id is held already.
    func isParked(messageID: String) throws -> Bool
    /// Whether messages of this ordering key are held.
    func isBlocked(orderingKey: String) throws -> Bool
    /// Held messages due for an attempt at `time`, oldest first.
    func dueParkedMessages(before time: Date, limit: Int) throws -> [ParkedMessage]
    /// Like ``dueParkedMessages(before:limit:)``, locked as ``claimDueTimers(before:limit:)`` locks timers.
    func claimDueParkedMessages(before time: Date, limit: Int) throws -> [ParkedMessage]
    /// When the next held message is due, if any.
    func nextParkedAttempt() throws -> Date?
    /// Records a failed attempt of a held message: it is tried again at `time`.
    func retryParkedMessage(_ sequence: Int64, at time: Date, error: String) throws
    /// Records that a held message failed its last attempt into dead letter `id`; it keeps its key blocked.
    func deadLetterParkedMessage(_ sequence: Int64, deadLetter id: Int64, error: String) throws
    /// Lets a held message go; the next message of its key, if any, is due at `now`.
    func releaseParkedMessage(_ message: ParkedMessage, at now: Date) throws
    /// Every held message, oldest first.
    func parkedMessages(limit: Int) throws -> [ParkedMessage]
    /// Sets the message held under dead letter `id` due at `now` again, with fresh attempts.
    /// - Returns: Whether there was one.
    func rearmParkedMessage(deadLetter id: Int64, at now: Date) throws -> Bool

    // MARK: Documents (read models)

    /// Stores a read-model document's JSON, replacing the one with the same id.
    func saveDocument(
        _ body: Data,
        in collection: String,
        id: String,
        alias: String?,
        status: String?,
        at time: Date
    )
        throws
    /// The JSON of the document with this id or, if none has it, of the one with this alias. In a write
    /// transaction of a store that processes share, the document is locked until the transaction ends, so
    /// that two replicas changing it one after the other both count (a handler reads a document to change it).
    func documentBody(in collection: String, idOrAlias key: String) throws -> Data?
    /// The JSON of the documents of a collection, optionally with one status, in the order they were first saved.
    func documentBodies(in collection: String, status: String?, limit: Int) throws -> [Data]
}

extension UnitOfWork {
    /// Queues a message for the relay under its own id (see ``enqueue(_:exchange:routingKey:key:)``).
    public func enqueue(_ envelope: Envelope, exchange: String, routingKey: String) throws {
        try enqueue(envelope, exchange: exchange, routingKey: routingKey, key: nil)
    }

    /// The oldest messages not yet sent, whatever their retry delays.
    public func pendingOutbox(limit: Int) throws -> [OutboxMessage] {
        try pendingOutbox(limit: limit, readyAt: .distantFuture)
    }

    /// The rows among `rows` (unsent, in order) that an earlier unsent row of their order scope holds back:
    /// one that is not among `rows` — waiting out a retry, leased by another process, or queued by one — or
    /// one of them that is held back itself. Usually one count over the rows' own range of the outbox.
    /// - Parameters:
    ///   - rows: The rows, in order.
    ///   - sent: Rows already sent, which a transaction may not have deleted yet: they hold nothing back.
    public func outboxRowsHeldBack(_ rows: [OutboxMessage], sent: Set<Int64> = []) throws -> Set<Int64> {
        guard let last = rows.map(\.sequence).max(),
            try unsentOutboxCount(through: last, excluding: sent.filter { $0 <= last }) != rows.count
        else { return [] }
        let skipped = sent.union(rows.map(\.sequence))
        var earliest: [String: Int64] = [:]
        for (scope, sequence) in try unsentOutbox(scopes: Set(rows.map(\.orderScope)), through: last)
        where !skipped.contains(sequence) {
            earliest[scope] = min(earliest[scope] ?? sequence, sequence)
        }
        return Set(rows.filter { row in earliest[row.orderScope].map { $0 < row.sequence } ?? false }.map(\.sequence))
    }

    /// Records failed publishes of rows the broker did not refuse.
    public func markFailed(_ sequences: [Int64], at now: Date) throws {
        try markFailed(sequences, at: now, refused: false)
    }

    /// The transitions of an instance, in order.
    public func transitions(of processManager: String, instance instanceID: String) throws -> [ProcessTransition] {
        try transitions(of: processManager, instance: instanceID, after: 0)
    }

    /// Stores a transition with the instance after it (see ``record(_:processManager:instanceID:lifecycle:state:route:)``).
    public func record<State>(
        _ transition: ProcessTransition,
        instance: ProcessInstance<State>,
        of engine: ProcessEngine<State>,
        route: (IssuedMessage) -> (exchange: String, routingKey: String)
    ) throws {
        try record(
            transition,
            processManager: engine.definition.name,
            instanceID: instance.id,
            lifecycle: instance.lifecycle,
            state: try instance.storedRecord(),
            route: route
        )
    }

    /// Instances of a process manager, most recently changed first.
    public func instances(of processManager: String, limit: Int = 1000) throws -> [InstanceSummary] {
        try instances(of: processManager, matching: InstanceFilter(), limit: limit)
    }

    public func claimDueTimers(before time: Date, limit: Int) throws -> [DueTimer] {
        try dueTimers(before: time, limit: limit)
    }

    public func claimDueParkedMessages(before time: Date, limit: Int) throws -> [ParkedMessage] {
        try dueParkedMessages(before: time, limit: limit)
    }

    /// The pending timer to try first, if any.
    public func nextTimer() throws -> DueTimer? {
        try dueTimers(before: .distantFuture, limit: 1).first
    }

    /// Dead letters, newest first (1,000 at most): the open ones, or all.
    public func deadLetters(includeReplayed: Bool = false) throws -> [DeadLetter] {
        try deadLetters(includeReplayed: includeReplayed, limit: 1000)
    }

    /// Every held message, oldest first (1,000 at most).
    public func parkedMessages() throws -> [ParkedMessage] {
        try parkedMessages(limit: 1000)
    }

    /// Replays a dead letter: a held message or a parked timer is re-armed in the store (ahead of what waits
    /// behind it); any other message is queued to be published again, with its original id and type.
    /// - Parameters:
    ///   - id: The dead letter.
    ///   - now: The business time of the replay.
    ///   - route: Where to publish a message: exchange, routing key and headers to add to its own.
    /// - Returns: `false` if there is no such dead letter or it was replayed already.
    @discardableResult
    public func replayDeadLetter(
        id: Int64,
        at now: Date,
        route: (DeadLetter) -> (exchange: String, routingKey: String, headers: [String: String])
    ) throws -> Bool {
        guard let letter = try deadLetter(id: id), letter.replayedAt == nil else { return false }
        // A held message is tried again from the store, a parked timer fires again; a timer its instance
        // rescheduled or cancelled meanwhile is gone, and there is nothing to fire.
        let rearmed = try rearmParkedMessage(deadLetter: id, at: now) || rearmTimer(deadLetter: id, at: now)
        if !rearmed && letter.messageType != DueTimer.deadLetterType {
            let (exchange, routingKey, extraHeaders) = route(letter)
            let envelope = Envelope(
                messageID: letter.messageID,
                messageType: letter.messageType,
                timestamp: now,
                headers: letter.headers.merging(extraHeaders) { _, added in added },
                payload: letter.body
            )
            try enqueue(envelope, exchange: exchange, routingKey: routingKey, key: "replay:\(id)")
        }
        try markReplayed(deadLetter: id, at: now)
        return true
    }

    /// Stores a read-model document as JSON, replacing the one with the same id.
    /// - Parameters:
    ///   - document: The value.
    ///   - collection: e.g. `orders`.
    ///   - id: Its id in the collection.
    ///   - alias: A second key it can be found by (e.g. a checkout id).
    ///   - status: A value to filter listings by.
    ///   - time: When it changed.
    public func save<D: Encodable>(
        _ document: D,
        in collection: String,
        id: String,
        alias: String? = nil,
        status: String? = nil,
        at time: Date
    ) throws {
        try saveDocument(
            try WireJSON.encode(document),
            in: collection,
            id: id,
            alias: alias,
            status: status,
            at: time
        )
    }

    /// The document with this id or, if none has it, the one with this alias.
    public func document<D: Decodable>(_ type: D.Type, in collection: String, idOrAlias key: String) throws -> D? {
        try documentBody(in: collection, idOrAlias: key).map { try WireJSON.decode(D.self, from: $0) }
    }

    /// The documents of a collection, optionally with one status, in the order they were first saved.
    public func documents<D: Decodable>(
        _ type: D.Type,
        in collection: String,
        status: String? = nil,
        limit: Int = 100_000
    ) throws -> [D] {
        try documentBodies(in: collection, status: status, limit: limit).map {
            try WireJSON.decode(D.self, from: $0)
        }
    }
}

/// When a committed transaction is on the disk: at once, or once a sync that began after its commit ended (a
/// store that syncs many commits at once).
public struct Durability: Sendable {
    /// Registers an action to run once the commit is on the disk, or with the error that keeps it from there.
    public typealias Notify = @Sendable (_ action: @escaping @Sendable (Result<Void, any Error>) -> Void) -> Void

    private let notify: Notify?

    /// A commit on the disk already.
    public static let reached = Durability(notify: nil)

    /// A commit on its way to the disk: `notify` runs each action once it is there (at once, on the caller's
    /// thread, if it is already; else on the thread that syncs), in the order of their commits.
    public init(whenReached notify: @escaping Notify) {
        self.notify = notify
    }

    private init(notify: Notify?) {
        self.notify = notify
    }

    /// Runs `action` once the commit is on the disk, or with the error of the sync that failed to put it there.
    /// It must be short: it runs on the thread that syncs.
    public func whenReached(_ action: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        guard let notify else { return action(.success(())) }
        notify(action)
    }

    /// Waits until the commit is on the disk.
    /// - Throws: The error of the sync that failed to put it there.
    public func reached() async throws {
        guard notify != nil else { return }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            whenReached { continuation.resume(with: $0) }
        }
    }
}
