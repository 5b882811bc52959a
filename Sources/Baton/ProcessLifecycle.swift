/// Where a process instance is: started → running → (compensating) → completed / failed.
public enum ProcessLifecycle: String, Sendable, Hashable, Codable, CaseIterable {
    /// The start handler ran; nothing else has happened yet.
    case started
    /// At least one more event was handled.
    case running
    /// Undoing earlier steps after a failure, a timeout or a cancellation.
    case compensating
    /// Finished successfully. Closed: later events are skipped.
    case completed
    /// Finished unsuccessfully (after compensation, if any). Closed.
    case failed

    /// Whether the instance is closed (completed or failed).
    public var isClosed: Bool { self == .completed || self == .failed }

    /// Whether moving to `next` is allowed. Closed instances never change; compensation never goes back
    /// to running.
    public func canMove(to next: ProcessLifecycle) -> Bool {
        switch (self, next) {
        case (.completed, _), (.failed, _): return false
        case (.compensating, .started), (.compensating, .running): return false
        case (_, .started): return false
        default: return true
        }
    }
}
