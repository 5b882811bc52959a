import Baton
import Foundation
import Logging

/// How a node runs one message through its handlers inside a unit of work: the handlers that take it, then the
/// internal commands they dispatch — handled in the same transaction when a handler of the node takes them
/// (each recorded in the inbox), else queued for the broker — then the message's own inbox record, all or nothing.
/// A node does this for every delivery; `ServiceScenario` does it in tests.
public struct Delivery: Sendable {
    /// Every handler of the node.
    public let handlers: [any NodeHandler]
    /// Decodes what they take.
    public let registry: MessageRegistry
    /// The inbox's consumer name (the node's).
    public let consumer: String

    /// Describes a node's handling.
    public init(handlers: [any NodeHandler], registry: MessageRegistry, consumer: String) {
        self.handlers = handlers
        self.registry = registry
        self.consumer = consumer
    }

    /// How the messages that share a transaction are kept apart.
    public enum Isolation: Sendable {
        /// Each message in its own savepoint: one that fails is rolled back alone, and the others commit.
        case savepoint
        /// No savepoint: a failing message throws ``IsolationNeeded``, and the caller rolls the whole transaction
        /// back and runs it again with ``savepoint``. A savepoint makes the store copy every page a message
        /// changes (with SQLite, a fifth of the embedded benchmark's time), so a batch whose messages all succeed
        /// — nearly every batch — is cheaper without.
        case none
    }
}

extension Delivery.Isolation {
    /// Runs the work of one message or timer (`id`) inside a batch's transaction: in a savepoint, where a
    /// failure rolls back this work alone and is rethrown; or without, where a failure throws
    /// ``Delivery/IsolationNeeded`` (a ``StoreConflict`` is rethrown as it is) and the caller must roll back the
    /// transaction.
    public func run(_ id: String, in work: any UnitOfWork, _ body: () throws -> Void) throws {
        switch self {
        case .savepoint:
            try work.inSavepoint(body)
        case .none:
            do {
                try body()
            } catch let conflict as any StoreConflict {
                throw conflict
            } catch {
                throw Delivery.IsolationNeeded(messageID: id, failure: error)
            }
        }
    }
}

extension Delivery {
    /// A message (or timer) failed in a transaction run without savepoints (``Isolation/none``): roll it back and
    /// run it again with each in its own savepoint, so that the failure is kept to its message.
    public struct IsolationNeeded: Error, CustomStringConvertible {
        /// The message that failed (for a timer, its trigger's id).
        public let messageID: String
        /// What its handlers threw.
        public let failure: any Error

        public var description: String { "\(messageID) failed in a batch without savepoints: \(failure)" }
    }

    /// Runs `takers` on the message and records it in the inbox: all of it or nothing.
    /// - Parameters:
    ///   - isolation: With ``Isolation/savepoint`` (the default), a failure rolls back this message's changes and
    ///     is rethrown; with ``Isolation/none``, it throws ``IsolationNeeded`` (a ``StoreConflict`` is rethrown as
    ///     it is) and the caller must roll back the transaction.
    ///   - recordingInbox: Records the message in the inbox (the default); `false` for one that cannot come
    ///     again, taken from its queue in this same transaction (``IncomingMessage/isWrittenOnce``).
    public func handle(
        _ message: any Message,
        _ envelope: Envelope,
        by takers: [any NodeHandler],
        in work: any UnitOfWork,
        now: Date,
        logger: Logger,
        isolation: Isolation = .savepoint,
        recordingInbox: Bool = true
    ) throws {
        let run = {
            for handler in takers {
                try handler.handle(message, envelope: envelope, in: work, now: now, logger: logger) { command in
                    try dispatch(command, work, now, logger, depth: 1)
                }
            }
            if recordingInbox {
                try work.markHandled(envelope.messageID, consumer: consumer, issuedAt: envelope.timestamp, at: now)
            }
        }
        try isolation.run(envelope.messageID, in: work, run)
    }

    /// A command a handler dispatched.
    private func dispatch(_ command: Envelope, _ work: any UnitOfWork, _ now: Date, _ logger: Logger, depth: Int) throws
    {
        let takers = handlers.filter { $0.handles(command) && $0.exchanges.isEmpty }
        guard !takers.isEmpty else {
            try work.enqueue(command, exchange: Routing.commandExchange, routingKey: command.messageName)
            return
        }
        guard depth <= 8 else {
            throw NodeError(
                message:
                    "\(command.messageType) was dispatched 8 commands deep: do two handlers dispatch to each other?"
            )
        }
        if try work.hasHandled(command.messageID, consumer: consumer) { return }
        let message = try registry.decode(command)
        for handler in takers {
            try handler.handle(message, envelope: command, in: work, now: now, logger: logger) { next in
                try dispatch(next, work, now, logger, depth: depth + 1)
            }
        }
        try work.markHandled(command.messageID, consumer: consumer, issuedAt: command.timestamp, at: now)
    }
}
