import ArgumentParser
import BatonAMQP
import BatonNode
import ChildProcesses
import Foundation

/// The scaled-out shape, measured: the four services with N replicas each, partitioned, on PostgreSQL and a
/// RabbitMQ cluster, at their maximum rate; the CPU each component used per workflow — every service (its
/// replicas summed), every broker node, PostgreSQL (the server and its backends) and this driver. On a machine
/// with fewer cores than processes more replicas cannot run faster: the figures are for the capacity model
/// (`Deploy/BENCHMARKS.md`), which spreads the measured costs over more machines.
struct ScaleOut: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale-out",
        abstract: "The services with N replicas on PostgreSQL and a broker cluster: throughput and CPU per component."
    )

    @Option(
        name: .customLong("amqp-url"),
        help: "The cluster's broker URLs, comma-separated (a virtual host of its own)."
    )
    var amqpURL: String

    @Option(name: .customLong("database-url"), help: "A PostgreSQL database of its own.")
    var databaseURL: String

    @Option(help: "Processes of each service.") var replicas = 1
    @Option(help: "Partitions of each service's input.") var partitions = 4
    @Option(help: "Workflows of the measured run (a tenth more warm the services up first).") var workflows = 3_000
    @Option(name: .customLong("broker-pids"), help: "The broker nodes' process ids, comma-separated.")
    var brokerPIDs: String
    @Option(name: .customLong("postgres-pid"), help: "The PostgreSQL server's (postmaster's) process id.")
    var postgresPID: Int32
    @Option(help: "Directory of the service executables (default: this one's).") var binaries: String?
    @Option(help: "Directory for the logs (default: a fresh temporary one).") var workDir: String?
    @Option(help: "Write the figures as JSON here.") var json: String?

    func validate() throws {
        guard (1...8).contains(replicas), Node.partitionCounts.contains(partitions), workflows >= 100 else {
            throw ValidationError(
                "--replicas 1 to 8, --partitions \(Node.partitionCountsText), --workflows at least 100"
            )
        }
        guard !brokerNodes.isEmpty, brokerNodes.count == brokerPIDs.split(separator: ",").count else {
            throw ValidationError("--broker-pids must be process ids, comma-separated, not '\(brokerPIDs)'")
        }
    }

    private var brokerNodes: [pid_t] { brokerPIDs.split(separator: ",").compactMap { pid_t($0) } }

    func run() async throws {
        let setup = try MeshSetup.make(
            name: "scale-out-\(replicas)",
            url: amqpURL,
            binaries: binaries,
            workDirectory: workDir,
            brokerPID: nil
        )
        let environment = setup.serviceEnvironment([
            "BATON_DATABASE_URL": databaseURL, "BATON_PARTITIONS": String(partitions),
        ])
        try FileManager.default.createDirectory(at: setup.dataDirectory, withIntermediateDirectories: true)
        var processes: [String: ChildProcess] = [:]
        for service in MeshSetup.services {
            for replica in 1...replicas {
                processes["\(service)-\(replica)"] = try setup.startService(service, environment: environment)
            }
        }
        let figures = try await ChildProcess.stopping(processes.values) {
            for service in MeshSetup.services { try await setup.waitUntilHealthy(service, environment: environment) }
            let warmUp = workflows / 10
            try await setup.stock(warmUp + workflows, environment: environment)
            return try await measure(setup, processes: processes, warmUp: warmUp)
        }
        print(figures.table)
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(figures).write(to: URL(fileURLWithPath: json))
        }
    }

    private func measure(
        _ setup: MeshSetup,
        processes: [String: ChildProcess],
        warmUp: Int
    ) async throws -> ScaleOutFigures {
        let connection = try await AMQPConnection.connect(
            configuration: .init(urls: amqpURL.components(separatedBy: ","), connectionName: "baton-scale-out"),
            logger: setup.logger
        )
        let sink = "bench.scale-out-completed"
        try await MeshSetup.declareSink(sink, on: connection)
        func workload(_ name: String) -> Workload {
            Workload(exchange: "storefront", routingKey: "checkout.completed", sinkQueue: sink, runID: name)
        }
        _ = try await workload("warm-up").run(
            count: warmUp,
            rate: nil,
            connection: connection,
            progress: ProgressBar("warm-up", total: warmUp)
        )
        var pids = processes.mapValues(\.pid)
        for (index, pid) in brokerNodes.enumerated() {
            pids["broker node \(index + 1)"] = pid
        }
        pids["driver"] = getpid()
        let meter = CPUMeter(pids)
        let postgresBefore = ProcessStats.treeCPUSeconds(postgresPID)
        let result = try await workload("measured").run(
            count: workflows,
            rate: nil,
            connection: connection,
            progress: ProgressBar("\(replicas) replica(s)", total: workflows)
        )
        let postgres = (ProcessStats.treeCPUSeconds(postgresPID) - postgresBefore) * 1_000 / Double(workflows)
        _ = try? await connection.deleteQueue(sink)
        await connection.close()
        for (name, process) in processes where !process.isRunning {
            throw BenchmarkError("\(name) exited during the run; see \(setup.workDirectory.path)")
        }
        var perProcess = meter.perThousand(workflows: workflows)
        perProcess["postgres"] = postgres
        // CPU milliseconds per workflow, per component: a service's replicas summed.
        var components: [String: Double] = [:]
        for (name, milliseconds) in perProcess {
            let component = MeshSetup.services.first { name.hasPrefix("\($0)-") } ?? name
            components[component, default: 0] += milliseconds
        }
        return ScaleOutFigures(
            replicas: replicas,
            partitions: partitions,
            result: result,
            cpuMillisecondsPerWorkflow: components
        )
    }
}

/// What one scale-out run measured.
struct ScaleOutFigures: Codable, Sendable {
    var replicas: Int
    var partitions: Int
    var result: WorkloadResult
    /// CPU milliseconds per workflow per component (a service's replicas summed; broker nodes, postgres, driver).
    var cpuMillisecondsPerWorkflow: [String: Double]

    var table: String {
        var lines = [
            "scale-out: \(replicas) replica(s) of each service, \(partitions) partitions, PostgreSQL, 3 broker nodes",
            String(
                format: "  %.0f workflows/s over %d workflows; latency p50 %.0f ms, p99 %.0f ms",
                result.workflowsPerSecond,
                result.workflows,
                result.latency.p50,
                result.latency.p99
            ),
            "  CPU per workflow:",
        ]
        func line(_ name: String, _ milliseconds: Double, _ note: String = "") -> String {
            "    " + name.padding(toLength: 16, withPad: " ", startingAt: 0) + String(format: "%7.2f ms", milliseconds)
                + note
        }
        for (component, milliseconds) in cpuMillisecondsPerWorkflow.sorted(by: { $0.key < $1.key }) {
            lines.append(line(component, milliseconds))
        }
        let total = cpuMillisecondsPerWorkflow.filter { $0.key != "driver" }.values.reduce(0, +)
        lines.append(line("total", total, " (without the driver)"))
        return lines.joined(separator: "\n")
    }
}

extension ProcessStats {
    /// CPU seconds of a process and of its children so far: those running (read one by one) and those it has
    /// reaped (its own counters of waited-for children) — a PostgreSQL server with its backends.
    static func treeCPUSeconds(_ root: pid_t) -> Double {
        let children = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        var total = cpuSeconds(root, includingReapedChildren: true)
        for entry in children {
            guard let pid = pid_t(entry), pid != root, parent(of: pid) == root else { continue }
            total += cpuSeconds(pid)
        }
        return total
    }

    private static func parent(of pid: pid_t) -> pid_t? {
        statFields(pid).flatMap { $0.count > 1 ? pid_t($0[1]) : nil }
    }
}
