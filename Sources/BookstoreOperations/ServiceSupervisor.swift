import Foundation

/// Runs the bookstore's service executables as child processes and restarts any that dies, the way a
/// process supervisor (systemd, a container's restart policy) would: for chaos runs that kill them.
public actor ServiceSupervisor {
    /// How one service is started.
    public struct Service: Sendable {
        /// The executable's name (`orders`, …).
        public var name: String
        /// Arguments after the executable (`serve`, options).
        public var arguments: [String]
        /// A command the executable runs under, e.g. `ip netns exec NAME` (empty: none).
        public var launcher: [String]
        /// Environment variables added to the supervisor's own.
        public var environment: [String: String]

        /// Describes a service.
        public init(name: String, arguments: [String], launcher: [String] = [], environment: [String: String] = [:]) {
            self.name = name
            self.arguments = arguments
            self.launcher = launcher
            self.environment = environment
        }
    }

    private let binaries: URL
    private let logs: URL
    private let services: [String: Service]
    private var processes: [String: Process] = [:]
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
        let process = Process()
        let executable = binaries.appendingPathComponent(name).path
        if let launcher = service.launcher.first {
            process.executableURL = URL(fileURLWithPath: launcher)
            process.arguments = Array(service.launcher.dropFirst()) + [executable] + service.arguments
        } else {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = service.arguments
        }
        process.environment = ProcessInfo.processInfo.environment.merging(service.environment) { _, new in new }
        let log = try FileHandle(appendingTo: logs.appendingPathComponent("\(name).log"))
        process.standardOutput = log
        process.standardError = log
        try process.run()
        processes[name] = process
        starts[name, default: 0] += 1
    }

    /// Kills a service with SIGKILL (no chance to finish anything); ``restartDead()`` brings it back.
    public func kill(_ name: String) {
        guard let process = processes[name], process.isRunning else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Starts every service whose process has exited (killed, or failed to connect during an outage).
    /// - Returns: The services it started again.
    @discardableResult
    public func restartDead() throws -> [String] {
        let dead = services.keys.filter { processes[$0]?.isRunning == false }.sorted()
        for name in dead { try start(name) }
        return dead
    }

    /// Stops every service with SIGTERM and waits for each; returns their exit statuses (0: a graceful stop).
    public func stopAll() -> [String: Int32] {
        var statuses: [String: Int32] = [:]
        for (name, process) in processes {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            statuses[name] = process.terminationStatus
        }
        return statuses
    }
}

extension FileHandle {
    /// A handle that appends to a file, created if missing (a service's log across its restarts).
    /// - Throws: If the file cannot be opened for writing.
    public convenience init(appendingTo file: URL) throws {
        if !FileManager.default.fileExists(atPath: file.path) {
            _ = FileManager.default.createFile(atPath: file.path, contents: nil)
        }
        try self.init(forWritingTo: file)
        seekToEndOfFile()
    }
}
