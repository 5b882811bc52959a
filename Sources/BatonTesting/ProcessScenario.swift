import Baton
import Foundation

/// Tests a process manager without a broker or a database: events in, commands, timers and lifecycle out.
///
/// ```swift
/// var scenario = try ProcessScenario(fulfillment)
/// try scenario.given(OrderConfirmed(orderID: "o-1", …))
/// let outcome = try scenario.when(InventoryReserved(orderID: "o-1"))
/// #expect(outcome.commands(CreateShipment.self) == [CreateShipment(orderID: "o-1", …)])
/// try scenario.advance(by: .seconds(31))   // fires due timers
/// #expect(scenario.instance("o-1")?.lifecycle == .compensating)
/// ```
///
/// Correlation, skipping and timers behave as in a node: the same ``ProcessEngine`` runs the handlers.
public struct ProcessScenario<State: ProcessState> {
    /// What one event or timer did.
    public struct Outcome {
        /// The engine's decision.
        public var decision: ProcessEngine<State>.Decision

        /// The transition, if the instance moved.
        public var transition: ProcessTransition? {
            if case .transition(_, let transition) = decision { return transition }
            return nil
        }

        /// Why nothing happened, if nothing did (the event was skipped, or refused: a node dead-letters it).
        public var skipReason: ProcessEngine<State>.SkipReason? {
            switch decision {
            case .skipped(let reason), .refused(let reason): reason
            case .transition, .answered: nil
            }
        }

        /// Whether a node dead-letters the event (its instance is missing and its handler says so).
        public var isRefused: Bool {
            if case .refused = decision { return true }
            return false
        }

        /// The lifecycle after it (`nil` if skipped).
        public var lifecycle: ProcessLifecycle? { transition?.lifecycle }

        /// Everything issued, in order.
        public var issued: [IssuedMessage] {
            switch decision {
            case .transition(_, let transition): transition.issued
            case .answered(_, let issued): issued
            case .skipped, .refused: []
            }
        }

        /// The issued commands of one type, decoded, in order.
        public func commands<C: Command>(_ type: C.Type) -> [C] {
            decoded(type, kind: .command)
        }

        /// The published events of one type, decoded, in order.
        public func events<E: Event>(_ type: E.Type) -> [E] {
            decoded(type, kind: .event)
        }

        /// The type names of everything issued, in order.
        public var issuedTypes: [String] { issued.map(\.envelope.messageType) }

        private func decoded<M: Message>(_ type: M.Type, kind: IssuedMessage.Kind) -> [M] {
            issued.filter { $0.kind == kind && $0.envelope.messageType == M.messageType }.map {
                try! JSONDecoder.baton.decode(M.self, from: $0.envelope.payload)
            }
        }
    }

    /// The engine under test.
    public let engine: ProcessEngine<State>
    /// The scenario's clock.
    public let clock: TestClock
    /// The instances, by id, as a node would store them.
    public private(set) var instances: [String: ProcessInstance<State>] = [:]
    /// Every transition, per instance, in order.
    public private(set) var transitions: [String: [ProcessTransition]] = [:]
    private var associations: [String: String] = [:]
    private var sequence = 0

    /// Creates a scenario.
    /// - Parameters:
    ///   - definition: The process manager; it is validated as a node would.
    ///   - clock: The clock handlers read (advance it to fire timers).
    /// - Throws: ``DefinitionError`` for a broken definition.
    public init(_ definition: ProcessManager<State>, clock: TestClock = TestClock()) throws {
        self.engine = try ProcessEngine(definition)
        self.clock = clock
    }

    /// The instance with this id, if it exists.
    public func instance(_ id: String) -> ProcessInstance<State>? {
        instances[id]
    }

    /// Handles events whose outcome the test does not look at (the history).
    public mutating func given(_ events: any Event...) throws {
        for event in events { _ = try when(event) }
    }

    /// Handles one event as a node would and returns what happened.
    /// - Parameters:
    ///   - event: The event.
    ///   - correlationID: The envelope's correlation id, for managers that correlate by it.
    ///   - messageID: The envelope's message id (unique by default).
    ///   - headers: Extra headers (e.g. `traceparent`).
    @discardableResult
    public mutating func when<M: Message>(
        _ event: M,
        correlationID: String? = nil,
        messageID: String? = nil,
        headers: [String: String] = [:]
    ) throws -> Outcome {
        sequence += 1
        let envelope = Envelope(
            messageID: messageID ?? "scenario-\(sequence)",
            messageType: M.messageType,
            correlationID: correlationID,
            timestamp: clock.now(),
            headers: headers,
            payload: MessageRegistry.encode(event)
        )
        let instanceID: String?
        switch engine.correlationKey(for: event, envelope: envelope) {
        case .instance(let id)?: instanceID = id
        case .association(let name, let value)?: instanceID = associations["\(name)|\(value)"]
        case nil: instanceID = nil
        }
        let decision = try engine.handle(
            event,
            envelope: envelope,
            instanceID: instanceID,
            instance: instanceID.flatMap { instances[$0] },
            now: clock.now()
        )
        apply(decision)
        return Outcome(decision: decision)
    }

    /// Aborts an instance as an operator would (`processes abort ID --reason TEXT`).
    /// - Parameters:
    ///   - instanceID: The instance.
    ///   - reason: Why.
    /// - Throws: If there is no such instance, or what the abort handler throws.
    @discardableResult
    public mutating func abort(_ instanceID: String, reason: String) throws -> Outcome {
        guard let instance = instances[instanceID] else {
            throw ScenarioError("no instance '\(instanceID)' to abort")
        }
        sequence += 1
        let decision = try engine.abort(instance, reason: reason, messageID: "scenario-\(sequence)", now: clock.now())
        apply(decision)
        return Outcome(decision: decision)
    }

    /// Moves the clock and fires every timer that comes due, earliest first.
    @discardableResult
    public mutating func advance(by interval: Duration) throws -> [Outcome] {
        clock.advance(by: interval)
        var outcomes: [Outcome] = []
        while let (id, name, dueAt) = nextDueTimer() {
            let decision = try engine.fire(timer: name, dueAt: dueAt, instance: instances[id]!, now: clock.now())
            apply(decision)
            outcomes.append(Outcome(decision: decision))
        }
        return outcomes
    }

    private func nextDueTimer() -> (String, String, Date)? {
        let now = clock.now()
        return instances.values.flatMap { instance in instance.timers.map { (instance.id, $0.key, $0.value) } }
            .filter { $0.2 <= now }
            .min { ($0.2, $0.0, $0.1) < ($1.2, $1.0, $1.1) }
    }

    private mutating func apply(_ decision: ProcessEngine<State>.Decision) {
        guard case .transition(let instance, let transition) = decision else { return }
        instances[instance.id] = instance
        transitions[instance.id, default: []].append(transition)
        for (name, value) in transition.associations { associations["\(name)|\(value)"] = instance.id }
    }
}

/// A scenario step that cannot be taken (e.g. aborting an instance that does not exist).
public struct ScenarioError: Error, CustomStringConvertible {
    /// What is wrong.
    public var description: String

    init(_ description: String) {
        self.description = description
    }
}
