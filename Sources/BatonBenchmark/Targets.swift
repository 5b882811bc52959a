import Foundation

/// A performance target and how one run measured against it.
struct TargetCheck: Codable, Sendable, Equatable {
    /// Whether the run met the target.
    enum Verdict: String, Codable, Sendable {
        case met
        case missed
        /// This run did not measure it (too few workflows, no run at that rate, no scale run).
        case notMeasured = "not measured"
    }

    /// The target, as the performance issue states it.
    var target: String
    /// What this run measured, in words and figures.
    var measured: String
    var verdict: Verdict
}

extension BenchmarkReport {
    /// The targets a run can be held to: the mesh's share of the ceiling, its latency at half rate, the
    /// services' CPU per workflow, the embedded throughput, and the process-manager node's cost, memory and
    /// restart as its store grows; and the run-length target, when a run of 100,000 workflows or more was preceded
    /// by the short one.
    var targetChecks: [TargetCheck] {
        var checks: [TargetCheck] = []
        let maximum = mesh.first { $0.name == "mesh max" }
        let half = mesh.first { $0.name == "mesh 50%" }

        if let maximum, let ratio = maximum.ratioToCeiling,
            let ceiling = ceiling.first(where: { $0.name == "ceiling max" })
        {
            checks.append(
                TargetCheck(
                    target: "mesh max ≥ 0.50 of the ceiling, at 20,000 workflows or more",
                    measured: String(
                        format: "%.2f (%.0f of %.0f wf/s, %d workflows)",
                        ratio,
                        maximum.result.workflowsPerSecond,
                        ceiling.result.workflowsPerSecond,
                        maximum.result.workflows
                    ),
                    verdict: maximum.result.workflows < 20_000 ? .notMeasured : ratio >= 0.5 ? .met : .missed
                )
            )
        }
        checks.append(runLengthCheck(maximum))
        if let half {
            let latency = half.result.latency
            checks.append(
                TargetCheck(
                    target: "at 50% of max: p50 ≤ 10 ms, p99 ≤ 50 ms",
                    measured: String(format: "p50 %.0f ms, p99 %.0f ms", latency.p50, latency.p99),
                    verdict: latency.p50 <= 10 && latency.p99 <= 50 ? .met : .missed
                )
            )
        } else {
            checks.append(
                TargetCheck(
                    target: "at 50% of max: p50 ≤ 10 ms, p99 ≤ 50 ms",
                    measured: "no run at 50%",
                    verdict: .notMeasured
                )
            )
        }
        for run in [maximum, half].compactMap({ $0 }) {
            let figures = MeshSetup.services.map { (service: $0, cpu: run.cpuPerThousand[$0] ?? .infinity) }
            let over = figures.filter { $0.cpu > 0.8 }.map(\.service)
            checks.append(
                TargetCheck(
                    target: "each service ≤ 0.8 ms CPU per workflow, \(run.name)",
                    measured: figures.map { String(format: "%@ %.2f", $0.service, $0.cpu) }.joined(separator: ", ")
                        + (over.isEmpty ? "" : "; over: " + over.joined(separator: ", ")),
                    verdict: over.isEmpty ? .met : .missed
                )
            )
        }
        // The faster of the embedded modes (one store per node, or one shared store).
        let modes = [(embedded, ""), (embeddedSharedStore, ", one shared store")]
        if let (embedded, mode) = modes.compactMap({ result, mode in result.map { ($0, mode) } })
            .max(by: { $0.0.workflowsPerSecond < $1.0.workflowsPerSecond })
        {
            let measured = String(
                format: "%.0f wf/s at %d workflows%@",
                embedded.workflowsPerSecond,
                embedded.workflows,
                mode
            )
            checks.append(
                TargetCheck(
                    target: "embedded ≥ 10,000 wf/s at 100,000 workflows",
                    measured: measured,
                    verdict: embedded.workflows < 100_000
                        ? .notMeasured : embedded.workflowsPerSecond >= 10_000 ? .met : .missed
                )
            )
        }
        if let scale { checks += Self.scaleChecks(scale) }
        return checks
    }

    /// The mesh's maximum over a long run against a short one's (``All/shortRun``, run first on fresh stores),
    /// beside the ceiling's own ratio.
    private func runLengthCheck(_ maximum: MeshRun?) -> TargetCheck {
        let target = "wf/s at 100,000 ≥ 90% of wf/s at 5,000"
        guard let maximum else { return TargetCheck(target: target, measured: "no mesh run", verdict: .notMeasured) }
        let long = maximum.result
        guard let short = mesh.first(where: { $0.name == "mesh short" })?.result else {
            return TargetCheck(
                target: target,
                measured: String(
                    format: "%.0f wf/s at %d: no short run to compare with",
                    long.workflowsPerSecond,
                    long.workflows
                ),
                verdict: .notMeasured
            )
        }
        let ratio = long.workflowsPerSecond / short.workflowsPerSecond
        let ceilings = ["ceiling short", "ceiling max"].map { name in ceiling.first { $0.name == name }?.result }
        var measured = String(
            format: "%.0f wf/s at %d against %.0f at %d: %.0f%%",
            long.workflowsPerSecond,
            long.workflows,
            short.workflowsPerSecond,
            short.workflows,
            ratio * 100
        )
        if let shortCeiling = ceilings[0], let longCeiling = ceilings[1] {
            measured += String(
                format: " (the ceiling: %.0f%%)",
                longCeiling.workflowsPerSecond / shortCeiling.workflowsPerSecond * 100
            )
        }
        return TargetCheck(
            target: target,
            measured: measured,
            verdict: long.workflows < 100_000 ? .notMeasured : ratio >= 0.9 ? .met : .missed
        )
    }

    /// The process-manager node's targets as its store grows: cost per event flat, memory and restart bounded.
    private static func scaleChecks(_ scale: ScaleResult) -> [TargetCheck] {
        guard let first = scale.points.first, let last = scale.points.last else { return [] }
        let reachesMillion = last.instances >= 1_000_000
        let growth = last.microsecondsPerEvent / first.microsecondsPerEvent - 1
        let atLast = "at \(last.instances) instances"
        return [
            TargetCheck(
                target: "per-event cost, 10,000 → 1,000,000 instances, ≤ +10%",
                measured: String(
                    format: "%.0f → %.0f µs (%+.0f%%), %d → %d instances",
                    first.microsecondsPerEvent,
                    last.microsecondsPerEvent,
                    growth * 100,
                    first.instances,
                    last.instances
                ),
                verdict: !reachesMillion
                    ? .notMeasured : last.microsecondsPerEvent <= first.microsecondsPerEvent * 1.1 ? .met : .missed
            ),
            TargetCheck(
                target: "process-manager node ≤ 300 MB at 1,000,000 instances",
                measured: String(format: "%.0f MB %@", last.residentMegabytes, atLast),
                verdict: !reachesMillion ? .notMeasured : last.residentMegabytes <= 300 ? .met : .missed
            ),
            TargetCheck(
                target: "process-manager restart ≤ 2 s at 1,000,000 instances",
                measured: String(
                    format: "%.0f ms at %d instances",
                    scale.restartSeconds * 1_000,
                    scale.restartInstances
                ),
                verdict: scale.restartInstances < 1_000_000 ? .notMeasured : scale.restartSeconds <= 2 ? .met : .missed
            ),
        ]
    }

    /// The targets as lines of the summary: each with its verdict, then where a missed one's time goes.
    var targetLines: [String] {
        let checks = targetChecks
        guard !checks.isEmpty else { return [] }
        var lines = ["targets (this run):"]
        for check in checks {
            let verdict = check.verdict.rawValue.padding(toLength: 13, withPad: " ", startingAt: 0)
            lines.append("  \(verdict) \(check.target): \(check.measured)")
        }
        if checks.contains(where: { $0.verdict == .missed }) {
            lines.append(
                "  where the time goes for a missed one: Deploy/BENCHMARKS.md, \"Against the targets\" (a profile of the"
            )
            lines.append("  mesh at half rate, per process); `benchmark.sh --profile` records one in this run.")
        }
        return lines
    }
}
