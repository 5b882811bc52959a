import BatonTestSupport
import Foundation
import Logging
import Synchronization

@testable import BatonAMQP

extension TestBroker {
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
