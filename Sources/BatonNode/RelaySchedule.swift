import Foundation

/// When the outbox relay reads the outbox table, publishes, waits or finishes: a state machine without I/O.
/// The relay loop tells it what happened and does what it returns.
///
/// The rows a node's own transactions commit are handed to the relay in memory; the table is read at start
/// (rows an earlier run left), when the handover overflowed, when a retry is due, after a failed round, at
/// least once a second (rows another process queued) and once more when the node stops. A table read returns
/// rows up to some sequence: handed-over copies of those are skipped, so no row goes out twice from one node.
///
/// A read waits for the publish rounds in flight to end (the table still has their rows). The read of every
/// second is the only one that may wait for that: while rounds are in flight it lets handed-over rows go on for up
/// to ``readDeferral`` more, so that a slow confirm does not stop the relay each second.
struct RelaySchedule {
    /// What the relay does next.
    enum Action: Equatable {
        /// Read the oldest pending rows from the table, and when the next retry is due.
        case readTable
        /// Publish these rows, in order.
        case publish([OutboxMessage])
        /// Nothing to publish: wait for new rows, or until this wall-clock time.
        case wait(until: Date)
        /// The node is stopping and everything that could be sent was sent (rows waiting out a retry stay
        /// for the next start).
        case finish
    }

    /// Rows per read and per publish round.
    let limit: Int
    private var mustRead = true
    private var lastRead: ContinuousClock.Instant
    private var nextAttempt: Date?
    /// The highest sequence a table read returned.
    private(set) var readThrough: Int64 = 0
    /// How long the read of every second waits for a moment with no publish round in flight.
    static let readDeferral = Duration.seconds(5)

    /// A schedule for a relay that starts at `now`.
    init(limit: Int, now: ContinuousClock.Instant) {
        precondition(limit > 0, "a relay publishes at least one row per round")
        self.limit = limit
        self.lastRead = now
    }

    /// The next action, given the rows committed transactions handed over since the last call.
    /// - Parameters:
    ///   - handedOver: The rows, oldest first.
    ///   - overflowed: Rows were dropped from the handover since the last call (the table has them).
    ///   - stopping: The node is stopping.
    ///   - roundsInFlight: Publish rounds have not ended.
    ///   - now: The monotonic clock.
    ///   - date: The wall clock (retry times are stored in it).
    mutating func next(
        handedOver: [OutboxMessage],
        overflowed: Bool,
        stopping: Bool,
        roundsInFlight: Bool = false,
        now: ContinuousClock.Instant,
        date: Date
    ) -> Action {
        let pending = handedOver.filter { $0.sequence > readThrough }
        let sinceRead = now - lastRead
        if overflowed || (stopping && pending.isEmpty) || nextAttempt.map({ $0 <= date }) == true
            || (sinceRead > .seconds(1) && (!roundsInFlight || sinceRead > .seconds(1) + Self.readDeferral))
        {
            mustRead = true
        }
        return mustRead ? .readTable : after(pending, stopping: stopping, date: date)
    }

    /// What to do with the rows a table read returned.
    /// - Parameters:
    ///   - rows: The oldest pending rows, at most ``limit``.
    ///   - nextAttempt: When the earliest row waiting out a retry may be tried again.
    ///   - stopping: The node is stopping.
    ///   - now: The monotonic clock.
    ///   - date: The wall clock.
    mutating func tableRead(
        _ rows: [OutboxMessage],
        nextAttempt: Date?,
        stopping: Bool,
        now: ContinuousClock.Instant,
        date: Date
    ) -> Action {
        self.nextAttempt = nextAttempt
        mustRead = rows.count == limit  // a full page: more may wait
        lastRead = now
        readThrough = max(readThrough, rows.last?.sequence ?? 0)
        return after(rows, stopping: stopping, date: date)
    }

    /// A publish round or the marks after it failed: the rows wait in the table, read it again.
    mutating func roundFailed() {
        mustRead = true
    }

    private func after(_ pending: [OutboxMessage], stopping: Bool, date: Date) -> Action {
        if !pending.isEmpty { return .publish(pending) }
        if mustRead { return .readTable }
        if stopping { return .finish }
        return .wait(until: min(nextAttempt ?? .distantFuture, date.addingTimeInterval(1)))
    }
}
