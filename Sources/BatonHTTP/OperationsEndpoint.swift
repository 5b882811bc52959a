import BatonNode
import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// A service's operations endpoint over HTTP (Hummingbird): `/metrics` in the Prometheus text format,
/// `/health/live` (the process answers) and `/health/ready` (it does its work: 200, or 503 with one line per
/// problem); on a process-manager node, its web console under `/console` (``ProcessConsole``). The metrics and
/// health answers carry no message body, no id and no password: metrics have low-cardinality labels only.
///
/// Run it in the service's `ServiceGroup` beside its node; it stops with the group.
public struct OperationsEndpoint: Service {
    /// Where it listens.
    public let host: String
    /// Its port (0: one the system picks, reported to `onListening`).
    public let port: Int
    let registry: PrometheusCollectorRegistry
    let readiness: @Sendable () async -> NodeReadiness
    let beforeScrape: @Sendable () -> Void
    let onListening: @Sendable (Int) async -> Void
    let console: ProcessConsole?
    let logger: Logger

    /// Creates the endpoint.
    /// - Parameters:
    ///   - host: The address to listen on (`127.0.0.1` for loopback only, `0.0.0.0` in a container).
    ///   - port: The port; 0 for one the system picks.
    ///   - metrics: The registry the process's metrics were bootstrapped with (``bootstrapMetrics()``).
    ///   - readiness: What keeps the service from its work at this moment.
    ///   - beforeScrape: Updates gauges read at scrape time (the broker connection's state).
    ///   - onListening: Called with the bound port once it listens.
    ///   - console: The web console of a process-manager node, served under `/console`; `nil` for none.
    ///   - logger: Where it logs.
    public init(
        host: String,
        port: Int,
        metrics: PrometheusCollectorRegistry,
        readiness: @escaping @Sendable () async -> NodeReadiness,
        beforeScrape: @escaping @Sendable () -> Void = {},
        onListening: @escaping @Sendable (Int) async -> Void = { _ in },
        console: ProcessConsole? = nil,
        logger: Logger
    ) {
        self.host = host
        self.port = port
        self.registry = metrics
        self.readiness = readiness
        self.beforeScrape = beforeScrape
        self.onListening = onListening
        self.console = console
        self.logger = logger
    }

    /// Bootstraps swift-metrics with a Prometheus registry for the whole process (once per process), with
    /// histogram buckets for Baton's durations (0.1 ms to 10 s) and batch sizes (1 to 256).
    /// - Returns: The registry to serve.
    public static func bootstrapMetrics() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2500),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
        ]
        factory.valueHistogramBuckets[NodeMetric.batchSize] = [1, 2, 4, 8, 16, 32, 64, 128, 256]
        MetricsSystem.bootstrap(factory)
        return registry
    }

    public func run() async throws {
        let router = Router()
        router.get("metrics") { _, _ -> Response in
            beforeScrape()
            return Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer()))
            )
        }
        router.get("health/live") { _, _ in "live\n" }
        router.get("health/ready") { _, _ -> Response in
            let report = await readiness()
            let text = report.isReady ? "ready\n" : report.problems.map { $0 + "\n" }.joined()
            return Response(
                status: report.isReady ? .ok : .serviceUnavailable,
                headers: [.contentType: "text/plain; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: text))
            )
        }
        console?.addRoutes(to: router)
        let application = Application(
            router: router,
            configuration: ApplicationConfiguration(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: { [onListening, logger, host] channel in
                let port = channel.localAddress?.port ?? 0
                logger.info("operations endpoint listening", metadata: ["address": "\(host):\(port)"])
                await onListening(port)
            },
            logger: logger
        )
        try await application.run()  // stopped by the enclosing group's graceful shutdown, not by signals of its own
    }
}

/// `HOST:PORT` of an operations endpoint, as `--http` and `BATON_HTTP` give it.
public struct HTTPAddress: Sendable, Hashable, CustomStringConvertible {
    /// The host or address to listen on.
    public var host: String
    /// The port (0: one the system picks).
    public var port: Int

    /// Parses `HOST:PORT` (an IPv6 address in brackets: `[::1]:9090`).
    /// - Throws: ``HTTPAddressError`` saying what is wrong.
    public init(_ text: String) throws(HTTPAddressError) {
        guard let colon = text.lastIndex(of: ":"), colon != text.startIndex else {
            throw HTTPAddressError("'\(text)' is not HOST:PORT (for example 127.0.0.1:9464)")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port), !host.isEmpty else {
            throw HTTPAddressError("'\(text)' is not HOST:PORT with a port from 0 to 65535")
        }
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// A malformed operations endpoint address.
public struct HTTPAddressError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong.
    public var message: String

    init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}
