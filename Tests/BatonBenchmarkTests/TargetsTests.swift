import Foundation
import Testing

@testable import BatonBenchmark

/// The benchmark's verdicts on the performance targets, and the machine profile read from `perf script`.
@Suite struct TargetsTests {
    /// A run's report as its JSON says it: the ceiling, the mesh at max and at 50%, embedded, scale.
    static func report(
        ratio: Double = 0.29,
        workflows: Int = 20_000,
        halfLatency: (p50: Double, p99: Double) = (161, 344),
        fulfillmentAtHalf: Double = 0.90,
        embedded: (workflows: Int, perSecond: Double) = (20_000, 2_286),
        scale: (first: Double, last: Double, instances: Int, megabytes: Double, restart: Double) = (
            121, 210, 1_000_000, 150, 0.779
        )
    ) throws -> BenchmarkReport {
        func run(_ name: String, perSecond: Double, p50: Double, p99: Double, fulfillment: Double) -> String {
            """
            {"name": "\(name)", "ratioToCeiling": \(name == "mesh max" ? "\(ratio)" : "null"),
             "cpuPerThousand": {"orders": 0.42, "inventory": 0.13, "shipping": 0.13, "fulfillment": \(fulfillment),
                                "broker": 0.51, "driver": 0.05},
             "result": {"workflows": \(workflows), "seconds": 20, "workflowsPerSecond": \(perSecond),
                        "latency": {"p50": \(p50), "p95": \(p99), "p99": \(p99), "max": \(p99)}, "timeline": []}}
            """
        }
        let json = """
            {"machine": {"cpu": "test", "cores": 2, "memoryGiB": 24, "kernel": "6"}, "date": "2026-12-03T17:00:00Z",
             "workflows": 20000,
             "ceiling": [\(run("ceiling max", perSecond: 1_015 / ratio, p50: 1, p99: 2, fulfillment: 0.05))],
             "mesh": [\(run("mesh max", perSecond: 1_015, p50: 5_000, p99: 6_000, fulfillment: 0.54)),
                      \(run("mesh 50%", perSecond: 507, p50: halfLatency.p50, p99: halfLatency.p99, fulfillment: fulfillmentAtHalf))],
             "embedded": {"workflows": \(embedded.workflows), "seconds": 1, "workflowsPerSecond": \(embedded.perSecond),
                          "messagesPerSecond": \(embedded.perSecond * 7)},
             "scale": {"restartInstances": \(scale.instances), "restartSeconds": \(scale.restart), "points": [
                {"instances": 10000, "latencyP50": 1, "latencyP99": 2, "microsecondsPerEvent": \(scale.first),
                 "residentMegabytes": 60, "firstPageMilliseconds": 0.3, "middlePageMilliseconds": 0.3,
                 "rarePageMilliseconds": 0.1},
                {"instances": \(scale.instances), "latencyP50": 1, "latencyP99": 2, "microsecondsPerEvent": \(scale.last),
                 "residentMegabytes": \(scale.megabytes), "firstPageMilliseconds": 0.3, "middlePageMilliseconds": 0.3,
                 "rarePageMilliseconds": 0.1}]}}
            """
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(BenchmarkReport.self, from: Data(json.utf8))
    }

    func verdicts(_ report: BenchmarkReport) -> [String: TargetCheck.Verdict] {
        Dictionary(uniqueKeysWithValues: report.targetChecks.map { ($0.target, $0.verdict) })
    }

    /// The figures of the run at 25b655a: every target but memory and restart missed, the CPU one at half rate
    /// only, and the two that need another run or size not measured.
    @Test func aRunIsHeldToEachTarget() throws {
        let verdicts = verdicts(try Self.report())
        #expect(verdicts["mesh max ≥ 0.50 of the ceiling, at 20,000 workflows or more"] == .missed)
        #expect(verdicts["wf/s at 100,000 ≥ 90% of wf/s at 5,000"] == .notMeasured)
        #expect(verdicts["at 50% of max: p50 ≤ 10 ms, p99 ≤ 50 ms"] == .missed)
        #expect(verdicts["each service ≤ 0.8 ms CPU per workflow, mesh max"] == .met)
        #expect(verdicts["each service ≤ 0.8 ms CPU per workflow, mesh 50%"] == .missed)
        #expect(verdicts["embedded ≥ 10,000 wf/s at 100,000 workflows"] == .notMeasured, "20,000 workflows only")
        #expect(verdicts["per-event cost, 10,000 → 1,000,000 instances, ≤ +10%"] == .missed)
        #expect(verdicts["process-manager node ≤ 300 MB at 1,000,000 instances"] == .met)
        #expect(verdicts["process-manager restart ≤ 2 s at 1,000,000 instances"] == .met)
        let lines = try Self.report().targetLines.joined(separator: "\n")
        #expect(lines.contains("missed        each service ≤ 0.8 ms CPU per workflow, mesh 50%"))
        #expect(lines.contains("over: fulfillment"), "the service over its budget is named")
        #expect(lines.contains("where the time goes"))
    }

    /// Figures that meet the targets are met, at their bounds too; a scale run short of 1M instances is not
    /// measured rather than met.
    @Test func figuresAtTheTargetsMeetThem() throws {
        let report = try Self.report(
            ratio: 0.5,
            halfLatency: (10, 50),
            fulfillmentAtHalf: 0.8,
            embedded: (100_000, 10_000),
            scale: (100, 110, 1_000_000, 300, 2)
        )
        let met = verdicts(report)
        #expect(met.values.filter { $0 == .missed }.isEmpty, "\(met)")
        #expect(met.values.filter { $0 == .notMeasured }.count == 1, "only the run-length one")
        #expect(!report.targetLines.joined().contains("where the time goes"))
        let short = verdicts(try Self.report(ratio: 0.6, workflows: 5_000, scale: (100, 100, 100_000, 100, 0.1)))
        #expect(short["mesh max ≥ 0.50 of the ceiling, at 20,000 workflows or more"] == .notMeasured)
        #expect(short["process-manager node ≤ 300 MB at 1,000,000 instances"] == .notMeasured)
        #expect(short["per-event cost, 10,000 → 1,000,000 instances, ≤ +10%"] == .notMeasured)
    }

    /// A long run at maximum rate is held to the short one before it: met at 90% of its rate, missed below, not
    /// measured under 100,000 workflows; the ceiling's own ratio beside it.
    @Test func aLongRunIsHeldToTheShortOneBeforeIt() throws {
        func report(long: Double, short: Double, workflows: Int = 100_000) throws -> BenchmarkReport {
            var report = try Self.report(workflows: workflows)
            var shortRun = report.mesh[0]
            shortRun.name = "mesh short"
            shortRun.result.workflows = 5_000
            shortRun.result.workflowsPerSecond = short
            report.mesh[0].result.workflowsPerSecond = long
            report.mesh.insert(shortRun, at: 0)
            var shortCeiling = report.ceiling[0]
            shortCeiling.name = "ceiling short"
            shortCeiling.result.workflowsPerSecond = report.ceiling[0].result.workflowsPerSecond * 1.1
            report.ceiling.insert(shortCeiling, at: 0)
            return report
        }
        let target = "wf/s at 100,000 ≥ 90% of wf/s at 5,000"
        let met = try report(long: 900, short: 1_000)
        #expect(verdicts(met)[target] == .met)
        let ratio = met.targetChecks.first { $0.target.hasPrefix("mesh max ≥ 0.50") }?.measured
        #expect(ratio == "0.29 (900 of 3500 wf/s, 100000 workflows)", "against the ceiling's run of the same size")
        #expect(
            met.targetChecks.first { $0.target == target }?.measured
                == "900 wf/s at 100000 against 1000 at 5000: 90% (the ceiling: 91%)"
        )
        #expect(verdicts(try report(long: 899, short: 1_000))[target] == .missed)
        #expect(verdicts(try report(long: 700, short: 1_000, workflows: 20_000))[target] == .notMeasured)
        #expect(verdicts(try Self.report(workflows: 100_000))[target] == .notMeasured, "no short run")
    }

    /// A paced run's seconds say whether its tail is a stall or its steady state: each second's percentiles of
    /// the workflows completed in it, and the worst seconds named.
    @Test func aStallShowsInTheSecondsOfARun() throws {
        let second = LatencySecond(second: 7, latencies: (1...100).map { UInt64($0) * 1_000 })
        #expect(second.completed == 100)
        #expect(second.p50 == 51)
        #expect(second.p99 == 100)
        #expect(second.max == 100)
        #expect(LatencySecond(second: 0, latencies: []).p99 == 0, "a second in which none completed")

        var run = try Self.report().mesh[1]
        run.result.timeline = (0..<20).map { index in
            LatencySecond(second: index, latencies: index == 12 ? [2_500_000, 3_000_000] : [40_000, 60_000])
        }
        #expect(run.result.slowSeconds(over: 1_000).map(\.second) == [12])
        let line = BenchmarkReport.timelineLine(run)
        #expect(line.contains("median second 60 ms"), "\(line)")
        #expect(line.contains("worst 3000 ms at 12 s, 60 ms at"), "\(line)")
        #expect(line.hasSuffix("1 of 20 s over 1 s"), "\(line)")
    }

    /// `perf script` samples counted per process (by pid), by the library and function each was in, and by the
    /// functions of the process's own executable on its call chain; idle CPUs and unknown processes apart.
    @Test func aProfileCountsSamplesPerProcessLibraryAndFunction() {
        let sqlite = "(/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6)"
        let script = [
            "   101 ", "\t7ff8 sqlite3VdbeExec \(sqlite)", "\t5555 commitBatch (/opt/bin/fulfillment)",
            "\t5556 main (/opt/bin/fulfillment)", "",
            "   101 ", "\t7ff9 sqlite3VdbeExec \(sqlite)", "\t5557 $relayLoopPart1 (/opt/bin/fulfillment)",
            "\t5558 partial apply for relayLoop (/opt/bin/fulfillment)",
            "\t5560 closure #1 in run() (/opt/bin/fulfillment)",
            "\t5559 $relayLoopPart2 (/opt/bin/fulfillment)",
            "\t5556 main (/opt/bin/fulfillment)", "",
            "   101 ", "\tffff __x64_sys_fdatasync ([kernel.kallsyms])", "\t5555 commitBatch (/opt/bin/fulfillment)",
            "\t5555 commitBatch (/opt/bin/fulfillment)", "\t5556 main (/opt/bin/fulfillment)", "",
            "   102 ", "\t7ff8 [unknown] (/usr/lib/swift/linux/libswiftCore.so)", "",
            "     0 ", "\tffff pv_native_safe_halt ([kernel.kallsyms])", "",
            "   999 ", "\t7ff8 operator new(unsigned long) (/usr/lib/libstdc++.so.6)",
        ].joined(separator: "\n")
        let profile = MachineProfile.parse(
            script,
            names: [101: "fulfillment", 102: "orders"],
            readable: ["$relayLoopPart1": "relayLoop", "$relayLoopPart2": "relayLoop"]
        )
        #expect(profile.samples == 6)
        let byName = Dictionary(uniqueKeysWithValues: profile.processes.map { ($0.name, $0) })
        #expect(profile.processes.first?.name == "fulfillment", "the busiest first")
        #expect(byName["fulfillment"]?.percent == 50)
        #expect(
            byName["fulfillment"]?.libraries
                == [
                    .init(name: "libsqlite3.so.0.8.6", percent: 200.0 / 3),
                    .init(name: "[kernel.kallsyms]", percent: 100.0 / 3),
                ]
        )
        #expect(byName["fulfillment"]?.functions.first == .init(name: "sqlite3VdbeExec", percent: 200.0 / 3))
        #expect(
            byName["fulfillment"]?.inclusive
                == [.init(name: "commitBatch", percent: 200.0 / 3), .init(name: "relayLoop", percent: 100.0 / 3)],
            "a function counts once per chain, its parts together; main, on every chain, wrappers and closures left out"
        )
        #expect(byName["orders"]?.functions.first?.name == "[unknown] in libswiftCore.so")
        #expect(byName["idle"]?.percent == 100.0 / 6)
        #expect(byName["other"]?.functions.first?.name == "operator new(unsigned long)", "a name with spaces")
    }

    /// Swift's symbols on the frames, made readable by the toolchain's demangler.
    @Test func swiftSymbolsAreDemangled() async {
        let symbol = "$s9BatonNode0B0C9relayLoopyyYaFTY12_"
        let script = "  7 \n\t55 \(symbol) (/opt/bin/fulfillment)\n\t56 main (/opt/bin/fulfillment)"
        #expect(MachineProfile.swiftSymbols(in: script) == [symbol])
        #expect(await MachineProfile.demangled([symbol]) == [symbol: "Node.relayLoop()"])
    }
}
