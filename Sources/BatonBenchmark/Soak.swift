import ArgumentParser
import BatonAMQP
import BatonNode
import BatonService
import BookstoreOperations
import ChildProcesses
import Foundation
import GRDB
import Logging
import Synchronization

/// The long haul: the four services at a steady rate (half the maximum by default) for an hour, a service
/// kill -9'd and restarted every few minutes, under a short retention policy; every service's resident memory,
/// open files, store and WAL size, outbox, inbox and process-instance rows sampled as it runs. Afterwards the
/// chaos run's invariants, and whether each figure stayed flat once retention applied.
struct Soak: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "The mesh at a steady rate for a long time with kill -9s, sampled: do memory, files, WAL, outbox and inbox stay flat?"
    )

    @Option(name: .customLong("amqp-url"), help: "Broker URL (default: $BATON_AMQP_URL).")
    var amqpURL: String?

    @Option(help: "The broker's process id, to sample its memory (default: $BATON_BROKER_PID; none: not sampled).")
    var brokerPID: Int32?

    @Option(help: "Seconds of load.")
    var duration = 3_600

    @Option(help: "Workflows per second (default: half the maximum, measured first with --calibration workflows).")
    var rate: Double?

    @Option(help: "Workflows of the maximum-rate run that sets the default rate.")
    var calibration = 5_000

    @Option(help: "Seconds between two kill -9s of a service (each at random, from the seed).")
    var killEvery = 180

    @Option(help: "Seconds between two samples.")
    var sampleEvery = 10

    @Option(help: "Seed of the kill schedule (default: random; printed).")
    var seed: UInt64?

    @Option(help: "The services' inbox window (BATON_INBOX_WINDOW).")
    var inboxWindow = "5m"

    @Option(help: "How long closed instances keep their timelines (BATON_KEEP_CLOSED_INSTANCES).")
    var keepClosedInstances = "2m"

    @Option(help: "How long tombstones stay (BATON_KEEP_TOMBSTONES).")
    var keepTombstones = "5m"

    @Option(help: "Directory of the service executables (default: this one's).")
    var binaries: String?

    @Option(help: "Directory for the stores and logs (default: a fresh temporary one, removed afterwards).")
    var workDir: String?

    @Option(help: "Write the samples here (CSV), with the kills beside it (`…-kills.csv`).")
    var csv = "soak.csv"

    private var url: String? { amqpURL ?? ProcessInfo.processInfo.environment["BATON_AMQP_URL"] }
    private var broker: Int32? {
        brokerPID ?? ProcessInfo.processInfo.environment["BATON_BROKER_PID"].flatMap { Int32($0) }
    }

    /// Seconds of each retention age, checked as the services will check them.
    private var ages: (inbox: Double, closed: Double, tombstones: Double)? {
        guard let inbox = InstanceFilter.seconds(inAge: inboxWindow), inbox >= 60,
            let closed = InstanceFilter.seconds(inAge: keepClosedInstances), closed > 0,
            let tombstones = InstanceFilter.seconds(inAge: keepTombstones), tombstones > 0
        else { return nil }
        return (inbox, closed, tombstones)
    }

    func validate() throws {
        guard url != nil else { throw ValidationError("no broker: give --amqp-url or set BATON_AMQP_URL") }
        guard duration >= 10, killEvery > 0, sampleEvery > 0, calibration > 0, (rate ?? 1) > 0 else {
            throw ValidationError(
                "--duration must be 10 s or more; --kill-every, --sample-every, --calibration and --rate positive"
            )
        }
        guard ages != nil else {
            throw ValidationError(
                "--inbox-window (at least 1m), --keep-closed-instances and --keep-tombstones are ages: 90s, 30m, 2h, 7d"
            )
        }
    }

    func run() async throws {
        let seed = self.seed ?? UInt64.random(in: 1...UInt64(UInt32.max))
        let setup = try MeshSetup.make(
            name: "baton-soak",
            url: url!,
            binaries: binaries,
            workDirectory: workDir,
            brokerPID: broker
        )
        let (work, logger) = (setup.workDirectory, setup.logger)
        let environment = setup.serviceEnvironment([
            "BATON_INBOX_WINDOW": inboxWindow, "BATON_KEEP_CLOSED_INSTANCES": keepClosedInstances,
            "BATON_KEEP_TOMBSTONES": keepTombstones,
        ])
        try FileManager.default.createDirectory(at: setup.dataDirectory, withIntermediateDirectories: true)
        let supervisor = ServiceSupervisor(
            binaries: setup.binaries,
            logs: work,
            services: MeshSetup.services.map { .init(name: $0, arguments: ["serve"], environment: environment) }
        )
        for service in MeshSetup.services { try await supervisor.start(service) }
        for service in MeshSetup.services { try await setup.waitUntilHealthy(service, environment: environment) }

        let connection = try await AMQPConnection.connect(
            configuration: try AMQPConnection.Configuration(url: url!, connectionName: "baton-soak"),
            logger: logger
        )
        let sink = "bench.soak-completed"
        try await MeshSetup.declareSink(sink, on: connection)
        func workload(_ name: String) -> Workload {
            Workload(exchange: "storefront", routingKey: "checkout.completed", sinkQueue: sink, runID: "soak-\(name)")
        }
        var workflows = 0
        let rate: Double
        if let given = self.rate {
            rate = given
        } else {
            workflows = calibration
            try await setup.stock(calibration, environment: environment)
            note("calibration: \(calibration) workflows at the maximum rate")
            let maximum = try await workload("max").run(
                count: calibration,
                rate: nil,
                connection: connection,
                progress: ProgressBar("calibration", total: calibration)
            )
            rate = maximum.workflowsPerSecond / 2
            note(String(format: "maximum %.0f workflows/s: the soak runs at %.0f", maximum.workflowsPerSecond, rate))
        }
        let count = Int(rate * Double(duration))
        workflows += count
        try await setup.stock(count, environment: environment)

        note(
            "soak: \(count) workflows at \(Int(rate))/s for \(duration) s, a kill -9 every \(killEvery) s (seed \(seed))"
        )
        let started = ContinuousClock.now
        let samples = try SoakSamples(path: csv, setup: setup, brokerPID: broker)
        let sampling = Task {
            while !Task.isCancelled {
                await samples.take(at: (ContinuousClock.now - started).seconds, supervisor: supervisor)
                try? await Task.sleep(for: .seconds(sampleEvery))
            }
        }
        let killing = Task {
            var random = SeededGenerator(seed: seed)
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(killEvery))
                guard !Task.isCancelled else { return }
                let victim = MeshSetup.services.randomElement(using: &random)!
                await supervisor.kill(victim)
                samples.killed(victim, at: (ContinuousClock.now - started).seconds)
                _ = try? await supervisor.restartDead()
            }
        }
        let result: WorkloadResult
        do {
            result = try await workload("load").run(
                count: count,
                rate: rate,
                connection: connection,
                progress: ProgressBar("soak", total: count),
                stallTimeout: .seconds(120)
            )
        } catch {
            killing.cancel()
            sampling.cancel()
            _ = await supervisor.stopAll()
            throw error
        }
        killing.cancel()
        await killing.value
        _ = try await supervisor.restartDead()
        let options = try ServiceOptions.parse(["--data-dir", setup.dataDirectory.path, "--amqp-url", url!])
        try await MeshQuiet.wait(connection, options, until: .now + .seconds(300))
        sampling.cancel()
        await sampling.value
        await samples.take(at: (ContinuousClock.now - started).seconds, supervisor: supervisor)
        _ = try? await connection.deleteQueue(sink)
        await connection.close()
        let terminations = await supervisor.stopAll()

        let snapshot = try await MeshSnapshot.read(options)
        var problems = snapshot.problems(stocked: [Workload.sku: workflows])
        if snapshot.orders.count != workflows {
            problems.append("\(snapshot.orders.count) orders for \(workflows) checkouts")
        }
        if snapshot.ordersByStatus["COMPLETED", default: 0] != workflows {
            problems.append("\(snapshot.ordersByStatus["COMPLETED", default: 0]) of \(workflows) orders completed")
        }
        for (service, letters) in snapshot.deadLetters where !letters.isEmpty {
            problems.append("\(service) dead-lettered \(letters.count): \(letters.first!.reason)")
        }
        for (service, termination) in terminations where !termination.isSuccess {
            problems.append("\(service) ended with \(termination)")
        }
        let warmUp = ages.map { max($0.inbox * 1.1, $0.closed + $0.tombstones) + 120 } ?? 0
        let verdicts = samples.verdicts(after: warmUp)
        print(
            SoakReport(
                workflows: count,
                rate: rate,
                result: result,
                kills: samples.kills,
                warmUp: warmUp,
                verdicts: verdicts,
                problems: problems
            ).text
        )
        guard problems.isEmpty, verdicts.allSatisfy(\.isFlat) else {
            note("the stores and logs stay in \(work.path)")
            throw ExitCode(1)
        }
        try? FileManager.default.removeItem(at: work)
    }

    private func note(_ text: String) {
        FileHandle.standardError.write(Data("== \(text)\n".utf8))
    }
}

extension MeshSetup {
    /// A service's SQLite file.
    func store(of service: String) -> URL { dataDirectory.appendingPathComponent("\(service).sqlite") }
}

/// The soak's samples, appended to a CSV file as they are taken, and its kills.
final class SoakSamples: Sendable {
    /// One reading of one process.
    struct Sample: Sendable {
        var seconds: Double
        var process: String
        var values: [String: Double]
    }

    /// What is sampled, in the CSV's order: the process, then its store.
    static let figures = ["rss_mb", "fds", "db_mb", "wal_mb", "outbox", "inbox", "instances", "transitions"]
    /// The figures that must stay flat once retention applies (the store file holds the business's own
    /// records — orders, stock, shipments — which grow with the business).
    static let flatFigures = ["rss_mb", "fds", "wal_mb", "outbox", "inbox", "instances", "transitions"]

    private let path: String
    private let setup: MeshSetup
    private let brokerPID: pid_t?
    private let taken = Mutex<[Sample]>([])
    private let killList = Mutex<[(seconds: Double, service: String)]>([])

    /// Starts the CSV files (replacing any).
    init(path: String, setup: MeshSetup, brokerPID: pid_t?) throws {
        self.path = path
        self.setup = setup
        self.brokerPID = brokerPID
        let header = (["seconds", "process"] + Self.figures).joined(separator: ",") + "\n"
        try Data(header.utf8).write(to: URL(fileURLWithPath: path))
        try Data("seconds,service\n".utf8).write(to: URL(fileURLWithPath: Self.killsPath(path)))
    }

    private static func killsPath(_ path: String) -> String {
        (path.hasSuffix(".csv") ? String(path.dropLast(4)) : path) + "-kills.csv"
    }

    /// The kills so far: when, and which service.
    var kills: [(seconds: Double, service: String)] { killList.withLock { $0 } }

    func killed(_ service: String, at seconds: Double) {
        killList.withLock { $0.append((seconds, service)) }
        append(String(format: "%.1f,%@\n", seconds, service), to: Self.killsPath(path))
    }

    /// Reads every service (and the broker) now.
    func take(at seconds: Double, supervisor: ServiceSupervisor) async {
        var samples: [Sample] = []
        for service in MeshSetup.services {
            var values: [String: Double] = [:]
            if let pid = await supervisor.pid(of: service) {
                values["rss_mb"] = ProcessStats.residentMegabytes(pid)
                values["fds"] = Double(
                    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd"))?.count ?? 0
                )
            }
            let store = setup.store(of: service)
            values["db_mb"] = Self.megabytes(store.path)
            values["wal_mb"] = Self.megabytes(store.path + "-wal")
            if let rows = Self.rows(store) {
                values["outbox"] = Double(rows.outbox)
                values["inbox"] = Double(rows.inbox)
                values["instances"] = Double(rows.instances)
                values["transitions"] = Double(rows.transitions)
            }
            samples.append(Sample(seconds: seconds, process: service, values: values))
        }
        if let brokerPID {
            samples.append(
                Sample(
                    seconds: seconds,
                    process: "broker",
                    values: ["rss_mb": ProcessStats.residentMegabytes(brokerPID)]
                )
            )
        }
        taken.withLock { $0 += samples }
        let lines = samples.map { sample in
            ([String(format: "%.1f", sample.seconds), sample.process]
                + Self.figures.map { sample.values[$0].map { String(format: "%.2f", $0) } ?? "" })
                .joined(separator: ",")
        }
        append(lines.joined(separator: "\n") + "\n", to: path)
    }

    private func append(_ text: String, to path: String) {
        guard let handle = FileHandle(forWritingAtPath: path) else { return }
        handle.seekToEndOfFile()
        handle.write(Data(text.utf8))
        try? handle.close()
    }

    private static func megabytes(_ path: String) -> Double {
        Double((try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0) / 1_048_576
    }

    /// The rows of a store's bookkeeping tables, read-only (the service is running); `nil` if it cannot be read.
    static func rows(_ store: URL) -> (outbox: Int, inbox: Int, instances: Int, transitions: Int)? {
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(5)
        guard let database = try? DatabaseQueue(path: store.path, configuration: configuration) else { return nil }
        defer { try? database.close() }
        return try? database.read { db in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT (SELECT COUNT(*) FROM outbox), (SELECT COUNT(*) FROM inbox),
                            (SELECT COUNT(*) FROM process_instances), (SELECT COUNT(*) FROM process_transitions)
                        """
                )
            else { return nil }
            return (row[0], row[1], row[2], row[3])
        }
    }

    /// Whether each figure of each process stayed flat after `warmUp` seconds: the median of its last quarter
    /// against the median of its first quarter after the warm-up (medians, so that a restart's dip or a
    /// burst of catching up after a kill does not decide).
    func verdicts(after warmUp: Double) -> [SoakVerdict] {
        let samples = taken.withLock { $0 }.filter { $0.seconds >= warmUp }
        guard let first = samples.first?.seconds, let last = samples.last?.seconds, last > first else { return [] }
        let quarter = (last - first) / 4
        var verdicts: [SoakVerdict] = []
        for process in MeshSetup.services + ["broker"] {
            for figure in Self.flatFigures {
                func median(_ range: ClosedRange<Double>) -> Double? {
                    let values = samples.filter { $0.process == process && range.contains($0.seconds) }
                        .compactMap { $0.values[figure] }.sorted()
                    return values.isEmpty ? nil : values[values.count / 2]
                }
                guard let early = median(first...(first + quarter)), let late = median((last - quarter)...last)
                else { continue }
                verdicts.append(SoakVerdict(process: process, figure: figure, early: early, late: late))
            }
        }
        return verdicts
    }
}

/// One figure of one process: its median early and late after the warm-up.
struct SoakVerdict: Sendable {
    var process: String
    var figure: String
    var early: Double
    var late: Double

    /// Flat: grown by at most a fifth, or by less than a small absolute amount (a few megabytes, files or
    /// rows move with the load's own noise).
    var isFlat: Bool {
        let slack: Double =
            switch figure {
            case "rss_mb": 24
            case "fds": 8
            case "wal_mb": 4
            default: 2_000
            }
        return late <= early * 1.2 + slack
    }
}

/// The soak's summary.
struct SoakReport {
    var workflows: Int
    var rate: Double
    var result: WorkloadResult
    var kills: [(seconds: Double, service: String)]
    var warmUp: Double
    var verdicts: [SoakVerdict]
    var problems: [String]

    var text: String {
        var lines = [
            "",
            String(
                format:
                    "soak: %d workflows at %.0f/s offered, %.0f/s done; latency p50 %.1f ms, p99 %.1f ms, max %.0f ms",
                workflows,
                rate,
                result.workflowsPerSecond,
                result.latency.p50,
                result.latency.p99,
                result.latency.max
            ),
            "kill -9: \(kills.count) ("
                + MeshSetup.services.map { service in
                    "\(service) \(kills.count { $0.service == service })"
                }.joined(separator: ", ") + ")",
            "flat once retention applied (after \(Int(warmUp)) s; median of the first quarter → of the last quarter):",
        ]
        if verdicts.isEmpty { lines.append("  (no verdict: the run ended before retention applied)") }
        for verdict in verdicts {
            let name =
                verdict.process.padding(toLength: 13, withPad: " ", startingAt: 0)
                + verdict.figure.padding(toLength: 12, withPad: " ", startingAt: 0)
            let figures = String(format: "%10.1f → %10.1f", verdict.early, verdict.late)
            lines.append("  \(name)\(figures)  \(verdict.isFlat ? "flat" : "GROWS")")
        }
        lines.append(
            problems.isEmpty
                ? "invariants: every order completed, one per checkout, stock conserved, no dead letter, graceful stops"
                : "invariants broken:\n" + problems.prefix(20).map { "  " + $0 }.joined(separator: "\n")
        )
        return lines.joined(separator: "\n")
    }
}
