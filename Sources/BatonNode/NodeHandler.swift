import Baton
import DequeModule
import Foundation
import Logging
import Synchronization

/// Something a ``Node`` hosts: it handles some message types inside the node's unit of work.
public protocol NodeHandler: Sendable {
    /// The handler's name (in logs and dead letters).
    var name: String { get }
    /// The message types it takes: the node decodes exactly these (its registry is made of them).
    var messageTypes: [any Message.Type] { get }
    /// What the node's queue must be bound to for this handler: (exchange, binding key).
    var bindings: [Topology.Binding] { get }
    /// Whether it handles this message.
    func handles(_ envelope: Envelope) -> Bool
    /// Handles the message; everything it writes commits with the inbox record, or not at all.
    func handle(_ message: any Message, envelope: Envelope, in work: any UnitOfWork, now: Date, logger: Logger) throws
    /// Handles the message, handing the internal commands its handlers dispatch to `dispatch` (the node runs
    /// one in the same transaction when a handler of its own takes it, else sends it through the broker). By
    /// default, ``handle(_:envelope:in:now:logger:)``.
    func handle(
        _ message: any Message,
        envelope: Envelope,
        in work: any UnitOfWork,
        now: Date,
        logger: Logger,
        dispatch: CommandDispatch
    ) throws
    /// Fires one of its timers, if it has timers.
    func fire(_ timer: DueTimer, in work: any UnitOfWork, now: Date, logger: Logger) throws
    /// Whether handling a message may schedule a timer: the node wakes its timer scheduler after a batch only
    /// if one of its handlers may have.
    var schedulesTimers: Bool { get }
    /// Exchanges of an external contract it subscribes to (declared with the node's topology).
    var exchanges: [Topology.Exchange] { get }
    /// For a message without a type property (an external producer's), the type this handler reads it as,
    /// if it subscribes to that exchange and routing key.
    func messageType(forExternal exchange: String, routingKey: String) -> String?
    /// The instance (or aggregate) the message belongs to, if this handler knows it: while a message of it is
    /// held (retrying, or dead-lettered), its later messages wait behind it, in order.
    func orderingKey(for message: any Message, envelope: Envelope, in work: any UnitOfWork) throws -> String?
}

/// Where a handler's dispatched command goes: its envelope, ready to handle or to send.
public typealias CommandDispatch = (Envelope) throws -> Void

extension NodeHandler {
    public func handle(
        _ message: any Message,
        envelope: Envelope,
        in work: any UnitOfWork,
        now: Date,
        logger: Logger,
        dispatch: CommandDispatch
    ) throws {
        try handle(message, envelope: envelope, in: work, now: now, logger: logger)
    }

    public func fire(_ timer: DueTimer, in work: any UnitOfWork, now: Date, logger: Logger) throws {}
    public var schedulesTimers: Bool { false }
    public var exchanges: [Topology.Exchange] { [] }
    public func messageType(forExternal exchange: String, routingKey: String) -> String? { nil }
    public func orderingKey(for message: any Message, envelope: Envelope, in work: any UnitOfWork) throws -> String? {
        nil
    }
}

/// Hosts a process manager in a node: correlates, loads the instance as stored, runs the engine and records
/// the transition (with the state after it) and everything it issued.
public struct ProcessManagerHost<State: ProcessState>: NodeHandler {
    /// The engine.
    public let engine: ProcessEngine<State>
    /// A process manager schedules deadlines.
    public var schedulesTimers: Bool { true }
    let cache: InstanceCache<State>

    /// Wraps a definition, validating it.
    /// - Parameters:
    ///   - definition: The process manager.
    ///   - cacheCapacity: Instances kept in memory between events (0 turns the cache off).
    /// - Throws: ``DefinitionError`` for a broken definition: the node must not start.
    public init(_ definition: ProcessManager<State>, cacheCapacity: Int = 10_000) throws(DefinitionError) {
        engine = try ProcessEngine(definition)
        cache = InstanceCache(capacity: cacheCapacity)
    }

    public var messageTypes: [any Message.Type] { engine.definition.handledTypes + Self.administrationTypes }

    /// The stored instance: from the cache if it holds the committed version (one small lookup), else its
    /// stored state. The version check makes a rolled-back transaction harmless: its instance never matches.
    func load(_ instanceID: String, _ work: any UnitOfWork) throws -> ProcessInstance<State>? {
        if let cached = cache[instanceID] {
            guard let version = try work.instanceVersion(instanceID, processManager: name) else { return nil }
            if cached.version == version { return cached }
        }
        guard let stored = try work.storedInstance(instanceID, processManager: name) else { return nil }
        return try work.instance(from: stored, instanceID, of: engine)
    }

    public var name: String { engine.definition.name }

    /// The ordering key of an instance's messages: while one of them is held, the later ones wait behind it.
    static func orderingKey(processManager: String, instanceID: String) -> String {
        instanceOrderingKey(processManager: processManager, instanceID: instanceID)
    }

    /// Exactly the events (and commands) it handles: other messages of its categories never reach its queue.
    public var bindings: [Topology.Binding] {
        engine.definition.messageNames.sorted().map {
            Topology.Binding(queue: "", exchange: Routing.eventExchange, bindingKey: $0)
        }
            + engine.definition.commandNames.sorted().map {
                Topology.Binding(queue: "", exchange: Routing.commandExchange, bindingKey: $0)
            }
    }

    public func handles(_ envelope: Envelope) -> Bool {
        engine.definition.messageTypes.contains(envelope.messageType)
            || Self.isAdministration(envelope)
    }

    /// The instance the event correlates to, if it exists or the event names it.
    private func instanceID(for message: any Message, envelope: Envelope, in work: any UnitOfWork) throws -> String? {
        switch engine.correlationKey(for: message, envelope: envelope) {
        case .instance(let id)?: return id
        case .association(let association, let value)?:
            return try work.instance(associatedWith: value, as: association, processManager: name)
        case nil: return nil
        }
    }

    public func orderingKey(for message: any Message, envelope: Envelope, in work: any UnitOfWork) throws -> String? {
        try instanceID(for: message, envelope: envelope, in: work).map {
            Self.orderingKey(processManager: name, instanceID: $0)
        }
    }

    public func handle(
        _ message: any Message,
        envelope: Envelope,
        in work: any UnitOfWork,
        now: Date,
        logger: Logger
    ) throws {
        if Self.isAdministration(envelope) {
            return try administer(message, envelope: envelope, in: work, now: now, logger: logger)
        }
        let instanceID = try instanceID(for: message, envelope: envelope, in: work)
        let instance = try instanceID.flatMap { try load($0, work) }
        switch try engine.handle(message, envelope: envelope, instanceID: instanceID, instance: instance, now: now) {
        case .transition(let next, let transition):
            try work.record(transition, instance: next, of: engine, route: Routing.destination)
            cache[next.id] = next
            logger.debug(
                "process moved",
                metadata: [
                    "baton.process_id": "\(next.id)", "baton.message_id": "\(envelope.messageID)",
                    "lifecycle": "\(next.lifecycle.rawValue)",
                ]
            )
        case .skipped(let reason):
            logger.info(
                "event skipped",
                metadata: [
                    "baton.message_id": "\(envelope.messageID)", "reason": "\(reason)", "process_manager": "\(name)",
                ]
            )
        case .refused(let reason):
            throw Rejection("\(name): \(reason)")
        case .answered(let instanceID, let issued):
            for message in issued {
                let destination = Routing.destination(of: message)
                try work.enqueue(message.envelope, exchange: destination.exchange, routingKey: destination.routingKey)
            }
            logger.info(
                "event for a missing instance answered",
                metadata: [
                    "baton.message_id": "\(envelope.messageID)", "baton.process_id": "\(instanceID)",
                    "process_manager": "\(name)", "issued": "\(issued.count)",
                ]
            )
        }
    }

    public func fire(_ timer: DueTimer, in work: any UnitOfWork, now: Date, logger: Logger) throws {
        guard timer.processManager == name else { return }
        guard let instance = try load(timer.instanceID, work) else {
            try work.deleteTimer(timer)
            return
        }
        switch try engine.fire(timer: timer.name, dueAt: timer.dueAt, instance: instance, now: now) {
        case .transition(let next, let transition):
            try work.record(transition, instance: next, of: engine, route: Routing.destination)
            cache[next.id] = next
        case .skipped(let reason):
            try work.deleteTimer(timer)
            logger.info("timer skipped", metadata: ["reason": "\(reason)"])
        case .refused, .answered:
            preconditionFailure("a timer of an existing instance is never for a missing one")
        }
    }
}

/// The ordering key of a process instance's messages (and, behind them, its timers).
func instanceOrderingKey(processManager: String, instanceID: String) -> String {
    "\(processManager)/\(instanceID)"
}

/// Recently used process instances, bounded: the least recently used one is evicted first.
///
/// Each use appends the id with a fresh tick to a queue of uses; eviction pops uses from its front and evicts an
/// instance only when the popped use is its latest one. The queue is rebuilt from the live entries when it
/// holds twice the capacity, so a hot instance cannot make it grow without bound.
final class InstanceCache<State: ProcessState>: Sendable {
    private struct Entries {
        let capacity: Int
        var instances: [String: (instance: ProcessInstance<State>, tick: UInt64)] = [:]
        var uses: Deque<(id: String, tick: UInt64)> = []
        var tick: UInt64 = 0

        mutating func use(_ id: String, _ instance: ProcessInstance<State>) {
            tick += 1
            instances[id] = (instance, tick)
            uses.append((id, tick))
            while instances.count > capacity, let oldest = uses.popFirst() {
                if instances[oldest.id]?.tick == oldest.tick { instances[oldest.id] = nil }
            }
            if uses.count > 2 * capacity {
                uses = Deque(instances.map { (id: $0.key, tick: $0.value.tick) }.sorted { $0.tick < $1.tick })
            }
        }
    }

    private let entries: Mutex<Entries>

    init(capacity: Int) {
        entries = Mutex(Entries(capacity: capacity))
    }

    /// How many instances it holds.
    var count: Int { entries.withLock { $0.instances.count } }
    /// How many uses it remembers (at most twice its capacity).
    var recordedUses: Int { entries.withLock { $0.uses.count } }

    subscript(id: String) -> ProcessInstance<State>? {
        get {
            entries.withLock { entries in
                guard let instance = entries.instances[id]?.instance else { return nil }
                entries.use(id, instance)
                return instance
            }
        }
        set {
            guard let newValue else { return }
            entries.withLock { $0.use(id, newValue) }
        }
    }
}

extension UnitOfWork {
    /// Loads a process instance as it was stored after its latest transition: no handler runs.
    ///
    /// An instance that last moved before Baton stored the state of every transition (stores written before
    /// the state was kept with each transition, where only every 20th was) is rebuilt once from its latest
    /// snapshot and the transitions after it, re-running their handlers; its next transition stores its state.
    /// - Parameters:
    ///   - instanceID: The instance.
    ///   - engine: Its process manager.
    /// - Returns: The instance, or `nil` if it does not exist.
    /// - Throws: A decoding error for a state the current ``ProcessState`` cannot read.
    public func loadInstance<State>(
        _ instanceID: String,
        of engine: ProcessEngine<State>
    ) throws -> ProcessInstance<State>? {
        try storedInstance(instanceID, processManager: engine.definition.name).map {
            try instance(from: $0, instanceID, of: engine)
        }
    }

    func instance<State>(
        from stored: StoredInstance,
        _ instanceID: String,
        of engine: ProcessEngine<State>
    ) throws -> ProcessInstance<State> {
        if let state = stored.state { return try ProcessInstance<State>.decodeStored(state) }
        let snapshot = try stored.earlierState.map { try ProcessInstance<State>.decodeStored($0) }
        let transitions = try transitions(
            of: engine.definition.name,
            instance: instanceID,
            after: snapshot?.version ?? 0
        )
        var rebuilt = try engine.replay(from: snapshot, transitions: transitions, instanceID: instanceID)
        // Stores that kept no state with each transition predate definition versions: it started under v1.
        rebuilt.definitionVersion = snapshot?.definitionVersion ?? 1
        return rebuilt
    }
}
