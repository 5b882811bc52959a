import Baton
import BatonNode
import Foundation
import Logging

/// Tests a service's handlers — command handlers with their aggregates, event handlers, subscribers — without a
/// broker or a database: messages in; recorded events, issued commands and read-model documents out. Each
/// message is handled as a node handles it (``Delivery``): in one transaction of an ``InMemoryStore``, with the
/// inbox, and with the internal commands a subscriber dispatches run by the service's own handlers.
///
/// ```swift
/// var scenario = ServiceScenario(handlers: InventoryService.handlers)
/// try await scenario.when(AddStock(sku: "book-1", quantity: 5))
/// let outcome = try await scenario.when(ReserveInventory(orderID: "o-1", lines: [...]))
/// #expect(outcome.events(InventoryReserved.self).map(\.orderID) == ["o-1"])
/// ```
public struct ServiceScenario {
    /// What one message did.
    public struct Outcome: Sendable {
        /// What it queued for the broker (events, and commands for other services), in order.
        public var published: [OutboxMessage]

        /// The published events of one type, decoded, in order.
        public func events<E: Event>(_ type: E.Type) -> [E] { decoded(type) }

        /// The commands of one type sent to other services, decoded, in order.
        public func commands<C: Command>(_ type: C.Type) -> [C] { decoded(type) }

        /// The type names of everything published, in order.
        public var publishedTypes: [String] { published.map(\.envelope.messageType) }

        private func decoded<M: Message>(_ type: M.Type) -> [M] {
            published.filter { $0.envelope.messageType == M.messageType }.map {
                try! JSONDecoder.baton.decode(M.self, from: $0.envelope.payload)
            }
        }
    }

    /// The store the handlers write to; read it for what a test needs beyond ``document(_:in:id:)``.
    public let store = InMemoryStore()
    /// The clock the handlers read.
    public let clock: TestClock
    private let delivery: Delivery
    private var sequence = 0

    /// A scenario of these handlers.
    public init(handlers: [any NodeHandler], clock: TestClock = TestClock()) {
        self.clock = clock
        delivery = Delivery(
            handlers: handlers,
            registry: MessageRegistry(types: handlers.flatMap(\.messageTypes)),
            consumer: "scenario"
        )
    }

    /// Delivers a message as the node would: to every handler that takes it, in one transaction. A message
    /// with a `messageID` handled before has no second effect.
    /// - Throws: ``ScenarioError`` if no handler takes it, or what the handlers throw (nothing is kept then).
    @discardableResult
    public mutating func when<M: Message>(_ message: M, messageID: String? = nil) async throws -> Outcome {
        sequence += 1
        let envelope = Envelope(
            messageID: messageID ?? "scenario-\(sequence)",
            messageType: M.messageType,
            timestamp: clock.now(),
            payload: MessageRegistry.encode(message)
        )
        let takers = delivery.handlers.filter { $0.handles(envelope) }
        guard !takers.isEmpty else { throw ScenarioError("no handler takes \(M.messageType)") }
        let decoded = try delivery.registry.decode(envelope)  // validated as at a node's edge
        let (delivery, now) = (self.delivery, clock.now())
        let (_, published) = try await store.writeHandingOverOutbox { work in
            guard try !work.hasHandled(envelope.messageID, consumer: delivery.consumer) else { return }
            try delivery.handle(decoded, envelope, by: takers, in: work, now: now, logger: Logger(label: "scenario"))
        }
        return Outcome(published: published)
    }

    /// A read-model document a handler saved, by id or alias.
    public func document<D: Decodable & Sendable>(_ type: D.Type, in collection: String, id: String) async throws -> D?
    {
        try await store.read { try $0.document(D.self, in: collection, idOrAlias: id) }
    }
}
