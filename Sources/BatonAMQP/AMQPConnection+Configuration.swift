/// How to reach a broker and how the connection behaves.
extension AMQPConnection {
    /// Connection settings. Build one from a URL with ``init(url:)`` and adjust the rest.
    public struct Configuration: Sendable, CustomStringConvertible {
        /// TLS settings for `amqps://`.
        public struct TLS: Sendable, Hashable {
            /// PEM file with the certificate authorities that may sign the broker's certificate.
            public var caCertificatePath: String
            /// PEM client certificate and key for mutual TLS, if the broker asks for one.
            public var clientCertificatePath: String?
            /// The private key belonging to ``clientCertificatePath``.
            public var clientKeyPath: String?
            /// Check that the certificate was issued for the host name in the URL. On by default.
            public var verifiesHostname: Bool

            /// Creates TLS settings that verify the broker against the given certificate authorities.
            /// - Parameters:
            ///   - caCertificatePath: PEM file of trusted certificate authorities.
            ///   - clientCertificatePath: Optional client certificate (PEM).
            ///   - clientKeyPath: Optional client key (PEM).
            ///   - verifiesHostname: Whether the certificate must name the host.
            public init(
                caCertificatePath: String,
                clientCertificatePath: String? = nil,
                clientKeyPath: String? = nil,
                verifiesHostname: Bool = true
            ) {
                self.caCertificatePath = caCertificatePath
                self.clientCertificatePath = clientCertificatePath
                self.clientKeyPath = clientKeyPath
                self.verifiesHostname = verifiesHostname
            }
        }

        /// How long to wait between reconnect attempts: exponential from `initial`, capped at `maximum`.
        public struct Backoff: Sendable, Hashable {
            /// The delay before the first retry.
            public var initial: Duration
            /// The largest delay between retries.
            public var maximum: Duration

            /// Creates a backoff policy.
            /// - Parameters:
            ///   - initial: The first delay.
            ///   - maximum: The cap.
            public init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(5)) {
                precondition(initial > .zero && maximum >= initial, "backoff needs 0 < initial <= maximum")
                self.initial = initial
                self.maximum = maximum
            }
        }

        /// A node of the broker: where to connect.
        public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
            /// The node's host name or address.
            public var host: String
            /// The node's port.
            public var port: Int

            /// Creates an endpoint.
            public init(host: String, port: Int) {
                self.host = host
                self.port = port
            }

            /// `host:port`.
            public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
        }

        /// The broker's host name or address.
        public var host: String
        /// The broker's port (5672 for amqp, 5671 for amqps by default).
        public var port: Int
        /// Further nodes of the same cluster (same users, virtual host and TLS settings). A connection attempt
        /// tries the nodes in turn until one answers; after a lost connection it starts with the node after the
        /// one it lost.
        public var otherNodes: [Endpoint] = []

        /// Every node to try: `host`:`port` first, then ``otherNodes``.
        public var endpoints: [Endpoint] { [Endpoint(host: host, port: port)] + otherNodes }
        /// The user name.
        public var user: String
        /// The password. Never printed.
        public var password: String
        /// The virtual host.
        public var virtualHost: String
        /// TLS settings; `nil` for plain TCP.
        public var tls: TLS?
        /// The name this connection shows in the broker's management tools.
        public var connectionName: String
        /// Heartbeat interval asked of the broker; a connection silent for two intervals counts as lost.
        public var heartbeat: Duration
        /// Upper bound for the TCP connect plus the AMQP handshake.
        public var connectTimeout: Duration
        /// Upper bound for a broker round trip such as a declaration.
        public var operationTimeout: Duration
        /// The largest frame size to negotiate.
        public var frameMax: Int
        /// Reconnect delays after the connection is lost.
        public var reconnectBackoff: Backoff
        /// How long ``AMQPConnection/close()`` waits for outstanding publisher confirms.
        public var closeTimeout: Duration

        /// Creates a configuration from its parts.
        /// - Parameters:
        ///   - host: Broker host.
        ///   - port: Broker port.
        ///   - user: User name.
        ///   - password: Password.
        ///   - virtualHost: Virtual host, `/` by default.
        ///   - tls: TLS settings, or `nil` for plain TCP.
        ///   - connectionName: The name shown in the broker.
        public init(
            host: String = "127.0.0.1",
            port: Int? = nil,
            user: String = "guest",
            password: String = "guest",
            virtualHost: String = "/",
            tls: TLS? = nil,
            connectionName: String = "baton"
        ) {
            self.host = host
            self.port = port ?? (tls == nil ? 5672 : 5671)
            self.user = user
            self.password = password
            self.virtualHost = virtualHost
            self.tls = tls
            self.connectionName = connectionName
            self.heartbeat = .seconds(10)
            self.connectTimeout = .seconds(5)
            self.operationTimeout = .seconds(30)
            self.frameMax = 131_072
            self.reconnectBackoff = Backoff()
            self.closeTimeout = .seconds(10)
        }

        /// Creates a configuration from an `amqp://` or `amqps://` URL:
        /// `amqp://user:password@host:port/vhost` (user, password and vhost percent-encoded; `%2F` is `/`).
        ///
        /// For `amqps://`, pass the certificate authorities in `tls`.
        /// - Parameters:
        ///   - url: The URL.
        ///   - tls: TLS settings, required for `amqps://`.
        ///   - connectionName: The name shown in the broker.
        /// - Throws: ``AMQPError/Code-swift.struct/invalidConfiguration`` naming what is wrong, never echoing the password.
        public init(url: String, tls: TLS? = nil, connectionName: String = "baton") throws {
            let parsed = try AMQPURL(parsing: url)
            if parsed.isSecure && tls == nil {
                throw AMQPError(
                    code: .invalidConfiguration,
                    message: "amqps:// needs TLS settings with the certificate authority to verify the broker against"
                )
            }
            self.init(
                host: parsed.host,
                port: parsed.port,
                user: parsed.user,
                password: parsed.password,
                virtualHost: parsed.virtualHost,
                tls: parsed.isSecure ? tls : nil,
                connectionName: connectionName
            )
        }

        /// Creates a configuration from the URLs of a cluster's nodes (see ``init(url:tls:connectionName:)``): the
        /// first is tried first, the others are ``otherNodes``.
        /// - Throws: ``AMQPError/Code-swift.struct/invalidConfiguration`` if there is no URL, one is malformed,
        ///   or they differ in anything but host and port (scheme, user, password, virtual host).
        public init(urls: [String], tls: TLS? = nil, connectionName: String = "baton") throws {
            guard let first = urls.first else {
                throw AMQPError(code: .invalidConfiguration, message: "no broker URL")
            }
            try self.init(url: first, tls: tls, connectionName: connectionName)
            let reference = try AMQPURL(parsing: first)
            for (index, url) in urls.enumerated().dropFirst() {
                let node = try AMQPURL(parsing: url)
                guard
                    node.isSecure == reference.isSecure && node.user == reference.user
                        && node.password == reference.password && node.virtualHost == reference.virtualHost
                else {
                    throw AMQPError(
                        code: .invalidConfiguration,
                        message:
                            "broker URL \(index + 1) differs from the first in more than host and port: the nodes of one cluster share scheme, user, password and virtual host"
                    )
                }
                otherNodes.append(Endpoint(host: node.host, port: node.port))
            }
        }

        /// The settings with the password left out, e.g. `amqp://baton@127.0.0.1:5672/%2F`, or with every node
        /// of a cluster: `amqp://baton@10.0.0.1:5672,10.0.0.2:5672/%2F`.
        public var description: String {
            let scheme = tls == nil ? "amqp" : "amqps"
            let nodes = endpoints.map(\.description).joined(separator: ",")
            return "\(scheme)://\(user)@\(nodes)/\(AMQPURL.percentEncode(virtualHost))"
        }
    }
}
