import ChildProcesses
import Foundation

/// Runs the bookstore's service executables as child processes and restarts any that dies, the way a
/// process supervisor (systemd, a container's restart policy) would: for chaos runs that kill them.
public actor ServiceSupervisor {
    /// How one service is started.
    public struct Service: Sendable {
        /// The process's name (`orders`, or `orders-2` for a second replica): its log is `<name>.log`.
        public var name: String
        /// The executable's name (`orders`, …).
        public var executable: String
        /// Arguments after the executable (`serve`, options).
        public var arguments: [String]
        /// A command the executable runs under, e.g. `ip netns exec NAME` (empty: none).
        public var launcher: [String]
        /// Environment variables added to the supervisor's own.
        public var environment: [String: String]

        /// Describes a service.
        /// - Parameters:
        ///   - name: The process's name.
        ///   - executable: The executable's name (default: `name`).
        ///   - arguments: Arguments after the executable.
        ///   - launcher: A command the executable runs under.
        ///   - environment: Variables added to the supervisor's own.
        public init(
            name: String,
            executable: String? = nil,
            arguments: [String],
            launcher: [String] = [],
            environment: [String: String] = [:]
        ) {
            self.name = name
            self.executable = executable ?? name
            self.arguments = arguments
            self.launcher = launcher
            self.environment = environment
        }
    }

    private let binaries: URL
    private let logs: URL
    private let services: [String: Service]
    private var processes: [String: ChildProcess] = [:]
    /// Starts per service, the first one included.
    public private(set) var starts: [String: Int] = [:]

    /// Creates a supervisor; nothing runs until ``start(_:)``.
    /// - Parameters:
    ///   - binaries: The directory of the executables.
    ///   - logs: Where each service's standard output and error are appended (`<name>.log`).
    ///   - services: What it runs.
    public init(binaries: URL, logs: URL, services: [Service]) {
        self.binaries = binaries
        self.logs = logs
        self.services = Dictionary(uniqueKeysWithValues: services.map { ($0.name, $0) })
    }

    /// Starts a service that is not running.
    /// - Throws: If the executable cannot be launched.
    public func start(_ name: String) throws {
        guard let service = services[name] else { preconditionFailure("no service named \(name)") }
        if processes[name]?.isRunning == true { return }
        let executable = binaries.appendingPathComponent(service.executable).path
        let command = service.launcher + [executable] + service.arguments
        let process = try ChildProcess(
            command[0],
            Array(command.dropFirst()),
            environment: service.environment,
            output: .appending(to: logs.appendingPathComponent("\(name).log").path)
        )
        processes[name] = process
        starts[name, default: 0] += 1
    }

    /// The process id of a running service.
    public func pid(of name: String) -> pid_t? {
        processes[name].flatMap { $0.isRunning ? $0.pid : nil }
    }

    /// Kills a service with SIGKILL (no chance to finish anything); ``restartDead()`` brings it back.
    public func kill(_ name: String) async {
        await processes[name]?.kill()
    }

    /// Starts every service whose process has exited (killed, or failed to connect during an outage).
    /// - Returns: The services it started again.
    @discardableResult
    public func restartDead() throws -> [String] {
        let dead = services.keys.filter { processes[$0]?.isRunning == false }.sorted()
        for name in dead { try start(name) }
        return dead
    }

    /// Stops every service with SIGTERM and waits for each; returns how each ended (exit code 0: a graceful stop).
    public func stopAll() async -> [String: Termination] {
        var terminations: [String: Termination] = [:]
        for (name, process) in processes { terminations[name] = await process.stop() }
        return terminations
    }
}
