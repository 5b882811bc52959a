import Foundation

/// What a handler sees and does: the instance's state, and the messages, timers and lifecycle changes it
/// asks for. Handlers are pure: everything they do goes through this value and is recorded.
public struct ProcessContext<State: ProcessState>: Sendable {
    /// The process manager's name.
    public let processManager: String
    /// The instance id.
    public let instanceID: String
    /// The handler's clock reading: use it instead of `Date()`.
    public let now: Date
    /// The id of the event or timer being handled.
    public let triggerID: String
    /// The state; change it freely.
    public var state: State

    var instance: ProcessInstance<State>
    var issued: [IssuedMessage] = []
    var timerOperations: [TimerOperation] = []
    var associations: [String: String] = [:]
    var closing: ProcessLifecycle?
    var compensationReason: String?
    var failureReason: String?
    let trigger: ProcessTrigger
    let allowedAssociations: Set<String>

    init(
        processManager: String,
        instance: ProcessInstance<State>,
        trigger: ProcessTrigger,
        now: Date,
        allowedAssociations: Set<String>
    ) {
        self.processManager = processManager
        self.instanceID = instance.id
        self.now = now.roundedToMilliseconds
        self.trigger = trigger
        self.triggerID = trigger.messageID(processManager: processManager, instanceID: instance.id)
        self.state = instance.state
        self.instance = instance
        self.allowedAssociations = allowedAssociations
    }

    /// Where the instance is now (including changes this handler asked for).
    public var lifecycle: ProcessLifecycle {
        if let closing { return closing }
        if compensationReason != nil { return .compensating }
        return instance.lifecycle
    }

    /// The timers pending after this handler's changes, by name.
    public var pendingTimers: [String: Date] {
        var timers = instance.timers
        for operation in timerOperations {
            switch operation {
            case .schedule(let name, let dueAt): timers[name] = dueAt
            case .cancel(let name): timers[name] = nil
            }
        }
        return timers
    }

    /// Sends a command. Its id is derived from the instance, the trigger and its position, so a handler that
    /// runs again sends the same id.
    public mutating func send<C: Command>(_ command: C) {
        issue(.command, C.messageType, MessageRegistry.encode(command), partitionKey: command.partitionKey)
    }

    /// Publishes an event.
    public mutating func publish<E: Event>(_ event: E) {
        issue(.event, E.messageType, MessageRegistry.encode(event), partitionKey: event.partitionKey)
    }

    /// Schedules (or reschedules) the timer `name` at `dueAt`; it fires once, also after restarts.
    public mutating func schedule(_ name: String, at dueAt: Date) {
        timerOperations.append(.schedule(name: name, dueAt: dueAt.roundedToMilliseconds))
    }

    /// Schedules the timer `name` at ``now`` + `delay`.
    public mutating func schedule(_ name: String, after delay: Duration) {
        schedule(name, at: now.adding(delay))
    }

    /// Cancels the timer `name`; a cancelled timer never fires.
    public mutating func cancelTimer(_ name: String) {
        timerOperations.append(.cancel(name: name))
    }

    /// Associates this instance with `value` under `name`, so events correlated by
    /// ``Correlation/mapped(_:by:)`` find it.
    public mutating func associate(_ name: String, with value: String) {
        precondition(allowedAssociations.contains(name), "association '\(name)' is not declared on the process manager")
        associations[name] = value
    }

    /// Registers the command that undoes the step just done; compensation issues these last-first.
    public mutating func onCompensation<C: Command>(_ command: C) {
        instance.compensations.append(
            CompensationStep(
                messageType: C.messageType,
                payload: MessageRegistry.encode(command),
                partitionKey: command.partitionKey
            )
        )
    }

    /// Starts compensating: the instance becomes `compensating` and every registered undo step is issued,
    /// the last registered first. Handlers of later replies then decide when it is failed or completed.
    public mutating func compensate(reason: String) {
        guard compensationReason == nil, !lifecycle.isClosed, lifecycle != .compensating else { return }
        compensationReason = reason
        for step in instance.compensations.reversed() {
            issue(.command, step.messageType, step.payload, partitionKey: step.partitionKey)
        }
        instance.compensations.removeAll()
    }

    /// Closes the instance as completed; its timers are cancelled and later events are skipped. Any handler
    /// may close its instance; on one that is closed already (an after-close handler's) it does nothing.
    public mutating func markAsComplete() {
        guard !lifecycle.isClosed else { return }
        closing = .completed
    }

    /// Closes the instance as failed. On one that is closed already it does nothing.
    public mutating func markAsFailed(reason: String) {
        guard !lifecycle.isClosed else { return }
        closing = .failed
        failureReason = reason
    }

    /// Issues a message correlated with the instance (and partitioned by it, unless its type says otherwise).
    private mutating func issue(
        _ kind: IssuedMessage.Kind,
        _ messageType: String,
        _ payload: Data,
        partitionKey: String?
    ) {
        var headers: [String: String] = [:]
        if let partitionKey { headers[partitionKeyHeader] = partitionKey }
        if case .event(let envelope) = trigger, let traceparent = envelope.headers[traceparentHeader] {
            headers[traceparentHeader] = traceparent
        }
        if kind == .command { headers[processManagerHeader] = processManager }
        let parts = [processManager, instanceID, triggerID, String(issued.count)]
        let id = trigger.time.map { MessageID.derived(at: $0, fromParts: parts) } ?? MessageID.derived(fromParts: parts)
        issued.append(
            IssuedMessage(
                kind: kind,
                envelope: Envelope(
                    messageID: id,
                    messageType: messageType,
                    correlationID: instanceID,
                    causationID: triggerID,
                    timestamp: now,
                    headers: headers,
                    payload: payload
                )
            )
        )
    }
}
