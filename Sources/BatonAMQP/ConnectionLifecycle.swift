/// The lifecycle of one AMQP connection as a value: when to connect, when to wait out a reconnect delay, when
/// a silent broker counts as gone, and when a requested close may finish. It performs no I/O; the connection's
/// thread tells it what happened and asks it what to do next (``nextAction(now:outstandingConfirms:)``).
///
/// ```
/// starting ──connected──▶ connected ──lost──▶ waiting(until) ──due──▶ reconnecting ──connected──▶ connected
///    │                        │                   │                        │
///    └─failed─▶ closed        └─close─▶ closing   └────────close──────────┴──▶ closed
///                                        │ confirms settled, deadline passed or connection lost
///                                        └──▶ closed
/// ```
///
/// A first connection that fails ends the lifecycle (the caller hears the error); a later one that fails
/// waits out a jittered exponential backoff and tries again, for as long as no close is requested.
struct ConnectionLifecycle {
    enum State: Equatable {
        /// Before the first attempt.
        case starting
        /// Serving the connection.
        case connected
        /// Lost; the next attempt is due at `until`.
        case waiting(until: ContinuousClock.Instant)
        /// The delay is over; the next attempt is due now.
        case reconnecting
        /// A close was requested while connected: publishes in flight may still be confirmed until `deadline`.
        case closing(deadline: ContinuousClock.Instant)
        /// Over: the connection is closed, or was never opened.
        case closed
    }

    /// What the connection's thread does next.
    enum Action: Equatable {
        /// Open a connection; after a successful one report ``didConnect(now:)``, else ``didFailToConnect(now:using:)``.
        case connect
        /// Serve the open connection for one turn (commands, frames, heartbeats).
        case serve
        /// Wait until the instant without a connection, answering commands as not connected.
        case wait(until: ContinuousClock.Instant)
        /// Close the connection politely if one is open, fail what is left, and end.
        case finish
    }

    /// What a failed connection attempt leads to.
    enum FailedAttempt: Equatable {
        /// The first attempt failed: give up, and hand the error to whoever opened the connection.
        case giveUp
        /// Try again after the delay.
        case retry(after: Duration)
    }

    private(set) var state: State = .starting
    /// Counts successful connections; deliveries remember theirs, so a stale settlement is never sent.
    private(set) var generation: UInt64 = 0
    private var backoff: ReconnectBackoff
    private var lastReceivedFrame: ContinuousClock.Instant?
    let heartbeat: Duration
    let closeTimeout: Duration

    init(backoff: AMQPConnection.Configuration.Backoff, heartbeat: Duration, closeTimeout: Duration) {
        self.backoff = ReconnectBackoff(policy: backoff)
        self.heartbeat = heartbeat
        self.closeTimeout = closeTimeout
    }

    /// Whether a connection is open (serving, or closing with confirms outstanding).
    var isConnected: Bool {
        switch state {
        case .connected, .closing: true
        case .starting, .waiting, .reconnecting, .closed: false
        }
    }

    /// The next step, given the clock and the publishes still awaiting their confirm.
    mutating func nextAction(now: ContinuousClock.Instant, outstandingConfirms: Int) -> Action {
        switch state {
        case .starting, .reconnecting:
            return .connect
        case .connected:
            return .serve
        case .waiting(let until):
            guard now >= until else { return .wait(until: until) }
            state = .reconnecting
            return .connect
        case .closing(let deadline):
            guard outstandingConfirms == 0 || now >= deadline else { return .serve }
            state = .closed
            return .finish
        case .closed:
            return .finish
        }
    }

    /// A connection attempt succeeded. Returns whether it is a reconnect (its topology and consumers must be
    /// restored).
    mutating func didConnect(now: ContinuousClock.Instant) -> Bool {
        precondition(state == .starting || state == .reconnecting, "connected while \(state)")
        let isReconnect = state == .reconnecting
        state = .connected
        generation += 1
        lastReceivedFrame = now
        backoff.reset()
        return isReconnect
    }

    /// A connection attempt failed.
    mutating func didFailToConnect<R: RandomNumberGenerator>(
        now: ContinuousClock.Instant,
        using generator: inout R
    ) -> FailedAttempt {
        precondition(state == .starting || state == .reconnecting, "failed to connect while \(state)")
        if state == .starting {
            state = .closed
            return .giveUp
        }
        let delay = backoff.nextDelay(using: &generator)
        state = .waiting(until: now + delay)
        return .retry(after: delay)
    }

    /// The open connection broke. Returns the delay before the next attempt, or `nil` when a close was already
    /// requested (nothing is left to wait for).
    @discardableResult
    mutating func didLoseConnection<R: RandomNumberGenerator>(
        now: ContinuousClock.Instant,
        using generator: inout R
    ) -> Duration? {
        switch state {
        case .connected:
            let delay = backoff.nextDelay(using: &generator)
            state = .waiting(until: now + delay)
            lastReceivedFrame = nil
            return delay
        case .closing:
            state = .closed
            lastReceivedFrame = nil
            return nil
        case .starting, .waiting, .reconnecting, .closed:
            return nil
        }
    }

    /// Someone asked to close. Returns `false` when a close is already under way (the caller need not wait
    /// for anything more).
    mutating func closeRequested(now: ContinuousClock.Instant) -> Bool {
        switch state {
        case .connected:
            state = .closing(deadline: now + closeTimeout)
            return true
        case .starting, .waiting, .reconnecting:
            state = .closed
            return true
        case .closing, .closed:
            return false
        }
    }

    /// Any frame arrived (heartbeats included).
    mutating func frameReceived(now: ContinuousClock.Instant) {
        lastReceivedFrame = now
    }

    /// Whether the broker has been silent for three heartbeat intervals: time to read once more, and to give
    /// the connection up if nothing comes.
    func isHeartbeatOverdue(now: ContinuousClock.Instant) -> Bool {
        guard heartbeat > .zero, isConnected, let lastReceivedFrame else { return false }
        return now - lastReceivedFrame > heartbeat * 3
    }

    /// How long the thread may sleep while connected and idle: short enough to notice a missed heartbeat in
    /// time, shorter still while closing (the confirms that are awaited arrive on the socket, which wakes the
    /// thread, but the deadline does not).
    var idleSleep: Duration {
        if case .closing = state { return .milliseconds(20) }
        return heartbeat > .zero ? min(heartbeat / 4, .seconds(1)) : .seconds(1)
    }
}
