import ChildProcesses
import Foundation

/// The private three-node RabbitMQ cluster of `Deploy/local/cluster.sh`, started by the tests that need it
/// (the test command stops it at the end). Node `n` (1…3) serves AMQP on `port + 2(n − 1)`.
public enum TestCluster {
    /// The AMQP URL of each node (vhost `/`), node 1 first.
    public static var urls: [String] {
        get async throws { try await run("urls").split(separator: ",").map(String.init) }
    }

    /// Boots the nodes that are down and forms the cluster (at once if it runs).
    public static func start() async throws { try await run("start") }

    /// Kills node `n` with SIGKILL (its data kept).
    public static func kill(node n: Int) async throws { try await run("kill", String(n)) }

    /// Boots node `n` again; it rejoins the cluster.
    public static func start(node n: Int) async throws { try await run("start-node", String(n)) }

    /// Runs `rabbitmqctl` against node `n`.
    @discardableResult
    public static func ctl(node n: Int, _ arguments: String...) async throws -> String {
        try await run(["ctl", String(n)] + arguments)
    }

    @discardableResult
    private static func run(_ arguments: String...) async throws -> String {
        try await run(arguments)
    }

    private static func run(_ arguments: [String]) async throws -> String {
        let script = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Deploy/local/cluster.sh")
        let (termination, output) = try await ChildProcess.run("/bin/bash", [script.path] + arguments)
        guard termination.isSuccess else {
            throw TestSupportError("cluster.sh \(arguments) failed (\(termination)): \(output)")
        }
        return output.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
