import Foundation

/// What a process manager does with an event for an instance that does not exist (and that does not start
/// one): a reply to a process that was purged, an event whose start was lost upstream, a typo in a
/// correlation key. Declared per handler with `pm.on(_:correlation:whenMissing:_:)`.
public enum MissingInstance<E: Message>: Sendable {
    /// Acknowledge it and log the skip (the default).
    case ignore
    /// Dead-letter it at once, with the reason in its headers, for an operator to look at and replay.
    case deadLetter
    /// Run a handler that may send commands and publish events (e.g. tell the sender the order is unknown);
    /// no instance is created.
    case handle(@Sendable (E, inout MissingInstanceContext) throws -> Void)

    var action: MissingInstanceAction {
        switch self {
        case .ignore: .ignore
        case .deadLetter: .deadLetter
        case .handle(let handle): .handle { message, context in try handle(message as! E, &context) }
        }
    }
}

/// ``MissingInstance`` without its event type, as a handler stores it.
enum MissingInstanceAction: Sendable {
    case ignore
    case deadLetter
    case handle(@Sendable (any Message, inout MissingInstanceContext) throws -> Void)
}

/// What a handler of an event for a missing instance may do: send commands and publish events, with ids
/// derived from the instance id and the event, as an instance's handler would. It has no state to change and
/// no timer to schedule: nothing is stored.
public struct MissingInstanceContext: Sendable {
    private var process: ProcessContext<NoState>

    init(processManager: String, instanceID: String, trigger: ProcessTrigger, now: Date) {
        process = ProcessContext(
            processManager: processManager,
            instance: ProcessInstance(id: instanceID),
            trigger: trigger,
            now: now,
            allowedAssociations: []
        )
    }

    /// The process manager's name.
    public var processManager: String { process.processManager }
    /// The id the event named, which no instance has.
    public var instanceID: String { process.instanceID }
    /// The handler's clock reading.
    public var now: Date { process.now }

    /// Sends a command.
    public mutating func send<C: Command>(_ command: C) {
        process.send(command)
    }

    /// Publishes an event.
    public mutating func publish<E: Event>(_ event: E) {
        process.publish(event)
    }

    var issued: [IssuedMessage] { process.issued }

    struct NoState: ProcessState {}
}
