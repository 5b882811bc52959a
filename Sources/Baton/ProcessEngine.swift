import Foundation

/// A handler did something its declaration does not allow.
public struct ProcessHandlerError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong, naming the handler.
    public var message: String
    public var description: String { message }
}

/// Runs a process manager's handlers as a pure function: (instance, trigger, clock reading) → transition.
/// No I/O: the node loads the instance, asks the engine, and stores the result in one transaction.
public struct ProcessEngine<State: ProcessState>: Sendable {
    /// The definition it runs.
    public let definition: ProcessManager<State>

    /// Wraps a definition after checking it.
    /// - Throws: ``DefinitionError`` if the definition is broken.
    public init(_ definition: ProcessManager<State>) throws(DefinitionError) {
        try definition.validate()
        self.definition = definition
    }

    /// What the engine decided for one trigger.
    public enum Decision: Sendable {
        /// The instance moved; store `instance` and append `transition`.
        case transition(ProcessInstance<State>, ProcessTransition)
        /// Nothing to do, and why (logged by the node; never an error).
        case skipped(SkipReason)
        /// The event names no instance and its handler says to dead-letter it (``MissingInstance/deadLetter``).
        case refused(SkipReason)
        /// The event names no instance and its handler for that case issued these messages
        /// (``MissingInstance/handle(_:)``); nothing is stored but them.
        case answered(instanceID: String, issued: [IssuedMessage])
    }

    /// Why an event or timer changed nothing.
    public enum SkipReason: Sendable, Hashable, CustomStringConvertible {
        /// No handler for this message type.
        case notHandled(messageType: String)
        /// The event is not a start event and names no existing instance.
        case unknownInstance(String)
        /// The instance is closed and the event has no after-close handler.
        case closed(instanceID: String, lifecycle: ProcessLifecycle)
        /// A start event for an instance that already exists.
        case alreadyStarted(String)
        /// The event's correlation yielded no key (e.g. no correlation id).
        case uncorrelated(messageType: String)
        /// The timer was cancelled or rescheduled, or the instance closed, before it came due.
        case staleTimer(instanceID: String, name: String)

        public var description: String {
            switch self {
            case .notHandled(let type): return "no handler for \(type)"
            case .unknownInstance(let id): return "no instance '\(id)' and the event does not start one"
            case .closed(let id, let lifecycle): return "instance '\(id)' is \(lifecycle.rawValue)"
            case .alreadyStarted(let id): return "instance '\(id)' exists already"
            case .uncorrelated(let type): return "\(type) carries no correlation key"
            case .staleTimer(let id, let name): return "timer '\(name)' of '\(id)' is no longer pending"
            }
        }
    }

    /// How an event finds its instance, before loading it; `nil` if no handler takes the event.
    public func correlationKey(for message: any Message, envelope: Envelope) -> CorrelationKey? {
        definition.handlers(for: envelope.messageType).first?.correlate(message, envelope)
    }

    /// Handles an event for the instance it correlated to.
    /// - Parameters:
    ///   - message: The decoded event.
    ///   - envelope: Its envelope.
    ///   - instanceID: The instance it resolved to (`nil` if a mapping found none).
    ///   - instance: The instance as stored, or `nil` if none exists.
    ///   - now: The clock reading.
    /// - Throws: What the handler throws, or ``ProcessHandlerError`` for a misuse.
    public func handle(
        _ message: any Message,
        envelope: Envelope,
        instanceID: String?,
        instance: ProcessInstance<State>?,
        now: Date
    ) throws -> Decision {
        let handlers = definition.handlers(for: envelope.messageType)
        guard !handlers.isEmpty else { return .skipped(.notHandled(messageType: envelope.messageType)) }
        if let failure = message as? CommandFailed,
            failure.processManager != definition.name || !definition.failureCommandTypes.contains(failure.commandType)
        {
            return .skipped(.notHandled(messageType: "\(envelope.messageType) of \(failure.commandType)"))
        }
        guard let instanceID else {
            switch correlationKey(for: message, envelope: envelope) {
            case .instance(let id)?:
                return try missing(id, message, envelope, handlers, now: now)
            case .association(let name, let value)?:
                return try missing("\(name)=\(value)", message, envelope, handlers, now: now)
            case nil:
                return .skipped(.uncorrelated(messageType: envelope.messageType))
            }
        }
        let handler: ProcessManager<State>.Handler
        let current: ProcessInstance<State>
        if let instance {
            if instance.lifecycle.isClosed {
                guard let late = handlers.first(where: { $0.kind == .afterClose }) else {
                    return .skipped(.closed(instanceID: instanceID, lifecycle: instance.lifecycle))
                }
                handler = late
            } else {
                guard let open = handlers.first(where: { $0.kind == .ordinary || $0.kind == .end }) else {
                    return .skipped(
                        handlers.contains { $0.kind == .start }
                            ? .alreadyStarted(instanceID)
                            : .closed(instanceID: instanceID, lifecycle: instance.lifecycle)
                    )
                }
                handler = open
            }
            current = instance
        } else {
            guard let start = handlers.first(where: { $0.kind == .start }) else {
                return try missing(instanceID, message, envelope, handlers, now: now)
            }
            handler = start
            current = ProcessInstance(id: instanceID, definitionVersion: definition.version)
        }
        var context = makeContext(current, trigger: .event(envelope), now: now)
        try handler.handle(message, &context)
        return finish(context, kind: handler.kind)
    }

    /// An event for an instance that does not exist: what its handler declared for that case.
    private func missing(
        _ instanceID: String,
        _ message: any Message,
        _ envelope: Envelope,
        _ handlers: [ProcessManager<State>.Handler],
        now: Date
    ) throws -> Decision {
        let reason = SkipReason.unknownInstance(instanceID)
        switch handlers.first(where: { $0.kind != .afterClose })?.whenMissing ?? .ignore {
        case .ignore:
            return .skipped(reason)
        case .deadLetter:
            return .refused(reason)
        case .handle(let handle):
            var context = MissingInstanceContext(
                processManager: definition.name,
                instanceID: instanceID,
                trigger: .event(envelope),
                now: now
            )
            try handle(message, &context)
            return .answered(instanceID: instanceID, issued: context.issued)
        }
    }

    /// Aborts an instance on an operator's word: issues its compensation (the undo steps registered so far,
    /// last first), runs the definition's `onAbort` handler, and closes it as failed with `reason`. Later
    /// replies reach only its after-close handlers.
    /// - Parameters:
    ///   - instance: The instance as stored.
    ///   - reason: Why, recorded as the instance's reason.
    ///   - messageID: The id of the operator's command (the ids of what the abort issues derive from it).
    ///   - now: The clock reading.
    /// - Throws: What the abort handler throws.
    public func abort(
        _ instance: ProcessInstance<State>,
        reason: String,
        messageID: String,
        now: Date
    ) throws -> Decision {
        guard !instance.lifecycle.isClosed else {
            return .skipped(.closed(instanceID: instance.id, lifecycle: instance.lifecycle))
        }
        var context = makeContext(instance, trigger: .abort(messageID: messageID, reason: reason), now: now)
        context.compensate(reason: reason)
        try definition.abortHandler?(reason, &context)
        context.markAsFailed(reason: reason)
        return finish(context, kind: .ordinary)
    }

    /// Fires a timer of an instance.
    /// - Parameters:
    ///   - name: The timer's name.
    ///   - dueAt: When it was due (a rescheduled timer's old firing is stale).
    ///   - instance: The instance as stored.
    ///   - now: The clock reading.
    public func fire(timer name: String, dueAt: Date, instance: ProcessInstance<State>, now: Date) throws -> Decision {
        guard !instance.lifecycle.isClosed,
            instance.timers[name]?.millisecondsSince1970 == dueAt.millisecondsSince1970,
            let handler = definition.timerHandlers[name]
        else { return .skipped(.staleTimer(instanceID: instance.id, name: name)) }
        var context = makeContext(instance, trigger: .timer(name: name, dueAt: dueAt.roundedToMilliseconds), now: now)
        context.timerOperations.append(.cancel(name: name))
        try handler.handle(&context)
        return finish(context, kind: .ordinary)
    }

    /// Rebuilds an instance from a snapshot and the transitions after it, re-running the handlers with the
    /// recorded triggers and clock readings. Messages they issue again are discarded (they were sent).
    /// - Parameters:
    ///   - snapshot: The latest snapshot, or `nil` to replay from the start.
    ///   - transitions: The transitions after the snapshot, in order.
    ///   - instanceID: The instance id.
    ///   - registry: Decodes the recorded events (by default, the definition's own types).
    public func replay(
        from snapshot: ProcessInstance<State>?,
        transitions: [ProcessTransition],
        instanceID: String,
        registry: MessageRegistry? = nil
    ) throws -> ProcessInstance<State> {
        let registry = registry ?? definition.registry
        var instance = snapshot
        for transition in transitions {
            let decision = try redecide(
                transition.trigger,
                instanceID: instanceID,
                instance: instance,
                at: transition.at,
                registry
            )
            guard case .transition(var next, let replayed) = decision, replayed.version == transition.version else {
                throw ProcessHandlerError(
                    message:
                        "replay of '\(instanceID)' diverged at version \(transition.version): the handlers are not deterministic or changed incompatibly"
                )
            }
            // Timers are what was recorded, not what the handlers would schedule now (their configuration,
            // e.g. a step timeout, may have changed since).
            next.timers = Self.applying(transition.timers, to: instance?.timers ?? [:])
            instance = next
        }
        guard let instance else {
            throw ProcessHandlerError(message: "no snapshot and no transitions for '\(instanceID)'")
        }
        return instance
    }

    static func applying(_ operations: [TimerOperation], to timers: [String: Date]) -> [String: Date] {
        var timers = timers
        for operation in operations {
            switch operation {
            case .schedule(let name, let dueAt): timers[name] = dueAt
            case .cancel(let name): timers[name] = nil
            }
        }
        return timers
    }

    private func makeContext(
        _ instance: ProcessInstance<State>,
        trigger: ProcessTrigger,
        now: Date
    ) -> ProcessContext<State> {
        ProcessContext(
            processManager: definition.name,
            instance: instance,
            trigger: trigger,
            now: now,
            allowedAssociations: definition.associations
        )
    }

    private func finish(_ context: ProcessContext<State>, kind: ProcessManager<State>.Handler.Kind) -> Decision {
        var instance = context.instance
        let before = instance.lifecycle
        var next = before
        if kind != .afterClose {
            if kind == .start {
                next = .started
            } else if before == .started {
                next = .running
            }
            if context.compensationReason != nil { next = .compensating }
            if let closing = context.closing {
                next = closing
            } else if kind == .end {
                next = .completed
            }
            precondition(before == next || kind == .start || before.canMove(to: next), "lifecycle \(before) → \(next)")
        }
        instance.state = context.state
        instance.lifecycle = next
        instance.version += 1
        var timerOperations = context.timerOperations
        if next.isClosed {
            for name in context.pendingTimers.keys.sorted() { timerOperations.append(.cancel(name: name)) }
        }
        instance.timers = Self.applying(timerOperations, to: instance.timers)
        if next.isClosed { instance.compensations.removeAll() }
        let reason = context.failureReason ?? context.compensationReason
        if let reason { instance.reason = reason }
        let transition = ProcessTransition(
            version: instance.version,
            trigger: context.trigger,
            at: context.now,
            lifecycle: next,
            issued: context.issued,
            timers: timerOperations,
            associations: context.associations,
            reason: reason
        )
        return .transition(instance, transition)
    }
}
