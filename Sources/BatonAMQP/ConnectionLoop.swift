internal import CRabbitMQ
import DequeModule
import Glibc
import Logging

/// Everything that touches one `amqp_connection_state_t`. Created on, and confined to, the connection's own
/// thread: librabbitmq is not thread-safe, and its calls block, so they must never run on Swift's cooperative
/// pool. Swift tasks reach it only through the ``Mailbox``.
///
/// Channel 1 publishes in confirm mode, channel 2 runs topology round trips, and each consumer has a channel
/// of its own from 3 up, so a broker error on one of them closes nothing else.
final class ConnectionLoop {
    private static let publishChannel: UInt16 = 1
    private static let topologyChannel: UInt16 = 2

    private let configuration: AMQPConnection.Configuration
    private let logger: Logger
    private let mailbox: Mailbox
    private let status: ConnectionStatus
    private let arena = ScratchArena()

    private var connection: amqp_connection_state_t?
    /// Counts successful connections; deliveries remember theirs, so a stale ack is never sent.
    private var generation: UInt64 = 0
    private var confirms = ConfirmTracker<PendingConfirm>()
    /// Mandatory publishes awaiting their confirm, by message id: a `basic.return` names them only so.
    private var mandatoryTags: [String: UInt64] = [:]
    /// Mandatory publishes the broker returned (no queue took them); their coming ack reports the failure.
    private var returnedTags: [UInt64: AMQPError] = [:]
    private var topologies: [AMQPTopology] = []
    private var consumers: [UInt16: ConsumerRegistration] = [:]
    /// Per consumer channel, what has been settled on the current connection.
    private var ackCoalescers: [UInt16: AckCoalescer] = [:]
    /// Deliveries read in the current burst, handed to their consumers together at its end.
    private var arrivedDeliveries: [UInt16: [AMQPDelivery]] = [:]
    private var backoff: ReconnectBackoff
    private var random = SystemRandomNumberGenerator()
    private var closeRequest: (continuation: CheckedContinuation<Void, Never>, deadline: ContinuousClock.Instant)?
    private var lastReceivedFrame = ContinuousClock.now

    init(configuration: AMQPConnection.Configuration, logger: Logger, mailbox: Mailbox, status: ConnectionStatus) {
        self.configuration = configuration
        self.logger = logger
        self.mailbox = mailbox
        self.status = status
        self.backoff = ReconnectBackoff(policy: configuration.reconnectBackoff)
    }

    deinit {
        assert(connection == nil, "ConnectionLoop ended with an open connection")
    }

    // MARK: Thread body

    /// Runs until the connection is closed. Reports the first connection attempt through `firstConnect`;
    /// if that fails, the thread ends at once.
    func run(firstConnect: CheckedContinuation<Void, any Error>) {
        do {
            try establish()
            firstConnect.resume()
        } catch {
            firstConnect.resume(throwing: error)
            finish()
            return
        }
        while true {
            if connection == nil {
                guard waitBeforeReconnect() else { break }
                do {
                    try establish()
                    restore()
                } catch {
                    logger.warning(
                        "AMQP reconnect failed",
                        metadata: ["baton.amqp.connection": "\(configuration.connectionName)", "error": "\(error)"]
                    )
                    continue
                }
            }
            serviceConnection()
            if let request = closeRequest, confirms.outstanding == 0 || ContinuousClock.now >= request.deadline {
                break
            }
        }
        finish()
    }

    /// One turn: run queued commands, read what arrived, then sleep in `poll(2)` until the socket or the
    /// mailbox wakes us or a heartbeat is due.
    private func serviceConnection() {
        var settlements: [Settlement] = []
        for command in mailbox.takeAll() {
            if case .settle(let settlement) = command { settlements.append(settlement) } else { execute(command) }
        }
        settle(settlements)
        guard let connection else { return }
        readFrames(connection)
        handOverDeliveries()
        guard let connection = self.connection else { return }
        amqp_maybe_release_buffers(connection)
        if amqp_frames_enqueued(connection) != 0 || amqp_data_in_buffer(connection) != 0 { return }
        var descriptors = [
            pollfd(fd: amqp_get_sockfd(connection), events: Int16(POLLIN), revents: 0),
            pollfd(fd: mailbox.wakeDescriptor, events: Int16(POLLIN), revents: 0),
        ]
        // A confirm is due within about a millisecond: wait for it briefly awake, since going to sleep and
        // being woken costs more than that on a busy machine. Bounded to 50 µs.
        if confirms.outstanding > 0 {
            let spinUntil = ContinuousClock.now + .microseconds(50)
            while ContinuousClock.now < spinUntil {
                if poll(&descriptors, 2, 0) > 0 || mailbox.hasWork { return }
                sched_yield()
            }
        }
        guard mailbox.prepareToSleep() else { return }
        let timeout = closeRequest == nil ? pollInterval : .milliseconds(20)
        _ = poll(&descriptors, 2, timeout.pollMilliseconds)
        mailbox.didWake()
        checkHeartbeat()
    }

    /// How long to sleep while idle: short enough to send heartbeats in time.
    private var pollInterval: Duration {
        min(configuration.heartbeat / 4, .seconds(1))
    }

    /// Reads every frame that is ready (at most a bounded batch, so commands are not starved).
    private func readFrames(_ connection: amqp_connection_state_t) {
        var frame = amqp_frame_t()
        // A 1 µs deadline rather than zero: with zero librabbitmq never notices a missed heartbeat.
        var nearlyNow = timeval(tv_sec: 0, tv_usec: 1)
        for _ in 0..<1024 {
            let result = amqp_simple_wait_frame_noblock(connection, &frame, &nearlyNow)
            if result == AMQP_STATUS_TIMEOUT.rawValue { return }
            guard result == AMQP_STATUS_OK.rawValue else {
                connectionLost(AMQPError(status: result, context: "read from the broker"))
                return
            }
            lastReceivedFrame = .now
            handle(frame, connection)
            guard self.connection != nil else { return }
        }
    }

    /// librabbitmq only notices a silent broker while it waits for a frame; this covers the idle case.
    private func checkHeartbeat() {
        guard connection != nil, configuration.heartbeat > .zero else { return }
        if ContinuousClock.now - lastReceivedFrame > configuration.heartbeat * 3 {
            // Any frame (heartbeats included) moves librabbitmq's own deadline; one more read decides.
            var frame = amqp_frame_t()
            var nearlyNow = timeval(tv_sec: 0, tv_usec: 1)
            let result = amqp_simple_wait_frame_noblock(connection, &frame, &nearlyNow)
            if result == AMQP_STATUS_OK.rawValue {
                lastReceivedFrame = .now
                handle(frame, connection!)
                handOverDeliveries()
            } else if result != AMQP_STATUS_TIMEOUT.rawValue {
                connectionLost(AMQPError(status: result, context: "read from the broker"))
            }
        }
    }

    // MARK: Connecting

    private func establish() throws {
        let context = "connect to \(configuration.host):\(configuration.port)"
        guard let connection = amqp_new_connection() else {
            throw AMQPError(code: .protocolError, message: "\(context): out of memory")
        }
        defer { arena.reset() }
        do {
            try open(connection, context: context)
        } catch {
            amqp_destroy_connection(connection)
            throw error
        }
        self.connection = connection
        generation += 1
        lastReceivedFrame = .now
        backoff.reset()
        status.didConnect()
        logger.info(
            "AMQP connected",
            metadata: [
                "baton.amqp.connection": "\(configuration.connectionName)", "baton.amqp.broker": "\(configuration)",
            ]
        )
    }

    private func open(_ connection: amqp_connection_state_t, context: String) throws {
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

        let opened = amqp_socket_open_noblock(socket, configuration.host, Int32(configuration.port), &connectTimeout)
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

    private func loginError(_ reply: amqp_rpc_reply_t, context: String) -> AMQPError {
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

    private func openChannel(_ channel: UInt16, _ connection: amqp_connection_state_t) throws {
        guard amqp_channel_open(connection, channel) != nil else {
            throw AMQPError.translate(amqp_get_rpc_reply(connection), context: "open channel \(channel)").0
        }
    }

    /// After a reconnect: declares the recorded topology again and resumes the consumers.
    private func restore() {
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

    /// Waits out the backoff delay; returns `false` if the connection was closed meanwhile.
    private func waitBeforeReconnect() -> Bool {
        let delay = backoff.nextDelay(using: &random)
        let deadline = ContinuousClock.now + delay
        while true {
            for command in mailbox.takeAll() {
                if case .close(let continuation) = command {
                    closeRequest = (continuation, .now)
                } else {
                    command.fail(with: AMQPError(code: .notConnected, message: "reconnecting to the broker"))
                }
            }
            if closeRequest != nil { return false }
            let remaining = deadline - .now
            if remaining <= .zero { return true }
            guard mailbox.prepareToSleep() else { continue }
            var descriptor = pollfd(fd: mailbox.wakeDescriptor, events: Int16(POLLIN), revents: 0)
            _ = poll(&descriptor, 1, remaining.pollMilliseconds)
            mailbox.didWake()
        }
    }

    /// Tears the connection down after an error; pending confirms fail with `error`, consumers wait for the
    /// reconnect.
    private func connectionLost(_ error: AMQPError) {
        guard let connection else { return }
        logger.warning(
            "AMQP connection lost",
            metadata: ["baton.amqp.connection": "\(configuration.connectionName)", "error": "\(error)"]
        )
        amqp_destroy_connection(connection)
        self.connection = nil
        status.didDisconnect()
        let lost = AMQPError(code: .connectionLost, replyCode: error.replyCode, message: error.message)
        for pending in resetConfirms() { pending.sink.complete(index: pending.index, with: .failure(lost)) }
    }

    /// Final cleanup on the thread: closes the connection politely, fails what is left, ends consumers.
    private func finish() {
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
        closeRequest?.continuation.resume()
        closeRequest = nil
    }

    // MARK: Commands

    private func execute(_ command: Command) {
        if case .close(let continuation) = command {
            if closeRequest == nil {
                closeRequest = (continuation, .now + configuration.closeTimeout)
            } else {
                continuation.resume()
            }
            return
        }
        guard let connection else {
            command.fail(with: AMQPError(code: .notConnected, message: "reconnecting to the broker"))
            return
        }
        defer { arena.reset() }
        switch command {
        case .publish(let messages, let sink):
            publish(messages, sink: sink, connection)
        case .topology(let operation, let continuation):
            do {
                continuation.resume(returning: try perform(operation))
            } catch {
                continuation.resume(throwing: error)
            }
        case .consume(let registration, let continuation):
            do {
                try startConsumer(registration)
                consumers[registration.channel] = registration
                continuation.resume()
            } catch {
                registration.buffer.finish(throwing: error as? AMQPError)
                continuation.resume(throwing: error)
            }
        case .cancelConsumer(let channel, let continuation):
            if let registration = consumers.removeValue(forKey: channel) {
                ackCoalescers[channel] = nil
                _ = amqp_channel_close(connection, channel, AMQP_REPLY_SUCCESS)
                registration.buffer.finish()
            }
            continuation.resume()
        case .settle(let settlement):
            settle([settlement])
        case .close:
            break
        }
    }

    private func publish(_ messages: [AMQPOutgoingMessage], sink: ConfirmSink, _ connection: amqp_connection_state_t) {
        for (index, message) in messages.enumerated() {
            guard self.connection != nil else {
                sink.complete(
                    index: index,
                    with: .failure(
                        AMQPError(code: .connectionLost, message: "the connection was lost before publishing")
                    )
                )
                continue
            }
            var properties = arena.properties(message.properties)
            let exchange = arena.bytes(message.exchange)
            let routingKey = arena.bytes(message.routingKey)
            let result = message.body.withUnsafeBytes { body in
                amqp_basic_publish(
                    connection,
                    Self.publishChannel,
                    exchange,
                    routingKey,
                    message.isMandatory ? 1 : 0,
                    0,
                    &properties,
                    amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress))
                )
            }
            arena.reset()
            guard result == AMQP_STATUS_OK.rawValue else {
                let error = AMQPError(status: result, context: "publish to exchange '\(message.exchange)'")
                sink.complete(index: index, with: .failure(error))
                connectionLost(error)
                continue
            }
            let tag = confirms.nextTag
            _ = confirms.register(PendingConfirm(sink: sink, index: index, deliveryTag: tag))
            if message.isMandatory, let messageID = message.properties.messageID { mandatoryTags[messageID] = tag }
        }
    }

    private func perform(_ operation: TopologyOperation) throws -> QueueCounts {
        guard let connection else { throw AMQPError(code: .notConnected, message: "reconnecting to the broker") }
        switch operation {
        case .declare(let topology):
            try declare(topology, passive: false)
            topologies.append(topology)
            return QueueCounts(messages: 0, consumers: 0)
        case .verify(let topology):
            try declare(topology, passive: true)
            return QueueCounts(messages: 0, consumers: 0)
        case .purgeQueue(let name):
            let ok = amqp_queue_purge(connection, Self.topologyChannel, arena.bytes(name))
            guard let ok else { throw topologyFailure("purge queue '\(name)'") }
            return QueueCounts(messages: ok.pointee.message_count, consumers: 0)
        case .inspectQueue(let name):
            let ok = amqp_queue_declare(
                connection,
                Self.topologyChannel,
                arena.bytes(name),
                1,
                0,
                0,
                0,
                amqp_empty_table
            )
            guard let ok else { throw topologyFailure("inspect queue '\(name)'") }
            return QueueCounts(messages: ok.pointee.message_count, consumers: ok.pointee.consumer_count)
        case .deleteQueue(let name):
            let ok = amqp_queue_delete(connection, Self.topologyChannel, arena.bytes(name), 0, 0)
            guard let ok else { throw topologyFailure("delete queue '\(name)'") }
            return QueueCounts(messages: ok.pointee.message_count, consumers: 0)
        }
    }

    /// Declares a topology; `passive` only checks that its exchanges and queues exist (passive declares need
    /// no permission) and skips the bindings, which AMQP 0-9-1 cannot check.
    private func declare(_ topology: AMQPTopology, passive: Bool) throws {
        guard let connection else { throw AMQPError(code: .notConnected, message: "reconnecting to the broker") }
        let channel = Self.topologyChannel
        let verb = passive ? "check" : "declare"
        for exchange in topology.exchanges {
            let ok = amqp_exchange_declare(
                connection,
                channel,
                arena.bytes(exchange.name),
                arena.bytes(exchange.kind.rawValue),
                passive ? 1 : 0,
                exchange.isDurable && !passive ? 1 : 0,
                0,
                0,
                passive ? amqp_empty_table : arena.table(exchange.arguments)
            )
            if ok == nil { throw topologyFailure("\(verb) exchange '\(exchange.name)'") }
        }
        for queue in topology.queues {
            let ok = amqp_queue_declare(
                connection,
                channel,
                arena.bytes(queue.name),
                passive ? 1 : 0,
                queue.isDurable && !passive ? 1 : 0,
                0,
                0,
                passive ? amqp_empty_table : arena.table(queue.effectiveArguments)
            )
            if ok == nil { throw topologyFailure("\(verb) queue '\(queue.name)'") }
        }
        guard !passive else { return }
        for binding in topology.bindings {
            let ok = amqp_queue_bind(
                connection,
                channel,
                arena.bytes(binding.queue),
                arena.bytes(binding.exchange),
                arena.bytes(binding.bindingKey),
                arena.table(binding.arguments)
            )
            if ok == nil {
                throw topologyFailure(
                    "bind queue '\(binding.queue)' to '\(binding.exchange)' with '\(binding.bindingKey)'"
                )
            }
        }
    }

    /// Translates the failed round trip on the topology channel and repairs what it broke.
    private func topologyFailure(_ context: String) -> AMQPError {
        guard let connection else { return AMQPError(code: .connectionLost, message: "\(context): connection lost") }
        let (error, scope) = AMQPError.translate(amqp_get_rpc_reply(connection), context: context)
        recover(from: scope, channel: Self.topologyChannel, error: error)
        return error
    }

    /// After the broker closed a channel or the connection in reply to a round trip: acknowledge the close
    /// and reopen the channel, or treat the connection as lost.
    private func recover(from scope: FailureScope, channel: UInt16, error: AMQPError) {
        guard let connection else { return }
        switch scope {
        case .channel:
            var closeOK = amqp_channel_close_ok_t(dummy: 0)
            _ = amqp_send_method(connection, channel, AMQPMethod.channelCloseOK, &closeOK)
            do {
                try openChannel(channel, connection)
            } catch {
                connectionLost(error as? AMQPError ?? AMQPError(code: .protocolError, message: "\(error)"))
            }
        case .connection:
            if error.replyCode != nil {
                var closeOK = amqp_connection_close_ok_t(dummy: 0)
                _ = amqp_send_method(connection, 0, AMQPMethod.connectionCloseOK, &closeOK)
            }
            connectionLost(error)
        }
    }

    private func startConsumer(_ registration: ConsumerRegistration) throws {
        guard let connection else { throw AMQPError(code: .notConnected, message: "reconnecting to the broker") }
        let context = "consume from queue '\(registration.queue)'"
        try openChannel(registration.channel, connection)
        guard amqp_basic_qos(connection, registration.channel, 0, registration.prefetch, 0) != nil else {
            throw consumerSetupFailure(context, channel: registration.channel)
        }
        let ok = amqp_basic_consume(
            connection,
            registration.channel,
            arena.bytes(registration.queue),
            amqp_empty_bytes,
            0,
            0,
            0,
            amqp_empty_table
        )
        guard ok != nil else { throw consumerSetupFailure(context, channel: registration.channel) }
        ackCoalescers[registration.channel] = AckCoalescer()
    }

    private func consumerSetupFailure(_ context: String, channel: UInt16) -> AMQPError {
        guard let connection else { return AMQPError(code: .connectionLost, message: "\(context): connection lost") }
        let (error, scope) = AMQPError.translate(amqp_get_rpc_reply(connection), context: context)
        switch scope {
        case .channel:
            var closeOK = amqp_channel_close_ok_t(dummy: 0)
            _ = amqp_send_method(connection, channel, AMQPMethod.channelCloseOK, &closeOK)
        case .connection:
            recover(from: .connection, channel: channel, error: error)
        }
        return error
    }

    /// Sends the settlements of one turn: nacks and rejects one by one, acks coalesced per channel.
    /// Settlements from an earlier connection are dropped: the broker requeued those deliveries already.
    private func settle(_ settlements: [Settlement]) {
        guard let connection, !settlements.isEmpty else { return }
        var acks: [UInt16: [UInt64]] = [:]
        var result = AMQP_STATUS_OK.rawValue
        for settlement in settlements where settlement.generation == generation && consumers[settlement.channel] != nil
        {
            let channel = settlement.channel
            let tag = settlement.deliveryTag
            switch settlement.kind {
            case .ack:
                acks[channel, default: []].append(tag)
            case .nack(let requeue):
                guard ackCoalescers[channel, default: AckCoalescer()].markSettled(tag) else { continue }
                result = amqp_basic_nack(connection, channel, tag, 0, requeue ? 1 : 0)
            case .reject(let requeue):
                guard ackCoalescers[channel, default: AckCoalescer()].markSettled(tag) else { continue }
                result = amqp_basic_reject(connection, channel, tag, requeue ? 1 : 0)
            }
            guard result == AMQP_STATUS_OK.rawValue else { break }
        }
        for (channel, tags) in acks where result == AMQP_STATUS_OK.rawValue {
            for frame in ackCoalescers[channel, default: AckCoalescer()].acknowledge(tags) {
                result = amqp_basic_ack(connection, channel, frame.deliveryTag, frame.multiple ? 1 : 0)
                guard result == AMQP_STATUS_OK.rawValue else { break }
            }
        }
        if result != AMQP_STATUS_OK.rawValue {
            connectionLost(AMQPError(status: result, context: "settle deliveries"))
        }
    }

    /// Gives each consumer what arrived for it in this burst, in one hand-over (one wake-up of its task).
    private func handOverDeliveries() {
        guard !arrivedDeliveries.isEmpty else { return }
        for (channel, deliveries) in arrivedDeliveries {
            consumers[channel]?.buffer.push(contentsOf: deliveries)
        }
        arrivedDeliveries.removeAll(keepingCapacity: true)
    }

    // MARK: Frames

    private func handle(_ frame: amqp_frame_t, _ connection: amqp_connection_state_t) {
        guard frame.frame_type == UInt8(AMQP_FRAME_METHOD) else { return }
        let method = frame.payload.method
        switch method.id {
        case AMQPMethod.basicDeliver:
            let deliver = method.decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
            receiveDelivery(deliver, channel: frame.channel, connection)
        case AMQPMethod.basicAck:
            let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            guard frame.channel == Self.publishChannel else { return }
            for pending in confirms.settle(deliveryTag: ack.delivery_tag, multiple: ack.multiple != 0) {
                if let returned = returnedTags.removeValue(forKey: pending.deliveryTag) {
                    pending.sink.complete(index: pending.index, with: .failure(returned))
                } else {
                    pending.sink.complete(index: pending.index, with: .success(()))
                }
            }
            if confirms.outstanding == 0 { mandatoryTags.removeAll(keepingCapacity: true) }
        case AMQPMethod.basicNack:
            let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            guard frame.channel == Self.publishChannel else { return }
            let error = AMQPError(
                code: .nacked,
                message: "the broker refused responsibility for the message (basic.nack)"
            )
            for pending in confirms.settle(deliveryTag: nack.delivery_tag, multiple: nack.multiple != 0) {
                pending.sink.complete(index: pending.index, with: .failure(error))
            }
        case AMQPMethod.basicReturn:
            let returned = method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            let error = AMQPError(
                code: .unroutable,
                replyCode: returned.reply_code,
                message:
                    "no queue took the message published to exchange '\(String(returned.exchange))' with routing key '\(String(returned.routing_key))' (\(String(returned.reply_text)))"
            )
            var message = amqp_message_t()
            guard amqp_read_message(connection, frame.channel, &message, 0).reply_type == AMQP_RESPONSE_NORMAL else {
                return
            }
            defer { amqp_destroy_message(&message) }
            let properties = AMQPProperties(message.properties)
            if let messageID = properties.messageID, let tag = mandatoryTags.removeValue(forKey: messageID) {
                returnedTags[tag] = error
            }
        case AMQPMethod.channelClose:
            let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            channelClosed(frame.channel, replyCode: close.reply_code, text: close.reply_text, connection)
        case AMQPMethod.connectionClose:
            let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            let error = AMQPError(
                closeReplyCode: close.reply_code,
                text: close.reply_text,
                context: "the broker closed the connection",
                onChannel: false
            )
            recover(from: .connection, channel: 0, error: error)
        case AMQPMethod.basicCancel:
            if let registration = consumers.removeValue(forKey: frame.channel) {
                _ = amqp_channel_close(connection, frame.channel, AMQP_REPLY_SUCCESS)
                registration.buffer.finish(
                    throwing: AMQPError(
                        code: .notFound,
                        message: "the broker cancelled the consumer of queue '\(registration.queue)' (queue deleted?)"
                    )
                )
            }
        case AMQPMethod.connectionBlocked:
            logger.warning("AMQP connection blocked by the broker (resource alarm)")
        case AMQPMethod.connectionUnblocked:
            logger.info("AMQP connection unblocked")
        default:
            logger.debug("AMQP frame ignored", metadata: ["method": "\(method.id)"])
        }
    }

    private func receiveDelivery(
        _ deliver: amqp_basic_deliver_t,
        channel: UInt16,
        _ connection: amqp_connection_state_t
    ) {
        let exchange = String(deliver.exchange)
        let routingKey = String(deliver.routing_key)
        var message = amqp_message_t()
        let reply = amqp_read_message(connection, channel, &message, 0)
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
            let (error, scope) = AMQPError.translate(reply, context: "read a delivery")
            recover(from: scope, channel: channel, error: error)
            return
        }
        defer { amqp_destroy_message(&message) }
        guard consumers[channel] != nil else { return }
        arrivedDeliveries[channel, default: []].append(
            AMQPDelivery(
                body: [UInt8](message.body),
                properties: AMQPProperties(message.properties),
                exchange: exchange,
                routingKey: routingKey,
                isRedelivered: deliver.redelivered != 0,
                deliveryTag: deliver.delivery_tag,
                channel: channel,
                generation: generation,
                mailbox: mailbox
            )
        )
    }

    /// The confirm channel is gone: every unsettled publish, and no returned or mandatory bookkeeping left.
    private func resetConfirms() -> [PendingConfirm] {
        mandatoryTags.removeAll()
        returnedTags.removeAll()
        return confirms.reset()
    }

    private func channelClosed(
        _ channel: UInt16,
        replyCode: UInt16,
        text: amqp_bytes_t,
        _ connection: amqp_connection_state_t
    ) {
        var closeOK = amqp_channel_close_ok_t(dummy: 0)
        _ = amqp_send_method(connection, channel, AMQPMethod.channelCloseOK, &closeOK)
        if channel == Self.publishChannel {
            let error = AMQPError(closeReplyCode: replyCode, text: text, context: "publish", onChannel: true)
            logger.warning("AMQP publish channel closed by the broker", metadata: ["error": "\(error)"])
            let unconfirmed = resetConfirms()
            // The close names no delivery tag: with one message in flight it is that message's refusal; with
            // several, any of them may be the one refused and the others may or may not have been taken.
            let unknown = AMQPError(
                code: .outcomeUnknown,
                replyCode: replyCode,
                message: "\(error.message) (one of \(unconfirmed.count) messages in flight; publish this one again)"
            )
            for pending in unconfirmed {
                pending.sink.complete(index: pending.index, with: .failure(unconfirmed.count == 1 ? error : unknown))
            }
            do {
                try openChannel(channel, connection)
                guard amqp_confirm_select(connection, channel) != nil else {
                    throw AMQPError.translate(amqp_get_rpc_reply(connection), context: "enable publisher confirms").0
                }
            } catch {
                connectionLost(error as? AMQPError ?? AMQPError(code: .protocolError, message: "\(error)"))
            }
        } else if let registration = consumers.removeValue(forKey: channel) {
            let error = AMQPError(
                closeReplyCode: replyCode,
                text: text,
                context: "consume from queue '\(registration.queue)'",
                onChannel: true
            )
            registration.buffer.finish(throwing: error)
        }
    }
}

@available(*, unavailable)
extension ConnectionLoop: Sendable {}

extension timeval {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }
}
