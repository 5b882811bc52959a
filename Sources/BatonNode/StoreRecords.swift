import Baton
import Foundation

// The records the store port reads and writes.

/// An instance's row in the store.
public struct StoredInstance: Sendable, Hashable {
    /// Its committed version (the number of transitions).
    public var version: Int64
    /// The instance (JSON) as it was after its latest transition.
    public var state: Data?
    /// For an instance that last moved before the store kept the state of every transition: a snapshot of an
    /// earlier version, if one was taken (the transitions after it rebuild the rest once).
    public var earlierState: Data?

    /// Creates a record.
    public init(version: Int64, state: Data?, earlierState: Data? = nil) {
        self.version = version
        self.state = state
        self.earlierState = earlierState
    }
}

/// A message waiting in the outbox.
public struct OutboxMessage: Sendable, Hashable {
    /// Its position in the outbox.
    public var sequence: Int64
    /// Where it goes.
    public var exchange: String
    /// Its routing key.
    public var routingKey: String
    /// The message.
    public var envelope: Envelope
    /// The broker refused it before: it is published on its own, so that a refusal (which closes the channel
    /// over everything in flight) costs no other message anything.
    public var wasRefused: Bool

    /// Creates a record.
    public init(sequence: Int64, exchange: String, routingKey: String, envelope: Envelope, wasRefused: Bool) {
        self.sequence = sequence
        self.exchange = exchange
        self.routingKey = routingKey
        self.envelope = envelope
        self.wasRefused = wasRefused
    }

    /// What the row keeps its order within (see ``orderScope(exchange:routingKey:envelope:)``).
    public var orderScope: String {
        Self.orderScope(exchange: exchange, routingKey: routingKey, envelope: envelope)
    }

    /// What a message keeps its order within: its partition key, and where it goes — a command's service
    /// (commands are routed by their name, `<service>.<Name>`), a node's or dead letters' routing key, or an
    /// event's exchange (any service may listen). The relay never publishes a row while an earlier row of its
    /// scope is unsent, so a partitioned receiver takes a key's messages in the order they were committed; a
    /// command no service takes holds back later commands of its key to that service, not those to others.
    /// Stores keep it in a column of the outbox, so that the check is a lookup.
    public static func orderScope(exchange: String, routingKey: String, envelope: Envelope) -> String {
        let destination =
            switch exchange {
            case Routing.commandExchange: "\(exchange) \(routingKey.prefix { $0 != "." })"
            case Routing.nodeExchange, Routing.deadLetterExchange: "\(exchange) \(routingKey)"
            default: exchange
            }
        return "\(destination) \(envelope.partitionKey)"
    }
}

/// A timer that is due or pending.
public struct DueTimer: Sendable, Hashable {
    /// The message type of a timer's dead letter (it has no message of its own).
    public static let deadLetterType = "baton.timer"

    /// The process manager.
    public var processManager: String
    /// The instance.
    public var instanceID: String
    /// The timer's name.
    public var name: String
    /// When it is due (the business deadline its instance set).
    public var dueAt: Date
    /// When it is tried next: `dueAt`, or later after failed attempts.
    public var nextAttemptAt: Date
    /// Failed attempts so far.
    public var attempts: Int

    /// Creates a timer.
    public init(
        processManager: String,
        instanceID: String,
        name: String,
        dueAt: Date,
        nextAttemptAt: Date? = nil,
        attempts: Int = 0
    ) {
        self.processManager = processManager
        self.instanceID = instanceID
        self.name = name
        self.dueAt = dueAt
        self.nextAttemptAt = nextAttemptAt ?? dueAt
        self.attempts = attempts
    }
}

/// An instance in a listing.
public struct InstanceSummary: Sendable, Hashable, Codable {
    /// The instance id.
    public var instanceID: String
    /// Where it is.
    public var lifecycle: ProcessLifecycle
    /// How many transitions it has had.
    public var version: Int64
    /// When it started.
    public var startedAt: Date
    /// When it last moved.
    public var updatedAt: Date
    /// When its timeline was purged, leaving a tombstone (``UnitOfWork/purgeInstances(of:closedBefore:at:limit:)``);
    /// `nil` while it keeps its timeline.
    public var purgedAt: Date?

    /// Creates a record.
    public init(
        instanceID: String,
        lifecycle: ProcessLifecycle,
        version: Int64,
        startedAt: Date,
        updatedAt: Date,
        purgedAt: Date? = nil
    ) {
        self.instanceID = instanceID
        self.lifecycle = lifecycle
        self.version = version
        self.startedAt = startedAt
        self.updatedAt = updatedAt
        self.purgedAt = purgedAt
    }
}

/// Which instances a listing returns.
public struct InstanceFilter: Sendable, Hashable {
    /// The lifecycles to list; empty for any.
    public var lifecycles: Set<ProcessLifecycle>
    /// Only instances whose last transition is before this (stuck or old ones); `nil` for any.
    public var changedBefore: Date?
    /// Only instances listed after this one (keyset paging: the last instance of the previous page); `nil`
    /// from the first.
    public var after: InstancePosition?

    /// Creates a filter; the default lists everything.
    public init(lifecycles: Set<ProcessLifecycle> = [], changedBefore: Date? = nil, after: InstancePosition? = nil) {
        self.lifecycles = lifecycles
        self.changedBefore = changedBefore?.roundedToMilliseconds
        self.after = after
    }

    /// Parses an age as operators write it — `90s`, `30m`, `2h`, `7d` — into seconds; `nil` if it is not one.
    public static func seconds(inAge text: some StringProtocol) -> TimeInterval? {
        let units: [Character: TimeInterval] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        guard let unit = text.last.flatMap({ units[$0] }), let count = Double(text.dropLast()), count > 0,
            count.isFinite
        else { return nil }
        return count * unit
    }

    /// Instances not closed yet.
    public static let open = InstanceFilter(lifecycles: Set(ProcessLifecycle.allCases.filter { !$0.isClosed }))
    /// Completed and failed instances.
    public static let closed = InstanceFilter(lifecycles: Set(ProcessLifecycle.allCases.filter(\.isClosed)))

    /// Whether an instance matches.
    public func matches(_ lifecycle: ProcessLifecycle, updatedAt: Date, instanceID: String) -> Bool {
        (lifecycles.isEmpty || lifecycles.contains(lifecycle)) && changedBefore.map { updatedAt < $0 } != false
            && after.map { InstancePosition(updatedAt: updatedAt, instanceID: instanceID).isListed(after: $0) } != false
    }
}

/// Where an instance stands in a listing — most recently changed first, then by id — for keyset paging: a page
/// starts after the last position of the one before, so a page deep in a million instances costs what the first
/// one does.
public struct InstancePosition: Sendable, Hashable, CustomStringConvertible, LosslessStringConvertible {
    /// When the instance last moved (to the millisecond, as stored).
    public var updatedAt: Date
    /// Its id.
    public var instanceID: String

    /// Creates a position.
    public init(updatedAt: Date, instanceID: String) {
        self.updatedAt = updatedAt.roundedToMilliseconds
        self.instanceID = instanceID
    }

    /// The position of a listed instance.
    public init(_ summary: InstanceSummary) {
        self.init(updatedAt: summary.updatedAt, instanceID: summary.instanceID)
    }

    /// Parses `MILLISECONDS:ID`, the form ``description`` gives (for a page link).
    public init?(_ description: String) {
        guard let colon = description.firstIndex(of: ":"), let milliseconds = Int64(description[..<colon]),
            milliseconds >= 0
        else { return nil }
        self.init(
            updatedAt: Date(millisecondsSince1970: milliseconds),
            instanceID: String(description[description.index(after: colon)...])
        )
    }

    /// `MILLISECONDS:ID`.
    public var description: String { "\(updatedAt.millisecondsSince1970):\(instanceID)" }

    /// Whether this position comes after `other` in a listing.
    public func isListed(after other: InstancePosition) -> Bool {
        let (mine, theirs) = (updatedAt.millisecondsSince1970, other.updatedAt.millisecondsSince1970)
        return mine < theirs || (mine == theirs && instanceID > other.instanceID)
    }
}

/// A message that could not be handled, kept with the reason.
public struct DeadLetter: Sendable, Hashable, Codable {
    /// The store's id for it (0 before it is stored).
    public var id: Int64
    /// The message id (may be empty for a message that had none).
    public var messageID: String
    /// Its type property (empty if it had none, as external producers' messages).
    public var messageType: String
    /// The exchange it was published to.
    public var exchange: String
    /// The routing key it was published with.
    public var routingKey: String
    /// Its headers, as text.
    public var headers: [String: String]
    /// Its body.
    public var body: Data
    /// Why it was dead-lettered.
    public var reason: String
    /// The handler that failed (or the stage that refused it: `decode`, `subscriber`).
    public var handler: String
    /// How many times handling was attempted.
    public var attempts: Int
    /// When it was dead-lettered.
    public var deadAt: Date
    /// When it was replayed, if it was.
    public var replayedAt: Date?

    /// Creates a dead letter.
    public init(
        messageID: String,
        messageType: String,
        exchange: String,
        routingKey: String,
        headers: [String: String],
        body: Data,
        reason: String,
        handler: String,
        attempts: Int,
        deadAt: Date
    ) {
        self.id = 0
        self.messageID = messageID
        self.messageType = messageType
        self.exchange = exchange
        self.routingKey = routingKey
        self.headers = headers
        self.body = body
        self.reason = reason
        self.handler = handler
        self.attempts = attempts
        self.deadAt = deadAt
    }
}

/// Another writer appended to a stream after this writer read it.
public struct ConcurrencyError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The stream.
    public var stream: String
    /// The version the writer expected.
    public var expectedVersion: Int64
    /// The version found.
    public var actualVersion: Int64

    /// Creates the error.
    public init(stream: String, expectedVersion: Int64, actualVersion: Int64) {
        self.stream = stream
        self.expectedVersion = expectedVersion
        self.actualVersion = actualVersion
    }

    public var description: String {
        "stream '\(stream)' is at version \(actualVersion), the writer expected \(expectedVersion)"
    }
}

/// A message the store holds instead of the queue: its handler failed and it waits for its next attempt, or it
/// waits behind an earlier message of its instance that failed. Held messages were acknowledged to the broker in
/// the transaction that parked them; the node tries them again from here.
public struct ParkedMessage: Sendable, Hashable {
    /// Its position: messages of one ordering key are handled in this order.
    public var sequence: Int64
    /// The instance (or aggregate) it belongs to, whose later messages wait behind it; `nil` when it has none
    /// (it is retried on its own).
    public var orderingKey: String?
    /// The message id.
    public var messageID: String
    /// The exchange it arrived on.
    public var exchange: String
    /// Its routing key.
    public var routingKey: String
    /// Its type property.
    public var messageType: String?
    /// Its content type property.
    public var contentType: String?
    /// Its correlation id property.
    public var correlationID: String?
    /// Its timestamp property.
    public var timestamp: Date?
    /// Its headers.
    public var headers: [String: String]
    /// Its body.
    public var body: Data
    /// Failed attempts so far.
    public var attempts: Int
    /// When it is tried next; `nil` while it waits behind an earlier message of its key, or is dead-lettered.
    public var nextAttemptAt: Date?
    /// The dead letter it failed into: it blocks its key until that is replayed.
    public var deadLetterID: Int64?
    /// The error of its last attempt.
    public var lastError: String?

    /// Creates a parked message (`sequence` is assigned when it is stored).
    public init(
        orderingKey: String?,
        messageID: String,
        exchange: String,
        routingKey: String,
        messageType: String?,
        contentType: String?,
        correlationID: String?,
        timestamp: Date?,
        headers: [String: String],
        body: Data,
        attempts: Int,
        nextAttemptAt: Date?,
        deadLetterID: Int64? = nil,
        lastError: String? = nil
    ) {
        self.sequence = 0
        self.orderingKey = orderingKey
        self.messageID = messageID
        self.exchange = exchange
        self.routingKey = routingKey
        self.messageType = messageType
        self.contentType = contentType
        self.correlationID = correlationID
        self.timestamp = timestamp
        self.headers = headers
        self.body = body
        self.attempts = attempts
        self.nextAttemptAt = nextAttemptAt
        self.deadLetterID = deadLetterID
        self.lastError = lastError
    }
}

/// What a store holds, as a node's metrics sample it (``UnitOfWork/statistics(idleSince:)``).
public struct StoreStatistics: Sendable, Hashable {
    /// Messages waiting for the relay.
    public var pendingOutbox: Int
    /// When the oldest of them was emitted, if any waits.
    public var oldestPendingOutbox: Date?
    /// Dead letters not replayed.
    public var openDeadLetters: Int
    /// Instances per process manager and lifecycle.
    public var instances: [String: [ProcessLifecycle: Int]]
    /// Open instances per process manager with no transition since the cut-off: stuck, or waiting long.
    public var idleInstances: [String: Int]

    /// Creates statistics.
    public init(
        pendingOutbox: Int = 0,
        oldestPendingOutbox: Date? = nil,
        openDeadLetters: Int = 0,
        instances: [String: [ProcessLifecycle: Int]] = [:],
        idleInstances: [String: Int] = [:]
    ) {
        self.pendingOutbox = pendingOutbox
        self.oldestPendingOutbox = oldestPendingOutbox
        self.openDeadLetters = openDeadLetters
        self.instances = instances
        self.idleInstances = idleInstances
    }
}

/// The store's figures at one moment (``Node/storeSample``).
public struct StoreSample: Sendable {
    /// The figures.
    public var statistics: StoreStatistics
    /// When they were read.
    public var sampledAt: Date
}
