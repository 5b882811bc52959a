import DequeModule
import Synchronization

/// The deliveries of one queue (or of several, interleaved), as an asynchronous sequence.
///
/// The broker sends at most `prefetch` unsettled deliveries, so the buffer between the connection thread and
/// the iterating task never holds more than that: settle deliveries to receive more. After a reconnect the
/// sequence goes on with the broker's redeliveries; deliveries of the lost connection that were still
/// buffered are dropped (the broker redelivers them). The sequence ends when ``cancel()`` is called or the
/// connection closes, and throws if the broker cancels the consumer (e.g. its queue was deleted).
public struct AMQPConsumer: AsyncSequence, Sendable {
    public typealias Element = AMQPDelivery

    /// The queues consumed.
    public let queues: [String]
    let channels: [UInt16]
    let buffer: DeliveryBuffer
    let mailbox: Mailbox

    /// Stops the consumer; unsettled deliveries go back to the queue, and the sequence ends.
    public func cancel() async {
        for channel in channels {
            await withCheckedContinuation { continuation in
                mailbox.send(.cancelConsumer(channel: channel, continuation))
            }
        }
        buffer.finish()
    }

    /// Waits for a delivery, then returns it with up to `maxCount - 1` more that are already buffered
    /// (no further waiting): the unit for group commit. `nil` when the sequence has ended.
    /// - Throws: ``AMQPError`` if the broker cancelled the consumer.
    public func nextBatch(maxCount: Int) async throws -> [AMQPDelivery]? {
        precondition(maxCount > 0, "maxCount must be positive")
        guard let first = try await buffer.next() else { return nil }
        return [first] + buffer.takeBuffered(maxCount: maxCount - 1)
    }

    /// Waits at most `timeout` for the next delivery.
    /// - Returns: The delivery, or `nil` if none arrived in time or the consumer ended. A delivery that
    ///   arrives just as the time runs out is returned, never dropped.
    /// - Throws: ``AMQPError`` if the broker cancelled the consumer.
    public func next(timeout: Duration) async throws -> AMQPDelivery? {
        let buffer = self.buffer
        return try await withThrowingTaskGroup(of: AMQPDelivery?.self) { group in
            group.addTask { try await buffer.next() }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            var delivery = try await group.next() ?? nil
            group.cancelAll()
            while let other = try await group.next() {
                if delivery == nil { delivery = other }
            }
            return delivery
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(buffer: buffer)
    }

    /// Iterates the deliveries.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let buffer: DeliveryBuffer

        public mutating func next() async throws -> AMQPDelivery? {
            try await buffer.next()
        }
    }
}

/// The hand-over between a connection thread (producer) and one iterating task (consumer).
final class DeliveryBuffer: Sendable {
    private struct State {
        var items: Deque<AMQPDelivery> = []
        var waiter: CheckedContinuation<AMQPDelivery?, any Error>?
        var isFinished = false
        var failure: AMQPError?
    }

    private let state = Mutex(State())

    /// Called on the connection thread with the deliveries of one read burst, in order.
    func push(contentsOf deliveries: [AMQPDelivery]) {
        guard let first = deliveries.first else { return }
        let waiter = state.withLock { state -> CheckedContinuation<AMQPDelivery?, any Error>? in
            guard !state.isFinished else { return nil }
            if let waiter = state.waiter {
                state.waiter = nil
                state.items.append(contentsOf: deliveries.dropFirst())
                return waiter
            }
            state.items.append(contentsOf: deliveries)
            return nil
        }
        waiter?.resume(returning: first)
    }

    /// Takes up to `maxCount` deliveries that are already buffered, without waiting.
    func takeBuffered(maxCount: Int) -> [AMQPDelivery] {
        state.withLock { state in
            let count = min(maxCount, state.items.count)
            defer { state.items.removeFirst(count) }
            return Array(state.items.prefix(count))
        }
    }

    /// Drops buffered deliveries of connections before `generation`: their tags mean nothing any more.
    func dropDeliveries(before generation: UInt64) {
        state.withLock { state in state.items.removeAll { $0.generation < generation } }
    }

    /// Ends the sequence after the buffered deliveries; with an error, iteration throws it.
    func finish(throwing error: AMQPError? = nil) {
        let waiter = state.withLock { state -> CheckedContinuation<AMQPDelivery?, any Error>? in
            guard !state.isFinished else { return nil }
            state.isFinished = true
            state.failure = error
            defer { state.waiter = nil }
            return state.waiter
        }
        if let error { waiter?.resume(throwing: error) } else { waiter?.resume(returning: nil) }
    }

    func next() async throws -> AMQPDelivery? {
        enum Immediate {
            case delivery(AMQPDelivery)
            case end
            case failure(AMQPError)
        }
        let immediate = state.withLock { state -> Immediate? in
            if let first = state.items.popFirst() { return .delivery(first) }
            guard state.isFinished else { return nil }
            if let failure = state.failure {
                state.failure = nil
                return .failure(failure)
            }
            return .end
        }
        switch immediate {
        case .delivery(let delivery): return delivery
        case .end: return nil
        case .failure(let error): throw error
        case nil: break
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let resumeNow = state.withLock { state -> Result<AMQPDelivery?, any Error>? in
                    if let first = state.items.popFirst() { return .success(first) }
                    if state.isFinished {
                        defer { state.failure = nil }
                        return state.failure.map { .failure($0) } ?? .success(nil)
                    }
                    if Task.isCancelled { return .success(nil) }
                    precondition(state.waiter == nil, "an AMQPConsumer is iterated by one task at a time")
                    state.waiter = continuation
                    return nil
                }
                if let resumeNow { continuation.resume(with: resumeNow) }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: nil)
        }
    }
}
