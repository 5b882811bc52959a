import BatonTestSupport
import Foundation
import Logging

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
