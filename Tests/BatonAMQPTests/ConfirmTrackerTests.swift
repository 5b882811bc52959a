import Testing

@testable import BatonAMQP

@Suite struct ConfirmTrackerTests {
    @Test func tagsStartAtOneAndCountUp() {
        var tracker = ConfirmTracker<String>()
        #expect(tracker.register("a") == 1)
        #expect(tracker.register("b") == 2)
        #expect(tracker.outstanding == 2)
    }

    @Test func multipleSettlesEverythingUpToTheTag() {
        var tracker = ConfirmTracker<Int>()
        for value in 1...5 { _ = tracker.register(value) }
        #expect(tracker.settle(deliveryTag: 3, multiple: true) == [1, 2, 3])
        #expect(tracker.outstanding == 2)
        #expect(tracker.settle(deliveryTag: 5, multiple: true) == [4, 5])
        #expect(tracker.outstanding == 0)
    }

    @Test func singleConfirmsMayArriveOutOfOrder() {
        var tracker = ConfirmTracker<Int>()
        for value in 1...4 { _ = tracker.register(value) }
        #expect(tracker.settle(deliveryTag: 3, multiple: false) == [3])
        #expect(tracker.settle(deliveryTag: 3, multiple: false) == [], "a tag settles once")
        #expect(tracker.settle(deliveryTag: 1, multiple: false) == [1])
        #expect(tracker.settle(deliveryTag: 4, multiple: true) == [2, 4], "multiple skips what is already settled")
        #expect(tracker.outstanding == 0)
        #expect(tracker.register(5) == 5, "tags keep counting on the same channel")
    }

    @Test func unknownTagsAreIgnored() {
        var tracker = ConfirmTracker<Int>()
        _ = tracker.register(1)
        #expect(tracker.settle(deliveryTag: 0, multiple: true) == [])
        #expect(tracker.settle(deliveryTag: 9, multiple: false) == [])
        #expect(tracker.outstanding == 1)
    }

    @Test func resetReturnsTheUnsettledAndStartsOver() {
        var tracker = ConfirmTracker<Int>()
        for value in 1...4 { _ = tracker.register(value) }
        _ = tracker.settle(deliveryTag: 2, multiple: false)
        #expect(tracker.reset() == [1, 3, 4])
        #expect(tracker.outstanding == 0)
        #expect(tracker.register(9) == 1)
    }
}

@Suite struct ReconnectBackoffTests {
    @Test func doublesUpToTheCap() {
        let backoff = ReconnectBackoff(policy: .init(initial: .milliseconds(100), maximum: .seconds(1)))
        #expect(backoff.ceilingDelay(forAttempt: 0) == .milliseconds(100))
        #expect(backoff.ceilingDelay(forAttempt: 1) == .milliseconds(200))
        #expect(backoff.ceilingDelay(forAttempt: 3) == .milliseconds(800))
        #expect(backoff.ceilingDelay(forAttempt: 4) == .seconds(1))
        #expect(backoff.ceilingDelay(forAttempt: 500) == .seconds(1))
    }

    @Test func delaysAreJitteredWithinHalfToFullCeiling() {
        var backoff = ReconnectBackoff(policy: .init(initial: .milliseconds(100), maximum: .seconds(1)))
        var generator = SystemRandomNumberGenerator()
        for attempt in 0..<8 {
            let ceiling = backoff.ceilingDelay(forAttempt: attempt)
            let delay = backoff.nextDelay(using: &generator)
            #expect(delay >= ceiling / 2 && delay <= ceiling)
        }
        backoff.reset()
        #expect(backoff.attempt == 0)
    }
}
