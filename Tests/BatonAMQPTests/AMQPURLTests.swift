import Testing

@testable import BatonAMQP

@Suite struct AMQPURLTests {
    @Test func parsesEveryPart() throws {
        let url = try AMQPURL(parsing: "amqp://svc%40orders:p%3Ass@broker.local:5673/shop%2Feu")
        #expect(!url.isSecure && url.host == "broker.local" && url.port == 5673)
        #expect(url.user == "svc@orders" && url.password == "p:ss" && url.virtualHost == "shop/eu")
    }

    @Test func takesRabbitMQDefaults() throws {
        let plain = try AMQPURL(parsing: "amqp://localhost")
        #expect(plain.port == 5672 && plain.user == "guest" && plain.password == "guest" && plain.virtualHost == "/")
        let secure = try AMQPURL(parsing: "amqps://broker/")
        #expect(secure.isSecure && secure.port == 5671 && secure.virtualHost == "/")
        #expect(try AMQPURL(parsing: "amqp://h/%2F").virtualHost == "/")
        #expect(try AMQPURL(parsing: "amqp://[::1]:5673").host == "::1")
    }

    @Test(arguments: [
        ("http://localhost", "scheme"),
        ("amqp://:5672", "host is missing"),
        ("amqp://host:99999", "port"),
        ("amqp://host:abc", "port"),
        ("amqp://u:p%zz@host", "percent-escape in the password"),
    ])
    func rejectsMalformedURLs(url: String, reason: String) {
        #expect {
            _ = try AMQPURL(parsing: url)
        } throws: { error in
            guard let error = error as? AMQPError else { return false }
            return error.code == .invalidConfiguration && error.message.contains(reason)
        }
    }

    @Test func amqpsNeedsACertificateAuthority() {
        #expect(throws: AMQPError.self) { _ = try AMQPConnection.Configuration(url: "amqps://u:p@broker") }
        let tls = AMQPConnection.Configuration.TLS(caCertificatePath: "/etc/ca.pem")
        #expect(throws: Never.self) { _ = try AMQPConnection.Configuration(url: "amqps://u:p@broker", tls: tls) }
    }

    @Test func descriptionNeverShowsThePassword() throws {
        let configuration = try AMQPConnection.Configuration(url: "amqp://orders:s3cr3t-pw@broker:5672/%2F")
        #expect(configuration.description == "amqp://orders@broker:5672/%2F")
        #expect(!"\(configuration)".contains("s3cr3t-pw"))
        #expect {
            _ = try AMQPURL(parsing: "amqp://orders:s3cr3t-pw@broker:notaport")
        } throws: { error in
            !"\(error)".contains("s3cr3t-pw")
        }
    }

    @Test func theNodesOfAClusterDifferOnlyInHostAndPort() throws {
        let configuration = try AMQPConnection.Configuration(
            urls: ["amqp://app:s3cr3t-pw@rabbit-1:5672/baton", "amqp://app:s3cr3t-pw@rabbit-2/baton"]
        )
        #expect(configuration.endpoints.map(\.description) == ["rabbit-1:5672", "rabbit-2:5672"])
        #expect("\(configuration)" == "amqp://app@rabbit-1:5672,rabbit-2:5672/baton")
        for other in [
            "amqp://other:s3cr3t-pw@rabbit-2/baton", "amqp://app:else@rabbit-2/baton", "amqp://app:s3cr3t-pw@rabbit-2/",
        ] {
            #expect {
                try AMQPConnection.Configuration(urls: ["amqp://app:s3cr3t-pw@rabbit-1/baton", other])
            } throws: { error in
                "\(error)".contains("differs from the first") && !"\(error)".contains("s3cr3t-pw")
            }
        }
        #expect(throws: AMQPError.self) { try AMQPConnection.Configuration(urls: []) }
    }
}
