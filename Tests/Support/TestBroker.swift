import BatonNode
import ChildProcesses
import Foundation

/// The real broker the README's test command starts (`Deploy/local/test.sh` → `Deploy/local/broker.sh`).
/// There is no fallback: without it, every broker test fails.
public enum TestBroker {
    /// The broker URL (vhost `/`).
    public static let url =
        ProcessInfo.processInfo.environment["BATON_TEST_AMQP_URL"]
        ?? "amqp://baton:baton-local-secret@127.0.0.1:5673/%2F"

    /// The URL of another virtual host on the same broker.
    public static func url(virtualHost: String) -> String {
        let base = url.hasSuffix("/%2F") ? String(url.dropLast(4)) : url
        return "\(base)/\(virtualHost)"
    }

    /// A name no other test or earlier run uses.
    public static func unique(_ prefix: String) -> String {
        "\(prefix)-\(UInt32.random(in: 0...UInt32.max))"
    }

    /// Runs `rabbitmqctl` against the test node, through the script that started it.
    @discardableResult
    public static func ctl(_ arguments: String...) async throws -> String {
        let script = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Deploy/local/broker.sh")
        let (termination, output) = try await ChildProcess.run("/bin/bash", [script.path, "ctl"] + arguments)
        guard termination.isSuccess else {
            throw TestSupportError("rabbitmqctl \(arguments) failed (\(termination)): \(output)")
        }
        return output
    }

    /// Waits (30 s at most) until none of `queues` holds a message, ready or unacknowledged: everything
    /// published to them so far was handled and acknowledged. A marker for negative assertions about
    /// consumers in other processes; asked with `rabbitmqctl`, which counts both kinds.
    public static func areSettled(_ queues: [String], virtualHost: String = "/") async throws -> Bool {
        try await eventually {
            let listing = try await ctl(
                "list_queues",
                "-p",
                virtualHost,
                "-q",
                "--no-table-headers",
                "name",
                "messages"
            )
            let counts = Dictionary(
                listing.split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }.filter {
                    $0.count == 2
                }.map { ($0[0], $0[1]) },
                uniquingKeysWith: { first, _ in first }
            )
            return queues.allSatisfy { counts[$0] == "0" }
        }
    }

    /// Creates a virtual host the broker's application user may use fully.
    public static func makeVirtualHost(_ name: String) async throws {
        try await ctl("add_vhost", name)
        let user = URLComponents(string: url.replacingOccurrences(of: "amqp://", with: "http://"))?.user ?? "baton"
        try await ctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
    }

    /// Deletes a virtual host and everything in it.
    public static func deleteVirtualHost(_ name: String) async {
        _ = try? await ctl("delete_vhost", name)
    }
}

/// Polls `condition` until it holds or `timeout` passes (for observing work other processes do).
public func eventually(
    timeout: Duration = .seconds(30),
    _ condition: () async throws -> Bool
) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(10))
    }
    return try await condition()
}

/// A failure in the test setup itself.
public struct TestSupportError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension PublishOutcome {
    /// Throws unless the message was confirmed (tests publish what must arrive).
    public func get() throws {
        guard self == .confirmed else { throw TestSupportError("the transport did not confirm: \(self)") }
    }
}
