import Foundation

/// A message a process instance issued: a command to send or an event to publish, with its final envelope
/// (deterministic id, correlation and causation set).
public struct IssuedMessage: Sendable, Hashable, Codable {
    /// Whether it is a command or an event.
    public enum Kind: String, Sendable, Hashable, Codable {
        case command, event
    }

    /// Command or event.
    public var kind: Kind
    /// The envelope to send.
    public var envelope: Envelope

    /// Creates an issued message.
    public init(kind: Kind, envelope: Envelope) {
        self.kind = kind
        self.envelope = envelope
    }
}

/// A message registered to undo a step, issued (last registered first) when the instance compensates.
public struct CompensationStep: Sendable, Hashable, Codable {
    /// The command's type name.
    public var messageType: String
    /// Its JSON body.
    public var payload: Data
    /// The command's ``Message/partitionKey``, if its type declares one (absent in states stored before it
    /// was kept).
    public var partitionKey: String?

    /// A compensation step (``ProcessContext/onCompensation(_:)`` makes them).
    public init(messageType: String, payload: Data, partitionKey: String? = nil) {
        self.messageType = messageType
        self.payload = payload
        self.partitionKey = partitionKey
    }
}

/// A change to an instance's timers.
public enum TimerOperation: Sendable, Hashable, Codable {
    /// The timer fires at `dueAt` (replacing an earlier schedule of the same name).
    case schedule(name: String, dueAt: Date)
    /// The timer will not fire.
    case cancel(name: String)
}

/// What made an instance move.
public enum ProcessTrigger: Sendable, Hashable, Codable {
    /// An event arrived.
    case event(Envelope)
    /// A timer came due.
    case timer(name: String, dueAt: Date)
    /// An operator aborted the instance (with the id of their command).
    case abort(messageID: String, reason: String)

    /// The id that de-duplicates this trigger and derives the ids of what it causes.
    public func messageID(processManager: String, instanceID: String) -> String {
        switch self {
        case .event(let envelope):
            return envelope.messageID
        case .timer(let name, let dueAt):
            return MessageID.derived(
                at: dueAt,
                from: "timer",
                processManager,
                instanceID,
                name,
                String(dueAt.millisecondsSince1970)
            )
        case .abort(let messageID, _):
            return messageID
        }
    }

    /// When this trigger came about, which the ids of what it causes sort by (``MessageID/derived(at:from:)``):
    /// the event's timestamp, the timer's due time; `nil` for an operator's abort (rare: its ids are random).
    public var time: Date? {
        switch self {
        case .event(let envelope): envelope.timestamp
        case .timer(_, let dueAt): dueAt
        case .abort: nil
        }
    }
}

/// One handled event or timer of one instance: the record appended to the instance's stream.
public struct ProcessTransition: Sendable, Hashable, Codable {
    /// The instance's version after this transition (1 for the start).
    public var version: Int64
    /// What happened.
    public var trigger: ProcessTrigger
    /// The handler's clock reading (replays use it, so they are deterministic).
    public var at: Date
    /// The lifecycle after the transition.
    public var lifecycle: ProcessLifecycle
    /// The commands and events issued.
    public var issued: [IssuedMessage]
    /// Timers scheduled or cancelled.
    public var timers: [TimerOperation]
    /// Associations the instance added (name → value).
    public var associations: [String: String]
    /// Why it is compensating or failed, when that is what happened.
    public var reason: String?

    /// Creates a transition record (the engine makes them; stores and tests read and write them).
    public init(
        version: Int64,
        trigger: ProcessTrigger,
        at: Date,
        lifecycle: ProcessLifecycle,
        issued: [IssuedMessage],
        timers: [TimerOperation],
        associations: [String: String],
        reason: String?
    ) {
        self.version = version
        self.trigger = trigger
        self.at = at
        self.lifecycle = lifecycle
        self.issued = issued
        self.timers = timers
        self.associations = associations
        self.reason = reason
    }
}

/// The stored state of one instance: what replaying its transitions produces.
public struct ProcessInstance<State: ProcessState>: Sendable, Equatable, Codable {
    /// The instance id (the correlation key).
    public var id: String
    /// The handlers' state.
    public var state: State
    /// Where the instance is.
    public var lifecycle: ProcessLifecycle
    /// How many transitions it has had.
    public var version: Int64
    /// Undo steps, in the order registered.
    public var compensations: [CompensationStep]
    /// Pending timers by name.
    public var timers: [String: Date]
    /// Why it compensated or failed.
    public var reason: String?
    /// The version of the definition it started under (1 for instances stored before versions were recorded).
    public var definitionVersion: Int
    /// The version of ``state``'s shape (see ``ProcessState/stateVersion``).
    public var stateVersion: Int

    /// A new instance before its start handler.
    /// - Parameters:
    ///   - id: The instance id.
    ///   - definitionVersion: The version of the definition it starts under.
    public init(id: String, definitionVersion: Int = 1) {
        self.id = id
        self.definitionVersion = definitionVersion
        self.stateVersion = State.stateVersion
        self.state = State()
        self.lifecycle = .started
        self.version = 0
        self.compensations = []
        self.timers = [:]
        self.reason = nil
    }
}

extension ProcessInstance {
    /// The instance as a store keeps it: a ``StoredRecord`` around its state's JSON (``JSONEncoder/baton``, the
    /// shape upcasters read), without key conversion or base64 for anything else.
    /// - Throws: What encoding the state throws.
    public func storedRecord() throws -> Data {
        StoredInstanceFields(
            id: id,
            stateVersion: stateVersion,
            state: try WireJSON.encode(state),
            lifecycle: lifecycle,
            version: version,
            compensations: compensations,
            timers: timers,
            reason: reason,
            definitionVersion: definitionVersion
        ).storedRecord
    }

    /// Decodes an instance as a store holds it, written by this release or an earlier one (as a
    /// ``storedRecord()`` or as the JSON of earlier releases): a state of an older version goes through
    /// ``ProcessState/stateUpcasters``; versions absent from old records are 1.
    /// - Throws: ``NewerStateError`` for a state written by a later release (the node leaves it for one that
    ///   knows it); ``UpcastError`` when an upcaster is missing or fails; a decoding error for a broken record.
    public static func decodeStored(_ data: Data) throws -> ProcessInstance {
        if data.first != UInt8(ascii: "{") { return try decode(StoredInstanceFields(storedRecord: data)) }
        // Earlier releases' JSON. The usual case, one parse: in the current shape.
        if let instance = try? JSONDecoder.baton.decode(ProcessInstance.self, from: data),
            instance.stateVersion >= State.stateVersion
        {
            guard instance.stateVersion == State.stateVersion else {
                throw NewerStateError(
                    instanceID: instance.id,
                    version: instance.stateVersion,
                    known: State.stateVersion
                )
            }
            return instance
        }
        guard var record = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            return try JSONDecoder.baton.decode(ProcessInstance.self, from: data)  // reports what is wrong
        }
        let stored = record["state_version"] as? Int ?? 1
        record["definition_version"] = record["definition_version"] ?? 1
        let state = try JSONSerialization.data(withJSONObject: record["state"] ?? [String: Any]())
        record["state"] = try JSONSerialization.jsonObject(
            with: currentState(state, version: stored, instanceID: record["id"] as? String ?? "")
        )
        record["state_version"] = State.stateVersion
        return try JSONDecoder.baton.decode(
            ProcessInstance.self,
            from: JSONSerialization.data(withJSONObject: record)
        )
    }
}

extension ProcessInstance {
    /// A state's JSON stored at `version`, in the current shape: upcast if older.
    /// - Throws: ``NewerStateError`` if it is newer than this release knows; ``UpcastError``.
    private static func currentState(_ state: Data, version: Int, instanceID: String) throws -> Data {
        guard version <= State.stateVersion else {
            throw NewerStateError(instanceID: instanceID, version: version, known: State.stateVersion)
        }
        guard version < State.stateVersion else { return state }
        return try Upcaster.upcast(
            state,
            from: version,
            to: State.stateVersion,
            using: Upcaster.chain(State.stateUpcasters, current: State.stateVersion, of: "\(State.self)"),
            what: "the state \(State.self)"
        )
    }

    /// An instance from its stored fields, its state upcast if it is of an older version.
    private static func decode(_ fields: StoredInstanceFields) throws -> ProcessInstance {
        let state = try currentState(fields.state, version: fields.stateVersion, instanceID: fields.id)
        var instance = ProcessInstance(id: fields.id, definitionVersion: fields.definitionVersion)
        instance.state = try WireJSON.decode(State.self, from: state)
        instance.lifecycle = fields.lifecycle
        instance.version = fields.version
        instance.compensations = fields.compensations
        instance.timers = fields.timers
        instance.reason = fields.reason
        return instance
    }
}

/// A stored state of a later version than this release knows: written by a newer release during a rolling
/// deploy. The message that needs it waits (it is kept and tried again), as a newer message version does.
public struct NewerStateError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The instance.
    public var instanceID: String
    /// The version stored.
    public var version: Int
    /// The version this release knows.
    public var known: Int

    public var description: String {
        "the state of instance '\(instanceID)' is v\(version), newer than the v\(known) this node knows: it waits for a node that knows it"
    }
}
