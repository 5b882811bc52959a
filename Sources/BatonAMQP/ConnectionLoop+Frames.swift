internal import CRabbitMQ
import DequeModule
import Glibc
import Logging

/// Frames from the broker: deliveries, confirms, returns, channel and connection closes.
extension ConnectionLoop {
    func handle(_ frame: amqp_frame_t, _ connection: amqp_connection_state_t) {
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
            // RabbitMQ 3.10 keeps nacking a channel's publishes to a quorum queue whose leader was on a node that
            // died, even after a new leader is elected; a new channel finds the new leader.
            publishChannelIsStale = true
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

    func receiveDelivery(
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
    func resetConfirms() -> [PendingConfirm] {
        mandatoryTags.removeAll()
        returnedTags.removeAll()
        return confirms.reset()
    }

    /// Closes the publish channel and opens a new one, with nothing in flight on it (after a nack).
    func replacePublishChannel(_ connection: amqp_connection_state_t) {
        publishChannelIsStale = false
        logger.info("AMQP publish channel replaced after the broker nacked a publish")
        let closed = amqp_channel_close(connection, Self.publishChannel, AMQP_REPLY_SUCCESS)
        guard closed.reply_type == AMQP_RESPONSE_NORMAL else {
            let (error, scope) = AMQPError.translate(closed, context: "close the publish channel")
            recover(from: scope, channel: Self.publishChannel, error: error)
            return
        }
        _ = resetConfirms()
        openPublishChannel(connection)
    }

    /// Opens the publish channel in confirm mode; a failure drops the connection (it reconnects).
    private func openPublishChannel(_ connection: amqp_connection_state_t) {
        do {
            try openChannel(Self.publishChannel, connection)
            guard amqp_confirm_select(connection, Self.publishChannel) != nil else {
                throw AMQPError.translate(amqp_get_rpc_reply(connection), context: "enable publisher confirms").0
            }
        } catch {
            connectionLost(error as? AMQPError ?? AMQPError(code: .protocolError, message: "\(error)"))
        }
    }

    func channelClosed(
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
            openPublishChannel(connection)
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
