import Baton
import Foundation
import Logging

/// The relay: publishes the outbox in order with publisher confirms and marks what the broker confirmed.
extension Node {
    func relayLoop() async {
        var schedule = RelaySchedule(limit: configuration.relayBatchSize, now: .now)
        var holds = KeyHolds()
        while true {
            let stopping = relay.isStopping
            let handed = handover.withLock { $0.take(upTo: schedule.limit) }
            var action = schedule.next(
                handedOver: handed.rows,
                overflowed: handed.overflowed,
                stopping: stopping,
                now: .now,
                date: Date()
            )
            if action == .readTable {
                do {
                    let limit = schedule.limit
                    let (rows, nextAttempt) = try await store.claimOutbox(limit: limit, readyAt: Date())
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
            let rows: [OutboxMessage]
            switch action {
            case .finish: return
            case .readTable: continue
            case .wait(let until):
                await waitFor(relay.signal, orUntil: Self.sleep(until: until))
                continue
            case .publish(let ready): rows = ready
            }
            // A row whose key has an earlier row waiting out a failure stays behind it.
            let (pending, behind) = holds.split(rows, now: .now)
            let started = ContinuousClock.now
            let outcomes = await publish(pending)
            metrics.publishConfirmDuration.record(duration: ContinuousClock.now - started)
            var sent: [Int64] = []
            var failed: [Int64] = []
            var refused: [Int64] = []
            var firstError: String?
            for (message, outcome) in zip(pending, outcomes) {
                holds.record(message, confirmed: outcome == .confirmed, now: .now)
                switch outcome {
                case .confirmed:
                    sent.append(message.sequence)
                case .refused(let reason):
                    refused.append(message.sequence)
                    firstError = firstError ?? reason
                case .failed(let reason), .unknown(let reason):
                    failed.append(message.sequence)
                    firstError = firstError ?? reason
                }
            }
            for message in behind { holds.keepBehind(message) }
            metrics.published.increment(by: sent.count)
            metrics.publishFailures.increment(by: failed.count + refused.count)
            do {
                // Without an fsync: a deletion lost to a power failure only re-sends, under the same id.
                // A row kept behind its key waits out a retry delay as a failed one does.
                try await store.writeWithoutWaitingForDisk { [sent, failed, refused, behind] work in
                    try work.removeSent(sent)
                    try work.markFailed(failed + behind.map(\.sequence), at: Date())
                    try work.markFailed(refused, at: Date(), refused: true)
                }
            } catch {
                logger.error("outbox mark failed; the messages will be sent again", metadata: ["error": "\(error)"])
                schedule.roundFailed()
            }
            if let firstError {
                schedule.roundFailed()  // the failed rows wait out their retry delay in the table
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
    private func publish(_ rows: [OutboxMessage]) async -> [PublishOutcome] {
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

/// The rows of each partition key that failed to go out (or wait behind one that did), in this process: a later
/// row of such a key to the same place waits until every earlier one is confirmed, so that the relay never lets a
/// message overtake an earlier one of its key — a partitioned receiver takes a key's messages in the order they
/// were published. The same place: a command's service (commands are routed by their name, `<service>.<Name>`),
/// or an event's exchange (any service may listen). A command no service takes holds back later commands of its
/// key to that service, not those to others.
///
/// Kept in memory, so it holds nothing back after a restart. A hold lapses a minute after its key's last failure
/// here: a failed row is tried at least every 30 s while it exists, and on a shared store another replica's relay
/// may send it (and this one never hear of it).
struct KeyHolds {
    private struct Hold {
        var sequences: Set<Int64>
        var lastFailure: ContinuousClock.Instant
    }

    private var holds: [String: Hold] = [:]
    static let lapse = Duration.seconds(60)

    /// The rows that may go now, and the rows of a held key that must stay behind its earliest waiting row.
    mutating func split(
        _ rows: [OutboxMessage],
        now: ContinuousClock.Instant
    ) -> (ready: [OutboxMessage], behind: [OutboxMessage]) {
        guard !holds.isEmpty else { return (rows, []) }
        holds = holds.filter { now - $0.value.lastFailure < Self.lapse }
        var ready: [OutboxMessage] = []
        var behind: [OutboxMessage] = []
        for row in rows {
            if let earliest = holds[Self.scope(of: row)]?.sequences.min(), row.sequence > earliest {
                behind.append(row)
            } else {
                ready.append(row)
            }
        }
        return (ready, behind)
    }

    /// Records a published row's outcome: a confirmed one no longer holds its key back, a failed one does.
    mutating func record(_ row: OutboxMessage, confirmed: Bool, now: ContinuousClock.Instant) {
        let key = Self.scope(of: row)
        if confirmed {
            guard holds[key]?.sequences.remove(row.sequence) != nil else { return }
            if holds[key]?.sequences.isEmpty == true { holds[key] = nil }
        } else {
            holds[key, default: Hold(sequences: [], lastFailure: now)].sequences.insert(row.sequence)
            holds[key]?.lastFailure = now
        }
    }

    /// Records a row kept behind its key's earliest waiting row: it holds the key back too (a row of it that
    /// comes later must not pass it), without putting the hold off.
    mutating func keepBehind(_ row: OutboxMessage) {
        holds[Self.scope(of: row)]?.sequences.insert(row.sequence)
    }

    /// What a row keeps its order within: its partition key, and where it goes.
    static func scope(of row: OutboxMessage) -> String {
        let destination =
            switch row.exchange {
            case Routing.commandExchange: "\(row.exchange) \(row.routingKey.prefix { $0 != "." })"
            case Routing.nodeExchange, Routing.deadLetterExchange: "\(row.exchange) \(row.routingKey)"
            default: row.exchange
            }
        return "\(destination) \(row.envelope.partitionKey)"
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

    /// Forgets the rows a table read returned (up to and including `sequence`).
    mutating func drop(through sequence: Int64) {
        rows.removeAll { $0.sequence <= sequence }
    }
}

extension PublishOutcome {
    fileprivate var isUnknown: Bool {
        if case .unknown = self { return true }
        return false
    }
}
