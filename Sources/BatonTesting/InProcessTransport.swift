import Baton
import BatonNode
import DequeModule
import Foundation
import Synchronization

/// A transport in memory with the broker's semantics: topic, direct, fanout and consistent-hash exchanges,
/// exchange-to-exchange bindings, durable queues (one active consumer when a queue says so), publish failing for
/// a missing exchange, prefetch, ack, requeue with the redelivered flag. For tests and for running a whole
/// system in one process. (Its consistent hash spreads keys otherwise than RabbitMQ's ring does.)
public final class InProcessTransport: Transport {
    private struct Queued {
        var message: OutgoingMessage
        var redelivered: Bool
    }

    private final class QueueState {
        var declaration: Topology.Queue
        var ready: Deque<Queued> = []
        var consumers: [Int] = []
        var nextConsumer = 0
        init(_ declaration: Topology.Queue) { self.declaration = declaration }
    }

    private final class ConsumerState {
        let queues: [String]
        let prefetch: Int
        var unacked: [Int: (queue: String, queued: Queued)] = [:]
        var inbox: Deque<(tag: Int, queue: String, queued: Queued)> = []
        var waiter: CheckedContinuation<Void, Never>?
        var isCancelled = false
        init(queues: [String], prefetch: Int) {
            self.queues = queues
            self.prefetch = prefetch
        }
    }

    private struct State {
        var exchanges: [String: Topology.Exchange] = [:]
        var queues: [String: QueueState] = [:]
        var bindings: [Topology.Binding] = []
        var exchangeBindings: [Topology.ExchangeBinding] = []
        var consumers: [Int: ConsumerState] = [:]
        var nextID = 1
    }

    private let state = Mutex(State())

    /// Creates an empty broker in memory.
    public init() {}

    public func declare(_ topology: Topology) async throws {
        try state.withLock { state in
            for exchange in topology.exchanges {
                if let existing = state.exchanges[exchange.name], existing.kind != exchange.kind {
                    throw TransportError(
                        code: .conflict,
                        message: "exchange '\(exchange.name)' exists with another type"
                    )
                }
                state.exchanges[exchange.name] = exchange
            }
            for queue in topology.queues where state.queues[queue.name] == nil {
                state.queues[queue.name] = QueueState(queue)
            }
            for binding in topology.bindings {
                guard state.queues[binding.queue] != nil, state.exchanges[binding.exchange] != nil else {
                    throw TransportError(
                        code: .notFound,
                        message: "bind: no queue '\(binding.queue)' or exchange '\(binding.exchange)'"
                    )
                }
                if !state.bindings.contains(binding) { state.bindings.append(binding) }
            }
            for binding in topology.exchangeBindings {
                guard state.exchanges[binding.source] != nil, state.exchanges[binding.destination] != nil else {
                    throw TransportError(
                        code: .notFound,
                        message: "bind: no exchange '\(binding.source)' or '\(binding.destination)'"
                    )
                }
                if !state.exchangeBindings.contains(binding) { state.exchangeBindings.append(binding) }
            }
        }
    }

    public func verify(_ topology: Topology) async throws {
        try state.withLock { state in
            let missing =
                topology.exchanges.first { state.exchanges[$0.name] == nil }.map { "exchange '\($0.name)'" }
                ?? topology.queues.first { state.queues[$0.name] == nil }.map { "queue '\($0.name)'" }
            if let missing {
                throw TransportError(code: .notFound, message: "no \(missing)")
            }
        }
    }

    public func publish(_ messages: [OutgoingMessage]) async -> [PublishOutcome] {
        var wake: [CheckedContinuation<Void, Never>] = []
        let results = state.withLock { state -> [PublishOutcome] in
            messages.map { message in
                guard message.exchange.isEmpty || state.exchanges[message.exchange] != nil else {
                    return .refused("no exchange '\(message.exchange)'")
                }
                let queues = Self.route(message, in: state)
                if queues.isEmpty && message.exchange == Routing.commandExchange {
                    return .failed("no queue took the command '\(message.routingKey)'")
                }
                for queue in queues {
                    state.queues[queue]?.ready.append(Queued(message: message, redelivered: false))
                    wake += Self.dispatch(queue, in: &state)
                }
                return .confirmed
            }
        }
        for continuation in wake { continuation.resume() }
        return results
    }

    public func subscribe(queues: [String], prefetch: Int) async throws -> any MessageSource {
        precondition(prefetch > 0, "prefetch must be positive")
        precondition(!queues.isEmpty, "subscribe to at least one queue")
        let id = try state.withLock { state -> Int in
            if let missing = queues.first(where: { state.queues[$0] == nil }) {
                throw TransportError(code: .notFound, message: "no queue '\(missing)'")
            }
            let id = state.nextID
            state.nextID += 1
            state.consumers[id] = ConsumerState(queues: queues, prefetch: prefetch)
            for queue in queues {
                state.queues[queue]?.consumers.append(id)
                _ = Self.dispatch(queue, in: &state)
            }
            return id
        }
        return Source(transport: self, consumer: id)
    }

    /// How many messages wait in a queue, not counting unacknowledged ones.
    public func readyCount(_ queue: String) -> Int {
        state.withLock { $0.queues[queue]?.ready.count ?? 0 }
    }

    /// How many messages of a queue are not settled yet: ready, or delivered and not acknowledged. Zero means
    /// every message published to it so far was handled and acknowledged (a test's marker that its consumer
    /// is done, instead of a sleep).
    public func unsettledCount(_ queue: String) -> Int {
        state.withLock { state in
            let delivered = state.consumers.values.map {
                $0.unacked.values.filter { $0.queue == queue }.count + $0.inbox.filter { $0.queue == queue }.count
            }
            return (state.queues[queue]?.ready.count ?? 0) + delivered.reduce(0, +)
        }
    }

    /// The messages waiting in a queue, oldest first (for assertions).
    public func readyMessages(_ queue: String) -> [OutgoingMessage] {
        state.withLock { state in state.queues[queue].map { $0.ready.map(\.message) } ?? [] }
    }

    private static func route(_ message: OutgoingMessage, in state: State) -> [String] {
        if message.exchange.isEmpty { return state.queues[message.routingKey] == nil ? [] : [message.routingKey] }
        var queues: [String] = []
        var visited: Set<String> = []
        route(message, through: message.exchange, in: state, into: &queues, visited: &visited)
        return queues
    }

    /// The queues an exchange (and the exchanges bound to it) route a message to, each once.
    private static func route(
        _ message: OutgoingMessage,
        through name: String,
        in state: State,
        into queues: inout [String],
        visited: inout Set<String>
    ) {
        guard let exchange = state.exchanges[name], visited.insert(name).inserted else { return }
        func matches(_ bindingKey: String) -> Bool {
            switch exchange.kind {
            case .fanout, .consistentHash: true
            case .direct, .headers: bindingKey == message.routingKey
            case .topic: Topology.topicMatches(pattern: bindingKey, key: message.routingKey)
            }
        }
        let bound = state.bindings.filter { $0.exchange == name && matches($0.bindingKey) }.map(\.queue)
        if case .consistentHash = exchange.kind {
            let candidates = Array(Set(bound)).sorted()
            if let key = hashedValue(of: message, by: exchange.hashedBy), !candidates.isEmpty {
                let chosen = candidates[Int(stableHash(key) % UInt64(candidates.count))]
                if !queues.contains(chosen) { queues.append(chosen) }
            }
        } else {
            for queue in bound where !queues.contains(queue) { queues.append(queue) }
        }
        for binding in state.exchangeBindings where binding.source == name && matches(binding.bindingKey) {
            route(message, through: binding.destination, in: state, into: &queues, visited: &visited)
        }
    }

    /// What a consistent-hash exchange hashes; `nil` when the message has no such value (it is not routed).
    private static func hashedValue(of message: OutgoingMessage, by source: Topology.Exchange.HashSource?) -> String? {
        switch source {
        case .header(let name): message.envelope.wireHeaders[name]
        case .messageID: message.envelope.messageID
        case nil: nil
        }
    }

    /// FNV-1a: the same on every run (Swift's `Hasher` is seeded per process).
    private static func stableHash(_ text: String) -> UInt64 {
        text.utf8.reduce(0xcbf2_9ce4_8422_2325) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
    }

    /// Moves ready messages to consumers with room (round robin); returns the waiters to wake.
    private static func dispatch(_ queue: String, in state: inout State) -> [CheckedContinuation<Void, Never>] {
        guard let queueState = state.queues[queue], !queueState.consumers.isEmpty else { return [] }
        // A single-active-consumer queue delivers to its oldest consumer only; the others stand by.
        let consumers =
            queueState.declaration.hasSingleActiveConsumer ? [queueState.consumers[0]] : queueState.consumers
        var wake: [CheckedContinuation<Void, Never>] = []
        var idle = 0
        while !queueState.ready.isEmpty, idle < consumers.count {
            let id = consumers[queueState.nextConsumer % consumers.count]
            queueState.nextConsumer += 1
            guard let consumer = state.consumers[id], consumer.unacked.count + consumer.inbox.count < consumer.prefetch
            else {
                idle += 1
                continue
            }
            idle = 0
            let queued = queueState.ready.removeFirst()
            let tag = state.nextID
            state.nextID += 1
            consumer.inbox.append((tag, queue, queued))
            if let waiter = consumer.waiter {
                consumer.waiter = nil
                wake.append(waiter)
            }
        }
        return wake
    }

    private func settle(consumer id: Int, tag: Int, accept: Bool) {
        let wake = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard let consumer = state.consumers[id], let (queue, queued) = consumer.unacked.removeValue(forKey: tag)
            else { return [] }
            if !accept {
                state.queues[queue]?.ready.prepend(Queued(message: queued.message, redelivered: true))
            }
            return Self.dispatch(queue, in: &state)
        }
        for continuation in wake { continuation.resume() }
    }

    private struct Source: MessageSource {
        let transport: InProcessTransport
        let consumer: Int

        func nextBatch(maxCount: Int) async throws -> [IncomingMessage]? {
            while true {
                let taken = transport.state.withLock { state -> [(Int, Queued)]? in
                    guard let consumer = state.consumers[consumer], !consumer.isCancelled else { return nil }
                    var batch: [(Int, Queued)] = []
                    while batch.count < maxCount, let next = consumer.inbox.popFirst() {
                        consumer.unacked[next.tag] = (next.queue, next.queued)
                        batch.append((next.tag, next.queued))
                    }
                    return batch
                }
                guard let taken else { return nil }
                if !taken.isEmpty {
                    return taken.map { tag, queued in incoming(queued, tag: tag) }
                }
                try Task.checkCancellation()
                await withTaskCancellationHandler {
                    await withCheckedContinuation { continuation in
                        let ready = transport.state.withLock { state -> Bool in
                            guard let consumer = state.consumers[consumer], !consumer.isCancelled,
                                consumer.inbox.isEmpty,
                                !Task.isCancelled
                            else { return true }
                            consumer.waiter = continuation
                            return false
                        }
                        if ready { continuation.resume() }
                    }
                } onCancel: {
                    let waiter = transport.state.withLock { state -> CheckedContinuation<Void, Never>? in
                        defer { state.consumers[consumer]?.waiter = nil }
                        return state.consumers[consumer]?.waiter
                    }
                    waiter?.resume()
                }
            }
        }

        func cancel() async {
            let wake = transport.state.withLock { state -> [CheckedContinuation<Void, Never>] in
                guard let consumerState = state.consumers.removeValue(forKey: consumer) else { return [] }
                consumerState.isCancelled = true
                for queue in consumerState.queues { state.queues[queue]?.consumers.removeAll { $0 == consumer } }
                let returned =
                    consumerState.unacked.sorted { $0.key < $1.key }.map(\.value)
                    + consumerState.inbox.map { ($0.queue, $0.queued) }
                for (queue, queued) in returned.reversed() {
                    state.queues[queue]?.ready.prepend(Queued(message: queued.message, redelivered: true))
                }
                var wake = consumerState.queues.flatMap { InProcessTransport.dispatch($0, in: &state) }
                if let waiter = consumerState.waiter { wake.append(waiter) }
                return wake
            }
            for continuation in wake { continuation.resume() }
        }

        private func incoming(_ queued: Queued, tag: Int) -> IncomingMessage {
            let transport = self.transport
            let consumer = self.consumer
            return IncomingMessage(
                delivering: queued.message,
                isRedelivered: queued.redelivered,
                settle: { accept in transport.settle(consumer: consumer, tag: tag, accept: accept) }
            )
        }
    }
}
