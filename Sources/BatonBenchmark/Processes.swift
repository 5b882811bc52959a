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

    /// CPU seconds (user + system) the process has used so far; 0 if it is gone.
    static func cpuSeconds(_ pid: pid_t) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let end = stat.lastIndex(of: ")")
        else { return 0 }
        // After "pid (comm)": state is field 3, utime field 14, stime field 15.
        let fields = stat[stat.index(after: end)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / ticksPerSecond
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

/// A child process the benchmark starts (a service, a relay) and stops with SIGTERM.
///
/// Spawned and reaped here (posix_spawn, waitpid) rather than with Foundation's `Process`, whose wait for the
/// exit also waits for every descriptor the child inherited to close.
final class ChildProcess: Sendable {
    let name: String
    let pid: pid_t
    private let exitStatus = Mutex<Int32?>(nil)

    /// Starts `executable` with `arguments`; its output is appended to `log`.
    init(name: String, executable: URL, arguments: [String], environment: [String: String] = [:], log: URL) throws {
        self.name = name
        let output = open(log.path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard output >= 0 else { throw BenchmarkError("cannot open \(log.path): \(String(cString: strerror(errno)))") }
        defer { close(output) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, output, STDOUT_FILENO)
        posix_spawn_file_actions_adddup2(&actions, output, STDERR_FILENO)
        // The spawning thread may block signals (a dispatch worker blocks them all), and a child inherits its
        // mask: start the child with none blocked and default dispositions, so that SIGTERM stops it.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var signals = sigset_t()
        sigemptyset(&signals)
        posix_spawnattr_setsigmask(&attributes, &signals)
        for signal in [SIGTERM, SIGINT, SIGPIPE, SIGHUP] { sigaddset(&signals, signal) }
        posix_spawnattr_setsigdefault(&attributes, &signals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let variables = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        var cArguments = ([executable.path] + arguments).map { strdup($0) } + [nil]
        var cEnvironment = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in cArguments + cEnvironment { free(pointer) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable.path, &actions, &attributes, &cArguments, &cEnvironment)
        guard spawned == 0 else {
            throw BenchmarkError("cannot run \(executable.path): \(String(cString: strerror(spawned)))")
        }
        self.pid = pid
    }

    /// Whether it has not exited yet (reaps it if it has).
    var isRunning: Bool {
        exitStatus.withLock { status in
            if status != nil { return false }
            var raw: Int32 = 0
            guard waitpid(pid, &raw, WNOHANG) == pid else { return true }
            status = raw
            return false
        }
    }

    /// Waits for the exit; returns the wait status.
    @discardableResult
    func wait() -> Int32 {
        exitStatus.withLock { status in
            if let status { return status }
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) == -1 && errno == EINTR {}
            status = raw
            return raw
        }
    }

    /// Sends SIGTERM and waits for the exit.
    func stop() {
        if isRunning { kill(pid, SIGTERM) }
        wait()
    }

    /// Runs a command to its end and returns its wait status, 0 for success (its output goes to `log`).
    static func run(
        _ executable: URL,
        _ arguments: [String],
        environment: [String: String] = [:],
        log: URL
    ) throws
        -> Int32
    {
        try ChildProcess(
            name: executable.lastPathComponent,
            executable: executable,
            arguments: arguments,
            environment: environment,
            log: log
        ).wait()
    }
}

/// CPU seconds of several processes between two instants.
struct CPUMeter {
    private let pids: [String: pid_t]
    private let before: [String: Double]

    /// Starts measuring the named processes.
    init(_ pids: [String: pid_t]) {
        self.pids = pids
        before = pids.mapValues(ProcessStats.cpuSeconds)
    }

    /// CPU seconds per 1,000 workflows for each process since ``init(_:)``.
    func perThousand(workflows: Int) -> [String: Double] {
        pids.reduce(into: [:]) { result, entry in
            let used = ProcessStats.cpuSeconds(entry.value) - (before[entry.key] ?? 0)
            result[entry.key] = used * 1_000 / Double(max(1, workflows))
        }
    }
}
