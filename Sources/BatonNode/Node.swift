import Baton
import BatonAMQP
import BatonSQLite
import Foundation
import Logging
import Synchronization

/// A running service: consumes its queue, handles each message effectively once, relays its outbox and
/// fires its timers.
///
/// - **Consume**: messages are taken in batches (what the prefetch has buffered). Each is checked at the
///   edge (id, type, content type, size, schema); a bad one is dead-lettered at once. The rest are handled in
///   **one** SQLite transaction, each in its own savepoint: inbox check, handler effects, outbox, inbox record.
///   Acks go out only after the commit. A handler that throws is retried with backoff in its own
///   transaction, then dead-lettered with the reason.
/// - **Relay**: publishes the outbox in order with publisher confirms and marks what was confirmed. The
///   rows a transaction of the node's committed are handed to it in memory; it reads the outbox table at
///   start, after a failure and for rows another process queued. A crash re-sends (same ids), never loses.
/// - **Timers**: stored deadlines, fired through the same unit of work when the clock reaches them, also
///   after a restart.
public final class Node: Sendable {
    /// How the node runs.
    public struct Configuration: Sendable {
        /// The node's name: its inbox consumer name, dead-letter routing key and default queue.
        public var name: String
        /// The queue it consumes.
        public var queue: String
        /// Unsettled deliveries at most (the broker's prefetch).
        public var prefetch: Int
        /// Messages per transaction at most.
        public var batchSize: Int
        /// Retries of a failing handler.
        public var retry: RetryPolicy
        /// Outbox messages per relay round.
        public var relayBatchSize: Int
        /// Who declares the node's exchanges, queues and bindings: the node itself (the default) or the
        /// broker's definitions, in which case the node only checks that they exist.
        public var topologyOwnership: TopologyOwnership
        /// Test hook: called at named points of the consume path (crash-injection tests kill the process
        /// there). `nil` in production.
        public var faultInjection: (@Sendable (FaultPoint) -> Void)?

        /// Creates a configuration with defaults for everything but the name.
        public init(name: String, queue: String? = nil) {
            self.name = name
            self.queue = queue ?? name
            self.prefetch = 256
            self.batchSize = 128
            self.retry = RetryPolicy()
            self.relayBatchSize = 500
            self.topologyOwnership = .node
            self.faultInjection = nil
        }
    }

    /// Points in the consume path where ``Configuration/faultInjection`` is called.
    public enum FaultPoint: String, Sendable, CaseIterable {
        /// Inside the transaction, after the handlers ran, before it commits.
        case beforeCommit
        /// After the commit, before the relay publishes what the handlers issued.
        case afterCommitBeforePublish
        /// After the relay published (and the broker confirmed) what the handlers issued, before the ack.
        case afterPublishBeforeAck
    }

    /// The configuration.
    public let configuration: Configuration
    /// The store.
    public let store: SQLiteStore
    let transport: any Transport
    let registry: MessageRegistry
    let handlers: [any NodeHandler]
    let timeSource: any TimeSource
    let logger: Logger
    private let relaySignal = Signal()
    private let handover = Mutex(Handover())
    private let timerSignal = Signal()
    private let schedulesTimers: Bool
    private let consumeStop = Signal()
    private let stopping = Atomic<Bool>(false)

    /// Creates a node.
    /// - Parameters:
    ///   - configuration: Name, queue, limits.
    ///   - store: Its SQLite store.
    ///   - transport: The broker or the in-process transport.
    ///   - registry: The message types it accepts.
    ///   - handlers: What it hosts (process managers, command handlers, subscribers).
    ///   - timeSource: Business time (a ``TestClock`` in tests).
    ///   - logger: Where it logs.
    public init(
        configuration: Configuration,
        store: SQLiteStore,
        transport: any Transport,
        registry: MessageRegistry,
        handlers: [any NodeHandler],
        timeSource: any TimeSource = SystemTimeSource(),
        logger: Logger
    ) {
        self.configuration = configuration
        self.store = store
        self.transport = transport
        self.registry = registry
        self.handlers = handlers
        self.schedulesTimers = handlers.contains { $0.schedulesTimers }
        self.timeSource = timeSource
        var logger = logger
        logger[metadataKey: "baton.node"] = "\(configuration.name)"
        self.logger = logger
    }

    /// The node's queue, its dead-letter queue, and the bindings its handlers need.
    public var topology: AMQPTopology { Self.topology(configuration: configuration, handlers: handlers) }

    /// The topology a node with this configuration and these handlers needs: the exchanges it publishes to
    /// and subscribes from, its queue (bound for each handler and to ``Routing/nodeExchange`` under its
    /// name) and its dead-letter queue. What broker definitions must contain for
    /// ``TopologyOwnership/broker``.
    /// - Parameters:
    ///   - configuration: The node's name and queue.
    ///   - handlers: What it hosts.
    public static func topology(configuration: Configuration, handlers: [any NodeHandler]) -> AMQPTopology {
        let deadLetters = "\(configuration.name).dead-letters"
        let handlerBindings = handlers.flatMap(\.bindings).map {
            AMQPTopology.Binding(queue: configuration.queue, exchange: $0.exchange, bindingKey: $0.bindingKey)
        }
        return AMQPTopology(
            exchanges: Routing.exchanges + handlers.flatMap(\.exchanges),
            queues: [.init(configuration.queue, kind: .quorum), .init(deadLetters, kind: .quorum)],
            bindings: handlerBindings + [
                .init(queue: configuration.queue, exchange: Routing.nodeExchange, bindingKey: configuration.name),
                .init(queue: deadLetters, exchange: Routing.deadLetterExchange, bindingKey: configuration.name),
            ]
        )
    }

    /// Runs the node until the task is cancelled, then stops gracefully: stops consuming, finishes the batch
    /// in hand (commit, then ack), flushes the outbox, returns.
    /// - Throws: If the topology cannot be declared (or, owned by the broker, is missing) or the queue
    ///   consumed.
    public func run() async throws {
        switch configuration.topologyOwnership {
        case .node: try await transport.declare(topology)
        case .broker: try await transport.verify(topology)
        }
        let source = try await transport.subscribe(queue: configuration.queue, prefetch: configuration.prefetch)
        logger.info("node started", metadata: ["queue": "\(configuration.queue)"])
        // The loops run unstructured so that cancelling `run` does not cut them off mid-transaction: the
        // cancellation handler asks them to stop and they finish their work first.
        let consume = Task { await consumeLoop(source) }
        let timers = Task { await timerLoop() }
        let relay = Task { await relayLoop() }
        await withTaskCancellationHandler {
            await consume.value
            await timers.value
            await relay.value
        } onCancel: {
            stop()
        }
        logger.info("node stopped")
    }

    /// Asks the loops to stop (what cancelling ``run()`` does).
    public func stop() {
        stopping.store(true, ordering: .sequentiallyConsistent)
        consumeStop.notify()
        relaySignal.notify()
        timerSignal.notify()
    }

    private var isStopping: Bool { stopping.load(ordering: .sequentiallyConsistent) }

    /// The clock reading handed to handlers, at the precision of business time.
    private func businessNow() -> Date {
        timeSource.now().roundedToMilliseconds
    }

    // MARK: Consume

    private enum Prepared {
        case handle(IncomingMessage, Envelope, any Message, [any NodeHandler])
        case reject(IncomingMessage, reason: String, stage: String)

        var incoming: IncomingMessage {
            switch self {
            case .handle(let incoming, _, _, _): return incoming
            case .reject(let incoming, _, _): return incoming
            }
        }
    }

    private enum Outcome {
        case done
        case failed(any Error)
    }

    private func consumeLoop(_ source: any MessageSource) async {
        while !isStopping {
            let batch: [IncomingMessage]?
            do {
                batch = try await nextBatch(source)
            } catch {
                logger.error("consumer ended", metadata: ["error": "\(error)"])
                break
            }
            guard let batch, !batch.isEmpty else { continue }
            await process(batch)
        }
        await source.cancel()
    }

    /// The next batch, or `nil` once the node is stopping; never drops a batch that arrived meanwhile.
    private func nextBatch(_ source: any MessageSource) async throws -> [IncomingMessage]? {
        let batchSize = configuration.batchSize
        return try await withThrowingTaskGroup(of: [IncomingMessage]?.self) { group in
            group.addTask {
                do {
                    return try await source.nextBatch(maxCount: batchSize)
                } catch is CancellationError {
                    return nil  // the node is stopping
                }
            }
            group.addTask {
                await self.consumeStop.wait()
                return nil
            }
            var collected: [IncomingMessage]?
            if let first = try await group.next() { collected = first }
            group.cancelAll()
            while let more = try await group.next() {
                if let more { collected = (collected ?? []) + more }
            }
            return collected
        }
    }

    /// The outbox rows committed by the node's own transactions, waiting for the relay (they are in the table
    /// too: this only saves reading them back).
    private struct Handover {
        private var rows: [OutboxMessage] = []
        /// More rows came than it holds: the relay reads the table instead.
        private var overflowed = false
        private static let capacity = 10_000

        mutating func add(_ queued: [OutboxMessage]) {
            guard !queued.isEmpty else { return }
            if overflowed || rows.count + queued.count > Self.capacity {
                rows.removeAll()
                overflowed = true
            } else {
                rows.append(contentsOf: queued)
            }
        }

        /// The oldest rows, at most `limit`, and whether some were dropped since the last take.
        mutating func take(upTo limit: Int) -> (rows: [OutboxMessage], overflowed: Bool) {
            defer { overflowed = false }
            let taken = Array(rows.prefix(limit))
            rows.removeFirst(taken.count)
            return (taken, overflowed)
        }

        /// Forgets the rows a table read returned (up to and including `sequence`).
        mutating func drop(through sequence: Int64) {
            rows.removeAll { $0.sequence <= sequence }
        }
    }

    /// Runs one write transaction, hands the outbox rows it committed to the relay and wakes it (unless
    /// `wakeRelay` is false: the caller does, after its fault-injection point).
    private func commit<T: Sendable>(
        wakeRelay: Bool = true,
        _ body: @escaping @Sendable (UnitOfWork) throws -> T
    ) async throws -> T {
        let (value, queued) = try await store.writeHandingOverOutbox(body)
        handover.withLock { $0.add(queued) }
        if wakeRelay { relaySignal.notify() }
        return value
    }

    private func process(_ batch: [IncomingMessage]) async {
        let prepared = batch.map(prepare)
        let now = businessNow()
        let outcomes: [Outcome]
        do {
            outcomes = try await commit(wakeRelay: false) { [self] work in
                var outcomes: [Outcome] = []
                for item in prepared {
                    switch item {
                    case .handle(let incoming, let envelope, let message, let handlers):
                        outcomes.append(handleOnce(incoming, envelope, message, handlers, work, now))
                    case .reject(let incoming, let reason, let stage):
                        try deadLetter(incoming, reason: reason, handler: stage, attempts: 1, work, now)
                        outcomes.append(.done)
                    }
                }
                configuration.faultInjection?(.beforeCommit)
                return outcomes
            }
        } catch {
            // Nothing committed: give the batch back; it comes again.
            logger.error("batch not committed; requeued", metadata: ["error": "\(error)", "size": "\(batch.count)"])
            for incoming in batch { incoming.requeue() }
            return
        }
        configuration.faultInjection?(.afterCommitBeforePublish)
        relaySignal.notify()
        if schedulesTimers { timerSignal.notify() }
        if let fault = configuration.faultInjection {
            await waitForEmptyOutbox()
            fault(.afterPublishBeforeAck)
        }
        for (item, outcome) in zip(prepared, outcomes) {
            switch (item, outcome) {
            case (_, .done):
                item.incoming.acknowledge()
            case (.handle(let incoming, let envelope, let message, let handlers), .failed(let error)):
                await retry(incoming, envelope, message, handlers, firstError: error)
            case (.reject(let incoming, _, _), .failed):
                incoming.acknowledge()
            }
        }
    }

    private func handleOnce(
        _ incoming: IncomingMessage,
        _ envelope: Envelope,
        _ message: any Message,
        _ handlers: [any NodeHandler],
        _ work: UnitOfWork,
        _ now: Date
    ) -> Outcome {
        do {
            if try work.hasHandled(envelope.messageID, consumer: configuration.name) {
                logger.debug("duplicate dropped", metadata: ["baton.message_id": "\(envelope.messageID)"])
                return .done
            }
            try work.inSavepoint {
                for handler in handlers {
                    try handler.handle(message, envelope: envelope, in: work, now: now, logger: logger)
                }
                try work.markHandled(envelope.messageID, consumer: configuration.name, at: now)
            }
            return .done
        } catch {
            return .failed(error)
        }
    }

    private func retry(
        _ incoming: IncomingMessage,
        _ envelope: Envelope,
        _ message: any Message,
        _ handlers: [any NodeHandler],
        firstError: any Error
    ) async {
        var attempt = 1
        var lastError = firstError
        while !(lastError is any PermanentFailure), let delay = configuration.retry.delay(afterAttempt: attempt) {
            logger.warning(
                "handler failed; retrying",
                metadata: [
                    "baton.message_id": "\(envelope.messageID)", "attempt": "\(attempt)", "error": "\(lastError)",
                ]
            )
            try? await Task.sleep(for: delay)
            attempt += 1
            let now = businessNow()
            do {
                let outcome = try await commit { [self] work in
                    handleOnce(incoming, envelope, message, handlers, work, now)
                }
                if case .failed(let error) = outcome { throw error }
                timerSignal.notify()
                incoming.acknowledge()
                return
            } catch {
                lastError = error
            }
        }
        let attempts = attempt
        let reason = "\(lastError)"
        let names = handlers.map(\.name).joined(separator: ",")
        do {
            let now = businessNow()
            try await commit { [self] work in
                try deadLetter(incoming, reason: reason, handler: names, attempts: attempts, work, now)
            }
            logger.error(
                "message dead-lettered",
                metadata: [
                    "baton.message_id": "\(envelope.messageID)", "attempts": "\(attempts)", "error": "\(reason)",
                ]
            )
            incoming.acknowledge()
        } catch {
            logger.error("dead-lettering failed; requeued", metadata: ["error": "\(error)"])
            incoming.requeue()
        }
    }

    /// Checks a message at the edge and decodes it.
    private func prepare(_ incoming: IncomingMessage) -> Prepared {
        var incoming = incoming
        if incoming.exchange == Routing.nodeExchange,
            let exchange = incoming.headers.removeValue(forKey: BatonHeader.originalExchange)
        {
            // A replayed dead letter: it is handled (and, failing again, dead-lettered) as where it came from.
            incoming.exchange = exchange
            incoming.routingKey = incoming.headers.removeValue(forKey: BatonHeader.originalRoutingKey) ?? ""
        }
        guard let messageID = incoming.messageID, !messageID.isEmpty else {
            return .reject(incoming, reason: "the message has no message_id property", stage: "edge")
        }
        if let contentType = incoming.contentType, contentType != "application/json" {
            return .reject(incoming, reason: "content type '\(contentType)' is not application/json", stage: "edge")
        }
        let external = handlers.lazy.compactMap {
            $0.messageType(forExternal: incoming.exchange, routingKey: incoming.routingKey)
        }.first
        guard let messageType = external ?? incoming.messageType, !messageType.isEmpty else {
            return .reject(incoming, reason: "the message has no type property", stage: "edge")
        }
        var headers = incoming.headers
        let causationID = headers.removeValue(forKey: BatonHeader.causationID)
        let stream = headers.removeValue(forKey: BatonHeader.stream)
        let position = headers.removeValue(forKey: BatonHeader.position).flatMap { Int64($0) }
        let envelope = Envelope(
            messageID: messageID,
            messageType: messageType,
            correlationID: incoming.correlationID,
            causationID: causationID,
            stream: stream,
            position: position,
            timestamp: incoming.timestamp ?? businessNow(),
            headers: headers,
            payload: incoming.body
        )
        // A subscriber takes only what arrives on its external exchange: an internal message claiming an
        // external contract's type must not bypass the edge that translates it.
        let takers = handlers.filter { $0.handles(envelope) && (external != nil || $0.exchanges.isEmpty) }
        guard !takers.isEmpty else {
            return .reject(incoming, reason: "no handler for message type '\(messageType)'", stage: "edge")
        }
        do {
            return .handle(incoming, envelope, try registry.decode(envelope), takers)
        } catch {
            return .reject(incoming, reason: "\(error)", stage: "decode")
        }
    }

    /// Records a dead letter of a delivery and queues it for the dead-letter exchange, unless the same message
    /// is dead-lettered already and not replayed (a redelivery).
    private func deadLetter(
        _ incoming: IncomingMessage,
        reason: String,
        handler: String,
        attempts: Int,
        _ work: UnitOfWork,
        _ now: Date
    ) throws {
        if let messageID = incoming.messageID, !messageID.isEmpty, try work.hasOpenDeadLetter(messageID: messageID) {
            return
        }
        try deadLetter(
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
    private func deadLetter(_ letter: DeadLetter, correlationID: String?, _ work: UnitOfWork) throws -> Int64 {
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
        return id
    }

    /// Sends a dead letter back to where it was first published, with its original id; the node handles it
    /// like a new delivery.
    /// - Throws: ``NodeError`` if there is no such dead letter or it was replayed already.
    public func replayDeadLetter(id: Int64) async throws {
        let now = businessNow()
        let name = configuration.name
        let replayed = try await commit { try $0.replayDeadLetter(id: id, to: name, at: now) }
        timerSignal.notify()  // a parked timer may be due again
        guard replayed else { throw NodeError(message: "no dead letter with id \(id) waiting for a replay") }
    }

    // MARK: Relay

    private func relayLoop() async {
        let limit = configuration.relayBatchSize
        // Read the table at start (rows an earlier run left), after a failure, when a retry is due, when the
        // node stops (a last sweep) and at least once a second (rows another process queued).
        var mustRead = true
        var lastRead = ContinuousClock.now
        var nextAttempt: Date?
        var readThrough: Int64 = 0  // the highest sequence a table read returned: handed-over copies are skipped
        while true {
            let handed = handover.withLock { $0.take(upTo: limit) }
            var pending = handed.rows.filter { $0.sequence > readThrough }
            if handed.overflowed || ContinuousClock.now - lastRead > .seconds(1) || (isStopping && pending.isEmpty)
                || nextAttempt.map({ $0 <= Date() }) == true
            {
                mustRead = true
            }
            if mustRead {
                do {
                    (pending, nextAttempt) = try await store.read {
                        (try $0.pendingOutbox(limit: limit, readyAt: Date()), try $0.nextOutboxAttempt())
                    }
                } catch {
                    logger.error("outbox read failed", metadata: ["error": "\(error)"])
                    if isStopping { return }
                    try? await Task.sleep(for: .seconds(1))
                    continue
                }
                mustRead = pending.count == limit  // a full page: more may wait
                lastRead = .now
                readThrough = max(readThrough, pending.last?.sequence ?? 0)
                handover.withLock { [readThrough] in $0.drop(through: readThrough) }
            }
            if pending.isEmpty {
                // Stopping: what could be sent was sent; rows waiting out a retry stay for the next start.
                if isStopping && !mustRead { return }
                if !mustRead {
                    let wake = min(nextAttempt ?? .distantFuture, Date().addingTimeInterval(1))
                    await waitFor(relaySignal, orUntil: Self.sleep(until: wake))
                }
                continue
            }
            let results = await publish(pending)
            var sent: [Int64] = []
            var failed: [Int64] = []
            var refused: [Int64] = []
            var firstError: (any Error)?
            for (message, result) in zip(pending, results) {
                switch result {
                case .success: sent.append(message.sequence)
                case .failure(let error):
                    if result.isRefusal { refused.append(message.sequence) } else { failed.append(message.sequence) }
                    firstError = firstError ?? error
                }
            }
            do {
                let now = businessNow()
                // Without an fsync: a mark lost to a power failure only re-sends, under the same id.
                try await store.writeWithoutWaitingForDisk { [sent, failed, refused] work in
                    try work.markSent(sent, at: now)
                    try work.markFailed(failed, at: Date())
                    try work.markFailed(refused, at: Date(), refused: true)
                }
            } catch {
                logger.error("outbox mark failed; the messages will be sent again", metadata: ["error": "\(error)"])
                mustRead = true
            }
            if let firstError {
                mustRead = true  // the failed rows wait out their retry delay in the table
                logger.warning(
                    "relay publish failed; retrying those messages later",
                    metadata: ["failed": "\(failed.count)", "error": "\(firstError)"]
                )
            }
        }
    }

    /// A sleep until a retry is due (wall-clock time, not business time), or none.
    private static func sleep(until date: Date?) -> (@Sendable () async -> Void)? {
        guard let date else { return nil }
        let delay = max(0.001, date.timeIntervalSinceNow)
        return { try? await Task.sleep(for: .seconds(delay)) }
    }

    /// Publishes outbox rows: the ones never refused together, each row the broker refused before on its own.
    /// When the broker refuses one row of a batch it closes the channel over all of them, without saying which:
    /// those of unknown outcome go again one by one, so each gets its own answer.
    private func publish(_ rows: [OutboxMessage]) async -> [Result<Void, any Error>] {
        let outgoing = rows.map {
            OutgoingMessage(exchange: $0.exchange, routingKey: $0.routingKey, envelope: $0.envelope)
        }
        let together = rows.indices.filter { !rows[$0].wasRefused }
        var results = [Result<Void, any Error>](repeating: .success(()), count: rows.count)
        for (index, result) in zip(together, await transport.publish(together.map { outgoing[$0] })) {
            results[index] = result
        }
        for index in rows.indices where rows[index].wasRefused || results[index].outcomeIsUnknown {
            results[index] = await transport.publish([outgoing[index]])[0]
        }
        return results
    }

    /// Waits until the outbox is empty (used only by the fault-injection hook).
    private func waitForEmptyOutbox() async {
        while (try? await store.read({ try $0.pendingOutboxCount() })) != 0 {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    // MARK: Timers

    private func timerLoop() async {
        while !isStopping {
            let now = businessNow()
            do {
                let (due, next) = try await store.read { work in
                    let due = try work.dueTimers(before: now, limit: 100)
                    return (due, due.isEmpty ? try work.nextTimer() : nil)
                }
                if !due.isEmpty {
                    try await fire(due, now: now)
                    continue
                }
                var untilDue: (@Sendable () async -> Void)?
                if let next {
                    let timeSource = self.timeSource
                    untilDue = { try? await timeSource.sleep(until: next.nextAttemptAt) }
                }
                await waitFor(timerSignal, orUntil: untilDue)
            } catch {
                logger.error("timer round failed", metadata: ["error": "\(error)"])
                await waitFor(timerSignal, orUntil: { try? await Task.sleep(for: .seconds(1)) })
            }
        }
    }

    /// Fires due timers in one transaction, each in its own savepoint. A timer whose handler throws is retried
    /// on its own with the node's retry policy (its next attempt stored with it, in business time), then
    /// dead-lettered and parked: it never holds up the other timers.
    private func fire(_ timers: [DueTimer], now: Date) async throws {
        try await commit { [self] work in
            for timer in timers {
                do {
                    try work.inSavepoint {
                        for handler in handlers { try handler.fire(timer, in: work, now: now, logger: logger) }
                    }
                } catch {
                    try timerFailed(timer, error: error, work, now)
                }
            }
        }
    }

    private func timerFailed(_ timer: DueTimer, error: any Error, _ work: UnitOfWork, _ now: Date) throws {
        let attempts = timer.attempts + 1
        var metadata: Logger.Metadata = [
            "baton.process_id": "\(timer.instanceID)", "timer": "\(timer.name)", "attempts": "\(attempts)",
            "error": "\(error)",
        ]
        if !(error is any PermanentFailure), let delay = configuration.retry.delay(afterAttempt: attempts) {
            try work.retryTimer(timer, at: now.adding(delay).roundedToMilliseconds)
            metadata["retry_in"] = "\(delay)"
            logger.warning("timer handler failed; retrying", metadata: metadata)
            return
        }
        let trigger = ProcessTrigger.timer(name: timer.name, dueAt: timer.dueAt)
        let body = try JSONEncoder.baton.encode(
            TimerDeadLetter(
                processManager: timer.processManager,
                instanceID: timer.instanceID,
                name: timer.name,
                dueAt: timer.dueAt
            )
        )
        let id = try deadLetter(
            DeadLetter(
                messageID: trigger.messageID(processManager: timer.processManager, instanceID: timer.instanceID),
                messageType: DueTimer.deadLetterType,
                exchange: "",
                routingKey: "",
                headers: [:],
                body: body,
                reason: "\(error)",
                handler: timer.processManager,
                attempts: attempts,
                deadAt: now
            ),
            correlationID: timer.instanceID,
            work
        )
        try work.parkTimer(timer, deadLetter: id)
        logger.error("timer dead-lettered", metadata: metadata)
    }

    /// Waits for `signal` (which the node's stop also raises), or until `sleep` returns.
    private func waitFor(_ signal: Signal, orUntil sleep: (@Sendable () async -> Void)?) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await signal.wait() }
            if let sleep { group.addTask { await sleep() } }
            await group.next()
            group.cancelAll()
        }
    }
}

/// The body of a timer's dead letter: which timer it is.
private struct TimerDeadLetter: Codable {
    var processManager: String
    var instanceID: String
    var name: String
    var dueAt: Date
}

/// A handler error that no retry can fix (the message refers to something that does not exist, breaks a
/// business rule, …): the message is dead-lettered at once with the error as reason.
public protocol PermanentFailure: Error {}

/// A handler's refusal of a message, dead-lettered at once with ``reason``.
public struct Rejection: PermanentFailure, CustomStringConvertible {
    /// Why the message was refused.
    public var reason: String

    /// Creates a rejection.
    public init(_ reason: String) {
        self.reason = reason
    }

    public var description: String { reason }
}

/// A node operation that cannot be done.
public struct NodeError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong.
    public var message: String

    /// Creates the error.
    public init(message: String) {
        self.message = message
    }

    public var description: String { message }
}

extension Result<Void, any Error> {
    /// Whether the broker may or may not have taken the message (``AMQPError/Code/outcomeUnknown``).
    fileprivate var outcomeIsUnknown: Bool {
        if case .failure(let error as AMQPError) = self { return error.code == .outcomeUnknown }
        return false
    }

    /// Whether the broker refused the message itself by closing the channel (a permission, a missing exchange,
    /// a size limit), as opposed to a connection failure, a nack or a missing route.
    fileprivate var isRefusal: Bool {
        guard case .failure(let error as AMQPError) = self else { return false }
        return [.accessRefused, .notFound, .preconditionFailed, .notAllowed, .brokerClosedChannel].contains(error.code)
    }
}
