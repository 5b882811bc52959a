internal import CRabbitMQ
import DequeModule
import Glibc
import Logging

/// The commands Swift tasks send through the mailbox: publishes (in confirm mode), consumers and their
/// settlements.
extension ConnectionLoop {
    func execute(_ command: Command) {
        if case .close(let continuation) = command {
            requestClose(continuation)
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

    func publish(_ messages: [AMQPOutgoingMessage], sink: ConfirmSink, _ connection: amqp_connection_state_t) {
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

    func startConsumer(_ registration: ConsumerRegistration) throws {
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

    func consumerSetupFailure(_ context: String, channel: UInt16) -> AMQPError {
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
    func settle(_ settlements: [Settlement]) {
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
    func handOverDeliveries() {
        guard !arrivedDeliveries.isEmpty else { return }
        for (channel, deliveries) in arrivedDeliveries {
            consumers[channel]?.buffer.push(contentsOf: deliveries)
        }
        arrivedDeliveries.removeAll(keepingCapacity: true)
    }
}
