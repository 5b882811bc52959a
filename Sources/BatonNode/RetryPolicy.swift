/// How often a failing handler is tried, and how long to wait between tries, before its message is
/// dead-lettered.
public struct RetryPolicy: Sendable, Hashable {
    /// Attempts in all, the first included (at least 1).
    public var maxAttempts: Int
    /// The wait before the second attempt; it doubles each time.
    public var initialDelay: Duration
    /// The longest wait.
    public var maximumDelay: Duration

    /// Creates a policy.
    public init(maxAttempts: Int = 5, initialDelay: Duration = .milliseconds(50), maximumDelay: Duration = .seconds(2))
    {
        precondition(maxAttempts >= 1, "maxAttempts must be at least 1")
        self.maxAttempts = maxAttempts
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
    }

    /// The wait after failed attempt `attempt` (1-based), or `nil` when no attempt is left.
    public func delay(afterAttempt attempt: Int) -> Duration? {
        guard attempt < maxAttempts else { return nil }
        var delay = initialDelay
        for _ in 1..<attempt {
            delay = delay * 2
            if delay >= maximumDelay { return maximumDelay }
        }
        return min(delay, maximumDelay)
    }
}
