import Baton
import Foundation
import Logging

/// How a node runs one message through its handlers inside a unit of work: the handlers that take it, then the
/// internal commands they dispatch — handled in the same transaction when a handler of the node takes them
/// (each recorded in the inbox), else queued for the broker — then the message's own inbox record, all in one
/// savepoint. A node does this for every delivery; `ServiceScenario` does it in tests.
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

    /// Runs `takers` on the message and records it in the inbox, in a savepoint: all of it or nothing.
    public func handle(
        _ message: any Message,
        _ envelope: Envelope,
        by takers: [any NodeHandler],
        in work: any UnitOfWork,
        now: Date,
        logger: Logger
    ) throws {
        try work.inSavepoint {
            for handler in takers {
                try handler.handle(message, envelope: envelope, in: work, now: now, logger: logger) { command in
                    try dispatch(command, work, now, logger, depth: 1)
                }
            }
            try work.markHandled(envelope.messageID, consumer: consumer, issuedAt: envelope.timestamp, at: now)
        }
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
