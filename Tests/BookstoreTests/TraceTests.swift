#if OpenTelemetry
import BatonTestSupport
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// OpenTelemetry traces (a build with `--traits OpenTelemetry`): the four services export their spans over
/// OTLP/HTTP to a small receiver the test runs, and one checkout's spans form one tree across all of them,
/// rooted in the span of the producer that published it.
@Suite struct TraceTests {
    /// A span as the receiver keeps it.
    struct ReceivedSpan: Sendable, Hashable {
        var service: String
        var name: String
        var traceID: String
        var spanID: String
        var parentSpanID: String
    }

    /// An OTLP/HTTP receiver (`POST /v1/traces`, JSON) on a loopback port the system picks.
    final class Receiver: Sendable {
        let spans = Mutex<[ReceivedSpan]>([])

        func record(_ body: Data) {
            guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else { return }
            var received: [ReceivedSpan] = []
            for resource in object["resourceSpans"] as? [[String: Any]] ?? [] {
                let attributes = (resource["resource"] as? [String: Any])?["attributes"] as? [[String: Any]] ?? []
                let service =
                    attributes.first { $0["key"] as? String == "service.name" }
                    .flatMap { ($0["value"] as? [String: Any])?["stringValue"] as? String } ?? "?"
                for scope in resource["scopeSpans"] as? [[String: Any]] ?? [] {
                    for span in scope["spans"] as? [[String: Any]] ?? [] {
                        received.append(
                            ReceivedSpan(
                                service: service,
                                name: span["name"] as? String ?? "",
                                traceID: Self.hex(span["traceId"]),
                                spanID: Self.hex(span["spanId"]),
                                parentSpanID: Self.hex(span["parentSpanId"])
                            )
                        )
                    }
                }
            }
            spans.withLock { $0 += received }
        }

        /// An id as hex: OTLP's JSON spells ids in hex, protobuf's JSON mapping (what swift-otel writes) in base64.
        static func hex(_ value: Any?) -> String {
            guard let text = value as? String, !text.isEmpty else { return "" }
            if [16, 32].contains(text.count), text.allSatisfy(\.isHexDigit) { return text.lowercased() }
            guard let bytes = Data(base64Encoded: text) else { return text }
            return bytes.map { String(format: "%02x", $0) }.joined()
        }
    }

    @Test func oneCheckoutIsOneTraceThroughTheFourServices() async throws {
        let receiver = Receiver()
        let router = Router()
        router.post("v1/traces") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 16 << 20)
            receiver.record(Data(buffer: body))
            return Response(
                status: .ok,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: "{}"))
            )
        }
        let listening = AsyncStream.makeStream(of: Int.self)
        let application = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { listening.continuation.yield($0.localAddress?.port ?? 0) },
            logger: Logger(label: "otlp-receiver")
        )
        let group = ServiceGroup(services: [application], logger: Logger(label: "otlp-receiver"))
        let running = Task { try await group.run() }
        var ports = listening.stream.makeAsyncIterator()
        let port = try #require(await ports.next())
        defer { running.cancel() }

        let traceID = "0af7651916cd43dd8448eb211c80319c"
        let producerSpan = "b7ad6b7169203331"
        try await Mesh.run(
            environment: [
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:\(port)",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            ]
        ) { mesh in
            try await mesh.startAll()
            try await mesh.stock("book-0001", 5)
            try await mesh.checkout(
                "chk-traced",
                lines: [("book-0001", 1)],
                messageID: "checkout-traced",
                traceparent: "00-\(traceID)-\(producerSpan)-01"
            )
            let (_, problems) = try await mesh.settle(orders: 1)
            #expect(problems.isEmpty, "\(problems)")
            let services = ["orders", "inventory", "shipping", "fulfillment"]
            let exported = try await eventually {
                let spans = receiver.spans.withLock { $0 }.filter { $0.traceID == traceID }
                return Set(spans.map(\.service)).isSuperset(of: services)
                    && spans.contains { $0.name == "consume orders.OrderCompleted" && $0.service == "fulfillment" }
            }
            let received = receiver.spans.withLock { $0 }
            #expect(
                exported,
                "spans of the checkout's trace from all four services: \(received.count) received, traces \(Set(received.map(\.traceID)))"
            )
        }
        let trace = receiver.spans.withLock { $0 }.filter { $0.traceID == traceID }
        // One tree: every span's parent is the producer's span or another span of the trace; one root.
        let ids = Set(trace.map(\.spanID))
        #expect(ids.count == trace.count, "span ids are unique")
        let orphans = trace.filter { $0.parentSpanID != producerSpan && !ids.contains($0.parentSpanID) }
        #expect(orphans.isEmpty, "every span hangs in the tree: \(orphans)")
        let roots = trace.filter { $0.parentSpanID == producerSpan }
        #expect(roots.map(\.name) == ["consume storefront.CheckoutCompleted"], "\(roots)")
        // The path of the checkout through the services, each step a child of the one that caused it.
        func span(_ service: String, _ name: String) -> ReceivedSpan? {
            trace.first { $0.service == service && $0.name == name }
        }
        func parent(of child: ReceivedSpan?) -> ReceivedSpan? {
            trace.first { $0.spanID == child?.parentSpanID }
        }
        let confirmed = span("fulfillment", "consume orders.OrderConfirmed")
        #expect(parent(of: confirmed)?.service == "orders")
        let reserve = span("inventory", "consume inventory.ReserveInventory")
        #expect(parent(of: reserve) == confirmed, "inventory's step is a child of fulfillment's")
        let shipment = span("shipping", "consume shipping.CreateShipment")
        #expect(parent(of: shipment)?.name == "consume inventory.InventoryReserved")
        let publish = span("fulfillment", "publish inventory.ReserveInventory")
        #expect(parent(of: publish) == confirmed, "the relay's publish is a child of the span that issued it")
        let handle = span("fulfillment", "handle orders.OrderConfirmed")
        #expect(parent(of: handle) == confirmed, "the handlers' run is a span inside the message's")
    }
}
#endif
