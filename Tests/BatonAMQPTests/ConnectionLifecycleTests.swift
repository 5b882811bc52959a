import Testing

@testable import BatonAMQP

@Suite struct ConnectionLifecycleTests {
    let start = ContinuousClock.now
    var generator = SplitMix(seed: 7)

    func lifecycle(heartbeat: Duration = .seconds(10)) -> ConnectionLifecycle {
        ConnectionLifecycle(
            backoff: .init(initial: .milliseconds(100), maximum: .seconds(2)),
            heartbeat: heartbeat,
            closeTimeout: .seconds(5)
        )
    }

    func connected(at now: ContinuousClock.Instant) -> ConnectionLifecycle {
        var lifecycle = lifecycle()
        let action1 = lifecycle.nextAction(now: now, outstandingConfirms: 0)
        #expect(action1 == .connect)
        let restores2 = lifecycle.didConnect(now: now)
        #expect(restores2 == false, "the first connection restores nothing")
        return lifecycle
    }

    @Test mutating func aFailedFirstConnectionEndsTheLifecycle() {
        var lifecycle = lifecycle()
        let action3 = lifecycle.nextAction(now: start, outstandingConfirms: 0)
        #expect(action3 == .connect)
        let attempt4 = lifecycle.didFailToConnect(now: start, using: &generator)
        #expect(attempt4 == .giveUp)
        let action5 = lifecycle.nextAction(now: start, outstandingConfirms: 0)
        #expect(action5 == .finish)
        #expect(lifecycle.generation == 0)
    }

    @Test mutating func aLostConnectionWaitsItsDelayThenReconnectsAndRestores() throws {
        var lifecycle = connected(at: start)
        let action6 = lifecycle.nextAction(now: start, outstandingConfirms: 0)
        #expect(action6 == .serve)
        #expect(lifecycle.generation == 1)

        let delay = try #require(lifecycle.didLoseConnection(now: start, using: &generator))
        #expect(
            delay >= .milliseconds(50) && delay <= .milliseconds(100),
            "the first delay is within [initial/2, initial]"
        )
        let action7 = lifecycle.nextAction(now: start, outstandingConfirms: 0)
        #expect(action7 == .wait(until: start + delay))
        let action8 = lifecycle.nextAction(now: start + delay / 2, outstandingConfirms: 0)
        #expect(action8 == .wait(until: start + delay))
        let action9 = lifecycle.nextAction(now: start + delay, outstandingConfirms: 0)
        #expect(action9 == .connect)
        let restores10 = lifecycle.didConnect(now: start + delay)
        #expect(restores10 == true, "a reconnect restores topology and consumers")
        #expect(lifecycle.generation == 2, "deliveries of the old connection can no longer be settled")
    }

    @Test mutating func failedAttemptsBackOffExponentiallyUpToTheMaximumAndASuccessResetsThem() {
        var lifecycle = connected(at: start)
        var now = start
        var delays: [Duration] = [lifecycle.didLoseConnection(now: now, using: &generator)!]
        for _ in 0..<6 {
            guard case .wait(let until) = lifecycle.nextAction(now: now, outstandingConfirms: 0) else {
                Issue.record("expected a wait")
                return
            }
            now = until
            let action11 = lifecycle.nextAction(now: now, outstandingConfirms: 0)
            #expect(action11 == .connect)
            guard case .retry(let delay) = lifecycle.didFailToConnect(now: now, using: &generator) else {
                Issue.record("a reconnect that fails is retried")
                return
            }
            delays.append(delay)
        }
        let ceilings: [Duration] = [100, 200, 400, 800, 1600, 2000, 2000].map { .milliseconds($0) }
        for (delay, ceiling) in zip(delays, ceilings) {
            #expect(delay <= ceiling && delay >= ceiling / 2, "\(delay) within [\(ceiling / 2), \(ceiling)]")
        }

        guard case .wait(let until) = lifecycle.nextAction(now: now, outstandingConfirms: 0) else {
            Issue.record("expected a wait")
            return
        }
        let action12 = lifecycle.nextAction(now: until, outstandingConfirms: 0)
        #expect(action12 == .connect)
        _ = lifecycle.didConnect(now: until)
        let afterSuccess = lifecycle.didLoseConnection(now: until, using: &generator)!
        #expect(afterSuccess <= .milliseconds(100), "a success starts the backoff from its initial delay again")
    }

    @Test mutating func aCloseWaitsForOutstandingConfirmsUntilItsDeadline() {
        var lifecycle = connected(at: start)
        let waits13 = lifecycle.closeRequested(now: start)
        #expect(waits13)
        #expect(lifecycle.idleSleep == .milliseconds(20), "a closing connection looks at its deadline often")
        let action14 = lifecycle.nextAction(now: start, outstandingConfirms: 3)
        #expect(action14 == .serve, "confirms may still arrive")
        let action15 = lifecycle.nextAction(now: start + .seconds(4), outstandingConfirms: 1)
        #expect(action15 == .serve)
        let action16 = lifecycle.nextAction(now: start + .seconds(5), outstandingConfirms: 1)
        #expect(action16 == .finish, "at the deadline, whatever is still outstanding")
        let action17 = lifecycle.nextAction(now: start + .seconds(6), outstandingConfirms: 0)
        #expect(action17 == .finish)
    }

    @Test mutating func aCloseWithNothingOutstandingFinishesAtOnceAndASecondCloseWaitsForNothing() {
        var lifecycle = connected(at: start)
        let waits18 = lifecycle.closeRequested(now: start)
        #expect(waits18)
        let waits19 = lifecycle.closeRequested(now: start)
        #expect(waits19 == false, "the second caller is answered at once")
        let action20 = lifecycle.nextAction(now: start, outstandingConfirms: 0)
        #expect(action20 == .finish)
    }

    @Test mutating func aCloseWhileWaitingToReconnectFinishesWithoutConnecting() {
        var lifecycle = connected(at: start)
        lifecycle.didLoseConnection(now: start, using: &generator)
        let waits21 = lifecycle.closeRequested(now: start)
        #expect(waits21)
        let action22 = lifecycle.nextAction(now: start + .seconds(60), outstandingConfirms: 0)
        #expect(action22 == .finish)
    }

    @Test mutating func losingTheConnectionWhileClosingFinishesAndDoesNotReconnect() {
        var lifecycle = connected(at: start)
        let waits23 = lifecycle.closeRequested(now: start)
        #expect(waits23)
        let delay24 = lifecycle.didLoseConnection(now: start, using: &generator)
        #expect(delay24 == nil)
        let action25 = lifecycle.nextAction(now: start, outstandingConfirms: 2)
        #expect(action25 == .finish)
    }

    @Test mutating func aSilentBrokerIsOverdueAfterThreeHeartbeats() {
        var lifecycle = connected(at: start)
        #expect(lifecycle.idleSleep == .seconds(1), "a quarter heartbeat, at most a second")
        #expect(!lifecycle.isHeartbeatOverdue(now: start + .seconds(30)))
        #expect(lifecycle.isHeartbeatOverdue(now: start + .seconds(31)))
        lifecycle.frameReceived(now: start + .seconds(31))
        #expect(!lifecycle.isHeartbeatOverdue(now: start + .seconds(60)), "any frame counts")
        lifecycle.didLoseConnection(now: start + .seconds(60), using: &generator)
        #expect(!lifecycle.isHeartbeatOverdue(now: start + .seconds(600)), "no connection, no heartbeat")
    }

    @Test mutating func withoutHeartbeatsNothingIsOverdueAndTheThreadStillWakesEverySecond() {
        var lifecycle = lifecycle(heartbeat: .zero)
        _ = lifecycle.nextAction(now: start, outstandingConfirms: 0)
        _ = lifecycle.didConnect(now: start)
        #expect(!lifecycle.isHeartbeatOverdue(now: start + .seconds(3600)))
        #expect(lifecycle.idleSleep == .seconds(1), "never a zero poll timeout, which would spin")
    }
}

/// A seeded generator, so the jitter is the same on every run.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
