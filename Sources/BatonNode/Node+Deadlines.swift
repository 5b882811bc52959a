import Baton
import Foundation
import Logging

/// Stored deadlines in business time: timers, and the next attempts of held messages.
extension Node {
    /// Acts on what is due — timers, then held messages — and sleeps on the business clock until the next
    /// deadline, or until a batch signals an earlier one (``deadlineLoopWakesAt``) or a held message.
    func deadlineLoop() async {
        while !deadlines.isStopping {
            deadlineLoopWakesAt.withLock { $0 = .distantPast }
            let now = businessNow()
            do {
                let (due, next) = try await store.read { work in
                    let due =
                        try !work.dueTimers(before: now, limit: 1).isEmpty
                        || !work.dueParkedMessages(before: now, limit: 1).isEmpty
                    guard !due else { return (true, Date?.none) }
                    let deadlines = [try work.nextTimer()?.nextAttemptAt, try work.nextParkedAttempt()]
                    return (false, deadlines.compactMap { $0 }.min())
                }
                // Claimed again in the transaction that acts on them: a replica sharing the store may have
                // taken some meanwhile.
                var acted = 0
                if due { acted = try await fireDueTimers(now: now) + retryDueHeldMessages(now: now) }
                health.withLock { $0.deadlineFailure = nil }
                if acted > 0 { continue }
                var untilDue: (@Sendable () async -> Void)?
                if due {
                    untilDue = { try? await Task.sleep(for: .milliseconds(100)) }  // a replica holds them
                } else if let next {
                    let timeSource = self.timeSource
                    untilDue = { try? await timeSource.sleep(until: next) }
                    deadlineLoopWakesAt.withLock { $0 = next }
                } else {
                    deadlineLoopWakesAt.withLock { $0 = .distantFuture }
                }
                await waitFor(deadlines.signal, orUntil: untilDue)
            } catch let conflict as any StoreConflict {
                logger.warning(
                    "deadline round lost a race with another transaction; tried again",
                    metadata: ["error": "\(conflict)"]
                )
                try? await Task.sleep(for: .milliseconds(Int.random(in: 1...50)))
            } catch {
                health.withLock { $0.deadlineFailure = "\(error)" }
                logger.error("deadline round failed", metadata: ["error": "\(error)"])
                await waitFor(deadlines.signal, orUntil: { try? await Task.sleep(for: .seconds(1)) })
            }
        }
    }

    /// Fires the timers due at `now` (100 at most) in one transaction. A timer whose handler throws is retried
    /// on its own with the node's retry policy (its next attempt stored with it, in business time), then
    /// dead-lettered and parked: it never holds up the other timers.
    ///
    /// As a batch of messages does, the round runs first without savepoints; if a timer's handler fails, the
    /// transaction is rolled back and the round runs again at once with each timer in its own savepoint, the
    /// failed timer failing there with what its handler threw (it does not run twice).
    /// - Returns: How many it claimed.
    func fireDueTimers(now: Date) async throws -> Int {
        let timers = try await isolatingFailures { try await fireDueTimers(now: now, isolation: $0, failed: $1) }
        metrics.fired(timers)
        return timers.count
    }

    private func fireDueTimers(
        now: Date,
        isolation: Delivery.Isolation,
        failed: Delivery.IsolationNeeded?
    ) async throws -> [(outcome: TimerOutcome, lag: TimeInterval)] {
        try await commit { [self] work in
            var timers: [(outcome: TimerOutcome, lag: TimeInterval)] = []
            for timer in try work.claimDueTimers(before: now, limit: 100) {
                let key = instanceOrderingKey(processManager: timer.processManager, instanceID: timer.instanceID)
                let lag = now.timeIntervalSince(timer.dueAt)
                if try work.isBlocked(orderingKey: key) {
                    // A message of its instance is held (retrying, or dead-lettered): the timer waits behind it.
                    try work.deferTimer(timer, to: now.adding(configuration.retry.maximumDelay).roundedToMilliseconds)
                    timers.append((.waiting, lag))
                    continue
                }
                let id = ProcessTrigger.timer(name: timer.name, dueAt: timer.dueAt)
                    .messageID(processManager: timer.processManager, instanceID: timer.instanceID)
                do {
                    if let failed, failed.messageID == id { throw failed.failure }
                    try isolation.run(id, in: work) {
                        for handler in self.handlers {
                            try handler.fire(timer, in: work, now: now, logger: self.logger)
                        }
                    }
                    timers.append((.fired, lag))
                } catch let conflict as any StoreConflict {
                    throw conflict  // the round is run again, no attempt counted
                } catch let needed as Delivery.IsolationNeeded {
                    throw needed  // the round is run again with savepoints, no attempt counted
                } catch {
                    timers.append((try timerFailed(timer, error: error, work, now), lag))
                }
            }
            return timers
        }
    }

    private func timerFailed(
        _ timer: DueTimer,
        error: any Error,
        _ work: any UnitOfWork,
        _ now: Date
    ) throws -> TimerOutcome {
        let attempts = timer.attempts + 1
        var metadata: Logger.Metadata = [
            "baton.process_id": "\(timer.instanceID)", "timer": "\(timer.name)", "attempts": "\(attempts)",
            "error": "\(error)",
        ]
        if error is NewerStateError {
            // Written by a later release: this one leaves the timer for it, without counting an attempt.
            try work.deferTimer(timer, to: now.adding(configuration.retry.maximumDelay).roundedToMilliseconds)
            logger.warning("timer postponed: its instance is newer than this node", metadata: metadata)
            return .postponed
        }
        if let delay = retryDelay(after: error, attempt: attempts) {
            try work.retryTimer(timer, at: now.adding(delay).roundedToMilliseconds)
            metadata["retry_in"] = "\(delay)"
            logger.warning("timer handler failed; retrying", metadata: metadata)
            return .retrying
        }
        let trigger = ProcessTrigger.timer(name: timer.name, dueAt: timer.dueAt)
        let body = try WireJSON.encode(
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
        return .deadLettered
    }
}

extension Node {
    /// Samples the store's counts into gauges every ``Configuration/storeSampling`` (when set) until the node
    /// stops.
    func samplingLoop() async {
        guard let interval = configuration.storeSampling else {
            while !sampling.isStopping { await sampling.signal.wait() }
            return
        }
        var reported: Set<[String]> = []
        while !sampling.isStopping {
            let now = Date()
            let idleSince = now.adding(.zero - configuration.stuckAfter)
            do {
                let statistics = try await store.read { try $0.statistics(idleSince: idleSince) }
                reported = metrics.sampled(statistics, at: now, previously: reported)
                lastSample.withLock { $0 = StoreSample(statistics: statistics, sampledAt: now) }
            } catch {
                logger.warning("store sampling failed", metadata: ["error": "\(error)"])
            }
            await waitFor(sampling.signal, orUntil: { try? await Task.sleep(for: interval) })
        }
    }
}

/// The body of a timer's dead letter: which timer it is.
struct TimerDeadLetter: Codable {
    var processManager: String
    var instanceID: String
    var name: String
    var dueAt: Date
}
