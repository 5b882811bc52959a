import Baton
import BatonNode
import Foundation
import Testing

/// The transport port's conformance suite: what every adapter must do the same way. Each adapter's test target
/// runs every case (`@Test(arguments: TransportConformance.Case.allCases)`) against a transport of its own.
/// Names are unique per run, so the cases share a broker with anything else.
public struct TransportConformance: Sendable {
    /// The behaviours checked.
    public enum Case: String, CaseIterable, Sendable {
        case routesByTopicPatternInPublishOrder
        case refusesAMessageForAMissingExchange
        case doesNotConfirmACommandThatNoQueueTakes
        case confirmsAnEventThatNoQueueTakes
        case carriesTheWholeEnvelope
        case boundsDeliveriesByPrefetch
        case redeliversWhatIsRequeued
        case verifiesWithoutDeclaring
        case refusesAnExchangeRedeclaredWithAnotherKind
    }

    /// A transport under test.
    public let transport: any Transport
    private let prefix = "conformance-\(UInt32.random(in: 0...UInt32.max))"

    /// Checks `transport`.
    public init(_ transport: any Transport) {
        self.transport = transport
    }

    /// Runs one case.
    public func run(_ check: Case) async throws {
        switch check {
        case .routesByTopicPatternInPublishOrder: try await routesByTopicPatternInPublishOrder()
        case .refusesAMessageForAMissingExchange: try await refusesAMessageForAMissingExchange()
        case .doesNotConfirmACommandThatNoQueueTakes: try await doesNotConfirmACommandThatNoQueueTakes()
        case .confirmsAnEventThatNoQueueTakes: try await confirmsAnEventThatNoQueueTakes()
        case .carriesTheWholeEnvelope: try await carriesTheWholeEnvelope()
        case .boundsDeliveriesByPrefetch: try await boundsDeliveriesByPrefetch()
        case .redeliversWhatIsRequeued: try await redeliversWhatIsRequeued()
        case .verifiesWithoutDeclaring: try await verifiesWithoutDeclaring()
        case .refusesAnExchangeRedeclaredWithAnotherKind: try await refusesAnExchangeRedeclaredWithAnotherKind()
        }
    }

    private func name(_ suffix: String) -> String { "\(prefix).\(suffix)" }

    private func message(_ exchange: String, _ key: String, id: String? = nil) -> OutgoingMessage {
        OutgoingMessage(
            exchange: exchange,
            routingKey: key,
            envelope: Envelope(
                messageID: id ?? key,
                messageType: "\(key).v1",
                timestamp: Date(timeIntervalSince1970: 1_767_225_600),
                payload: Data("{}".utf8)
            )
        )
    }

    /// Takes messages until one with `lastID` came (a marker published last: what was routed before it has come
    /// too), acknowledging them; their ids in order.
    private func receive(_ queue: String, through lastID: String) async throws -> [String] {
        let source = try await transport.subscribe(queue: queue, prefetch: 10)
        var ids: [String] = []
        while ids.last != lastID {
            guard let batch = try await source.nextBatch(maxCount: 10) else { break }
            for message in batch {
                ids.append(message.messageID ?? "?")
                message.acknowledge()
            }
        }
        await source.cancel()
        return ids
    }

    func routesByTopicPatternInPublishOrder() async throws {
        let exchange = name("routing")
        let (byContext, byName) = (name("orders-all"), name("placed-anywhere"))
        try await transport.declare(
            Topology(
                exchanges: [.init(exchange, kind: .topic)],
                queues: [.init(byContext), .init(byName, kind: .quorum)],
                bindings: [
                    .init(queue: byContext, exchange: exchange, bindingKey: "orders.#"),
                    .init(queue: byName, exchange: exchange, bindingKey: "*.OrderPlaced"),
                ]
            )
        )
        let keys = [
            "orders.OrderPlaced", "orders.Other", "inventory.Unrouted", "inventory.OrderPlaced", "orders.End",
            "end.OrderPlaced",
        ]
        let outcomes = await transport.publish(keys.map { message(exchange, $0) })
        #expect(outcomes == Array(repeating: .confirmed, count: keys.count))
        #expect(
            try await receive(byContext, through: "orders.End") == ["orders.OrderPlaced", "orders.Other", "orders.End"]
        )
        #expect(
            try await receive(byName, through: "end.OrderPlaced") == [
                "orders.OrderPlaced", "inventory.OrderPlaced", "end.OrderPlaced",
            ]
        )
    }

    func refusesAMessageForAMissingExchange() async throws {
        let outcomes = await transport.publish([message(name("missing"), "orders.OrderPlaced")])
        guard case .refused = outcomes.first else {
            Issue.record("a message for a missing exchange was not refused: \(outcomes)")
            return
        }
    }

    func doesNotConfirmACommandThatNoQueueTakes() async throws {
        try await transport.declare(Topology(exchanges: Routing.exchanges))
        let outcomes = await transport.publish([message(Routing.commandExchange, name("Unheard.Command"))])
        #expect(outcomes.count == 1 && outcomes.first != .confirmed, "\(outcomes)")
    }

    func confirmsAnEventThatNoQueueTakes() async throws {
        try await transport.declare(Topology(exchanges: Routing.exchanges))
        let outcomes = await transport.publish([message(Routing.eventExchange, name("Unheard.Event"))])
        #expect(outcomes == [.confirmed])
    }

    func carriesTheWholeEnvelope() async throws {
        let queue = name("envelope")
        try await transport.declare(
            Topology(
                exchanges: Routing.exchanges,
                queues: [.init(queue)],
                bindings: [.init(queue: queue, exchange: Routing.eventExchange, bindingKey: "\(prefix).#")]
            )
        )
        let sent = Envelope(
            messageID: "m-1",
            messageType: "\(prefix).OrderPlaced.v2",
            correlationID: "c-1",
            causationID: "cause-1",
            stream: "order-o-1",
            position: 7,
            timestamp: Date(timeIntervalSince1970: 1_767_225_600),
            headers: ["traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
            payload: Data(#"{"order_id":"o-1"}"#.utf8)
        )
        let outgoing = OutgoingMessage(
            exchange: Routing.eventExchange,
            routingKey: "\(prefix).OrderPlaced",
            envelope: sent
        )
        #expect(await transport.publish([outgoing]) == [.confirmed])
        let source = try await transport.subscribe(queue: queue, prefetch: 1)
        let received = try #require(try await source.nextBatch(maxCount: 1)?.first)
        received.acknowledge()
        await source.cancel()
        #expect(received.exchange == Routing.eventExchange && received.routingKey == "\(prefix).OrderPlaced")
        #expect(received.messageID == "m-1" && received.messageType == "\(prefix).OrderPlaced.v2")
        #expect(received.correlationID == "c-1" && received.contentType == "application/json")
        #expect(received.timestamp == sent.timestamp, "whole seconds survive every transport")
        #expect(received.headers == sent.wireHeaders)
        #expect(received.body == sent.payload && !received.isRedelivered)
    }

    func boundsDeliveriesByPrefetch() async throws {
        let queue = name("prefetch")
        try await declareQueue(queue)
        let ids = (1...5).map { "m-\($0)" }
        #expect(
            await transport.publish(ids.map { message(Routing.eventExchange, "\(prefix).Event", id: $0) }).count == 5
        )
        let source = try await transport.subscribe(queue: queue, prefetch: 2)
        var received: [String] = []
        while received.count < 5 {
            let batch = try #require(try await source.nextBatch(maxCount: 10))
            #expect(batch.count <= 2, "no more than the prefetch is unacknowledged")
            received += batch.map { $0.messageID ?? "?" }
            for message in batch { message.acknowledge() }
        }
        await source.cancel()
        #expect(received == ids, "in publish order")
    }

    func redeliversWhatIsRequeued() async throws {
        let queue = name("requeue")
        try await declareQueue(queue)
        _ = await transport.publish([message(Routing.eventExchange, "\(prefix).Event", id: "only")])
        let source = try await transport.subscribe(queue: queue, prefetch: 1)
        let first = try #require(try await source.nextBatch(maxCount: 1)?.first)
        #expect(!first.isRedelivered)
        first.requeue()
        let again = try #require(try await source.nextBatch(maxCount: 1)?.first)
        #expect(again.messageID == "only" && again.isRedelivered)
        again.acknowledge()
        await source.cancel()
    }

    func verifiesWithoutDeclaring() async throws {
        let queue = name("verified")
        let topology = Topology(exchanges: [.init(name("verified-exchange"), kind: .topic)], queues: [.init(queue)])
        await #expect(throws: (any Error).self, "nothing is declared yet") { try await transport.verify(topology) }
        await #expect(throws: (any Error).self, "verify declared nothing") { try await transport.verify(topology) }
        try await transport.declare(topology)
        try await transport.verify(topology)
    }

    func refusesAnExchangeRedeclaredWithAnotherKind() async throws {
        let exchange = name("kind")
        try await transport.declare(Topology(exchanges: [.init(exchange, kind: .topic)]))
        await #expect(throws: (any Error).self) {
            try await transport.declare(Topology(exchanges: [.init(exchange, kind: .fanout)]))
        }
    }

    private func declareQueue(_ queue: String) async throws {
        try await transport.declare(
            Topology(
                exchanges: Routing.exchanges,
                queues: [.init(queue)],
                bindings: [.init(queue: queue, exchange: Routing.eventExchange, bindingKey: "\(prefix).#")]
            )
        )
    }
}
