import Baton
import Foundation
import Logging

/// Asks a running node to abort one process instance: its compensation is issued and it closes as failed
/// (`<service> processes abort ID --reason TEXT`). Sent to the node directly, on `baton.nodes`.
public struct AbortProcess: Command {
    public static let messageName = "baton.AbortProcess"
    /// The process manager.
    public var processManager: String
    /// The instance.
    public var instanceID: String
    /// Why, recorded as the instance's reason.
    public var reason: String

    /// Creates the command.
    public init(processManager: String, instanceID: String, reason: String) {
        self.processManager = processManager
        self.instanceID = instanceID
        self.reason = reason
    }
}

/// Asks a running node to delete the closed instances of a process manager last changed before a time, with
/// everything recorded of them (retention; `<service> processes purge --closed-before DATE`).
public struct PurgeProcesses: Command {
    public static let messageName = "baton.PurgeProcesses"
    /// The process manager.
    public var processManager: String
    /// Instances closed before this go.
    public var closedBefore: Date

    /// Creates the command.
    public init(processManager: String, closedBefore: Date) {
        self.processManager = processManager
        self.closedBefore = closedBefore
    }
}

/// A node handler that hosts a process manager, for operator commands that address it by name.
public protocol ProcessManagerHosting: NodeHandler {
    /// The process manager's name.
    var processManagerName: String { get }
    /// Replays an instance's stored history with this code and reports where it decides differently
    /// (``ProcessEngine/verify(_:instanceID:registry:)``); reads only.
    func verify(_ instanceID: String, in work: any UnitOfWork) throws -> ReplayDifference?
}

extension ProcessManagerHost: ProcessManagerHosting {
    public var processManagerName: String { name }

    public func verify(_ instanceID: String, in work: any UnitOfWork) throws -> ReplayDifference? {
        engine.verify(try work.transitions(of: name, instance: instanceID), instanceID: instanceID)
    }

    /// The operator's commands a host takes beside its process manager's events.
    static var administrationTypes: [any Message.Type] { [AbortProcess.self, PurgeProcesses.self] }

    /// Runs an operator's command addressed to this process manager (others are left to their own host).
    func administer(
        _ message: any Message,
        envelope: Envelope,
        in work: any UnitOfWork,
        now: Date,
        logger: Logger
    )
        throws
    {
        switch message {
        case let request as AbortProcess where request.processManager == name:
            guard let instance = try load(request.instanceID, work) else {
                throw Rejection("no instance '\(request.instanceID)' of process manager '\(name)' to abort")
            }
            switch try engine.abort(instance, reason: request.reason, messageID: envelope.messageID, now: now) {
            case .transition(let next, let transition):
                try work.record(transition, instance: next, of: engine, route: Routing.destination)
                cache[next.id] = next
                logger.notice(
                    "process aborted",
                    metadata: ["baton.process_id": "\(next.id)", "reason": "\(request.reason)"]
                )
            case .skipped(let reason), .refused(let reason):
                logger.notice("abort skipped", metadata: ["baton.process_id": "\(instance.id)", "reason": "\(reason)"])
            case .answered:
                preconditionFailure("an abort of an existing instance answers nothing")
            }
        case let request as PurgeProcesses where request.processManager == name:
            let purged = try work.purgeInstances(of: name, closedBefore: request.closedBefore, limit: 100_000)
            logger.notice(
                "closed processes purged",
                metadata: ["count": "\(purged.count)", "closed_before": "\(request.closedBefore)"]
            )
        default:
            return
        }
    }
}
