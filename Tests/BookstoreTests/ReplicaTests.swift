import BatonTestSupport
import BookstoreContracts
import BookstoreOperations
import Foundation
import Testing

/// The four services on PostgreSQL (`--database-url`), each as two replicas sharing its schema and its queue,
/// as separate processes over the real broker; and what the operator sees when the database is wrong.
@Suite(.serialized) struct ReplicaTests {
    @Test func twoReplicasOfEveryServiceFinishEveryOrderThroughKills() async throws {
        try await Mesh.run(onPostgreSQL: true) { mesh in
            try await mesh.startAll(replicas: 2)
            for sku in ["book-0001", "book-0002", "book-0003"] { try await mesh.stock(sku, 100) }
            for index in 0..<60 {
                try await mesh.mixedCheckout(index)
                if index == 20 {
                    // kill -9 one replica of every service, mid-load: the others carry on without an operator.
                    for service in Mesh.services { await mesh.kill(service) }
                }
            }
            let (snapshot, problems) = try await mesh.settle(orders: 60, timeout: .seconds(120))
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.ordersByStatus["COMPLETED"] == 51 && snapshot.ordersByStatus["CANCELLED"] == 9)
            let timelines = try await TimelineAudit.problems(mesh.readOptions, orders: snapshot.orders)
            #expect(timelines.isEmpty, "\(timelines)")
            // The operator's commands read the shared database.
            let listed = try await mesh.cli("orders", "list", "--status", "CANCELLED")
            #expect(listed.status == 0, "\(listed.output)")
            #expect(listed.output.components(separatedBy: "\n").filter { $0.contains("CANCELLED") }.count == 9)
            let instances = try await mesh.cli("fulfillment", "processes", "list", "--json")
            #expect(instances.status == 0 && instances.output.contains("\"lifecycle\""), "\(instances.output)")
        }
    }

    @Test func aWrongDatabaseIsOneClearLineAndChangesNothing() async throws {
        try await Mesh.run(onPostgreSQL: true) { mesh in
            let database = try #require(mesh.database)
            func run(_ service: String, _ arguments: String...) async throws -> (status: Int32, output: String) {
                try await mesh.cli(service, arguments)
            }
            // Read before the service ever ran: says so, and creates no schema.
            let unread = try await run("orders", "list")
            #expect(unread.status == 1, "\(unread.output)")
            #expect(unread.output.contains("no orders data in postgres://baton:***@"), "\(unread.output)")
            let schemas = try await TestDatabase.psql(
                "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'orders'",
                database: database
            )
            #expect(schemas == "0", "a read creates nothing")

            let wrongPassword = TestDatabase.url(user: "baton", password: "not-the-password")
            for arguments in [["serve"], ["list"]] {
                let refused = try await mesh.cli("orders", arguments + ["--database-url", wrongPassword])
                #expect(refused.status == 1, "\(arguments): \(refused.output)")
                #expect(refused.output.contains("password authentication failed"), "\(arguments): \(refused.output)")
                #expect(!refused.output.contains("not-the-password"), "the password is never printed")
            }
            let unreachable = try await mesh.cli(
                "inventory",
                ["serve", "--database-url", "postgres://baton:secret@127.0.0.1:1/baton"]
            )
            #expect(unreachable.status == 1, "\(unreachable.output)")
            #expect(unreachable.output.contains("cannot reach PostgreSQL at postgres://baton:***@127.0.0.1:1/baton"))
            #expect(!unreachable.output.contains("secret"))
            for (url, reason) in [
                ("mysql://baton@127.0.0.1/baton", "scheme is mysql://"),
                ("postgres://baton@127.0.0.1", "names no database"),
                ("postgres://127.0.0.1/baton", "names no user"),
                ("postgres://baton@127.0.0.1/baton?sslmode=prefer", "sslmode=prefer is not supported"),
            ] {
                let refused = try await mesh.cli("shipping", ["list", "--database-url", url])
                #expect(refused.status != 0 && refused.output.contains(reason), "\(url): \(refused.output)")
                #expect(refused.output.components(separatedBy: "\n").filter { $0.contains(reason) }.count == 1)
            }
        }
    }
}
