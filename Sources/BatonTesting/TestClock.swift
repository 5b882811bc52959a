import Baton
import Foundation
import Synchronization

/// A clock that only moves when told to: ``advance(by:)``, ``advance(to:)`` or, backwards too, ``step(to:)``.
/// Sleepers whose deadline it passes wake up at once.
public final class TestClock: TimeSource {
    private struct State {
        var now: Date
        var sleepers: [(id: Int, deadline: Date, continuation: CheckedContinuation<Void, any Error>)] = []
        var nextID = 0
    }

    private let state: Mutex<State>

    /// Creates a clock at `start` (by default 2026-01-01T00:00:00Z).
    public init(start: Date = Date(timeIntervalSince1970: 1_767_225_600)) {
        state = Mutex(State(now: start))
    }

    public func now() -> Date { state.withLock { $0.now } }

    public func sleep(until deadline: Date) async throws {
        let id = state.withLock { state -> Int in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let ready = state.withLock { state -> Bool in
                    if state.now >= deadline || Task.isCancelled { return true }
                    state.sleepers.append((id, deadline, continuation))
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            let sleeper = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                guard let index = state.sleepers.firstIndex(where: { $0.id == id }) else { return nil }
                return state.sleepers.remove(at: index).continuation
            }
            sleeper?.resume(throwing: CancellationError())
        }
        try Task.checkCancellation()
    }

    /// How many tasks are sleeping on this clock (lets a test wait until a node is idle).
    public var sleeperCount: Int { state.withLock { $0.sleepers.count } }

    /// Moves the clock forward and wakes every sleeper whose deadline has come.
    public func advance(by interval: Duration) {
        let (seconds, attoseconds) = interval.components
        advance(to: now().addingTimeInterval(Double(seconds) + Double(attoseconds) / 1e18))
    }

    /// Sets the clock to `date` (never backwards) and wakes the due sleepers.
    public func advance(to date: Date) {
        precondition(date >= now(), "a TestClock advances forwards; step(to:) sets it back")
        step(to: date)
    }

    /// Sets the clock to `date`, backwards too — a wall clock stepped by NTP or an operator — and wakes the
    /// sleepers whose deadline it has reached. A sleeper whose deadline a backward step moves away sleeps on.
    public func step(to date: Date) {
        let due = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            state.now = date
            let due = state.sleepers.filter { $0.deadline <= date }.map(\.continuation)
            state.sleepers.removeAll { $0.deadline <= date }
            return due
        }
        for continuation in due { continuation.resume() }
    }
}
