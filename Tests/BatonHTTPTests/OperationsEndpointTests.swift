import BatonHTTP
import BatonNode
import BatonTestSupport
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import Synchronization
import Testing

/// The operations endpoint in-process, on a port the system picks: what each path answers.
@Suite struct OperationsEndpointTests {
    @Test func eachPathAnswersWhatItSays() async throws {
        let registry = PrometheusCollectorRegistry()
        let factory = PrometheusMetricsFactory(registry: registry)
        Counter(label: "baton_test_total", dimensions: [("node", "n")], factory: factory).increment(by: 3)
        let problems = Mutex<[String]>([])
        let listening = AsyncStream.makeStream(of: Int.self)
        let endpoint = OperationsEndpoint(
            host: "127.0.0.1",
            port: 0,
            metrics: registry,
            readiness: { NodeReadiness(problems: problems.withLock { $0 }) },
            onListening: { port in listening.continuation.yield(port) },
            logger: Logger(label: "operations-test")
        )
        let group = ServiceGroup(services: [endpoint], logger: Logger(label: "operations-test"))
        let running = Task { try await group.run() }
        var ports = listening.stream.makeAsyncIterator()
        let port = try #require(await ports.next())

        let metrics = try await HTTPProbe.get(port: port, "metrics")
        #expect(metrics.status == 200)
        #expect(HTTPProbe.samples(metrics.body)[#"baton_test_total{node="n"}"#] == 3)
        #expect(try await HTTPProbe.get(port: port, "health/live") == (200, "live\n"))
        #expect(try await HTTPProbe.get(port: port, "health/ready") == (200, "ready\n"))
        problems.withLock { $0 = ["broker: not connected (reconnecting)", "not consuming its queue"] }
        #expect(
            try await HTTPProbe.get(port: port, "health/ready")
                == (503, "broker: not connected (reconnecting)\nnot consuming its queue\n")
        )
        #expect(try await HTTPProbe.get(port: port, "nothing-here").status == 404)

        await group.triggerGracefulShutdown()
        try await running.value
    }

    @Test func anAddressIsHostColonPort() throws {
        #expect(try HTTPAddress("127.0.0.1:9464") == HTTPAddress("127.0.0.1:9464"))
        let address = try HTTPAddress("0.0.0.0:0")
        #expect(address.host == "0.0.0.0" && address.port == 0)
        let ipv6 = try HTTPAddress("[::1]:9090")
        #expect(ipv6.host == "::1" && ipv6.port == 9090 && ipv6.description == "[::1]:9090")
        for bad in ["localhost", ":9464", "host:", "host:port", "host:70000", "[]:80"] {
            #expect(throws: HTTPAddressError.self, "\(bad)") { try HTTPAddress(bad) }
        }
    }
}
