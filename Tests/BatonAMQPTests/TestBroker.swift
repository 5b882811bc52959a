import Foundation
import Logging
import Synchronization

@testable import BatonAMQP

/// The real broker the README's test command starts (Deploy/local/broker.sh). There is no fallback: if it
/// is not running, every broker test fails.
enum TestBroker {
    static let url =
        ProcessInfo.processInfo.environment["BATON_TEST_AMQP_URL"]
        ?? "amqp://baton:baton-local-secret@127.0.0.1:5673/%2F"
    static let password = try! AMQPURL.password(of: url)

    static func configuration(_ name: String, heartbeat: Duration = .seconds(10)) throws -> AMQPConnection.Configuration
    {
        var configuration = try AMQPConnection.Configuration(url: url, connectionName: name)
        configuration.heartbeat = heartbeat
        configuration.reconnectBackoff = .init(initial: .milliseconds(50), maximum: .milliseconds(500))
        return configuration
    }

    /// The broker's amqps listener and the certificate authorities for it, set up by Deploy/local/test.sh.
    static func tls() throws -> (url: String, ca: String, wrongCA: String) {
        let environment = ProcessInfo.processInfo.environment
        guard let url = environment["BATON_TEST_AMQPS_URL"], let ca = environment["BATON_TEST_TLS_CA"],
            let wrongCA = environment["BATON_TEST_TLS_WRONG_CA"]
        else {
            throw AMQPError(
                code: .invalidConfiguration,
                message: "no TLS broker: run the tests with Deploy/local/test.sh, which sets BATON_TEST_AMQPS_URL"
            )
        }
        return (url, ca, wrongCA)
    }

    static func connect(_ name: String, logger: Logger = Logger(label: "test")) async throws -> AMQPConnection {
        try await AMQPConnection.connect(configuration: configuration(name), logger: logger)
    }

    /// A name no other test or earlier run uses.
    static func unique(_ prefix: String) -> String {
        "\(prefix)-\(UInt32.random(in: 0...UInt32.max))"
    }

    /// Runs `rabbitmqctl` against the test node, through the same script that started it.
    @discardableResult
    static func ctl(_ arguments: String...) throws -> String {
        let script = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Deploy/local/broker.sh")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [script.path, "ctl"] + arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw AMQPError(code: .protocolError, message: "rabbitmqctl \(arguments) failed: \(text)")
        }
        return text
    }

    /// Polls `condition` until it holds or `timeout` passes (for observing the connection's own recovery).
    static func eventually(
        timeout: Duration = .seconds(30),
        _ condition: () async throws -> Bool
    ) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return try await condition()
    }
}

extension AMQPURL {
    static func password(of url: String) throws -> String {
        try AMQPURL(parsing: url).password
    }
}

/// A log handler that keeps every rendered line, to check what the transport writes.
final class CapturedLogs: Sendable {
    private let lines = Mutex<[String]>([])

    var all: [String] { lines.withLock { $0 } }

    func makeLogger() -> Logger {
        var logger = Logger(label: "captured") { _ in Handler(sink: self) }
        logger.logLevel = .trace
        return logger
    }

    fileprivate func append(_ line: String) {
        lines.withLock { $0.append(line) }
    }

    private struct Handler: LogHandler {
        let sink: CapturedLogs
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let merged = metadata.merging(event.metadata ?? [:]) { $1 }
            sink.append("\(event.level) \(event.message) \(merged)")
        }
    }
}
