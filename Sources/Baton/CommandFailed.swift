import Foundation

/// The framework's failure reply: a command a process manager issued was refused (a ``Message`` its target
/// could not decode or validate, a permanent failure) or dead-lettered after its retries. The target
/// publishes it in the same transaction as the dead letter; it reaches the issuing instance, whose
/// `onFailure(of:)` handler decides what to do — typically to compensate at once instead of waiting for a step
/// timeout.
///
/// The target knows where to send it from the ``processManagerHeader`` every command a process issues carries,
/// and the command's correlation id (the instance id).
public struct CommandFailed: Event, Hashable {
    public static let messageName = "baton.CommandFailed"

    /// The failed command's type, e.g. `inventory.ReserveInventory.v1`.
    public var commandType: String
    /// The failed command's message id.
    public var commandID: String
    /// Why it failed: the error text, or the edge check that refused it.
    public var reason: String
    /// Who refused it: `<node>/<handler>` (or `<node>/edge`, `<node>/decode`).
    public var refusedBy: String
    /// How many times its handler was tried.
    public var attempts: Int
    /// The process manager that issued it.
    public var processManager: String
    /// The instance that issued it.
    public var instanceID: String
    /// The causation chain, the failed command first: its id, then the id of what made the instance issue it.
    public var causation: [String]

    /// Creates a failure reply.
    public init(
        commandType: String,
        commandID: String,
        reason: String,
        refusedBy: String,
        attempts: Int,
        processManager: String,
        instanceID: String,
        causation: [String]
    ) {
        self.commandType = commandType
        self.commandID = commandID
        self.reason = reason
        self.refusedBy = refusedBy
        self.attempts = attempts
        self.processManager = processManager
        self.instanceID = instanceID
        self.causation = causation
    }

    /// The routing key of the failure replies for one process manager: only its node's queue is bound to it.
    public static func routingKey(for processManager: String) -> String {
        "\(messageName).\(processManager)"
    }
}

/// The header naming the process manager that issued a command: where a failure reply goes.
public let processManagerHeader = "x-baton-process-manager"
