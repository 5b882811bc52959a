import BatonTestSupport
import BookstoreContracts
import BookstoreOperations
import Foundation
import Testing

/// The scaled-out shape, small: the three-node RabbitMQ cluster, PostgreSQL, two replicas of every service,
/// each service's input split over 4 partitions. Mid-load the broker node every service is connected to is
/// killed (and later restarted), and so is one replica of every service (its partitions fail over to the
/// other); every order still settles, once, with every invariant and timeline intact.
/// Run in the test command's serial phase (it kills cluster nodes).
@Suite(.serialized) struct ScaleOutTests {
    @Test func ordersSettleThroughTheLossOfABrokerNodeAndOfAReplicaOfEveryService() async throws {
        try await Mesh.run(onPostgreSQL: true, onCluster: true, environment: ["BATON_PARTITIONS": "4"]) { mesh in
            try await mesh.startAll(replicas: 2)
            let queues = try await TestCluster.ctl(node: 2, "list_queues", "-p", mesh.virtualHost, "name", "--quiet")
                .split(separator: "\n").map(String.init)
            #expect(queues.contains("fulfillment.p4.3") && !queues.contains("fulfillment"), "partitioned: \(queues)")
            for sku in ["book-0001", "book-0002", "book-0003"] { try await mesh.stock(sku, 100) }
            for index in 0..<60 {
                try await mesh.mixedCheckout(index)
                if index == 20 {
                    // Every service is connected to node 1, the first URL: each fails over to another node.
                    try await TestCluster.kill(node: 1)
                    for service in Mesh.services { await mesh.kill(service) }
                }
            }
            try await TestCluster.start(node: 1)
            let (snapshot, problems) = try await mesh.settle(orders: 60, timeout: .seconds(180))
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.ordersByStatus["COMPLETED"] == 51 && snapshot.ordersByStatus["CANCELLED"] == 9)
            let timelines = try await TimelineAudit.problems(mesh.readOptions, orders: snapshot.orders)
            #expect(timelines.isEmpty, "\(timelines)")
            let order = try await TimelineAudit.orderProblems(mesh.readOptions)
            #expect(order.isEmpty, "every instance handled each emitter's events in commit order: \(order)")
        }
    }
}
