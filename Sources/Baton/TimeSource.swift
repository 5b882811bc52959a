import Foundation

/// Where business time comes from. Deadlines are stored as dates and compared with ``now()``; nothing
/// sleeps for business time except through ``sleep(until:)``, which a test clock completes when advanced.
public protocol TimeSource: Sendable {
    /// The current time.
    func now() -> Date
    /// Returns when ``now()`` has reached `deadline` (or throws on cancellation).
    func sleep(until deadline: Date) async throws
}

/// The system clock.
public struct SystemTimeSource: TimeSource {
    /// Creates the system clock.
    public init() {}

    public func now() -> Date { Date() }

    public func sleep(until deadline: Date) async throws {
        let interval = deadline.timeIntervalSinceNow
        if interval > 0 { try await Task.sleep(for: .seconds(interval)) }
    }
}
