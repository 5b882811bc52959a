import Foundation
import Synchronization

/// A child process that tools and tests start: a service of the mesh, a crash probe, `rabbitmqctl`, a script.
///
/// One helper for every place that runs a process, built on `posix_spawn` and `waitid` rather than Foundation's
/// `Process` or swift-subprocess, for three reasons the callers need:
/// - waiting for the exit never waits for the child's descriptors to close (`broker.sh start` leaves a broker
///   in the background holding them; `Process` and swift-subprocess's collected output then wait forever),
///   because output goes to a file, never to a pipe;
/// - the child starts with no signal blocked and default dispositions, whatever thread spawned it (a dispatch
///   worker blocks every signal, and a child inherits the mask: SIGTERM would not stop it);
/// - a child outlives the scope that started it (a supervisor kills and restarts services at any time), which
///   swift-subprocess's closure-scoped `run` does not fit.
///
/// Waiting blocks a thread of its own, never one of Swift's cooperative pool.
public final class ChildProcess: Sendable {
    /// Where the child's standard output and error go. Its standard input is `/dev/null`.
    public enum Output: Sendable {
        /// Nowhere.
        case discard
        /// Appended to the file at the path (created if missing), e.g. a service's log across its restarts.
        case appending(to: String)
        /// Kept in a temporary file, read with ``output``.
        case capture
    }

    /// The command as given.
    public let command: String
    /// The child's process id.
    public let pid: pid_t
    private let capturePath: String?
    private let termination = Mutex<Termination?>(nil)

    /// Starts `command` with `arguments`. A command without a `/` is looked up in `PATH`.
    /// - Parameter environment: Variables added to (or replacing) this process's own.
    /// - Throws: ``ChildProcessError`` if the output file cannot be opened or the command cannot be started.
    public init(
        _ command: String,
        _ arguments: [String] = [],
        environment: [String: String] = [:],
        output: Output = .discard
    ) throws {
        self.command = command
        let (descriptor, capturePath) = try Self.openOutput(output)
        defer { close(descriptor) }
        self.capturePath = capturePath

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, descriptor, STDOUT_FILENO)
        posix_spawn_file_actions_adddup2(&actions, descriptor, STDERR_FILENO)

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
        var cArguments = ([command] + arguments).map { strdup($0) } + [nil]
        var cEnvironment = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in cArguments + cEnvironment { free(pointer) } }
        var pid: pid_t = 0
        let spawned =
            command.contains("/")
            ? posix_spawn(&pid, command, &actions, &attributes, &cArguments, &cEnvironment)
            : posix_spawnp(&pid, command, &actions, &attributes, &cArguments, &cEnvironment)
        guard spawned == 0 else {
            if let capturePath { unlink(capturePath) }
            throw ChildProcessError("cannot run \(command): \(String(cString: strerror(spawned)))")
        }
        self.pid = pid
    }

    deinit {
        if let capturePath { unlink(capturePath) }
    }

    /// Runs a command to its end.
    /// - Returns: How it ended and what it printed (standard output and error together).
    /// - Throws: ``ChildProcessError`` if it cannot be started.
    public static func run(
        _ command: String,
        _ arguments: [String] = [],
        environment: [String: String] = [:]
    ) async throws -> (termination: Termination, output: String) {
        let child = try ChildProcess(command, arguments, environment: environment, output: .capture)
        let termination = await child.wait()
        return (termination, child.output)
    }

    /// Whether it has not exited yet.
    public var isRunning: Bool { reap(blocking: false) == nil }

    /// Sends a signal (if it has not been reaped yet: a reaped pid may belong to another process by now).
    public func send(_ signal: Int32) {
        termination.withLock { termination in
            if termination == nil { _ = Glibc.kill(pid, signal) }
        }
    }

    /// Waits for the exit.
    @discardableResult
    public func wait() async -> Termination {
        if let termination = reap(blocking: false) { return termination }
        return await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(returning: self.reap(blocking: true)!)
            }
        }
    }

    /// SIGTERM, then waits for the exit.
    @discardableResult
    public func stop() async -> Termination {
        send(SIGTERM)
        return await wait()
    }

    /// SIGKILL (no chance to finish anything), then waits for the exit.
    @discardableResult
    public func kill() async -> Termination {
        send(SIGKILL)
        return await wait()
    }

    /// Runs `body`, then stops every child (SIGTERM, and waits for each), whether `body` returned or threw.
    public static func stopping<Children: Sequence<ChildProcess>, Result>(
        _ children: Children,
        after body: () async throws -> Result
    ) async rethrows -> Result {
        do {
            let result = try await body()
            for child in children { await child.stop() }
            return result
        } catch {
            for child in children { await child.stop() }
            throw error
        }
    }

    /// What it has printed so far, with ``Output/capture``; empty otherwise.
    public var output: String {
        guard let capturePath, let data = FileManager.default.contents(atPath: capturePath) else { return "" }
        return String(decoding: data, as: UTF8.self)
    }

    /// Collects the exit status once. Blocking, it first waits without reaping (`WNOWAIT`), so that it never
    /// holds the lock while it waits and a concurrent non-blocking check cannot reap a pid it is waiting for.
    private func reap(blocking: Bool) -> Termination? {
        if blocking {
            var info = siginfo_t()
            while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) == -1 && errno == EINTR {}
        }
        return termination.withLock { termination in
            if let termination { return termination }
            var status: Int32 = 0
            guard waitpid(pid, &status, WNOHANG) == pid else { return nil }
            termination = Termination(waitStatus: status)
            return termination
        }
    }

    private static func openOutput(_ output: Output) throws -> (descriptor: Int32, capturePath: String?) {
        switch output {
        case .discard:
            return (try openFile("/dev/null", O_WRONLY), nil)
        case .appending(let path):
            return (try openFile(path, O_WRONLY | O_CREAT | O_APPEND), nil)
        case .capture:
            var template = Array((NSTemporaryDirectory() + "/baton-child-XXXXXX").utf8CString)
            let descriptor = mkstemp(&template)
            guard descriptor >= 0, fcntl(descriptor, F_SETFD, FD_CLOEXEC) == 0 else {
                throw ChildProcessError("cannot create a file for the output: \(String(cString: strerror(errno)))")
            }
            return (descriptor, template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        }
    }

    private static func openFile(_ path: String, _ flags: Int32) throws -> Int32 {
        let descriptor = open(path, flags | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw ChildProcessError("cannot open \(path): \(String(cString: strerror(errno)))")
        }
        return descriptor
    }
}

/// How a child process ended.
public struct Termination: Sendable, Equatable, CustomStringConvertible {
    /// The raw status `waitpid` reported.
    public let waitStatus: Int32

    /// The exit code, if it exited (rather than dying of a signal).
    public var exitCode: Int32? {
        waitStatus & 0x7f == 0 ? (waitStatus >> 8) & 0xff : nil
    }

    /// The signal that killed it, if one did.
    public var signal: Int32? {
        let signal = waitStatus & 0x7f
        return signal != 0 && signal != 0x7f ? signal : nil
    }

    /// Whether it exited with code 0.
    public var isSuccess: Bool { exitCode == 0 }

    public var description: String {
        if let exitCode { return "exit code \(exitCode)" }
        if let signal { return "killed by signal \(signal)" }
        return "wait status \(waitStatus)"
    }
}

/// A child process could not be started.
public struct ChildProcessError: Error, CustomStringConvertible {
    /// What went wrong.
    public let description: String

    init(_ description: String) {
        self.description = description
    }
}
