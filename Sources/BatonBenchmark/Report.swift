import Foundation

/// Everything one benchmark run measured, and the machine it ran on.
struct BenchmarkReport: Codable, Sendable {
    var machine: Machine
    var date = Date()
    var workflows: Int
    /// The bare relays at maximum rate, then at the mesh's fixed rates.
    var ceiling: [MeshRun] = []
    var mesh: [MeshRun] = []
    var embedded: EmbeddedResult?
    /// The embedded mode with both nodes on one SQLite file, messages between them its rows.
    var embeddedSharedStore: EmbeddedResult?
    /// The same with metrics recorded (Prometheus) and the stores sampled, as `serve --http` runs.
    var embeddedWithMetrics: EmbeddedResult?
    /// The embedded mode with tracing on (builds with the OpenTelemetry trait), and the spans it exported.
    var embeddedWithTracing: EmbeddedResult?
    var spansExported: Int?
    var scale: ScaleResult?
    /// Where the machine's CPU went during the mesh's run at 50% (`--profile`).
    var profile: MachineProfile?

    struct Machine: Codable, Sendable {
        var cpu: String
        var cores: Int
        var memoryGiB: Double
        var kernel: String

        static var current: Machine {
            let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
            let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }?
                .split(separator: ":", maxSplits: 1).last?.trimmingCharacters(in: .whitespaces)
            var name = utsname()
            uname(&name)
            let release = withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            return Machine(
                cpu: model ?? "unknown",
                cores: ProcessInfo.processInfo.activeProcessorCount,
                memoryGiB: Double(ProcessInfo.processInfo.physicalMemory) / 1_073_741_824,
                kernel: release
            )
        }
    }

    /// The summary table.
    var table: String {
        var lines = [
            "",
            "Baton benchmark — \(machine.cores) cores (\(machine.cpu)), "
                + String(format: "%.0f GiB, Linux %@", machine.memoryGiB, machine.kernel),
            "",
        ]
        let processes = MeshSetup.services + ["broker", "driver"]
        lines.append(
            Self.row(
                ["run", "workflows", "wf/s", "÷ceiling", "p50 ms", "p95 ms", "p99 ms", "max ms"]
                    + processes.map { "\($0.prefix(5)) cpu" }
            )
        )
        for run in ceiling + mesh {
            let result = run.result
            let name = run.name
            lines.append(
                Self.row(
                    [
                        result.offeredRate.map { name + String(format: " (%.0f/s)", $0) } ?? name,
                        String(result.workflows),
                        String(format: "%.0f", result.workflowsPerSecond),
                        run.ratioToCeiling.map { String(format: "%.2f", $0) } ?? "",
                        String(format: "%.1f", result.latency.p50),
                        String(format: "%.1f", result.latency.p95),
                        String(format: "%.1f", result.latency.p99),
                        String(format: "%.1f", result.latency.max),
                    ] + processes.map { run.cpuPerThousand[$0].map { String(format: "%.2f", $0) } ?? "-" }
                )
            )
        }
        lines.append(
            "  ceiling: bare C relays, one per service, the services' hops and durability; mesh: the four services."
        )
        lines.append(
            "  ÷ceiling: mesh max wf/s over ceiling max wf/s, same run. Latency: checkout published → completion"
        )
        lines.append(
            "  received (HdrHistogram). cpu: CPU seconds (user + system) per 1,000 workflows of each process; drive:"
        )
        lines.append("  this benchmark's own process (it publishes the checkouts and consumes the completions).")
        if let short = mesh.first(where: { $0.name == "mesh short" }) {
            lines.append(
                "  short: \(short.result.workflows) workflows at maximum rate on fresh stores, before the long run (the"
            )
            lines.append("  run-length target compares the two).")
        }
        let drains = (ceiling + mesh).compactMap { run in
            run.drainSeconds.map { String(format: "%@ %.1f s", run.name, $0) }
        }
        if !drains.isEmpty {
            lines.append(
                "  Queues drained after a run's last completion (the next run starts then): "
                    + drains.joined(separator: ", ") + "."
            )
        }
        let paced = (ceiling + mesh).filter { $0.result.offeredRate != nil && !$0.result.timeline.isEmpty }
        if !paced.isEmpty {
            lines += ["", "Latency second by second at fixed rates (p99 of the workflows completed in each second):"]
            lines += paced.map { Self.timelineLine($0) }
        }
        if let embedded { lines += ["", Self.embeddedLine(embedded)] }
        if let embeddedSharedStore { lines += [Self.embeddedLine(embeddedSharedStore, on: "one shared store")] }
        if let embedded, let embeddedWithMetrics {
            lines += [Self.embeddedLine(embeddedWithMetrics, metrics: true)]
            lines += [Self.metricsCostLine(off: embedded, on: embeddedWithMetrics)]
        }
        if let embedded, let embeddedWithTracing {
            lines += [Self.embeddedLine(embeddedWithTracing, on: "tracing on (\(spansExported ?? 0) spans exported)")]
            lines += [Self.metricsCostLine(off: embedded, on: embeddedWithTracing, what: "tracing")]
        }
        if let scale { lines += [""] + Self.scaleLines(scale) }
        if let profile { lines += [""] + profile.lines }
        lines += [""] + targetLines
        return lines.joined(separator: "\n")
    }

    /// A paced run's seconds: the typical second's p99 against the worst ones — a stall, or a steady state.
    static func timelineLine(_ run: MeshRun) -> String {
        let seconds = run.result.timeline.filter { $0.completed > 0 }
        let p99s = seconds.map(\.p99).sorted()
        let worst = seconds.sorted { $0.p99 > $1.p99 }.prefix(3)
        return String(
            format: "  %@ (%.0f/s): median second %.0f ms, worst %@; %d of %d s over 1 s",
            run.name,
            run.result.offeredRate ?? 0,
            p99s.isEmpty ? 0 : p99s[p99s.count / 2],
            worst.map { String(format: "%.0f ms at %d s", $0.p99, $0.second) }.joined(separator: ", "),
            run.result.slowSeconds(over: 1_000).count,
            seconds.count
        )
    }

    /// The embedded run's line; `on` names what it ran with, if not metrics.
    static func embeddedLine(_ result: EmbeddedResult, metrics: Bool = false, on: String? = nil) -> String {
        String(
            format: "embedded%@: %d workflows in %.2f s — %.0f workflows/s, %.0f messages handled/s (7 per workflow)",
            on.map { ", \($0)" } ?? (metrics ? ", metrics on" : ""),
            result.workflows,
            result.seconds,
            result.workflowsPerSecond,
            result.messagesPerSecond
        )
    }

    /// What recording metrics (or tracing: `what`) costs per handled message: the difference of the two runs'
    /// time per message.
    static func metricsCostLine(off: EmbeddedResult, on: EmbeddedResult, what: String = "metrics") -> String {
        let cost = (1 / on.messagesPerSecond - 1 / off.messagesPerSecond) * 1_000_000
        return String(
            format: "%@ cost: %+.1f µs per message handled (%+.1f%% messages/s; one run each, same process)",
            what,
            cost,
            (on.messagesPerSecond / off.messagesPerSecond - 1) * 100
        )
    }

    static func scaleLines(_ result: ScaleResult) -> [String] {
        var lines = [
            "scale: the process-manager node (one process), open instances in its store; one event at a time",
            "(latency: publish → its command relayed), then a burst (µs/event); RSS after both; a console page of 50",
            "instances (ms, best of five): the first, one half way down (keyset), one of a lifecycle none is in",
            row(["instances", "p50 ms", "p99 ms", "µs/event", "RSS MB", "page 1", "page ½", "page ∅"]),
        ]
        for point in result.points {
            lines.append(
                row([
                    String(point.instances),
                    String(format: "%.2f", point.latencyP50),
                    String(format: "%.2f", point.latencyP99),
                    String(format: "%.0f", point.microsecondsPerEvent),
                    String(format: "%.0f", point.residentMegabytes),
                    String(format: "%.2f", point.firstPageMilliseconds),
                    String(format: "%.2f", point.middlePageMilliseconds),
                    String(format: "%.2f", point.rarePageMilliseconds),
                ])
            )
        }
        lines.append(
            String(
                format: "  restart at %d instances: %.0f ms from opening the store to the first event handled",
                result.restartInstances,
                result.restartSeconds * 1_000
            )
        )
        return lines
    }

    private static func row(_ cells: [String]) -> String {
        guard let first = cells.first else { return "" }
        return first.padding(toLength: 24, withPad: " ", startingAt: 0)
            + cells.dropFirst().map { String(repeating: " ", count: max(0, 10 - $0.count)) + $0 }.joined()
    }
}
