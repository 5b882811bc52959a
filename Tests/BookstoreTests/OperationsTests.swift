import BatonTestSupport
import ChildProcesses
import Foundation
import Testing

#if canImport(FoundationXML)
import FoundationXML
#endif

/// Each service's operations endpoint (`serve --http`): its metrics count what the mesh did, its health checks
/// answer, and nothing in them names an order or a password.
@Suite(.serialized) struct OperationsTests {
    @Test func theMetricsCountWhatTheServicesDid() async throws {
        try await Mesh.run { mesh in
            try await mesh.startAll()
            try await mesh.stock("book-0001", 50)
            for index in 1...6 {
                try await mesh.checkout(
                    "chk-\(index)",
                    address: index == 6 ? "" : "\(index) Baker St",
                    lines: [("book-0001", 1)]
                )
            }
            let (snapshot, problems) = try await mesh.settle(orders: 6)
            #expect(problems.isEmpty, "\(problems)")
            let completed = snapshot.orders.count { $0.status == "COMPLETED" }
            #expect(completed == 5, "the blank address is cancelled")

            func handled(_ service: String, _ type: String) -> String {
                #"baton_messages_total{node="\#(service)",type="\#(type)",outcome="handled"}"#
            }
            var samples: [String: [String: Double]] = [:]
            let agreed = try await eventually {  // gauges are sampled every 5 s
                for service in Mesh.services {
                    let (status, body) = try await HTTPProbe.get(port: mesh.httpPorts[service]!, "metrics")
                    guard status == 200 else { return false }
                    samples[service] = HTTPProbe.samples(body)
                }
                let fulfillment = samples["fulfillment"]!
                return Mesh.services.allSatisfy { samples[$0]?[#"baton_outbox_pending{node="\#($0)"}"#] == 0 }
                    && fulfillment[
                        #"baton_instances{node="fulfillment",process_manager="fulfillment",lifecycle="completed"}"#
                    ]
                        == Double(completed)
            }
            #expect(agreed, "outboxes empty and the completed instances counted")
            #expect(samples["orders"]?[handled("orders", "storefront.CheckoutCompleted.v1")] == 6)
            #expect(samples["inventory"]?[handled("inventory", "inventory.ReserveInventory.v1")] == 6)
            #expect(samples["inventory"]?[handled("inventory", "inventory.ReleaseInventory.v1")] == 1)
            #expect(samples["shipping"]?[handled("shipping", "shipping.CreateShipment.v1")] == 6)
            let instances = samples["fulfillment"]!.filter { $0.key.hasPrefix("baton_instances{") }.values
            #expect(instances.reduce(0, +) == 6, "one instance per order: \(instances)")
            for service in Mesh.services {
                let metrics = samples[service]!
                #expect(metrics[#"baton_amqp_connected{node="\#(service)"}"#] == 1)
                #expect(metrics[#"baton_amqp_connections_total{node="\#(service)"}"#] == 1)
                #expect(metrics[#"baton_dead_letters_open{node="\#(service)"}"#] == 0)
                #expect((metrics[#"baton_published_total{node="\#(service)"}"#] ?? 0) > 0)
                #expect((metrics[#"baton_batch_duration_seconds_count{node="\#(service)"}"#] ?? 0) > 0)
                let body = try await HTTPProbe.get(port: mesh.httpPorts[service]!, "metrics").body
                #expect(!body.contains("chk-") && !body.contains("baton-local-secret"), "no id, no password")
                #expect(try await HTTPProbe.get(port: mesh.httpPorts[service]!, "health/live") == (200, "live\n"))
                #expect(try await HTTPProbe.get(port: mesh.httpPorts[service]!, "health/ready") == (200, "ready\n"))
            }
        }
    }
}

/// `BATON_LOG_FORMAT=json`: one JSON object per line from every service, and a checkout's trace id (from the
/// `traceparent` its producer set) on the lines of all four services that handled its messages.
@Suite struct StructuredLogTests {
    @Test func everyServiceLogsJSONLinesCarryingTheCheckoutsTrace() async throws {
        let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
        try await Mesh.run(environment: ["BATON_LOG_FORMAT": "json", "BATON_LOG_LEVEL": "debug"]) { mesh in
            try await mesh.startAll()
            try await mesh.stock("book-0001", 5)
            try await mesh.checkout(
                "chk-traced",
                lines: [("book-0001", 1)],
                messageID: "checkout-traced",
                traceparent: "00-\(traceID)-00f067aa0ba902b7-01"
            )
            let (_, problems) = try await mesh.settle(orders: 1)
            #expect(problems.isEmpty, "\(problems)")
            for service in Mesh.services {
                let log = try String(
                    contentsOf: mesh.dataDirectory.appendingPathComponent("\(service).log"),
                    encoding: .utf8
                )
                let lines = log.split(separator: "\n")
                let objects = lines.compactMap {
                    try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: String]
                }
                #expect(!lines.isEmpty && objects.count == lines.count, "\(service): every line one JSON object")
                let traced = objects.filter { $0["baton.trace_id"] == traceID && $0["message"] == "handlers ran" }
                #expect(!traced.isEmpty, "\(service) handled a message of the traced checkout")
                #expect(traced.allSatisfy { $0["baton.message_id"] != nil && $0["logger"] == service })
                #expect(objects.allSatisfy { $0["time"] != nil && $0["level"] != nil }, "\(service)")
            }
            let orders = try String(
                contentsOf: mesh.dataDirectory.appendingPathComponent("orders.log"),
                encoding: .utf8
            )
            #expect(orders.contains(#""baton.message_id":"checkout-traced""#), "the storefront's own message id")
        }
    }
}

@Suite struct DiagramCommandTests {
    @Test func fulfillmentDrawsItsDefinition() async throws {
        let (termination, output) = try await ChildProcess.run(
            Mesh.binary("fulfillment").path,
            ["processes", "diagram"]
        )
        #expect(termination.isSuccess, "\(output)")
        #expect(output.hasPrefix("---\ntitle: fulfillment (definition v"))
        #expect(output.contains("[*] --> open: orders.OrderConfirmed.v1"))
        #expect(output.contains("open --> completed: orders.OrderCompleted.v1"))
        #expect(output.contains("open --> open: timer step-timeout"))
        #expect(output.contains("open --> open: failed inventory.ReserveInventory.v1"))
        let dot = try await ChildProcess.run(
            Mesh.binary("fulfillment").path,
            ["processes", "diagram", "--format", "dot"]
        )
        #expect(dot.output.hasPrefix("digraph \"fulfillment\" {"))
        let svg = try await ChildProcess.run(
            Mesh.binary("fulfillment").path,
            ["processes", "diagram", "--format", "svg"]
        )
        #expect(svg.termination.isSuccess)
        #expect(svg.output.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        #expect(svg.output.contains(#"data-step="timer:step-timeout""#) && !svg.output.contains("data-visited"))
        #expect(try XMLDocument(xmlString: svg.output).rootElement()?.name == "svg", "well-formed XML")
    }
}
