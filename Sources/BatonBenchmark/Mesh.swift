import BatonAMQP
import ChildProcesses
import Foundation
import Logging

/// One measured run through a set of processes: the workload's figures and the CPU each process used.
struct MeshRun: Codable, Sendable {
    var name: String
    var result: WorkloadResult
    /// CPU seconds per 1,000 workflows, per process (`orders`, …, `broker`, `driver`).
    var cpuPerThousand: [String: Double]
    /// Throughput relative to the ceiling measured in the same benchmark run.
    var ratioToCeiling: Double?
    /// How long the services' queues took to drain after the last completion (the work that follows a
    /// completion, and a backlog's remainder).
    var drainSeconds: Double?
}

/// The processes a workload runs through, and where its checkouts go in and completions come out.
struct MeshSetup {
    var url: String
    var workDirectory: URL
    var binaries: URL
    var brokerPID: pid_t?
    var logger: Logger

    /// A setup for a run called `name`: the executables in `binaries` (default: beside this one), a fresh work
    /// directory under `workDirectory` (default: the temporary directory), warnings only in the log.
    static func make(
        name: String,
        url: String,
        binaries: String?,
        workDirectory: String?,
        brokerPID: pid_t?
    ) throws -> MeshSetup {
        let work = URL(fileURLWithPath: workDirectory ?? NSTemporaryDirectory()).appendingPathComponent(
            "\(name)-\(ProcessInfo.processInfo.processIdentifier)"
        )
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        var logger = Logger(label: name)
        logger.logLevel = .warning
        return MeshSetup(
            url: url,
            workDirectory: work,
            binaries: URL(
                fileURLWithPath: binaries
                    ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
            ),
            brokerPID: brokerPID,
            logger: logger
        )
    }

    /// The queues' prefetch, the same for the relays as the services' default.
    static let prefetch = 256

    /// One hop of a fulfillment workflow, in the services' own names: a message a service's queue receives
    /// (bound from `exchange` with `key`) and what the service publishes for it.
    struct Hop {
        var service: String
        var exchange: String
        var key: String
        var publishes: [(exchange: String, key: String)]
    }

    /// The hops of one completed workflow: 8 deliveries handled by the services, 8 publishes of theirs (one,
    /// OrderPlaced, routed nowhere) after the checkout's, and the sink's delivery. The ceiling's relays do
    /// exactly this, with no framework.
    static let hops: [Hop] = [
        Hop(
            service: "orders",
            exchange: "storefront",
            key: "checkout.completed",
            publishes: [("events", "orders.OrderPlaced"), ("events", "orders.OrderConfirmed")]
        ),
        Hop(
            service: "fulfillment",
            exchange: "events",
            key: "orders.OrderConfirmed",
            publishes: [("commands", "inventory.ReserveInventory")]
        ),
        Hop(
            service: "inventory",
            exchange: "commands",
            key: "inventory.ReserveInventory",
            publishes: [("events", "inventory.InventoryReserved")]
        ),
        Hop(
            service: "fulfillment",
            exchange: "events",
            key: "inventory.InventoryReserved",
            publishes: [("commands", "shipping.CreateShipment")]
        ),
        Hop(
            service: "shipping",
            exchange: "commands",
            key: "shipping.CreateShipment",
            publishes: [("events", "shipping.ShipmentCreated")]
        ),
        Hop(
            service: "fulfillment",
            exchange: "events",
            key: "shipping.ShipmentCreated",
            publishes: [("commands", "orders.CompleteOrder")]
        ),
        Hop(
            service: "orders",
            exchange: "commands",
            key: "orders.CompleteOrder",
            publishes: [("events", "orders.OrderCompleted")]
        ),
        Hop(service: "fulfillment", exchange: "events", key: "orders.OrderCompleted", publishes: []),
    ]
    static let services = ["orders", "inventory", "shipping", "fulfillment"]

    // MARK: The ceiling

    /// The ceiling's topology: the services' exchanges, quorum queues and bindings under a `ceiling.` prefix,
    /// and the sink.
    static var ceilingTopology: AMQPTopology {
        AMQPTopology(
            exchanges: ["storefront", "events", "commands"].map { .init("ceiling.\($0)", kind: .topic) },
            queues: (services + ["sink"]).map { .init("ceiling.\($0)", kind: .quorum) },
            bindings: hops.map {
                .init(queue: "ceiling.\($0.service)", exchange: "ceiling.\($0.exchange)", bindingKey: $0.key)
            }
                + [.init(queue: "ceiling.sink", exchange: "ceiling.events", bindingKey: "orders.OrderCompleted")]
        )
    }

    /// Starts one bare C relay per service, each doing that service's hops; by service.
    func startRelays() throws -> [String: ChildProcess] {
        let relay = binaries.appendingPathComponent("amqp-c-baseline")
        guard FileManager.default.isExecutableFile(atPath: relay.path) else {
            throw BenchmarkError("no relay at \(relay.path): build it with `swift build -c release`")
        }
        var relays: [String: ChildProcess] = [:]
        for service in Self.services {
            let rules = Self.hops.filter { $0.service == service }.map { hop in
                hop.key + "=" + hop.publishes.map { "ceiling.\($0.exchange)/\($0.key)" }.joined(separator: ",")
            }
            relays[service] = try ChildProcess(
                relay.path,
                [url, "relay", "ceiling.\(service)", String(Self.prefetch)] + rules,
                output: .appending(to: workDirectory.appendingPathComponent("relay-\(service).log").path)
            )
        }
        return relays
    }

    /// Declares a quorum queue that receives every `orders.OrderCompleted` the services publish: where a
    /// workload's completions come out.
    static func declareSink(_ sink: String, on connection: AMQPConnection) async throws {
        try await connection.declare(
            AMQPTopology(
                queues: [.init(sink, kind: .quorum)],
                bindings: [.init(queue: sink, exchange: "baton.events", bindingKey: "orders.OrderCompleted")]
            )
        )
    }

    // MARK: The services

    /// Starts the four service executables on a fresh data directory and waits until each consumes its queue,
    /// then stocks the benchmark's SKU. By service.
    /// - Parameter extra: More environment for the services (a retention policy).
    func startServices(stock: Int, environment extra: [String: String] = [:]) async throws -> [String: ChildProcess] {
        try FileManager.default.createDirectory(at: dataDirectory, withIntermediateDirectories: true)
        let environment = serviceEnvironment(extra)
        var started: [String: ChildProcess] = [:]
        do {
            for service in Self.services { started[service] = try startService(service, environment: environment) }
            for service in Self.services { try await waitUntilHealthy(service, environment: environment) }
            try await self.stock(stock, environment: environment)
        } catch {
            for child in started.values { await child.stop() }
            throw error
        }
        return started
    }

    /// Where the services keep their stores.
    var dataDirectory: URL { workDirectory.appendingPathComponent("data") }

    /// The services' environment: the broker, the data directory, warnings only, and `extra`.
    func serviceEnvironment(_ extra: [String: String] = [:]) -> [String: String] {
        ["BATON_AMQP_URL": url, "BATON_DATA_DIR": dataDirectory.path, "BATON_LOG_LEVEL": "warning"].merging(extra) {
            $1
        }
    }

    /// Starts one service executable, its output appended to its log.
    func startService(_ service: String, environment: [String: String]) throws -> ChildProcess {
        try ChildProcess(
            binaries.appendingPathComponent(service).path,
            Self.serveArguments(service),
            environment: environment,
            output: .appending(to: log(service).path)
        )
    }

    /// `serve`, and for fulfillment a step timeout (``benchmarkStepTimeout``) that no backlog of a run outlasts:
    /// with its default, 30 s, a run offering more checkouts than the mesh handles in 30 s compensates them.
    static func serveArguments(_ service: String) -> [String] {
        let stepTimeout = String(benchmarkStepTimeout.components.seconds)
        return ["serve"] + (service == "fulfillment" ? ["--step-timeout", stepTimeout] : [])
    }

    private func log(_ service: String) -> URL { workDirectory.appendingPathComponent("\(service).log") }

    /// Waits until a service says it is healthy (connected and consuming).
    func waitUntilHealthy(_ service: String, environment: [String: String]) async throws {
        for _ in 0..<100 {
            let (termination, _) = try await ChildProcess.run(
                binaries.appendingPathComponent(service).path,
                ["health"],
                environment: environment
            )
            if termination.isSuccess { return }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw BenchmarkError("\(service) did not become healthy; see \(log(service).path)")
    }

    /// Adds `units` of the benchmark's SKU through the inventory CLI (a million per command at most).
    func stock(_ units: Int, environment: [String: String]) async throws {
        var left = units
        while left > 0 {
            let quantity = min(left, 1_000_000)
            try await check(
                "inventory",
                ["add", Workload.sku, "--quantity", String(quantity), "--title", "The benchmark"],
                environment
            )
            left -= quantity
        }
    }

    private func check(_ service: String, _ arguments: [String], _ environment: [String: String]) async throws {
        let (termination, output) = try await ChildProcess.run(
            binaries.appendingPathComponent(service).path,
            arguments,
            environment: environment
        )
        guard termination.isSuccess else {
            throw BenchmarkError("`\(service) \(arguments.joined(separator: " "))` failed (\(termination)): \(output)")
        }
    }

    // MARK: Runs

    /// Runs a workload through `processes` and measures them, the broker and this driver (which publishes the
    /// checkouts and takes the completions); then waits until `queues` are drained.
    ///
    /// A workflow completes (its `OrderCompleted` reaches the sink) before the last of its work is done
    /// (fulfillment still closes its instance), so a run at maximum rate ends with a backlog of such work in
    /// the services' queues; the next run starts when it is gone, not behind it, and the CPU it costs counts
    /// for the run that made it.
    func measure(
        _ name: String,
        workload: Workload,
        count: Int,
        rate: Double?,
        processes: [String: ChildProcess],
        queues: [String],
        connection: AMQPConnection
    ) async throws -> MeshRun {
        var pids = processes.mapValues(\.pid)
        if let brokerPID { pids["broker"] = brokerPID }
        pids["driver"] = getpid()
        let meter = CPUMeter(pids)
        let result = try await workload.run(
            count: count,
            rate: rate,
            connection: connection,
            progress: ProgressBar(name, total: count)
        )
        let drained = try await Self.drain(queues, connection)
        for (name, process) in processes where !process.isRunning {
            throw BenchmarkError("\(name) exited during the run; see \(workDirectory.path)")
        }
        return MeshRun(
            name: name,
            result: result,
            cpuPerThousand: meter.perThousand(workflows: count),
            drainSeconds: drained
        )
    }

    /// Waits until `queues` have no message ready at three looks in a row, 100 ms apart (what a consumer holds
    /// unacknowledged it handles within that).
    /// - Returns: The seconds until the first of those looks.
    /// - Throws: If they still hold messages after ten minutes.
    static func drain(_ queues: [String], _ connection: AMQPConnection) async throws -> Double {
        let clock = ContinuousClock()
        let started = clock.now
        var firstEmpty = started
        var emptyLooks = 0
        while emptyLooks < 3 {
            var ready = 0
            let look = clock.now
            for queue in queues { ready += try await connection.inspectQueue(queue).messages }
            if ready == 0, emptyLooks == 0 { firstEmpty = look }
            emptyLooks = ready == 0 ? emptyLooks + 1 : 0
            if clock.now - started > .seconds(600) {
                throw BenchmarkError(
                    "\(ready) messages still in \(queues.joined(separator: ", ")) ten minutes after the run"
                )
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        return (firstEmpty - started).seconds
    }
}
