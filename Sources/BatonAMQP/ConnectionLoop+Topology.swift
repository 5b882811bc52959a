internal import CRabbitMQ
import DequeModule
import Glibc
import Logging

/// Topology round trips on the topology channel, and recovery when the broker closes a channel over one.
extension ConnectionLoop {
    func perform(_ operation: TopologyOperation) throws -> QueueCounts {
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
        case .unbind(let topology):
            try unbind(topology)
            return QueueCounts(messages: 0, consumers: 0)
        case .deleteExchange(let name):
            if amqp_exchange_delete(connection, Self.topologyChannel, arena.bytes(name), 0) == nil {
                throw topologyFailure("delete exchange '\(name)'")
            }
            return QueueCounts(messages: 0, consumers: 0)
        }
    }

    /// Removes a topology's bindings (its exchanges and queues stay), and forgets them: a reconnect does not
    /// declare them again.
    func unbind(_ topology: AMQPTopology) throws {
        try bind(topology, unbinding: true)
        let (bindings, exchangeBindings) = (Set(topology.bindings), Set(topology.exchangeBindings))
        for index in topologies.indices {
            topologies[index].bindings.removeAll { bindings.contains($0) }
            topologies[index].exchangeBindings.removeAll { exchangeBindings.contains($0) }
        }
    }

    /// Makes (or removes) a topology's queue bindings, then its exchange-to-exchange bindings.
    private func bind(_ topology: AMQPTopology, unbinding: Bool) throws {
        guard let connection else { throw AMQPError(code: .notConnected, message: "reconnecting to the broker") }
        let channel = Self.topologyChannel
        let (verb, preposition) = unbinding ? ("unbind", "from") : ("bind", "to")
        for binding in topology.bindings {
            let (queue, exchange, key) = (
                arena.bytes(binding.queue), arena.bytes(binding.exchange), arena.bytes(binding.bindingKey)
            )
            let arguments = arena.table(binding.arguments)
            let done =
                unbinding
                ? amqp_queue_unbind(connection, channel, queue, exchange, key, arguments) != nil
                : amqp_queue_bind(connection, channel, queue, exchange, key, arguments) != nil
            if !done {
                throw topologyFailure(
                    "\(verb) queue '\(binding.queue)' \(preposition) '\(binding.exchange)' with '\(binding.bindingKey)'"
                )
            }
        }
        for binding in topology.exchangeBindings {
            let (destination, source, key) = (
                arena.bytes(binding.destination), arena.bytes(binding.source), arena.bytes(binding.bindingKey)
            )
            let done =
                unbinding
                ? amqp_exchange_unbind(connection, channel, destination, source, key, amqp_empty_table) != nil
                : amqp_exchange_bind(connection, channel, destination, source, key, amqp_empty_table) != nil
            if !done {
                throw topologyFailure(
                    "\(verb) exchange '\(binding.destination)' \(preposition) '\(binding.source)' with '\(binding.bindingKey)'"
                )
            }
        }
    }

    /// Declares a topology; `passive` only checks that its exchanges and queues exist (passive declares need
    /// no permission) and skips the bindings, which AMQP 0-9-1 cannot check.
    func declare(_ topology: AMQPTopology, passive: Bool) throws {
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
        try bind(topology, unbinding: false)
    }

    /// Translates the failed round trip on the topology channel and repairs what it broke.
    func topologyFailure(_ context: String) -> AMQPError {
        guard let connection else { return AMQPError(code: .connectionLost, message: "\(context): connection lost") }
        let (error, scope) = AMQPError.translate(amqp_get_rpc_reply(connection), context: context)
        recover(from: scope, channel: Self.topologyChannel, error: error)
        return error
    }

    /// After the broker closed a channel or the connection in reply to a round trip: acknowledge the close
    /// and reopen the channel, or treat the connection as lost.
    func recover(from scope: FailureScope, channel: UInt16, error: AMQPError) {
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
}
