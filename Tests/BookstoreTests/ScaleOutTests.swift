import BatonTestSupport
import BookstoreContracts
import BookstoreOperations
import Foundation
import Testing

/// The scaled-out shape, small: the three-node RabbitMQ cluster, PostgreSQL, two replicas of every service.
/// Mid-load the broker node every service is connected to is killed (and later restarted), and so is one
/// replica of every service; every order still settles, once, with every invariant and timeline intact.
/// Run in the test command's serial phase (it kills cluster nodes).
@Suite(.serialized) struct ScaleOutTests {
    @Test func ordersSettleThroughTheLossOfABrokerNodeAndOfAReplicaOfEveryService() async throws {
        let services = ["orders", "inventory", "shipping", "fulfillment"]
        try await Mesh.run(onPostgreSQL: true, onCluster: true) { mesh in
            for service in services {
                try await mesh.start(service)
                try await mesh.start(service, replica: 2)
            }
            for sku in ["book-0001", "book-0002", "book-0003"] { try await mesh.stock(sku, 100) }
            /// A storefront publishes each checkout until the broker confirms it, as a real producer does.
            func checkout(_ index: Int) async throws {
                let deadline = ContinuousClock.now + .seconds(60)
                while true {
                    do {
                        return try await mesh.checkout(
                            "chk-\(index)",
                            address: index % 7 == 0 ? "" : "\(index) Baker St",
                            lines: [("book-000\(index % 3 + 1)", index % 2 + 1)]
                        )
                    } catch  where ContinuousClock.now < deadline {
                        try await Task.sleep(for: .milliseconds(200))
                    }
                }
            }
            for index in 0..<60 {
                try await checkout(index)
                if index == 20 {
                    // Every service is connected to node 1, the first URL: each fails over to another node.
                    try await TestCluster.kill(node: 1)
                    for service in services { await mesh.kill(service) }
                }
            }
            try await TestCluster.start(node: 1)
            let (snapshot, problems) = try await mesh.settle(orders: 60, timeout: .seconds(180))
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.ordersByStatus["COMPLETED"] == 51 && snapshot.ordersByStatus["CANCELLED"] == 9)
            let timelines = try await TimelineAudit.problems(mesh.readOptions, orders: snapshot.orders)
            #expect(timelines.isEmpty, "\(timelines)")
        }
    }
}
