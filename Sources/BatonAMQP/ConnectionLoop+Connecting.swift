internal import CRabbitMQ
import DequeModule
import Glibc
import Logging

/// Connecting, logging in, opening channels, restoring topology and consumers after a reconnect, and
/// failing what was in flight when the connection is lost or closed.
extension ConnectionLoop {
    /// Connects to the first node that answers, trying each once, from ``nextEndpoint`` on.
    /// - Throws: The last node's error when none answers (each node's is logged).
    func establish() throws {
        let endpoints = configuration.endpoints
        var lastError: (any Error)?
        for offset in 0..<endpoints.count {
            let index = (nextEndpoint + offset) % endpoints.count
            do {
                try establish(endpoints[index])
                connectedEndpoint = index
                nextEndpoint = index
                return
            } catch {
                lastError = error
                if endpoints.count > 1 {
                    logger.warning(
                        "AMQP node unreachable; trying the next",
                        metadata: [
                            "baton.amqp.connection": "\(configuration.connectionName)",
                            "baton.amqp.node": "\(endpoints[index])", "error": "\(error)",
                        ]
                    )
                }
            }
        }
        throw lastError!
    }

    private func establish(_ endpoint: AMQPConnection.Configuration.Endpoint) throws {
        let context = "connect to \(endpoint)"
        guard let connection = amqp_new_connection() else {
            throw AMQPError(code: .protocolError, message: "\(context): out of memory")
        }
        defer { arena.reset() }
        do {
            try open(connection, to: endpoint, context: context)
        } catch {
            amqp_destroy_connection(connection)
            throw error
        }
        self.connection = connection
        status.didConnect()
        logger.info(
            "AMQP connected",
            metadata: [
                "baton.amqp.connection": "\(configuration.connectionName)", "baton.amqp.broker": "\(configuration)",
                "baton.amqp.node": "\(endpoint)",
            ]
        )
    }

    func open(
        _ connection: amqp_connection_state_t,
        to endpoint: AMQPConnection.Configuration.Endpoint,
        context: String
    ) throws {
        var connectTimeout = timeval(configuration.connectTimeout)
        var operationTimeout = timeval(configuration.operationTimeout)
        amqp_set_handshake_timeout(connection, &connectTimeout)
        amqp_set_rpc_timeout(connection, &operationTimeout)

        let socket: OpaquePointer?
        if let tls = configuration.tls {
            socket = amqp_ssl_socket_new(connection)
            guard let socket else {
                throw AMQPError(code: .tlsFailed, message: "\(context): cannot create a TLS socket")
            }
            let status = amqp_ssl_socket_set_cacert(socket, tls.caCertificatePath)
            guard status == AMQP_STATUS_OK.rawValue else {
                throw AMQPError(
                    code: .invalidConfiguration,
                    message: "\(context): cannot read the CA certificate file \(tls.caCertificatePath)"
                )
            }
            if let certificate = tls.clientCertificatePath, let key = tls.clientKeyPath {
                guard amqp_ssl_socket_set_key(socket, certificate, key) == AMQP_STATUS_OK.rawValue else {
                    throw AMQPError(
                        code: .invalidConfiguration,
                        message: "\(context): cannot read the client certificate or key"
                    )
                }
            }
            amqp_ssl_socket_set_verify_peer(socket, 1)
            amqp_ssl_socket_set_verify_hostname(socket, tls.verifiesHostname ? 1 : 0)
        } else {
            socket = amqp_tcp_socket_new(connection)
        }
        guard let socket else { throw AMQPError(code: .protocolError, message: "\(context): cannot create a socket") }

        let opened = amqp_socket_open_noblock(socket, endpoint.host, Int32(endpoint.port), &connectTimeout)
        guard opened == AMQP_STATUS_OK.rawValue else {
            throw AMQPError(status: opened, context: context, connecting: true)
        }

        var properties = arena.table([
            "connection_name": .string(configuration.connectionName),
            "product": "Baton",
            "platform": "Swift",
            "capabilities": .table([
                "authentication_failure_close": true,
                "consumer_cancel_notify": true,
                "connection.blocked": true,
            ]),
        ])
        let login = baton_amqp_login_plain(
            connection,
            configuration.virtualHost,
            0,
            Int32(configuration.frameMax),
            Int32(configuration.heartbeat.components.seconds),
            &properties,
            configuration.user,
            configuration.password
        )
        if login.reply_type != AMQP_RESPONSE_NORMAL {
            throw loginError(login, context: context)
        }
        try openChannel(Self.publishChannel, connection)
        guard amqp_confirm_select(connection, Self.publishChannel) != nil else {
            throw AMQPError.translate(amqp_get_rpc_reply(connection), context: "enable publisher confirms").0
        }
        try openChannel(Self.topologyChannel, connection)
    }

    func loginError(_ reply: amqp_rpc_reply_t, context: String) -> AMQPError {
        var (error, _) = AMQPError.translate(
            reply,
            context: "\(context): log in as \(configuration.user)",
            connecting: true
        )
        // RabbitMQ closes the socket without a reason on a wrong password when the client does not ask for
        // authentication_failure_close; librabbitmq then reports a closed connection during the handshake.
        if error.code == .connectFailed, reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION {
            error = AMQPError(
                code: .accessRefused,
                message: "\(context): the broker closed the connection during login (wrong user or password?)"
            )
        }
        return error
    }

    func openChannel(_ channel: UInt16, _ connection: amqp_connection_state_t) throws {
        guard amqp_channel_open(connection, channel) != nil else {
            throw AMQPError.translate(amqp_get_rpc_reply(connection), context: "open channel \(channel)").0
        }
    }

    /// After a reconnect: declares the recorded topology again and resumes the consumers.
    func restore() {
        for topology in topologies {
            do {
                try declare(topology, passive: false)
            } catch {
                logger.error(
                    "AMQP topology could not be declared again after reconnecting",
                    metadata: ["error": "\(error)"]
                )
            }
        }
        for (channel, registration) in consumers.sorted(by: { $0.key < $1.key }) {
            registration.buffer.dropDeliveries(before: generation)
            do {
                try startConsumer(registration)
            } catch {
                consumers[channel] = nil
                registration.buffer.finish(throwing: error as? AMQPError)
            }
        }
    }

    /// Waits, without a connection, until the next attempt is due or a close is requested; every other command
    /// fails as not connected meanwhile.
    func waitDisconnected(until deadline: ContinuousClock.Instant) {
        while true {
            for command in mailbox.takeAll() {
                if case .close(let continuation) = command {
                    requestClose(continuation)
                } else {
                    command.fail(with: AMQPError(code: .notConnected, message: "reconnecting to the broker"))
                }
            }
            if lifecycle.state == .closed { return }
            let remaining = deadline - .now
            if remaining <= .zero { return }
            guard mailbox.prepareToSleep() else { continue }
            var descriptor = pollfd(fd: mailbox.wakeDescriptor, events: Int16(POLLIN), revents: 0)
            _ = poll(&descriptor, 1, remaining.pollMilliseconds)
            mailbox.didWake()
        }
    }

    /// A close command: the first one is answered when the connection is closed, any later one at once.
    func requestClose(_ continuation: CheckedContinuation<Void, Never>) {
        if lifecycle.closeRequested(now: .now) {
            closeWaiter = continuation
        } else {
            continuation.resume()
        }
    }

    /// Tears the connection down after an error; pending confirms fail with `error`, consumers wait for the
    /// reconnect.
    func connectionLost(_ error: AMQPError) {
        guard let connection else { return }
        logger.warning(
            "AMQP connection lost",
            metadata: ["baton.amqp.connection": "\(configuration.connectionName)", "error": "\(error)"]
        )
        amqp_destroy_connection(connection)
        self.connection = nil
        nextEndpoint = (connectedEndpoint + 1) % configuration.endpoints.count  // its node may be down
        publishChannelIsStale = false  // the next connection opens its channels afresh
        lifecycle.didLoseConnection(now: .now, using: &random)
        status.didDisconnect()
        let lost = AMQPError(code: .connectionLost, replyCode: error.replyCode, message: error.message)
        for pending in resetConfirms() { pending.sink.complete(index: pending.index, with: .failure(lost)) }
    }

    /// Final cleanup on the thread: closes the connection politely, fails what is left, ends consumers.
    func finish() {
        if let connection {
            _ = amqp_connection_close(connection, AMQP_REPLY_SUCCESS)
            amqp_destroy_connection(connection)
            self.connection = nil
        }
        status.didClose()
        let closed = AMQPError(code: .closed, message: "the connection was closed")
        for pending in resetConfirms() { pending.sink.complete(index: pending.index, with: .failure(closed)) }
        for registration in consumers.values { registration.buffer.finish() }
        consumers.removeAll()
        for command in mailbox.closeAndDrain() {
            if case .close(let continuation) = command { continuation.resume() } else { command.fail(with: closed) }
        }
        closeWaiter?.resume()
        closeWaiter = nil
    }
}
