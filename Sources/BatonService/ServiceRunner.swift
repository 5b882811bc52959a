import ArgumentParser
import Baton
import BatonAMQP
import BatonAMQPTransport
import BatonHTTP
import BatonNode
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import Tracing
import UnixSignals

#if OpenTelemetry
import OTel
#endif

/// Runs a service node until SIGTERM or SIGINT, then stops it gracefully (finishes the batch in hand,
/// flushes the outbox) and returns, so the process exits 0.
public enum ServiceRunner {
    /// Sets up logging for an executable: standard error, level from `BATON_LOG_LEVEL` (default `info`), format
    /// from `BATON_LOG_FORMAT`: `text` (the default, for people) or `json` (one object per line,
    /// ``JSONLogHandler``).
    /// - Throws: ``ValidationError`` if `BATON_LOG_FORMAT` is neither.
    public static func bootstrapLogging() throws {
        let environment = ProcessInfo.processInfo.environment
        let level = environment["BATON_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .info
        switch environment["BATON_LOG_FORMAT"] ?? "text" {
        case "text", "":
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
        case "json":
            LoggingSystem.bootstrap { label in
                var handler = JSONLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
        case let format:
            throw ValidationError("BATON_LOG_FORMAT must be text or json, not '\(format)'")
        }
    }

    /// Serves a node: opens the store, connects, runs — with its operations endpoint when `serving` names one
    /// (and, for a node that hosts process managers, its web console there).
    /// - Parameters:
    ///   - service: The service's name (node, queue and store name).
    ///   - options: Broker, and the data directory or the database.
    ///   - serving: The operations endpoint and the stuck-instance threshold.
    ///   - handlers: What it hosts; the dead-letter administration is added.
    /// - Throws: What connecting or declaring throws; a broken process-manager definition throws before.
    public static func serve(
        _ service: String,
        options: ServiceOptions,
        serving: ServeOptions = ServeOptions(),
        handlers: [any NodeHandler],
        configure: (inout Node.Configuration) -> Void = { _ in }
    ) async throws {
        let http = try serving.http
        let metrics = http.map { _ in OperationsEndpoint.bootstrapMetrics() }
        let logger = Logger(label: service)
        let exporter = try traceExporter(for: service, logger: logger)
        let location = try options.storeLocation(for: service)
        let opened = try await options.openStore(for: service, logger: logger)
        let connection: AMQPConnection
        do {
            connection = try await AMQPConnection.connect(
                configuration: options.connectionConfiguration(name: service),
                logger: logger
            )
        } catch {
            await opened.close()
            throw error
        }
        logger.info("store opened", metadata: ["store": "\(location)"])
        var configuration = Node.Configuration(name: service)
        configuration.topologyOwnership = try options.topologyOwnership
        configuration.partitions = try options.partitions
        try serving.configure(&configuration)
        configure(&configuration)
        let node = Node(
            configuration: configuration,
            store: opened.store,
            transport: AMQPTransport(connection: connection),
            handlers: handlers + [DeadLetterAdministration(service: service)],
            logger: logger
        )
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: node, successTerminationBehavior: .gracefullyShutdownGroup)
        ]
        if let http, let metrics {
            let hosts = handlers.compactMap { $0 as? any ProcessManagerHosting }
            let console =
                try hosts.isEmpty
                ? nil : ProcessConsole(node: node, hosts: hosts, token: serving.consoleToken, logger: logger)
            let endpoint = OperationsEndpoint(
                host: http.host,
                port: http.port,
                metrics: metrics,
                readiness: { readiness(of: node, on: connection) },
                beforeScrape: ConnectionGauges(connection: connection, node: service).update,
                console: console,
                logger: logger
            )
            // Listed first, so stopped last: while the node stops, ready answers 503 and metrics still scrape.
            services.insert(.init(service: endpoint, successTerminationBehavior: .gracefullyShutdownGroup), at: 0)
        }
        if let exporter {
            // First, so stopped last: the node's last spans are exported before the process exits.
            services.insert(.init(service: exporter), at: 0)
        }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        do {
            try await group.run()
        } catch {
            await connection.close()
            await opened.close()
            throw error
        }
        await connection.close()
        await opened.close()
    }
}

extension ServiceRunner {
    /// The OpenTelemetry trace exporter, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set and
    /// the build has the `OpenTelemetry` trait: swift-otel's OTLP/HTTP exporter (`OTEL_EXPORTER_OTLP_PROTOCOL`
    /// `http/protobuf`, the default, or `http/json`), bootstrapped as the process's tracer; its other settings
    /// come from the standard `OTEL_*` variables. Traces only: metrics stay Prometheus', logs the console's.
    /// - Returns: The exporter's service, to run beside the node; `nil` when tracing is off.
    static func traceExporter(for service: String, logger: Logger) throws -> (any Service)? {
        let environment = ProcessInfo.processInfo.environment
        guard
            [environment["OTEL_EXPORTER_OTLP_ENDPOINT"], environment["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]]
                .contains(where: { !($0 ?? "").isEmpty })
        else { return nil }
        #if OpenTelemetry
        var configuration = OTel.Configuration.default
        configuration.serviceName = service
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        let backend: (factory: any Tracer, service: any Service)
        do {
            backend = try OTel.makeTracingBackend(configuration: configuration)
        } catch {
            throw ValidationError("OpenTelemetry: \(error)")
        }
        InstrumentationSystem.bootstrap(backend.factory)
        logger.info("exporting traces over OTLP", metadata: ["service.name": "\(service)"])
        return backend.service
        #else
        logger.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but this build exports no traces: build it with --traits OpenTelemetry"
        )
        return nil
        #endif
    }
}

/// The service's readiness: its node's, and its broker connection up.
private func readiness(of node: Node, on connection: AMQPConnection) -> NodeReadiness {
    var readiness = node.readiness
    if !connection.isConnected { readiness.problems.insert("broker: not connected (reconnecting)", at: 0) }
    return readiness
}

/// The broker connection's state as metrics, read at each scrape: `baton_amqp_connected` (1 or 0) and
/// `baton_amqp_connections_total` (connections made: 1, then one per reconnect).
private final class ConnectionGauges: Sendable {
    let connection: AMQPConnection
    let connected: Gauge
    let connections: Counter
    private let counted = Mutex(0)

    init(connection: AMQPConnection, node: String) {
        self.connection = connection
        connected = Gauge(label: "baton_amqp_connected", dimensions: [("node", node)])
        connections = Counter(label: "baton_amqp_connections_total", dimensions: [("node", node)])
    }

    @Sendable func update() {
        connected.record(connection.isConnected ? 1 : 0)
        let count = connection.connectionCount
        let new = counted.withLock { counted in
            defer { counted = max(counted, count) }
            return max(0, count - counted)
        }
        connections.increment(by: new)
    }
}

/// Asks a running service to replay dead letters (sent to its queue directly by `dlq replay`).
public struct ReplayDeadLetters: Command {
    public static let messageName = "baton.ReplayDeadLetters"
    /// The dead letters to replay; empty with ``all`` for every open one.
    public var ids: [Int64]
    /// Replay every dead letter not replayed yet.
    public var all: Bool

    /// Creates the command.
    public init(ids: [Int64], all: Bool) {
        self.ids = ids
        self.all = all
    }
}

/// The node side of `dlq replay`: replays in the service's own transaction.
struct DeadLetterAdministration: NodeHandler {
    /// The service's name, where its dead letters are sent back to.
    var service: String
    var name: String { "dead-letter-administration" }
    var messageTypes: [any Message.Type] { [ReplayDeadLetters.self] }
    var bindings: [Topology.Binding] { [] }  // arrives on the node exchange, bound for every node

    func handles(_ envelope: Envelope) -> Bool {
        envelope.messageType == ReplayDeadLetters.messageType
    }

    func handle(_ message: any Message, envelope: Envelope, in work: UnitOfWork, now: Date, logger: Logger) throws {
        let request = message as! ReplayDeadLetters
        let ids = request.all ? try work.deadLetters().map(\.id) : request.ids
        var replayed = 0
        for id in ids where try work.replayDeadLetter(id: id, to: service, at: now) { replayed += 1 }
        logger.info("dead letters replayed", metadata: ["count": "\(replayed)", "requested": "\(ids.count)"])
    }
}

/// A service whose node is fully described by its message types and handlers.
public protocol ServiceDefinition: ServiceIdentity {
    /// What its node hosts.
    static var handlers: [any NodeHandler] { get }
}

/// `serve` for a ``ServiceDefinition``: runs its node until SIGTERM or SIGINT.
public struct ServeCommand<Service: ServiceDefinition>: AsyncParsableCommand {
    public static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: "serve", abstract: "Run the \(Service.name) service.")
    }

    @OptionGroup var options: ServiceOptions
    @OptionGroup var serving: ServeOptions

    public init() {}

    public func run() async throws {
        try ServiceRunner.bootstrapLogging()
        try await ServiceRunner.serve(
            Service.name,
            options: options,
            serving: serving,
            handlers: Service.handlers
        )
    }
}

/// `topology`: prints the exchanges, queues and bindings the service needs as RabbitMQ definitions, for a
/// deployment whose broker pre-declares them (`serve --topology broker`).
public struct TopologyCommand<Service: ServiceDefinition>: ParsableCommand {
    public static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "topology",
            abstract: "Print the broker topology the \(Service.name) service needs, as RabbitMQ definitions (JSON)."
        )
    }

    @Option(help: "The virtual host the definitions are for.") var vhost = "/"

    @Option(help: "How many partitions the service's input is split over (as `serve --partitions`), 1 to 64.")
    var partitions = 1

    public init() {}

    public func validate() throws {
        guard Node.partitionCounts.contains(partitions) else {
            throw ValidationError("--partitions must be \(Node.partitionCountsText), not '\(partitions)'")
        }
    }

    public func run() throws {
        var configuration = Node.Configuration(name: Service.name)
        configuration.partitions = partitions
        let topology = Node.topology(configuration: configuration, handlers: Service.handlers)
        try printJSON(BrokerDefinitions(AMQPTopology(topology), vhost: vhost))
    }
}

/// `health`: exits 0 if the service consumes its queue, else prints why not and exits 1 (a container's
/// health check; it asks the broker, with the service's own credentials).
public struct HealthCommand<Service: ServiceIdentity>: AsyncParsableCommand {
    public static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "health",
            abstract: "Check that the \(Service.name) service is up: connected and consuming its queue."
        )
    }

    @OptionGroup var options: ServiceOptions

    public init() {}

    public func run() async throws {
        let consumers = try await ServiceClient.checkRunning(Service.name, options: options)
        print("\(Service.name) is consuming its queue (\(consumers) consumer\(consumers == 1 ? "" : "s"))")
    }
}

/// The whole command line of a service with no operator commands of its own: `serve`, `topology`, `repartition`, `health`,
/// `dlq`, and `processes` when it hosts a process manager. A process-manager executable of your own is then
/// one line:
/// `await runCommandLine(ServiceCommand<MyService>.self)`.
public struct ServiceCommand<Service: ServiceDefinition>: AsyncParsableCommand {
    public static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: Service.name,
            abstract: "The \(Service.name) service.",
            subcommands: [
                ServeCommand<Service>.self, TopologyCommand<Service>.self, RepartitionCommand<Service>.self,
                HealthCommand<Service>.self, DeadLetterCommands<Service>.self,
            ] + (ProcessCommands<Service>.processManagers.isEmpty ? [] : [ProcessCommands<Service>.self])
        )
    }

    public init() {}
}
