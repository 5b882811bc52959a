import Baton
import BatonNode
import BatonTestSupport
import Foundation
import Testing

@testable import BatonTesting

/// The in-memory store passes the store port's conformance suite.
@Suite struct InMemoryStoreConformanceTests {
    @Test(arguments: StoreConformance.Case.allCases)
    func conforms(_ check: StoreConformance.Case) async throws {
        try await StoreConformance { InMemoryStore() }.run(check)
    }
}

/// The in-process transport passes the transport port's conformance suite.
@Suite struct InProcessTransportConformanceTests {
    @Test(arguments: TransportConformance.Case.allCases)
    func conforms(_ check: TransportConformance.Case) async throws {
        try await TransportConformance(InProcessTransport()).run(check)
    }
}

@Suite struct InProcessTransportTests {
    @Test func topicPatternsMatchLikeRabbitMQ() {
        #expect(Topology.topicMatches(pattern: "orders.#", key: "orders.OrderPlaced"))
        #expect(Topology.topicMatches(pattern: "#", key: "a.b.c"))
        #expect(Topology.topicMatches(pattern: "*.b.#", key: "a.b"))
        #expect(!Topology.topicMatches(pattern: "orders.*", key: "orders.a.b"))
        #expect(!Topology.topicMatches(pattern: "orders.#", key: "inventory.x"))
    }

    @Test func prefetchAckAndRequeueBehaveLikeTheBroker() async throws {
        let transport = InProcessTransport()
        try await transport.declare(
            Topology(
                exchanges: Routing.exchanges,
                queues: [.init("q")],
                bindings: [.init(queue: "q", exchange: Routing.eventExchange, bindingKey: "#")]
            )
        )
        let envelope = Envelope(messageID: "m", messageType: "t.T.v1", timestamp: .now, payload: Data("{}".utf8))
        for _ in 0..<5 {
            _ = await transport.publish([
                OutgoingMessage(exchange: Routing.eventExchange, routingKey: "t.T", envelope: envelope)
            ])
        }
        let source = try await transport.subscribe(queue: "q", prefetch: 2)
        let first = try #require(try await source.nextBatch(maxCount: 10))
        #expect(first.count == 2, "prefetch bounds what is handed out")
        first[0].acknowledge()
        first[1].requeue()
        let second = try #require(try await source.nextBatch(maxCount: 10))
        #expect(second.count == 2 && second.contains { $0.isRedelivered })
        await source.cancel()
        #expect(transport.readyCount("q") == 4, "cancel returns unsettled messages")
    }
}
