/// Exponential backoff with full jitter: attempt `n` waits a random time in `[d/2, d]` where
/// `d = min(initial * 2^n, maximum)`.
struct ReconnectBackoff {
    let policy: AMQPConnection.Configuration.Backoff
    private(set) var attempt = 0

    init(policy: AMQPConnection.Configuration.Backoff) {
        self.policy = policy
    }

    /// The delay before the next attempt; each call counts one more attempt.
    mutating func nextDelay<R: RandomNumberGenerator>(using generator: inout R) -> Duration {
        let ceiling = ceilingDelay(forAttempt: attempt)
        attempt += 1
        let nanoseconds = ceiling.nanoseconds
        return .nanoseconds(Int64.random(in: (nanoseconds / 2)...nanoseconds, using: &generator))
    }

    /// Called after a successful connection: the next loss starts from `initial` again.
    mutating func reset() {
        attempt = 0
    }

    func ceilingDelay(forAttempt attempt: Int) -> Duration {
        let initial = policy.initial.nanoseconds
        let maximum = policy.maximum.nanoseconds
        let shift = min(attempt, 40)
        let (scaled, overflow) = initial.multipliedReportingOverflow(by: Int64(1) << shift)
        return .nanoseconds(overflow ? maximum : min(scaled, maximum))
    }
}

extension Duration {
    /// The whole duration in nanoseconds (saturating).
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : whole + attoseconds / 1_000_000_000
    }

    /// The duration in whole milliseconds, rounded up, for `poll(2)`.
    var pollMilliseconds: Int32 {
        let milliseconds = (nanoseconds + 999_999) / 1_000_000
        return Int32(clamping: milliseconds)
    }
}
