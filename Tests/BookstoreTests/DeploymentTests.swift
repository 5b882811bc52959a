import BatonAMQP
import BatonTestSupport
import ChildProcesses
import Foundation
import Testing

/// The broker definitions that `Deploy/` ships (`Deploy/rabbitmq/definitions.json`) against what the
/// services declare in code, and the services running on those definitions alone.
@Suite(.serialized) struct DeploymentTests {
    static let services = ["orders", "inventory", "shipping", "fulfillment"]
    /// The partition count the compose files give every service (`BATON_PARTITIONS`).
    static let partitions = "4"

    static var definitionsFile: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Deploy/rabbitmq/definitions.json")
    }

    /// What `<service> topology --vhost VHOST --partitions 4` prints.
    static func declared(by service: String, vhost: String) async throws -> BrokerDefinitions {
        let (termination, output) = try await ChildProcess.run(
            Mesh.binary(service).path,
            ["topology", "--vhost", vhost, "--partitions", partitions]
        )
        #expect(termination.isSuccess)
        return try JSONDecoder().decode(BrokerDefinitions.self, from: Data(output.utf8))
    }

    @Test func definitionsDeclareExactlyWhatTheServicesNeed() async throws {
        let shipped = try JSONDecoder().decode(BrokerDefinitions.self, from: Data(contentsOf: Self.definitionsFile))
        var needed = (
            exchanges: Set<BrokerDefinitions.Exchange>(), queues: Set<BrokerDefinitions.Queue>(),
            bindings: Set<BrokerDefinitions.Binding>()
        )
        for service in Self.services {
            let declared = try await Self.declared(by: service, vhost: "baton")
            for missing in Set(declared.exchanges).subtracting(shipped.exchanges) {
                Issue.record("definitions.json lacks \(service)'s exchange \(missing)")
            }
            for missing in Set(declared.queues).subtracting(shipped.queues) {
                Issue.record("definitions.json lacks \(service)'s queue \(missing)")
            }
            for missing in Set(declared.bindings).subtracting(shipped.bindings) {
                Issue.record("definitions.json lacks \(service)'s binding \(missing)")
            }
            needed.exchanges.formUnion(declared.exchanges)
            needed.queues.formUnion(declared.queues)
            needed.bindings.formUnion(declared.bindings)
        }
        #expect(Set(shipped.exchanges) == needed.exchanges, "no exchange nobody declares")
        #expect(Set(shipped.queues) == needed.queues, "no queue nobody declares")
        #expect(Set(shipped.bindings) == needed.bindings, "no stale binding routing messages nobody handles")
        #expect(shipped.bindings.count == Set(shipped.bindings).count, "each binding once")
    }

    @Test func servicesRunOnThePreDeclaredDefinitionsAlone() async throws {
        try await Mesh.run(topology: "broker", environment: ["BATON_PARTITIONS": Self.partitions]) { mesh in

            // Nothing declared yet: the service refuses to start and names what is missing.
            let refused = try await mesh.cli("orders", "serve")
            #expect(refused.status != 0)
            #expect(refused.output.contains("check exchange 'baton.commands'"), "\(refused.output)")
            #expect(refused.output.contains("404") || refused.output.contains("NOT_FOUND"), "\(refused.output)")

            // The shipped definitions' topology, moved to the test's virtual host.
            var topology = try JSONDecoder().decode(
                BrokerDefinitions.self,
                from: Data(contentsOf: Self.definitionsFile)
            )
            for index in topology.exchanges.indices { topology.exchanges[index].vhost = mesh.virtualHost }
            for index in topology.queues.indices { topology.queues[index].vhost = mesh.virtualHost }
            for index in topology.bindings.indices { topology.bindings[index].vhost = mesh.virtualHost }
            let file = mesh.dataDirectory.appendingPathComponent("definitions.json")
            try JSONEncoder().encode(topology).write(to: file)
            try await TestBroker.ctl("import_definitions", file.path)
            let imported = try await eventually {
                let queues = try await TestBroker.ctl("list_queues", "-p", mesh.virtualHost, "name", "--quiet")
                return topology.queues.allSatisfy { queues.contains($0.name) }
            }
            try #require(imported, "the broker imported the definitions")

            // Declaring nothing themselves, the services work: everything they need came from the definitions.
            try await mesh.startAll()
            try await mesh.stock("book-0001", 10)
            try await mesh.checkout("chk-predeclared", lines: [("book-0001", 2)])
            try await mesh.checkout("chk-predeclared-blank", address: "", lines: [("book-0001", 1)])
            let (snapshot, problems) = try await mesh.settle(orders: 2)
            #expect(problems.isEmpty, "\(problems)")
            #expect(Set(snapshot.orders.map(\.status)) == ["COMPLETED", "CANCELLED"])
        }
    }
}
