import Baton
import BatonNode
import BatonSQLite
import BatonTesting
import Foundation
import Logging

/// Scale in instances: the process-manager node's store grows to each checkpoint (10k … 1M open instances,
/// each waiting on its second step with a pending deadline), and at each the node is started and measured —
/// the latency of one event at a time, the cost per event in a burst, the process's memory — and at the last
/// checkpoint, the restart: from opening the store until the first event is handled.
///
/// Instances are written by the process manager's own handler in large transactions (the path a node takes,
/// without the transport), their commands marked sent: what a store looks like after a long busy day.
struct ScaleBenchmark {
    var checkpoints: [Int]
    /// Events measured one at a time at each checkpoint; ten times as many in the burst.
    var probeCount: Int
    var directory: URL

    private var path: String { directory.appendingPathComponent("coordinator.sqlite").path }
    private static let probeQueue = "probe"

    func run() async throws -> ScaleResult {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var logger = Logger(label: "baton-benchmark")
        logger.logLevel = .warning
        var points: [ScalePoint] = []
        var topology = Topology()
        var seeded = 0
        var probes = Probes()
        for checkpoint in checkpoints {
            try await seed(from: seeded, to: checkpoint, logger: logger)
            seeded = checkpoint
            let transport = InProcessTransport()
            let node = try ScaleBenchmark.node(transport: transport, path: path, logger: logger)
            topology = node.topology
            try await declare(topology, on: transport)
            let running = Task { try await node.run() }
            let source = try await transport.subscribe(queue: Self.probeQueue, prefetch: 10_000)
            var latencies: [Double] = []
            for _ in 0..<probeCount {
                let started = ContinuousClock.now
                _ = await transport.publish([probes.next(of: seeded)])
                try await receive(1, from: source)
                latencies.append((ContinuousClock.now - started).seconds * 1_000)
            }
            let burst = probeCount * 10
            let burstStarted = ContinuousClock.now
            for first in stride(from: 0, to: burst, by: 500) {
                _ = await transport.publish((first..<min(burst, first + 500)).map { _ in probes.next(of: seeded) })
            }
            try await receive(burst, from: source)
            let burstSeconds = (ContinuousClock.now - burstStarted).seconds
            await source.cancel()
            running.cancel()
            try await running.value
            let pages = try await pageTimes(in: node.store, seeded: seeded)
            latencies.sort()
            points.append(
                ScalePoint(
                    instances: seeded,
                    latencyP50: latencies[latencies.count / 2],
                    latencyP99: latencies[min(latencies.count - 1, latencies.count * 99 / 100)],
                    microsecondsPerEvent: burstSeconds * 1e6 / Double(burst),
                    residentMegabytes: ProcessStats.residentMegabytes(getpid()),
                    firstPageMilliseconds: pages.first,
                    middlePageMilliseconds: pages.middle,
                    rarePageMilliseconds: pages.rare
                )
            )
            FileHandle.standardError.write(
                Data("  scale: \(seeded) instances measured\n".utf8)
            )
        }
        let restart = try await restartTime(probe: probes.next(of: seeded), topology: topology, logger: logger)
        return ScaleResult(points: points, restartSeconds: restart, restartInstances: seeded)
    }

    /// What the web console's instance list costs (a page of 50, as the console asks for it; best of five): the
    /// first page, a page that starts half way down (keyset), and the first page of a lifecycle few instances
    /// are in (the failed ones, none here: the whole index range is empty).
    private func pageTimes(
        in store: any Store,
        seeded: Int
    ) async throws -> (first: Double, middle: Double, rare: Double) {
        let process = fourSteps().name
        let middle = try await store.read { work in
            try work.transitions(of: process, instance: "wf-\(seeded / 2)").last.map {
                InstancePosition(updatedAt: $0.at, instanceID: "wf-\(seeded / 2)")
            }
        }
        func best(_ filter: InstanceFilter) async throws -> Double {
            var fastest = Double.infinity
            for _ in 0..<5 {
                let started = ContinuousClock.now
                let page = try await store.read { try $0.instances(of: process, matching: filter, limit: 50) }
                guard page.count == 50 || filter.lifecycles == [.failed] else {
                    throw BenchmarkError("a console page listed \(page.count) instances, not 50")
                }
                fastest = min(fastest, (ContinuousClock.now - started).seconds * 1_000)
            }
            return fastest
        }
        return (
            try await best(InstanceFilter()),
            try await best(InstanceFilter(after: middle)),
            try await best(InstanceFilter(lifecycles: [.failed]))
        )
    }

    /// Opens the store anew and starts a node with one event waiting: seconds until it is handled.
    private func restartTime(probe: OutgoingMessage, topology: Topology, logger: Logger) async throws -> Double {
        let transport = InProcessTransport()
        try await declare(topology, on: transport)
        let source = try await transport.subscribe(queue: Self.probeQueue, prefetch: 10)
        _ = await transport.publish([probe])
        let started = ContinuousClock.now
        let node = try ScaleBenchmark.node(transport: transport, path: path, logger: logger)
        let running = Task { try await node.run() }
        try await receive(1, from: source)
        let seconds = (ContinuousClock.now - started).seconds
        await source.cancel()
        running.cancel()
        try await running.value
        return seconds
    }

    private func declare(_ topology: Topology, on transport: InProcessTransport) async throws {
        try await transport.declare(topology)
        try await transport.declare(EmbeddedBenchmark.sink(Self.probeQueue, for: DoStepB.self))
    }

    /// Second-step completions, each for an instance not probed before, scattered over the store.
    private struct Probes {
        private var probed: Set<Int> = []
        private var cursor = 0

        mutating func next(of seeded: Int) -> OutgoingMessage {
            var instance: Int
            repeat {
                instance = (cursor &* 7_919) % seeded  // 7919 is prime: the walk visits every instance
                cursor += 1
            } while !probed.insert(instance).inserted
            return EmbeddedBenchmark.event(StepADone(workflowID: "wf-\(instance)"), id: "probe-\(cursor)")
        }
    }

    private func receive(_ count: Int, from source: any MessageSource) async throws {
        var received = 0
        while received < count {
            guard let batch = try await source.nextBatch(maxCount: count - received) else {
                throw BenchmarkError("the probe queue closed")
            }
            for message in batch { message.acknowledge() }
            received += batch.count
        }
    }

    /// Grows the store from `first` to `last` instances, 5,000 per transaction.
    private func seed(from first: Int, to last: Int, logger: Logger) async throws {
        guard last > first else { return }
        let store = try SQLiteStore(path: path)
        let definition = fourSteps()
        let registry = definition.registry
        let host = try ProcessManagerHost(definition)
        let progress = ProgressBar("seeding instances", total: last)
        for chunk in stride(from: first, to: last, by: 5_000) {
            let indices = chunk..<min(last, chunk + 5_000)
            try await store.write { work in
                let now = Date()
                for index in indices {
                    let envelope = EmbeddedBenchmark.start(index).envelope
                    let message = try registry.decode(envelope)
                    try host.handle(message, envelope: envelope, in: work, now: now, logger: logger)
                    try work.markHandled(envelope.messageID, consumer: "bench-coordinator", issuedAt: now, at: now)
                }
                try work.removeSent(work.pendingOutbox(limit: indices.count * 2).map(\.sequence))
            }
            progress.update(indices.upperBound)
        }
    }

    static func node(transport: any Transport, path: String, logger: Logger) throws -> Node {
        try EmbeddedBenchmark.coordinator(transport: transport, store: try SQLiteStore(path: path), logger: logger)
    }
}

/// The figures at one size of the store.
struct ScalePoint: Codable, Sendable {
    var instances: Int
    /// One event at a time, from publish until its command is relayed, in milliseconds.
    var latencyP50: Double
    var latencyP99: Double
    /// Wall-clock microseconds per event in a burst of events.
    var microsecondsPerEvent: Double
    /// The process's resident memory after the measurements.
    var residentMegabytes: Double
    /// A page of the console's instance list (50), in milliseconds: the first, one half way down, one of a
    /// lifecycle no instance is in.
    var firstPageMilliseconds: Double
    var middlePageMilliseconds: Double
    var rarePageMilliseconds: Double
}

struct ScaleResult: Codable, Sendable {
    var points: [ScalePoint]
    var restartSeconds: Double
    var restartInstances: Int
}
