import Foundation
import Synchronization

/// Whether a node does its work at this moment — consuming its queue, committing to its store — and if not,
/// why (what a readiness check reports; ``Node/readiness``).
public struct NodeReadiness: Sendable, Hashable {
    /// What keeps the node from its work, one line each; empty when it is ready.
    public var problems: [String]

    /// Whether nothing keeps the node from its work.
    public var isReady: Bool { problems.isEmpty }

    /// Creates a readiness report.
    public init(problems: [String] = []) {
        self.problems = problems
    }
}

/// What the node's loops last reported about themselves.
struct NodeHealth {
    /// The consume loop runs on a subscribed queue.
    var consuming = false
    /// Why the last batch could not commit; `nil` once one committed.
    var commitFailure: String?
    /// Why the last deadline round failed; `nil` once one succeeded.
    var deadlineFailure: String?

    var readiness: NodeReadiness {
        var problems: [String] = []
        if !consuming { problems.append("not consuming its queue") }
        if let commitFailure { problems.append("store: a batch could not commit: \(commitFailure)") }
        if let deadlineFailure { problems.append("store: deadlines could not be acted on: \(deadlineFailure)") }
        return NodeReadiness(problems: problems)
    }
}
