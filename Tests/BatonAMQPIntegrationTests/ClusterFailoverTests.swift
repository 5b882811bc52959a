import BatonTestSupport
import Foundation
import Logging
import Testing

@testable import BatonAMQP

/// Against the private three-node cluster (`Deploy/local/cluster.sh`): a connection given every node's URL
/// goes to the first that answers, and when its node is killed it carries on on another; a quorum queue keeps
/// every confirmed message through the loss of a node.
@Suite(.serialized) struct ClusterFailoverTests {
    @Test func aConnectionMovesToAnotherNodeAndAQuorumQueueKeepsEveryConfirmedMessage() async throws {
        try await TestCluster.start()
        let nodes = try await TestCluster.urls
        let closed = nodes[0].replacingOccurrences(of: ":\(URLComponents(string: nodes[0])!.port!)/", with: ":1/")
        var configuration = try AMQPConnection.Configuration(urls: [closed] + nodes, connectionName: "cluster-test")
        configuration.reconnectBackoff = .init(initial: .milliseconds(50), maximum: .milliseconds(500))
        #expect("\(configuration)".contains("127.0.0.1:1,127.0.0.1:"), "\(configuration)")
        #expect(!"\(configuration)".contains("secret"))
        let connection = try await AMQPConnection.connect(configuration: configuration, logger: Logger(label: "t"))
        let queue = TestBroker.unique("cluster")
        try await connection.declare(AMQPTopology(queues: [.init(queue, kind: .quorum)]))
        func publish(_ range: Range<Int>) async throws {
            for index in range {
                // A publish whose confirm is lost with the node is sent again (consumers de-duplicate by id).
                let deadline = ContinuousClock.now + .seconds(30)
                while true {
                    do {
                        try await connection.publish(
                            AMQPOutgoingMessage(
                                exchange: "",
                                routingKey: queue,
                                body: Array("m-\(index)".utf8),
                                properties: AMQPProperties(messageID: "m-\(index)")
                            )
                        )
                        break
                    } catch {
                        guard ContinuousClock.now < deadline else {
                            Issue.record("m-\(index) not confirmed within 30 s: \(error)")
                            throw error
                        }
                        try await Task.sleep(for: .milliseconds(100))
                    }
                }
            }
        }
        try await publish(0..<100)
        // The connection is on node 1, the first that answered: kill it.
        try await TestCluster.kill(node: 1)
        try await publish(100..<200)
        #expect(connection.isConnected, "reconnected to another node")
        let consumer = try await connection.consume(queue: queue, prefetch: 50)
        var seen = Set<String>()
        while let delivery = try await consumer.next(timeout: .seconds(10)) {
            seen.insert(delivery.properties.messageID ?? "")
            delivery.ack()
            if seen.count == 200 { break }
        }
        #expect(seen == Set((0..<200).map { "m-\($0)" }), "every confirmed message, \(seen.count) of 200")
        try await TestCluster.start(node: 1)
        _ = try await connection.deleteQueue(queue)
        await connection.close()
    }
}
