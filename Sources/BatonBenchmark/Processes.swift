import Foundation
import Synchronization

/// A progress bar on standard error: redrawn in place on a terminal, a line per tenth in a log.
final class ProgressBar: Sendable {
    private let label: String
    private let total: Int
    private let state = Mutex<(drawn: ContinuousClock.Instant?, tenth: Int)>((nil, -1))
    private let isTerminal = isatty(STDERR_FILENO) != 0

    init(_ label: String, total: Int) {
        self.label = label
        self.total = max(1, total)
    }

    func update(_ done: Int) {
        let now = ContinuousClock.now
        let line: String? = state.withLock { state in
            if isTerminal {
                if done < total, let drawn = state.drawn, now - drawn < .milliseconds(100) { return nil }
                state.drawn = now
                let width = 30
                let filled = width * min(done, total) / total
                let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
                return "\r  \(bar) \(label): \(done)/\(total)" + (done >= total ? "\n" : "")
            }
            let tenth = 10 * min(done, total) / total
            guard tenth != state.tenth else { return nil }
            state.tenth = tenth
            return "  \(label): \(done)/\(total)\n"
        }
        if let line { FileHandle.standardError.write(Data(line.utf8)) }
    }
}

/// Readings of a running process from `/proc`.
enum ProcessStats {
    private static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    /// CPU seconds (user + system) the process has used so far — with `includingReapedChildren`, also what its
    /// children that it waited for used; 0 if it is gone.
    static func cpuSeconds(_ pid: pid_t, includingReapedChildren: Bool = false) -> Double {
        // After "pid (comm)": state is field 3, ppid 4, utime 14, stime 15, cutime 16, cstime 17.
        guard let fields = statFields(pid), fields.count > 14 else { return 0 }
        let counters = includingReapedChildren ? fields[11...14] : fields[11...12]
        return counters.compactMap { Double($0) }.reduce(0, +) / ticksPerSecond
    }

    /// The fields of `/proc/PID/stat` after the command name, from the state (field 3) on.
    static func statFields(_ pid: pid_t) -> [Substring]? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let end = stat.lastIndex(of: ")")
        else { return nil }
        return stat[stat.index(after: end)...].split(separator: " ")
    }

    /// Resident memory in megabytes (VmRSS); 0 if it is gone.
    static func residentMegabytes(_ pid: pid_t) -> Double {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kilobytes = line.split(separator: " ").dropFirst().first.flatMap({ Double($0) })
        else { return 0 }
        return kilobytes / 1_024
    }
}

/// CPU seconds of several processes between two instants.
struct CPUMeter {
    private let pids: [String: pid_t]
    private let before: [String: Double]

    /// Starts measuring the named processes.
    init(_ pids: [String: pid_t]) {
        self.pids = pids
        before = pids.mapValues { ProcessStats.cpuSeconds($0) }
    }

    /// CPU seconds per 1,000 workflows for each process since ``init(_:)``.
    func perThousand(workflows: Int) -> [String: Double] {
        pids.reduce(into: [:]) { result, entry in
            let used = ProcessStats.cpuSeconds(entry.value) - (before[entry.key] ?? 0)
            result[entry.key] = used * 1_000 / Double(max(1, workflows))
        }
    }
}
