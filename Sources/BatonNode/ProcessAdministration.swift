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

/// Asks a running node to try an instance's failed step again: the message or timer whose dead letter holds
/// the instance is re-armed with fresh attempts, ahead of what waits behind it (`processes retry ID`).
public struct RetryProcess: Command {
    public static let messageName = "baton.RetryProcess"
    /// The process manager.
    public var processManager: String
    /// The instance.
    public var instanceID: String

    /// Creates the command.
    public init(processManager: String, instanceID: String) {
        self.processManager = processManager
        self.instanceID = instanceID
    }
}

/// Asks a running node to let an instance held by a dead-lettered message go on without it: the messages
/// waiting behind it are handled, in order; the dead letter stays, to be replayed or not (`processes resume ID`).
public struct ResumeProcess: Command {
    public static let messageName = "baton.ResumeProcess"
    /// The process manager.
    public var processManager: String
    /// The instance.
    public var instanceID: String

    /// Creates the command.
    public init(processManager: String, instanceID: String) {
        self.processManager = processManager
        self.instanceID = instanceID
    }
}

private let processAdministrationTypes: [any Message.Type] = [
    AbortProcess.self, PurgeProcesses.self, RetryProcess.self, ResumeProcess.self,
]
private let processAdministrationTypeNames = Set(processAdministrationTypes.map { $0.messageType })

/// A node handler that hosts a process manager, for operator commands that address it by name.
public protocol ProcessManagerHosting: NodeHandler {
    /// The process manager's name.
    var processManagerName: String { get }
    /// Replays an instance's stored history with this code and reports where it decides differently
    /// (``ProcessEngine/verify(_:instanceID:registry:)``); reads only.
    func verify(_ instanceID: String, in work: any UnitOfWork) throws -> ReplayDifference?
    /// What the process manager reacts to, for its diagram (``ProcessDiagram``).
    var outline: ProcessOutline { get }
    /// The dead letters that hold an instance: of the message its later ones wait behind, or of its timer
    /// (what `processes retry` re-arms).
    func failedSteps(of instanceID: String, in work: any UnitOfWork) throws -> [Int64]
}

extension ProcessManagerHost: ProcessManagerHosting {
    public var processManagerName: String { name }

    public var outline: ProcessOutline { engine.definition.outline }

    public func verify(_ instanceID: String, in work: any UnitOfWork) throws -> ReplayDifference? {
        engine.verify(try work.transitions(of: name, instance: instanceID), instanceID: instanceID)
    }

    /// The operator's commands a host takes beside its process manager's events (abort, purge, retry, resume).
    public static var administrationTypes: [any Message.Type] { processAdministrationTypes }

    /// Whether an envelope is one of the operator's commands.
    static func isAdministration(_ envelope: Envelope) -> Bool {
        processAdministrationTypeNames.contains(envelope.messageType)
    }

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
            let purged = try work.purgeInstances(
                of: name,
                closedBefore: request.closedBefore,
                at: now,
                limit: 100_000
            )
            logger.notice(
                "closed processes purged",
                metadata: ["count": "\(purged.count)", "closed_before": "\(request.closedBefore)"]
            )
        case let request as RetryProcess where request.processManager == name:
            let letters = try failedSteps(of: request.instanceID, in: work)
            guard !letters.isEmpty else {
                throw Rejection("instance '\(request.instanceID)' of '\(name)' has no failed step to retry")
            }
            for id in letters {
                // Re-armed in the store; were it gone, it goes back where it was first published.
                try work.replayDeadLetter(id: id, at: now) { ($0.exchange, $0.routingKey, $0.headers) }
            }
            logger.notice("failed steps retried", metadata: ["baton.process_id": "\(request.instanceID)"])
        case let request as ResumeProcess where request.processManager == name:
            let key = Self.orderingKey(processManager: name, instanceID: request.instanceID)
            let blocking = try work.parkedMessages().filter { $0.orderingKey == key && $0.deadLetterID != nil }
            guard !blocking.isEmpty else {
                throw Rejection("instance '\(request.instanceID)' of '\(name)' is not held by a dead letter")
            }
            for held in blocking { try work.releaseParkedMessage(held, at: now) }
            logger.notice(
                "instance resumed past its dead letter",
                metadata: ["baton.process_id": "\(request.instanceID)"]
            )
        default:
            return
        }
    }

    /// The open dead letters that hold an instance: a message of it, or one of its timers.
    public func failedSteps(of instanceID: String, in work: any UnitOfWork) throws -> [Int64] {
        let key = Self.orderingKey(processManager: name, instanceID: instanceID)
        let messages = try work.parkedMessages().filter { $0.orderingKey == key }.compactMap(\.deadLetterID)
        let timers = try work.deadLetters().filter { letter in
            guard letter.messageType == DueTimer.deadLetterType,
                let timer = try? JSONDecoder.baton.decode(TimerDeadLetter.self, from: letter.body)
            else { return false }
            return timer.processManager == name && timer.instanceID == instanceID
        }.map(\.id)
        return messages + timers
    }
}

extension Node {
    /// Sends this node one of the operator's commands (``AbortProcess``, ``RetryProcess``, ``ResumeProcess``,
    /// ``PurgeProcesses``) through its own outbox: committed in its store, relayed to its queue on
    /// ``Routing/nodeExchange``, and handled as the same command from the command line is — by whichever replica
    /// takes it.
    /// - Returns: The command's message id.
    @discardableResult
    public func submit<C: Command>(_ command: C) async throws -> String {
        let envelope = Envelope(
            messageID: UUID().uuidString.lowercased(),
            messageType: C.messageType,
            timestamp: businessNow(),
            payload: MessageRegistry.encode(command)
        )
        let name = configuration.name
        try await commit { try $0.enqueue(envelope, exchange: Routing.nodeExchange, routingKey: name, key: nil) }
        return envelope.messageID
    }
}
