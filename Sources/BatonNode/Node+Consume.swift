import Baton
import Foundation
import Logging
import Tracing

/// The consume path: batches of deliveries, checked at the edge, handled in one transaction, acknowledged
/// after the commit.
extension Node {
    /// A delivery after the edge checks.
    enum Prepared {
        case handle(IncomingMessage, Envelope, any Message, [any NodeHandler])
        case reject(IncomingMessage, reason: String, stage: String)
        /// A later version of a message than this node knows: kept in the store and tried again later (by
        /// this node once it is upgraded), never dead-lettered as unknown.
        case postpone(IncomingMessage, reason: String)
        /// A re-partitioning's marker: everything before it in its queue is handled.
        case drained(IncomingMessage, PartitionDrained)
        /// A message the broker dead-lettered past its queue's delivery limit (restored to where it was
        /// published): recorded as a dead letter unless it was handled after all.
        case pastDeliveryLimit(IncomingMessage)

        var incoming: IncomingMessage {
            switch self {
            case .drained(let incoming, _): return incoming
            case .pastDeliveryLimit(let incoming): return incoming
            case .handle(let incoming, _, _, _): return incoming
            case .reject(let incoming, _, _): return incoming
            case .postpone(let incoming, _): return incoming
            }
        }
    }

    /// Consumes what the input plan says: a node of a new partition count whose old queues drain consumes
    /// those until the store records every one drained (whichever replica drained it), then its own.
    func consume(_ source: any MessageSource, _ input: InputPlan) async {
        guard let (plan, queues) = input.drainingInto else {
            await consumeLoop(source)
            return
        }
        logger.info(
            "draining the queues of \(plan.from) partition(s) before consuming those of \(plan.to)",
            metadata: ["queues": "\(input.queues.joined(separator: ","))"]
        )
        let drained = await consumeLoop(source) { [self] in
            let undrained = try? await Self.undrainedQueues(of: plan, configuration: configuration, in: store)
            return undrained?.isEmpty ?? false
        }
        guard drained else { return }  // stopping, or the consumer ended
        let next: any MessageSource
        do {
            next = try await subscribe(queues)
        } catch {
            logger.error("cannot consume the new partitions' queues", metadata: ["error": "\(error)"])
            return
        }
        logger.info(
            "old partitions drained; consuming the new ones",
            metadata: ["queues": "\(queues.joined(separator: ","))"]
        )
        await consumeLoop(next)
    }

    /// Starts consuming queues as the node's input; the prefetch is shared among them (each queue's consumer
    /// has its own).
    func subscribe(_ queues: [String]) async throws -> any MessageSource {
        consumedQueues.withLock { $0 = queues }
        return try await transport.subscribe(queues: queues, prefetch: max(1, configuration.prefetch / queues.count))
    }

    /// Handles the source's batches until the node stops, the source ends or, checked before each batch and at
    /// least every second, `isFinished` says so.
    /// - Returns: Whether `isFinished` ended it.
    @discardableResult
    func consumeLoop(_ source: any MessageSource, until isFinished: (@Sendable () async -> Bool)? = nil) async -> Bool {
        health.withLock { $0.consuming = true }
        defer { health.withLock { $0.consuming = false } }
        var finished = false
        while !consumption.isStopping {
            if let isFinished, await isFinished() {
                finished = true
                break
            }
            let batch: [IncomingMessage]?
            do {
                batch = try await nextBatch(source, waitingAtMost: isFinished == nil ? nil : .seconds(1))
            } catch {
                logger.error("consumer ended", metadata: ["error": "\(error)"])
                break
            }
            guard let batch, !batch.isEmpty else { continue }
            await process(batch)
        }
        // The batches committed last are acknowledged once on the disk: before the consumer goes.
        do { try await store.waitForDisk() } catch {
            logger.error(
                "the last batches did not reach the disk; left unacknowledged",
                metadata: ["error": "\(error)"]
            )
        }
        await source.cancel()
        return finished
    }

    /// The next batch, or `nil` once the node is stopping (or `waitingAtMost` passed with none); never drops a
    /// batch that arrived meanwhile.
    private func nextBatch(
        _ source: any MessageSource,
        waitingAtMost limit: Duration?
    ) async throws -> [IncomingMessage]? {
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
                await self.consumption.signal.wait()
                return nil
            }
            if let limit {
                group.addTask {
                    try? await Task.sleep(for: limit)
                    return nil
                }
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

    /// Handles a batch in one transaction, then acknowledges all of it: each message was handled, dropped as a
    /// duplicate, dead-lettered, or is held in the store (retried later, or waiting behind its instance).
    ///
    /// When the transaction cannot commit (the store is unreachable, its disk full, a replica committed the
    /// same instance first), the batch stays unacknowledged and is handled again after a backoff — one log
    /// line per attempt, not a requeue storm — until it commits, or the node stops and gives it back.
    private func process(_ batch: [IncomingMessage]) async {
        var prepared = batch.map(prepare)
        // With a tracer, each message to handle gets its span; its handlers see the span's traceparent.
        let tracer = NodeTracing.tracer
        let spans = prepared.indices.map { index -> (any Span)? in
            guard let tracer, case .handle(let incoming, let envelope, let message, let takers) = prepared[index]
            else { return nil }
            let (span, traced) = NodeTracing.consume(
                envelope,
                node: configuration.name,
                queue: configuration.queue,
                tracer: tracer
            )
            prepared[index] = .handle(incoming, traced, message, takers)
            return span
        }
        var committed: BatchCommit?
        var failures = 0
        var started = ContinuousClock.now
        while true {
            do {
                started = ContinuousClock.now
                committed = try await commitBatch(prepared, now: businessNow())
                break
            } catch {
                failures += 1
                metrics.batchRetried(error is any StoreConflict ? .conflict : .failure)
                if !(error is any StoreConflict) { health.withLock { $0.commitFailure = "\(error)" } }
                var metadata: Logger.Metadata = [
                    "error": "\(error)", "size": "\(batch.count)", "attempts": "\(failures)",
                ]
                if consumption.isStopping {
                    logger.error("batch not committed; requeued as the node stops", metadata: metadata)
                    for incoming in batch { incoming.requeue() }
                    for case let span? in spans {
                        span.setStatus(SpanStatus(code: .error, message: "not committed: requeued"))
                        span.end()
                    }
                    return
                }
                let delay = Self.commitRetryDelay(after: error, failures: failures)
                metadata["retry_in"] = "\(delay)"
                if error is any StoreConflict {
                    logger.warning("batch lost a race with another transaction; tried again", metadata: metadata)
                } else {
                    logger.error("batch not committed; kept unacknowledged and tried again", metadata: metadata)
                }
                await waitFor(consumption.signal, orUntil: { try? await Task.sleep(for: delay) })
            }
        }
        guard var committed else { return }
        configuration.faultInjection?(.afterCommitBeforePublish)
        if committed.holdsMessages
            || committed.nextTimer.map({ due in deadlineLoopWakesAt.withLock { due < $0 } }) == true
        {
            deadlines.wake()
        }
        metrics.committed(committed.results, duration: ContinuousClock.now - started)
        if let tracer {
            for (span, result) in zip(spans, committed.results) {
                if let span { NodeTracing.end(span, result, tracer: tracer) }
            }
        }
        health.withLock { $0.commitFailure = nil }
        if let fault = configuration.faultInjection {
            handOver(committed.queued, once: committed.durability)
            committed.queued = []
            await waitForEmptyOutbox()
            fault(.afterPublishBeforeAck)
        }
        // Acknowledged once the commit is on the disk; the node goes on with its next batch meanwhile.
        handOver(committed.queued, once: committed.durability) { [self] result in
            switch result {
            case .success:
                for incoming in batch { incoming.acknowledge() }
            case .failure(let error):
                health.withLock { $0.commitFailure = "\(error)" }
                logger.error(
                    "a committed batch did not reach the disk; requeued, and the store takes no more",
                    metadata: ["error": "\(error)", "size": "\(batch.count)"]
                )
                for incoming in batch { incoming.requeue() }
            }
        }
    }

    /// A batch's committed transaction: whether the store holds messages after it, the earliest timer stored
    /// after it (for a node that schedules timers: the deadline loop is woken only for one earlier than the
    /// deadline it sleeps until), what became of each message, and the outbox rows and durability of its commit.
    struct BatchCommit: Sendable {
        var holdsMessages: Bool
        var nextTimer: Date?
        var results: [MessageResult]
        var queued: [OutboxMessage]
        var durability: Durability
    }

    /// The wait before handling an uncommitted batch again: 100 ms, doubling, at most 10 s; after a lost race
    /// (``StoreConflict``) a few random milliseconds, so the two contenders do not meet again in step.
    static func commitRetryDelay(after error: any Error, failures: Int) -> Duration {
        if error is any StoreConflict, failures <= 10 { return .milliseconds(Int.random(in: 1...(10 * failures))) }
        return min(.milliseconds(100 << min(failures - 1, 7)), .seconds(10))
    }

    /// Handles a batch in one transaction and returns once it commits.
    ///
    /// The batch runs first without savepoints; if a message's handlers fail, the transaction is rolled back and
    /// the batch runs again at once with each message in its own savepoint (``Delivery/Isolation``). The failed
    /// message's handlers do not run a second time in that attempt: it fails there with what they threw (on the
    /// same state, since the messages before it do the same again), so the failure stays with its message and
    /// counts as one attempt.
    private func commitBatch(_ prepared: [Prepared], now: Date) async throws -> BatchCommit {
        try await isolatingFailures { try await commitBatch(prepared, now: now, isolation: $0, failed: $1) }
    }

    /// Runs `attempt` (a batch's or timer round's transaction) without savepoints and, if a message or timer
    /// failed in it, once more at once with a savepoint each, told which failed and how.
    func isolatingFailures<T>(
        _ attempt: (Delivery.Isolation, Delivery.IsolationNeeded?) async throws -> T
    ) async throws -> T {
        do {
            return try await attempt(.none, nil)
        } catch let needed as Delivery.IsolationNeeded {
            metrics.batchRetried(.isolation)
            return try await attempt(.savepoint, needed)
        }
    }

    private func commitBatch(
        _ prepared: [Prepared],
        now: Date,
        isolation: Delivery.Isolation,
        failed: Delivery.IsolationNeeded?
    ) async throws -> BatchCommit {
        let ((holdsMessages, nextTimer, results), queued, durability) = try await commitBeforeDisk { [self] work in
            var holdsMessages = try work.hasParkedMessages()
            var results: [MessageResult] = []
            for item in prepared {
                // A delivery from a queue in this store leaves it in this transaction, whatever becomes of it.
                let taken = try item.incoming.takeInTransaction?(work) ?? false
                switch item {
                case .handle(let incoming, let envelope, let message, let handlers):
                    let started = ContinuousClock.now
                    let startedAt = DefaultTracerClock.now
                    let (outcome, held) = try handleOrHold(
                        incoming,
                        envelope,
                        message,
                        handlers,
                        once: taken && incoming.isWrittenOnce,
                        checkingHeld: holdsMessages,
                        isolation: isolation,
                        failed: failed,
                        work,
                        now
                    )
                    holdsMessages = holdsMessages || held
                    let ran = outcome == .handled || outcome == .retrying || outcome == .deadLettered
                    results.append(
                        MessageResult(
                            type: envelope.messageType,
                            outcome: outcome,
                            duration: ran ? ContinuousClock.now - started : nil,
                            handling: ran ? (startedAt, DefaultTracerClock.now) : nil
                        )
                    )
                case .reject(let incoming, let reason, let stage):
                    try deadLetter(incoming, reason: reason, handler: stage, attempts: 1, work, now)
                    results.append(MessageResult(type: knownType(incoming), outcome: .deadLettered))
                case .postpone(let incoming, let reason):
                    try postpone(incoming, reason: reason, work, now)
                    holdsMessages = true
                    results.append(MessageResult(type: knownType(incoming), outcome: .postponed))
                case .drained(let incoming, let marker):
                    try recordDrained(marker, queue: incoming.routingKey, work, now)
                    results.append(MessageResult(type: Self.drainMarkerType, outcome: .handled))
                case .pastDeliveryLimit(let incoming):
                    results.append(MessageResult(type: knownType(incoming), outcome: try gaveUp(incoming, work, now)))
                }
            }
            let nextTimer = schedulesTimers ? try work.nextTimer()?.nextAttemptAt : nil
            configuration.faultInjection?(.beforeCommit)
            return (holdsMessages, nextTimer, results)
        }
        return BatchCommit(
            holdsMessages: holdsMessages,
            nextTimer: nextTimer,
            results: results,
            queued: queued,
            durability: durability
        )
    }

    /// A delivery's message type as a metric label: one the node knows, else `unknown` (a label's values must
    /// stay few whatever a producer sends).
    private func knownType(_ incoming: IncomingMessage) -> String {
        guard let type = incoming.messageType, registry.contains(type) else { return "unknown" }
        return type
    }

    /// Handles one message, unless it was handled before or must wait behind an earlier message of its instance;
    /// a failure holds it for a retry (or dead-letters it).
    /// - Parameters:
    ///   - once: No other copy of the message can come: a transaction of this store wrote it, and this one takes
    ///     it from its queue. It needs no inbox record (nor a look for one).
    ///   - checkingHeld: The store holds messages: check whether this one or its instance is held.
    ///   - isolation: Whether the message runs in its own savepoint; without, a failure throws
    ///     ``Delivery/IsolationNeeded``.
    ///   - failed: A failure of the batch's run without savepoints: if it is this message's, it fails with it
    ///     without running its handlers again.
    /// - Returns: What became of it, and whether it is now held in the store.
    private func handleOrHold(
        _ incoming: IncomingMessage,
        _ envelope: Envelope,
        _ message: any Message,
        _ handlers: [any NodeHandler],
        once: Bool,
        checkingHeld: Bool,
        isolation: Delivery.Isolation,
        failed: Delivery.IsolationNeeded?,
        _ work: any UnitOfWork,
        _ now: Date
    ) throws -> (MessageOutcome, held: Bool) {
        if !once, try work.hasHandled(envelope.messageID, consumer: configuration.name) {
            logger.debug("duplicate dropped", metadata: ["baton.message_id": "\(envelope.messageID)"])
            return (.duplicate, false)
        }
        if !once, isOlderThanInboxWindow(envelope, now: now) {
            let reason =
                "issued \(ISO8601Milliseconds.format(envelope.timestamp)), before the inbox's window of \(Retention.age(configuration.retention.inboxWindow)): the record of an earlier copy may be gone, so it is not handled blindly (replay it to handle it)"
            try deadLetter(incoming, reason: reason, handler: "inbox", attempts: 1, work, now)
            return (.deadLettered, false)
        }
        // Only while something is held does the ordering key matter before handling: look it up then, once.
        if checkingHeld, try work.isParked(messageID: envelope.messageID) {
            return (.duplicate, true)  // redelivered before its ack
        }
        let heldKey = checkingHeld ? try orderingKey(message, envelope, handlers, work) : nil
        if let heldKey, try work.isBlocked(orderingKey: heldKey) {
            try hold(incoming, key: heldKey, attempts: 0, nextAttemptAt: nil, error: nil, work, now)
            logger.info(
                "message waits behind an earlier one of its instance",
                metadata: ["baton.message_id": "\(envelope.messageID)", "ordering_key": "\(heldKey)"]
            )
            return (.waiting, true)
        }
        do {
            if let failed, failed.messageID == envelope.messageID { throw failed.failure }
            try handle(message, envelope, handlers, isolation: isolation, recordingInbox: !once, work, now)
            return (.handled, false)
        } catch let conflict as any StoreConflict {
            throw conflict  // the batch is run again, no attempt counted
        } catch let needed as Delivery.IsolationNeeded {
            throw needed  // the batch is run again with savepoints, no attempt counted
        } catch {
            let key = checkingHeld ? heldKey : try orderingKey(message, envelope, handlers, work)
            return try firstAttemptFailed(incoming, envelope, handlers, key: key, error: error, work, now)
        }
    }

    /// Runs the handlers and records the message in the inbox: all of it or nothing (``Delivery/handle(_:_:by:in:now:logger:isolation:recordingInbox:)``).
    func handle(
        _ message: any Message,
        _ envelope: Envelope,
        _ handlers: [any NodeHandler],
        isolation: Delivery.Isolation = .savepoint,
        recordingInbox: Bool = true,
        _ work: any UnitOfWork,
        _ now: Date
    ) throws {
        let logger = logger(for: envelope)
        try delivery.handle(
            message,
            envelope,
            by: handlers,
            in: work,
            now: now,
            logger: logger,
            isolation: isolation,
            recordingInbox: recordingInbox
        )
        logger.debug("handlers ran", metadata: ["type": "\(envelope.messageType)"])
    }

    /// The node's logger with a message's ids as metadata, so that what its handlers log names it: its id, its
    /// correlation id and its trace id (from `traceparent`). They come from a metadata provider, worked out only
    /// when a line is logged: a handler may render its metadata on every change (swift-log's stream handler
    /// does: 2% of a process manager's thread), and this runs per message.
    func logger(for envelope: Envelope) -> Logger {
        let ids = Logger.MetadataProvider {
            var metadata: Logger.Metadata = ["baton.message_id": .string(envelope.messageID)]
            if let correlationID = envelope.correlationID { metadata["baton.correlation_id"] = .string(correlationID) }
            if let traceID = envelope.traceID { metadata["baton.trace_id"] = .string(traceID) }
            return metadata
        }
        var logger = self.logger
        logger.handler.metadataProvider = logger.handler.metadataProvider.map { .multiplex([$0, ids]) } ?? ids
        return logger
    }

    /// The instance (or aggregate) a message belongs to, as the first handler that knows it says.
    func orderingKey(
        _ message: any Message,
        _ envelope: Envelope,
        _ handlers: [any NodeHandler],
        _ work: any UnitOfWork
    ) throws -> String? {
        for handler in handlers {
            if let key = try handler.orderingKey(for: message, envelope: envelope, in: work) { return key }
        }
        return nil
    }

    /// Checks a message at the edge and decodes it.
    func prepare(_ incoming: IncomingMessage) -> Prepared {
        // Checked where it arrived from, before a replay's headers could say otherwise.
        if incoming.messageType == Self.drainMarkerType { return drainMarker(incoming) }
        var incoming = incoming
        if incoming.exchange == Routing.deadLetterExchange,
            incoming.routingKey == Self.deliveryLimitQueue(configuration.name)
        {
            incoming.exchange = incoming.headers.removeValue(forKey: BatonHeader.originalExchange) ?? ""
            incoming.routingKey = incoming.headers.removeValue(forKey: BatonHeader.originalRoutingKey) ?? ""
            return .pastDeliveryLimit(incoming)
        }
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
        let received = Envelope(
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
        // An older version is brought up to date before anything looks at its type; a newer one waits.
        let envelope: Envelope
        do {
            envelope = try registry.upcast(received)
        } catch  where error.code == .newerVersion {
            return .postpone(incoming, reason: error.reason)
        } catch {
            return .reject(incoming, reason: "\(error)", stage: "decode")
        }
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

    /// A re-partitioning's marker, taken only straight from a queue the node consumes (through the default
    /// exchange, which only an operator's credential may publish to), naming that queue.
    private func drainMarker(_ incoming: IncomingMessage) -> Prepared {
        let consumed = consumedQueues.withLock { $0 }
        guard incoming.exchange.isEmpty, consumed.contains(incoming.routingKey) else {
            return .reject(
                incoming,
                reason:
                    "a partition drain marker counts only when published straight into a queue this node consumes (the default exchange), not to '\(incoming.exchange)' with '\(incoming.routingKey)'",
                stage: "edge"
            )
        }
        do {
            let marker = try JSONDecoder.baton.decode(PartitionDrained.self, from: incoming.body)
            guard marker.queue == incoming.routingKey else {
                return .reject(
                    incoming,
                    reason: "a drain marker for queue '\(marker.queue)' arrived on '\(incoming.routingKey)'",
                    stage: "edge"
                )
            }
            return .drained(incoming, marker)
        } catch {
            return .reject(incoming, reason: "a drain marker that does not decode: \(error)", stage: "decode")
        }
    }

    /// Records a message the broker gave up on as a dead letter (once: the broker dead-letters at least once),
    /// unless a consumer handled it before it died: then it is a duplicate.
    private func gaveUp(_ incoming: IncomingMessage, _ work: any UnitOfWork, _ now: Date) throws -> MessageOutcome {
        if let messageID = incoming.messageID, try work.hasHandled(messageID, consumer: configuration.name) {
            return .duplicate
        }
        let reason =
            "the broker dead-lettered it after \(configuration.deliveryLimit) deliveries without an acknowledgement (its partition queue's delivery limit): every consumer that held it stopped or died first"
        try deadLetter(
            incoming,
            reason: reason,
            handler: "delivery-limit",
            attempts: configuration.deliveryLimit,
            work,
            now
        )
        logMessageDeadLettered(incoming.messageID ?? "", attempts: configuration.deliveryLimit, reason: reason)
        return .deadLettered
    }
}
