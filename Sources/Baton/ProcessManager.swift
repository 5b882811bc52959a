import Foundation

/// The state a process manager keeps per instance. It starts from `init()` and is stored as JSON.
public protocol ProcessState: Codable, Sendable, Equatable {
    init()
    /// The schema version of this shape, stored with every instance. 1 unless overridden.
    static var stateVersion: Int { get }
    /// How the stored state of an older version becomes this one, one step each (see ``Upcaster``); applied
    /// when an instance stored by an earlier release is loaded.
    static var stateUpcasters: [Upcaster] { get }
}

extension ProcessState {
    /// Version 1 unless a type says otherwise.
    public static var stateVersion: Int { 1 }
    /// No upcasters unless a type says otherwise.
    public static var stateUpcasters: [Upcaster] { [] }
}

/// A process manager: the events it listens to, how each finds its instance, what each does.
///
/// ```swift
/// let fulfillment = ProcessManager<Fulfillment>(name: "fulfillment", listensTo: ["orders", "inventory"]) { pm in
///     pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { event, process in
///         process.state.orderID = event.orderID
///         process.send(ReserveInventory(orderID: event.orderID, lines: event.lines))
///         process.schedule("step-timeout", after: .seconds(30))
///     }
///     pm.on(InventoryReserved.self, correlation: .field(\.orderID)) { event, process in … }
///     pm.end(on: OrderCompleted.self, correlation: .field(\.orderID)) { _, _ in }
/// }
/// ```
public struct ProcessManager<State: ProcessState>: Sendable {
    /// The handler of one event type.
    struct Handler: Sendable {
        enum Kind: Sendable, Hashable {
            /// Starts an instance (a second start event for an existing instance is handled as usual).
            case start
            /// Handles the event for an open instance.
            case ordinary
            /// Handles the event and closes the instance as completed.
            case end
            /// Handles the event for a closed instance only: a late reply that needs its own compensation.
            case afterClose
        }

        var type: any Message.Type
        var messageType: String
        var messageName: String
        var category: String
        var kind: Kind
        /// A command addressed to the instance (on `baton.commands`), not an event.
        var isCommand: Bool
        var correlationSummary: String
        var correlate: @Sendable (any Message, Envelope) -> CorrelationKey?
        var associationName: String?
        var whenMissing: MissingInstanceAction = .ignore
        var handle: @Sendable (any Message, inout ProcessContext<State>) throws -> Void
    }

    /// The name; the instance streams are `<name>-<instance id>`.
    public let name: String
    /// The definition's version: each instance records the one it started under (see
    /// ``ProcessInstance/definitionVersion``), so that a deploy can tell old instances from new ones.
    public let version: Int
    /// The categories (bounded contexts) whose events this manager receives.
    public let categories: [String]
    var handlers: [Handler] = []
    /// The handlers by the message type they take, for the lookup every message makes.
    private var handlersByType: [String: [Handler]] = [:]
    /// The message types this manager handles (events only; timers are internal), computed once: a node asks
    /// for every message whether it is one of them.
    public let messageTypes: Set<String>
    var timerHandlers: [String: TimerHandler] = [:]
    var associations: Set<String> = []
    /// The command types with an `onFailure(of:)` handler.
    var failureCommandTypes: Set<String> = []
    /// What an operator's abort does beside the compensation, if declared.
    var abortHandler: (@Sendable (String, inout ProcessContext<State>) throws -> Void)?

    struct TimerHandler: Sendable {
        var handle: @Sendable (inout ProcessContext<State>) throws -> Void
    }

    /// Defines a process manager.
    /// - Parameters:
    ///   - name: The process manager's name.
    ///   - version: The definition's version, 1 unless given; raise it when a deploy changes what the handlers
    ///     decide, so instances started before can be told apart.
    ///   - categories: The categories it listens to.
    ///   - define: Registers the handlers.
    public init(
        name: String,
        version: Int = 1,
        listensTo categories: [String],
        _ define: (inout Builder) -> Void
    ) {
        self.name = name
        self.version = version
        self.categories = categories
        var builder = Builder()
        define(&builder)
        builder.addFailureDispatch()
        handlers = builder.handlers
        handlersByType = Dictionary(grouping: builder.handlers, by: \.messageType)
        messageTypes = Set(builder.handlers.map(\.messageType))
        failureCommandTypes = Set(builder.failureHandlers.keys)
        abortHandler = builder.abortHandler
        timerHandlers = builder.timerHandlers
        associations = builder.associations
    }

    /// Registers handlers; passed to the closure of ``ProcessManager/init(name:listensTo:_:)``.
    public struct Builder {
        var handlers: [Handler] = []
        var timerHandlers: [String: TimerHandler] = [:]
        var associations: Set<String> = []
        var failureHandlers: [String: @Sendable (CommandFailed, inout ProcessContext<State>) throws -> Void] = [:]
        var abortHandler: (@Sendable (String, inout ProcessContext<State>) throws -> Void)?

        /// Declares an association name that handlers may use with ``ProcessContext/associate(_:with:)``
        /// and events may correlate by with ``Correlation/mapped(_:by:)``.
        public mutating func association(_ name: String) {
            associations.insert(name)
        }

        /// The handler that starts an instance.
        /// - Parameters:
        ///   - type: The event type.
        ///   - correlation: How the event names its instance.
        ///   - handle: The handler.
        public mutating func start<E: Event>(
            on type: E.Type,
            correlation: Correlation<E>,
            _ handle: @escaping @Sendable (E, inout ProcessContext<State>) throws -> Void
        ) {
            add(type, .start, correlation, handle)
        }

        /// A handler for an event of a running instance. Like every handler, it may close the instance
        /// (``ProcessContext/markAsComplete()``, ``ProcessContext/markAsFailed(reason:)``).
        /// - Parameters:
        ///   - type: The event type.
        ///   - correlation: How the event finds its instance.
        ///   - whenMissing: What to do when no such instance exists.
        ///   - handle: The handler.
        public mutating func on<E: Event>(
            _ type: E.Type,
            correlation: Correlation<E>,
            whenMissing: MissingInstance<E> = .ignore,
            _ handle: @escaping @Sendable (E, inout ProcessContext<State>) throws -> Void
        ) {
            add(type, .ordinary, correlation, whenMissing: whenMissing, handle)
        }

        /// An end handler: runs, then closes the instance as completed (unless it failed it).
        public mutating func end<E: Event>(
            on type: E.Type,
            correlation: Correlation<E>,
            whenMissing: MissingInstance<E> = .ignore,
            _ handle: @escaping @Sendable (E, inout ProcessContext<State>) throws -> Void = { _, _ in }
        ) {
            add(type, .end, correlation, whenMissing: whenMissing, handle)
        }

        /// A handler for an event that arrives after the instance closed: a late reply that must be
        /// compensated (e.g. a shipment created after the order was cancelled gets cancelled). The instance
        /// stays closed: closing it again does nothing.
        public mutating func afterClose<E: Event>(
            _ type: E.Type,
            correlation: Correlation<E>,
            _ handle: @escaping @Sendable (E, inout ProcessContext<State>) throws -> Void
        ) {
            add(type, .afterClose, correlation, handle)
        }

        /// The handler of a timer the instance scheduled with ``ProcessContext/schedule(_:at:)``.
        public mutating func onTimer(
            _ name: String,
            _ handle: @escaping @Sendable (inout ProcessContext<State>) throws -> Void
        ) {
            precondition(timerHandlers[name] == nil, "two handlers for timer '\(name)'")
            timerHandlers[name] = TimerHandler(handle: handle)
        }

        /// The handler of a command the instance issued that its target refused or dead-lettered: a
        /// ``CommandFailed`` reply, which reaches the instance as an event (closed instances skip it).
        /// - Parameters:
        ///   - type: The command type.
        ///   - handle: The handler, e.g. `process.compensate(reason: failure.reason)`.
        public mutating func onFailure<C: Command>(
            of type: C.Type,
            _ handle: @escaping @Sendable (CommandFailed, inout ProcessContext<State>) throws -> Void
        ) {
            precondition(failureHandlers[C.messageType] == nil, "two failure handlers for \(C.messageType)")
            failureHandlers[C.messageType] = handle
        }

        /// What an operator's abort does beside issuing the compensation registered so far: e.g. tell the
        /// process's owner (cancel the order). The instance then closes as failed, with the abort's reason.
        public mutating func onAbort(
            _ handle: @escaping @Sendable (_ reason: String, inout ProcessContext<State>) throws -> Void
        ) {
            precondition(abortHandler == nil, "two abort handlers")
            abortHandler = handle
        }

        /// A command addressed to a running instance — e.g. a customer service's `ExpediteOrder` — sent to
        /// `baton.commands` under its name and handled like an event of the instance. By default, a command
        /// for an instance that does not exist is dead-lettered; one for a closed instance is skipped.
        /// - Parameters:
        ///   - type: The command type.
        ///   - correlation: How the command names its instance.
        ///   - whenMissing: What to do when no such instance exists.
        ///   - handle: The handler.
        public mutating func handle<C: Command>(
            _ type: C.Type,
            correlation: Correlation<C>,
            whenMissing: MissingInstance<C> = .deadLetter,
            _ handle: @escaping @Sendable (C, inout ProcessContext<State>) throws -> Void
        ) {
            add(type, .ordinary, correlation, whenMissing: whenMissing, handle)
        }

        /// One handler of ``CommandFailed`` for all the failure handlers, by the failed command's type.
        fileprivate mutating func addFailureDispatch() {
            guard !failureHandlers.isEmpty else { return }
            let table = failureHandlers
            add(CommandFailed.self, .ordinary, .field(\.instanceID)) { failure, process in
                try table[failure.commandType]?(failure, &process)
            }
        }

        private mutating func add<E: Message>(
            _ type: E.Type,
            _ kind: Handler.Kind,
            _ correlation: Correlation<E>,
            whenMissing: MissingInstance<E> = .ignore,
            _ handle: @escaping @Sendable (E, inout ProcessContext<State>) throws -> Void
        ) {
            let associationName: String?
            let correlate: @Sendable (any Message, Envelope) -> CorrelationKey?
            switch correlation.rule {
            case .key(let key):
                associationName = nil
                correlate = { message, envelope in key(message as! E, envelope).map(CorrelationKey.instance) }
            case .association(let name, let value):
                associationName = name
                correlate = { message, _ in .association(name: name, value: value(message as! E)) }
            }
            handlers.append(
                Handler(
                    type: E.self,
                    messageType: E.messageType,
                    messageName: E.messageName,
                    category: E.category,
                    kind: kind,
                    isCommand: E.self is any Command.Type,
                    correlationSummary: correlation.summary,
                    correlate: correlate,
                    associationName: associationName,
                    whenMissing: whenMissing.action,
                    handle: { message, context in try handle(message as! E, &context) }
                )
            )
        }
    }

    /// The Swift types of the events it handles, once each.
    public var handledTypes: [any Message.Type] {
        var seen: Set<String> = []
        return handlers.map(\.type).filter { seen.insert($0.messageType).inserted }
    }

    /// Decodes the events it handles.
    public var registry: MessageRegistry { MessageRegistry(types: handledTypes) }

    /// The routing keys of the events it handles: their names, and for failure replies the key of its own.
    public var messageNames: Set<String> {
        Set(
            handlers.filter { !$0.isCommand }.map {
                $0.messageType == CommandFailed.messageType ? CommandFailed.routingKey(for: name) : $0.messageName
            }
        )
    }

    /// The names (routing keys on `baton.commands`) of the commands addressed to its instances.
    public var commandNames: Set<String> { Set(handlers.filter(\.isCommand).map(\.messageName)) }

    /// Checks the definition; a node refuses to start with a broken one.
    /// - Throws: ``DefinitionError`` naming every problem found.
    public func validate() throws(DefinitionError) {
        var problems: [String] = []
        if !handlers.contains(where: { $0.kind == .start }) {
            problems.append("no start handler: declare one with start(on:correlation:)")
        }
        var seen: [String: Handler.Kind] = [:]
        for handler in handlers {
            let slot = "\(handler.messageType)/\(handler.kind == .afterClose ? "closed" : "open")"
            if seen[slot] != nil { problems.append("two handlers for \(handler.messageType)") }
            seen[slot] = handler.kind
            if !categories.contains(handler.category), handler.messageType != CommandFailed.messageType,
                !handler.isCommand
            {
                problems.append(
                    "\(handler.messageType) is handled but its category '\(handler.category)' is not listened to"
                )
            }
            if let association = handler.associationName, !associations.contains(association) {
                problems.append(
                    "\(handler.messageType) cannot correlate: it is mapped by '\(association)', which no handler can associate (declare it with association(_:))"
                )
            }
            if handler.kind == .start, handler.associationName != nil {
                problems.append("\(handler.messageType) starts instances, so it must name the instance, not map to one")
            }
        }
        if !problems.isEmpty {
            throw DefinitionError(processManager: name, problems: problems)
        }
    }

    func handlers(for messageType: String) -> [Handler] {
        handlersByType[messageType] ?? []
    }
}

/// A broken process-manager definition, with every problem named.
public struct DefinitionError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The process manager's name.
    public var processManager: String
    /// One sentence per problem.
    public var problems: [String]

    /// Creates an error.
    public init(processManager: String, problems: [String]) {
        self.processManager = processManager
        self.problems = problems
    }

    public var description: String {
        "process manager '\(processManager)' is invalid:\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
    }
}
