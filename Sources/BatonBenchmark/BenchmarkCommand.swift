import ArgumentParser
import BatonAMQP
import ChildProcesses
import Foundation
import Logging
import Prometheus

/// Baton's benchmarks, in one run: the broker's ceiling (bare C relays), the real four-service mesh at
/// maximum and at fixed rates, the embedded mode, and the process-manager node as its store grows.
@main
struct BenchmarkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "baton-benchmark",
        abstract: "Baton benchmarks: the mesh against the broker's own ceiling, the embedded mode, scale.",
        subcommands: [All.self, Embedded.self, Scale.self, Soak.self, ScaleOut.self],
        defaultSubcommand: All.self
    )
}

/// Everything, in one run, with one table.
struct All: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ceiling, mesh (max and fixed rates), embedded and scale; prints the table, writes JSON."
    )

    @Option(name: .customLong("amqp-url"), help: "Broker URL (default: $BATON_AMQP_URL).")
    var amqpURL: String?

    @Option(help: "The broker's process id, to measure its CPU (default: $BATON_BROKER_PID; none: not measured).")
    var brokerPID: Int32?

    private var url: String? { amqpURL ?? ProcessInfo.processInfo.environment["BATON_AMQP_URL"] }
    private var broker: Int32? {
        brokerPID ?? ProcessInfo.processInfo.environment["BATON_BROKER_PID"].flatMap { Int32($0) }
    }

    @Option(help: "Workflows per ceiling and mesh run.")
    var workflows = 20_000

    @Option(
        help: "Fixed rates for more mesh runs, in percent of the mesh's measured maximum (comma-separated).",
        transform: { try percentages($0) }
    )
    var rates: [Int] = [25, 50, 75]

    @Option(help: "Workflows for the embedded mode.")
    var embeddedWorkflows = 20_000

    @OptionGroup var scale: ScaleOptions

    @Option(help: "Directory of the service executables and amqp-c-baseline (default: this one's).")
    var binaries: String?

    @Option(help: "Directory for the stores and logs (default: a fresh temporary one, removed afterwards).")
    var workDir: String?

    @Option(help: "Also write the results as JSON to this file.")
    var json: String?

    @Flag(
        help:
            "Record where the machine's CPU goes during the mesh's run at 50% (perf record -a -g; needs perf and a rate of 50) and print it per process."
    )
    var profile = false

    func validate() throws {
        guard url != nil else { throw ValidationError("no broker: give --amqp-url or set BATON_AMQP_URL") }
        guard workflows > 0, embeddedWorkflows > 0 else {
            throw ValidationError("--workflows and --embedded-workflows must be positive")
        }
        guard !profile || rates.contains(50) else {
            throw ValidationError("--profile records the mesh's run at 50%: keep 50 among --rates")
        }
    }

    func run() async throws {
        if profile { try await MachineProfile.checkRecorder() }
        let setup = try MeshSetup.make(
            name: "baton-benchmark",
            url: url!,
            binaries: binaries,
            workDirectory: workDir,
            brokerPID: broker
        )
        let work = setup.workDirectory
        let connection = try await AMQPConnection.connect(
            configuration: try AMQPConnection.Configuration(url: url!, connectionName: "baton-benchmark"),
            logger: setup.logger
        )
        var report = BenchmarkReport(machine: .current, workflows: workflows)

        // A longer run is preceded by a short one at maximum rate, for the run-length target.
        let maxima =
            (workflows > Self.shortRun ? [(name: "short", count: Self.shortRun)] : [])
            + [(name: "max", count: workflows)]

        note("ceiling: bare C relays, the services' hops, quorum queues, persistent, confirms, ack after confirm")
        let ceilingMaxima = try await ceiling(setup, connection, runs: maxima.map { ($0.name, nil, $0.count) })

        note("mesh: orders, inventory, shipping, fulfillment on the same broker")
        (report.mesh, report.profile) = try await mesh(
            setup,
            connection,
            maxima: maxima,
            ceilings: ceilingMaxima.map(\.result.workflowsPerSecond)
        )

        note("ceiling again at the mesh's fixed rates: the broker's own latency there")
        let paced = zip(rates.sorted(by: >), report.mesh.filter { $0.result.offeredRate != nil }).map {
            (name: "\($0)%", rate: $1.result.offeredRate, count: workflows)
        }
        report.ceiling = ceilingMaxima + (try await ceiling(setup, connection, runs: paced))
        await connection.close()

        note("embedded: the 4-step process manager, in-process transport, SQLite on disk; metrics off, then on")
        report.embedded = try await EmbeddedBenchmark(
            workflows: embeddedWorkflows,
            directory: work.appendingPathComponent("embedded")
        ).run()
        report.embeddedSharedStore = try await EmbeddedBenchmark(
            workflows: embeddedWorkflows,
            directory: work.appendingPathComponent("embedded-shared"),
            sharedStore: true
        ).run()
        report.embeddedWithMetrics = try await EmbeddedBenchmark(
            workflows: embeddedWorkflows,
            directory: work.appendingPathComponent("embedded-metrics"),
            metrics: PrometheusMetricsFactory(registry: PrometheusCollectorRegistry())
        ).run()
        #if OpenTelemetry
        note("embedded with tracing on: every span exported over OTLP/HTTP to a receiver in this process")
        let sink = try await TracingSink.start()
        report.embeddedWithTracing = try await EmbeddedBenchmark(
            workflows: embeddedWorkflows,
            directory: work.appendingPathComponent("embedded-tracing")
        ).run()
        report.spansExported = await sink.stop()
        #endif

        note("scale: the process-manager node as its store grows (a child process, so memory is its own)")
        report.scale = try await measureScale(work: work)

        print(report.table)
        try write(report, toJSON: json)
        try? FileManager.default.removeItem(at: work)
    }

    /// The workflows of the short run at maximum rate that precedes a longer one (the ceiling's and the mesh's),
    /// on fresh stores: the run-length target compares the two.
    static let shortRun = 5_000

    private func ceiling(
        _ setup: MeshSetup,
        _ connection: AMQPConnection,
        runs: [(name: String, rate: Double?, count: Int)]
    ) async throws
        -> [MeshRun]
    {
        let topology = MeshSetup.ceilingTopology
        let relayQueues = topology.queues.map(\.name).filter { $0 != "ceiling.sink" }
        try await connection.declare(topology)
        defer { Task { for queue in topology.queues { _ = try? await connection.deleteQueue(queue.name) } } }
        let relays = try setup.startRelays()
        return try await ChildProcess.stopping(relays.values) {
            try await waitForConsumers(relayQueues, connection)
            var results: [MeshRun] = []
            for (name, rate, count) in runs {
                let workload = Workload(
                    exchange: "ceiling.storefront",
                    routingKey: "checkout.completed",
                    sinkQueue: "ceiling.sink",
                    runID: "ceiling-\(name)"
                )
                results.append(
                    try await setup.measure(
                        "ceiling \(name)",
                        workload: workload,
                        count: count,
                        rate: rate,
                        processes: relays,
                        queues: relayQueues,
                        connection: connection
                    )
                )
            }
            return results
        }
    }

    /// The mesh at maximum rate (`maxima`: each such run, the last the run of `workflows`; each against the
    /// ceiling's run of its size: `ceilings`), then at the fixed rates.
    private func mesh(
        _ setup: MeshSetup,
        _ connection: AMQPConnection,
        maxima: [(name: String, count: Int)],
        ceilings: [Double]
    ) async throws -> ([MeshRun], MachineProfile?) {
        let services = try await setup.startServices(stock: maxima.map(\.count).reduce(0, +) + workflows * rates.count)
        return try await ChildProcess.stopping(services.values) {
            try await mesh(setup, connection, maxima: maxima, ceilings: ceilings, services: services)
        }
    }

    private func mesh(
        _ setup: MeshSetup,
        _ connection: AMQPConnection,
        maxima: [(name: String, count: Int)],
        ceilings: [Double],
        services: [String: ChildProcess]
    ) async throws -> ([MeshRun], MachineProfile?) {
        let sink = "bench.completed"
        try await MeshSetup.declareSink(sink, on: connection)
        defer { Task { _ = try? await connection.deleteQueue(sink) } }
        func run(_ name: String, rate: Double?, count: Int? = nil) async throws -> MeshRun {
            let workload = Workload(
                exchange: "storefront",
                routingKey: "checkout.completed",
                sinkQueue: sink,
                runID: "bench-\(name)"
            )
            return try await setup.measure(
                "mesh \(name)",
                workload: workload,
                count: count ?? workflows,
                rate: rate,
                processes: services,
                queues: MeshSetup.services,
                connection: connection
            )
        }
        var runs: [MeshRun] = []
        for ((name, count), ceiling) in zip(maxima, ceilings) {
            var run = try await run(name, rate: nil, count: count)
            run.ratioToCeiling = run.result.workflowsPerSecond / ceiling
            runs.append(run)
        }
        let maximum = runs[runs.count - 1]
        var profile: MachineProfile?
        for percent in rates.sorted(by: >) {
            let rate = maximum.result.workflowsPerSecond * Double(percent) / 100
            guard self.profile, percent == 50 else {
                runs.append(try await run("\(percent)%", rate: rate))
                continue
            }
            let path = setup.workDirectory.appendingPathComponent("mesh-50.perf.data").path
            let recording = try MachineProfile.start(writingTo: path)
            do {
                runs.append(try await run("\(percent)%", rate: rate))
            } catch {
                recording.send(SIGINT)  // no recorder left behind
                await recording.wait()
                throw error
            }
            var names = services.reduce(into: [pid_t: String]()) { $0[$1.value.pid] = $1.key }
            names[getpid()] = "driver"
            if let broker = setup.brokerPID { names[broker] = "broker" }
            profile = try await MachineProfile.finish(recording, path: path, names: names)
        }
        return (runs, profile)
    }

    private func waitForConsumers(_ queues: [String], _ connection: AMQPConnection) async throws {
        for _ in 0..<100 {
            var ready = true
            for queue in queues where try await connection.inspectQueue(queue).consumers == 0 { ready = false }
            if ready { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw BenchmarkError("the relays did not start consuming; see their logs")
    }

    private func measureScale(work: URL) async throws -> ScaleResult {
        let output = work.appendingPathComponent("scale.json")
        let (termination, log) = try await ChildProcess.run(
            CommandLine.arguments[0],
            [
                "scale", "--instances", scale.instances.map(String.init).joined(separator: ","),
                "--probes", String(scale.probes), "--data-dir", work.appendingPathComponent("scale").path,
                "--json", output.path,
            ]
        )
        guard termination.isSuccess else {
            throw BenchmarkError("the scale part failed (\(termination)):\n\(log)")
        }
        return try JSONDecoder().decode(ScaleResult.self, from: Data(contentsOf: output))
    }

    private func note(_ text: String) {
        FileHandle.standardError.write(Data("== \(text)\n".utf8))
    }
}

/// The embedded mode alone.
struct Embedded: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "A 4-step process manager and a worker in one process, SQLite on disk (a store each, then one shared): messages/s and workflows/s."
    )

    @Option(help: "Workflows to run.")
    var workflows = 20_000

    @Option(help: "Directory for the SQLite files (default: a fresh temporary directory).")
    var dataDir: String?

    @Option(help: "Also write the results as JSON to this file.")
    var json: String?

    @Flag(help: "Run it again with metrics recorded (Prometheus), and print what they cost per message.")
    var metrics = false

    @Flag(
        help:
            "Run it again with tracing on (a build with --traits OpenTelemetry: every span exported over OTLP/HTTP to a receiver in this process), and print what it costs per message."
    )
    var tracing = false

    func validate() throws {
        guard workflows > 0 else { throw ValidationError("--workflows must be positive") }
        #if !OpenTelemetry
        if tracing { throw ValidationError("--tracing needs a build with --traits OpenTelemetry") }
        #endif
    }

    func run() async throws {
        let directory = temporaryDirectory(dataDir, "embedded")
        defer { try? FileManager.default.removeItem(at: directory) }
        let result = try await EmbeddedBenchmark(workflows: workflows, directory: directory).run()
        print(BenchmarkReport.embeddedLine(result))
        let shared = try await EmbeddedBenchmark(
            workflows: workflows,
            directory: directory.appendingPathComponent("shared"),
            sharedStore: true
        ).run()
        print(BenchmarkReport.embeddedLine(shared, on: "one shared store"))
        if metrics {
            let measured = try await EmbeddedBenchmark(
                workflows: workflows,
                directory: directory.appendingPathComponent("metrics"),
                metrics: PrometheusMetricsFactory(registry: PrometheusCollectorRegistry())
            ).run()
            print(BenchmarkReport.embeddedLine(measured, metrics: true))
            print(BenchmarkReport.metricsCostLine(off: result, on: measured))
        }
        #if OpenTelemetry
        if tracing {
            let sink = try await TracingSink.start()
            let measured = try await EmbeddedBenchmark(
                workflows: workflows,
                directory: directory.appendingPathComponent("tracing")
            ).run()
            let spans = await sink.stop()
            print(BenchmarkReport.embeddedLine(measured, on: "tracing on (\(spans) spans exported)"))
            print(BenchmarkReport.metricsCostLine(off: result, on: measured, what: "tracing"))
        }
        #endif
        try write(result, toJSON: json)
    }
}

/// The scale part alone (the full run starts it as a child process).
struct Scale: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The process-manager node's latency, cost per event and memory as its store grows; restart time."
    )

    @OptionGroup var scale: ScaleOptions

    @Option(help: "Directory for the SQLite file (default: a fresh temporary directory).")
    var dataDir: String?

    @Option(help: "Also write the results as JSON to this file.")
    var json: String?

    func run() async throws {
        let directory = temporaryDirectory(dataDir, "scale")
        defer { try? FileManager.default.removeItem(at: directory) }
        let result = try await ScaleBenchmark(
            checkpoints: scale.instances,
            probeCount: scale.probes,
            directory: directory
        ).run()
        print(BenchmarkReport.scaleLines(result).joined(separator: "\n"))
        try write(result, toJSON: json)
    }
}

/// The sizes and probes of the scale part.
struct ScaleOptions: ParsableArguments {
    @Option(help: "Store sizes the scale part measures at (comma-separated).", transform: { try sizes($0) })
    var instances: [Int] = [10_000, 100_000, 1_000_000]

    @Option(help: "Events measured one at a time at each store size (ten times as many in a burst).")
    var probes = 500

    func validate() throws {
        guard probes > 0 else { throw ValidationError("--probes must be positive") }
        guard instances == instances.sorted(), Set(instances).count == instances.count else {
            throw ValidationError("--instances must grow: e.g. 10000,100000,1000000")
        }
        guard let first = instances.first, first >= probes * 11 else {
            throw ValidationError("--instances must start at 11 × --probes or more (each probe needs its own instance)")
        }
    }
}

private func temporaryDirectory(_ given: String?, _ name: String) -> URL {
    URL(fileURLWithPath: given ?? NSTemporaryDirectory()).appendingPathComponent("baton-\(name)-\(UUID().uuidString)")
}

private func write(_ value: some Encodable, toJSON path: String?) throws {
    guard let path else { return }
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    encoder.dateEncodingStrategy = .iso8601
    try encoder.encode(value).write(to: URL(fileURLWithPath: path))
}

private func percentages(_ text: String) throws -> [Int] {
    try integers(text, allowing: 1...99, "rates are percentages from 1 to 99, comma-separated: e.g. 25,50,75")
}

private func sizes(_ text: String) throws -> [Int] {
    let message = "sizes are positive integers, comma-separated: e.g. 10000,100000,1000000"
    let values = try integers(text, allowing: 1...Int.max, message)
    guard !values.isEmpty else { throw ValidationError(message) }
    return values
}

/// Comma-separated integers, each in `range`; `message` if any is not.
private func integers(_ text: String, allowing range: ClosedRange<Int>, _ message: String) throws -> [Int] {
    let fields = text.split(separator: ",")
    let values = fields.compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard values.count == fields.count, values.allSatisfy(range.contains) else { throw ValidationError(message) }
    return values
}
