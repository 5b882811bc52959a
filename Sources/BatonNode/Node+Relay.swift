import Baton
import Foundation
import Logging

/// The relay: publishes the outbox in order with publisher confirms, up to ``Node/Configuration/relayWindow``
/// rounds at once; what the broker confirmed is deleted by the node's next transaction (``SentMarks``).
extension Node {
    func relayLoop() async {
        var schedule = RelaySchedule(limit: configuration.relayBatchSize, now: .now)
        let window = max(1, configuration.relayWindow)
        await withDiscardingTaskGroup { publishing in
            while true {
                await settleEndedRounds(&schedule)
                let (inFlight, full) = relayRounds.withLock { ($0.count > 0, $0.count >= window) }
                if full {  // a round's end wakes the loop
                    await waitFor(relay.signal, orUntil: nil)
                    continue
                }
                let stopping = relay.isStopping
                let handed = handover.withLock { $0.take(upTo: schedule.limit) }
                var action = schedule.next(
                    handedOver: handed.rows,
                    overflowed: handed.overflowed,
                    stopping: stopping,
                    roundsInFlight: inFlight,
                    now: .now,
                    date: Date()
                )
                let readTable = action == .readTable
                if readTable {
                    // The table still has the rows of the rounds in flight: it is read once they have ended (the
                    // handed-over rows it returns as well).
                    if inFlight {
                        await waitFor(relay.signal, orUntil: nil)
                        continue
                    }
                    do {
                        try await writeSentMarks()  // a read must not return a row already sent
                        let limit = schedule.limit
                        let (rows, nextAttempt) = try await store.claimOutbox(limit: limit, readyAt: Date())
                        // The read may return rows of a commit not on the disk yet (the node's latest): none goes
                        // out before it is.
                        if !rows.isEmpty { try await store.waitForDisk() }
                        action = schedule.tableRead(
                            rows,
                            nextAttempt: nextAttempt,
                            stopping: stopping,
                            now: .now,
                            date: Date()
                        )
                        handover.withLock { [readThrough = schedule.readThrough] in $0.drop(through: readThrough) }
                    } catch {
                        logger.error("outbox read failed", metadata: ["error": "\(error)"])
                        if stopping { return }
                        try? await Task.sleep(for: .seconds(1))
                        continue
                    }
                }
                var rows: [OutboxMessage]
                switch action {
                case .finish: return  // after a table read, which wrote the marks
                case .readTable: continue
                case .wait(let until):
                    let marksDue = sentMarks.withLock { $0.oldest }.map { $0 + SentMarks.delay }
                    if let marksDue, marksDue <= .now {
                        // No transaction of the node came to delete them: the relay does.
                        do { try await writeSentMarks() } catch {
                            logger.error("outbox mark failed; tried again", metadata: ["error": "\(error)"])
                            await waitFor(relay.signal, orUntil: { try? await Task.sleep(for: .seconds(1)) })
                        }
                    } else {
                        await waitFor(relay.signal, orUntil: Self.sleep(until: until, orUntil: marksDue))
                    }
                    continue
                case .publish(let ready): rows = ready
                }
                if !readTable {
                    let free = await handedOverRowsFree(rows, &schedule)
                    if free.waitForARound { await waitFor(relay.signal, orUntil: nil) }
                    if free.rows.isEmpty { continue }
                    rows = free.rows
                }
                relayRounds.withLock { $0.start(rows) }
                publishing.addTask { [rows] in
                    let started = ContinuousClock.now
                    let outcomes = await self.publishInOrder(rows)
                    self.relayRounds.withLock { $0.end(rows, outcomes, after: ContinuousClock.now - started) }
                    self.relay.wake()
                }
            }
        }
    }

    /// Of rows handed over (in order), those that may go now. A row waits for every earlier row of its order
    /// scope to be confirmed: one in a round in flight (it goes back to the handover, and the relay waits for a
    /// round to end when no row is free), or an unsent one in the table, which handed-over rows skip — waiting out
    /// a retry, or another process's (it waits there: the table is read again).
    private func handedOverRowsFree(
        _ rows: [OutboxMessage],
        _ schedule: inout RelaySchedule
    ) async -> (rows: [OutboxMessage], waitForARound: Bool) {
        var behind: [OutboxMessage] = []
        var free: [OutboxMessage] = []
        let inFlight = relayRounds.withLock { rounds in
            for row in rows {
                if rounds.isInFlight(row.orderScope) { behind.append(row) } else { free.append(row) }
            }
            return rounds.sequences
        }
        if !behind.isEmpty { handover.withLock { $0.putBack(behind) } }
        guard !free.isEmpty else { return ([], true) }
        do {
            // Rows in flight are as good as sent here: none is of these rows' scopes.
            let sent = Set(sentMarks.withLock { $0.pending.sequences }).union(inFlight)
            let held = try await store.read { [free] in try $0.outboxRowsHeldBack(free, sent: sent) }
            if held.isEmpty { return (free, false) }
            schedule.roundFailed()  // they wait in the table; a read returns them once free
            return (free.filter { !held.contains($0.sequence) }, false)
        } catch {
            logger.error("outbox read failed", metadata: ["error": "\(error)"])
            schedule.roundFailed()
            return ([], false)
        }
    }

    /// Takes the outcomes of the rounds that ended: the confirmed rows wait for deletion, the failed ones are
    /// marked for their retry (and the table read again).
    private func settleEndedRounds(_ schedule: inout RelaySchedule) async {
        for round in relayRounds.withLock({ $0.takeEnded() }) {
            metrics.publishConfirmDuration.record(duration: round.duration)
            var sent: [Int64] = []
            var failed: [Int64] = []
            var refused: [Int64] = []
            var firstError: String?
            for (message, outcome) in zip(round.rows, round.outcomes) {
                switch outcome {
                case .confirmed:
                    sent.append(message.sequence)
                case .refused(let reason):
                    refused.append(message.sequence)
                    firstError = firstError ?? reason
                case .failed(let reason), .unknown(let reason):
                    failed.append(message.sequence)
                    firstError = firstError ?? reason
                case nil:
                    break  // behind a row of its scope that failed: it waits in the table as that one does
                }
            }
            metrics.published.increment(by: sent.count)
            metrics.publishFailures.increment(by: failed.count + refused.count)
            sentMarks.withLock { $0.add(sent, at: .now) }
            if let firstError {
                do {
                    try await writeSentMarks(failed: failed, refused: refused)
                } catch {
                    logger.error("outbox mark failed; the messages will be sent again", metadata: ["error": "\(error)"])
                }
                schedule.roundFailed()  // the failed rows wait out their retry delay in the table
                logger.warning(
                    "relay publish failed; retrying those messages later",
                    metadata: ["failed": "\(failed.count + refused.count)", "error": "\(firstError)"]
                )
            }
        }
    }

    /// Deletes the sent rows that no transaction of the node has deleted yet and records failed publishes, in
    /// a transaction of the relay's own. Without an fsync: a deletion lost to a power failure only re-sends,
    /// under the same id.
    private func writeSentMarks(failed: [Int64] = [], refused: [Int64] = []) async throws {
        let sent = sentMarks.withLock { $0.pending }
        guard !sent.sequences.isEmpty || !failed.isEmpty || !refused.isEmpty else { return }
        try await store.writeWithoutWaitingForDisk { work in
            try work.removeSent(sent.sequences)
            try work.markFailed(failed, at: Date())
            try work.markFailed(refused, at: Date(), refused: true)
        }
        sentMarks.withLock { $0.remove(through: sent, at: .now) }
    }

    /// A sleep until a retry is due (wall-clock time, not business time) or until the sent marks are due
    /// (monotonic), whichever comes first; or none.
    private static func sleep(
        until date: Date?,
        orUntil marksDue: ContinuousClock.Instant?
    ) -> (@Sendable () async -> Void)? {
        let delays = [date.map { Duration.seconds($0.timeIntervalSinceNow) }, marksDue.map { $0 - .now }]
        guard let delay = delays.compactMap({ $0 }).min() else { return nil }
        return { try? await Task.sleep(for: max(.milliseconds(1), delay)) }
    }

    /// Publishes rows (in sequence order) so that none goes out before an earlier one of its order scope is
    /// confirmed: in waves, each with at most one row per scope, a wave after the one before it is confirmed.
    /// A row whose scope had a row fail in an earlier wave is not published (its outcome is `nil`). Within a
    /// wave, order does not matter, so rows the broker refused before go on their own (see ``publish(_:)``).
    private func publishInOrder(_ rows: [OutboxMessage]) async -> [PublishOutcome?] {
        var outcomes = [PublishOutcome?](repeating: nil, count: rows.count)
        let scopes = rows.map(\.orderScope)
        var failedScopes: Set<String> = []
        var remaining = Array(rows.indices)
        while !remaining.isEmpty {
            var wave: [Int] = []
            var later: [Int] = []
            var inWave: Set<String> = []
            for index in remaining where !failedScopes.contains(scopes[index]) {
                if inWave.insert(scopes[index]).inserted { wave.append(index) } else { later.append(index) }
            }
            for (index, outcome) in zip(wave, await publish(wave.map { rows[$0] })) {
                outcomes[index] = outcome
                if outcome != .confirmed { failedScopes.insert(scopes[index]) }
            }
            remaining = later
        }
        return outcomes
    }

    /// Publishes outbox rows: the ones never refused together, each row the broker refused before on its own.
    /// When the broker refuses one row of a batch it closes the channel over all of them, without saying which:
    /// those of unknown outcome go again one by one, so each gets its own answer.
    private func publish(_ rows: [OutboxMessage]) async -> [PublishOutcome] {
        guard !rows.isEmpty else { return [] }
        let outgoing = rows.map { row in
            var envelope = row.envelope
            envelope.headers[BatonHeader.sequence] = String(row.sequence)
            return OutgoingMessage(exchange: row.exchange, routingKey: row.routingKey, envelope: envelope)
        }
        let spans =
            NodeTracing.tracer.map { tracer in
                rows.map { NodeTracing.publish($0, node: configuration.name, tracer: tracer) }
            } ?? []
        let together = rows.indices.filter { !rows[$0].wasRefused }
        var outcomes = [PublishOutcome](repeating: .confirmed, count: rows.count)
        for (index, outcome) in zip(together, await transport.publish(together.map { outgoing[$0] })) {
            outcomes[index] = outcome
        }
        for index in rows.indices where rows[index].wasRefused || outcomes[index].isUnknown {
            outcomes[index] = await transport.publish([outgoing[index]])[0]
        }
        for (span, outcome) in zip(spans, outcomes) { NodeTracing.end(span, published: outcome) }
        return outcomes
    }

    /// Waits until the outbox is empty (used only by the fault-injection hook).
    func waitForEmptyOutbox() async {
        while (try? await store.read({ try $0.pendingOutboxCount() })) != 0 {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }
}

/// The outbox rows committed by the node's own transactions, waiting for the relay (they are in the table
/// too: this only saves reading them back).
struct Handover {
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

    /// Returns rows taken that cannot go out yet to the front, in their order (unless rows were dropped since:
    /// then the table has them).
    mutating func putBack(_ taken: [OutboxMessage]) {
        guard !overflowed else { return }
        rows.insert(contentsOf: taken, at: 0)
    }

    /// Forgets the rows a table read returned (up to and including `sequence`).
    mutating func drop(through sequence: Int64) {
        rows.removeAll { $0.sequence <= sequence }
    }
}

/// The relay's publish rounds whose confirms are outstanding (by the order scopes of their rows), and the
/// outcomes of those that ended, for the relay loop to settle.
struct RelayRounds {
    struct Ended {
        var rows: [OutboxMessage]
        /// Per row; `nil` for a row not published (behind a failed row of its scope).
        var outcomes: [PublishOutcome?]
        var duration: Duration
    }

    /// Rounds started and not settled.
    private(set) var count = 0
    /// The rows in rounds not settled.
    private(set) var sequences: Set<Int64> = []
    /// Rows in rounds not settled, by order scope.
    private var scopes: [String: Int] = [:]
    private var ended: [Ended] = []

    /// Whether a row of `scope` is in a round not settled yet.
    func isInFlight(_ scope: String) -> Bool { scopes[scope] != nil }

    mutating func start(_ rows: [OutboxMessage]) {
        count += 1
        for row in rows {
            scopes[row.orderScope, default: 0] += 1
            sequences.insert(row.sequence)
        }
    }

    mutating func end(_ rows: [OutboxMessage], _ outcomes: [PublishOutcome?], after duration: Duration) {
        ended.append(Ended(rows: rows, outcomes: outcomes, duration: duration))
    }

    /// The rounds that ended since the last call; their scopes are free from now on.
    mutating func takeEnded() -> [Ended] {
        defer { ended = [] }
        for round in ended {
            count -= 1
            for row in round.rows {
                sequences.remove(row.sequence)
                scopes[row.orderScope, default: 1] -= 1
                if scopes[row.orderScope] == 0 { scopes[row.orderScope] = nil }
            }
        }
        return ended
    }
}

extension PublishOutcome {
    fileprivate var isUnknown: Bool {
        if case .unknown = self { return true }
        return false
    }
}
