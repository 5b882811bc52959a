import Glibc
import Synchronization

/// Work handed from Swift tasks to a connection's thread.
enum Command: Sendable {
    case publish([AMQPOutgoingMessage], ConfirmSink)
    case topology(TopologyOperation, CheckedContinuation<QueueCounts, any Error>)
    case consume(ConsumerRegistration, CheckedContinuation<Void, any Error>)
    case cancelConsumer(channel: UInt16, CheckedContinuation<Void, Never>)
    case settle(Settlement)
    case close(CheckedContinuation<Void, Never>)

    /// Completes the command with `error` without running it (the connection is gone or not ready).
    func fail(with error: AMQPError) {
        switch self {
        case .publish(let messages, let sink):
            for index in messages.indices { sink.complete(index: index, with: .failure(error)) }
        case .topology(_, let continuation): continuation.resume(throwing: error)
        case .consume(let registration, let continuation):
            registration.buffer.finish(throwing: error)
            continuation.resume(throwing: error)
        case .cancelConsumer(_, let continuation): continuation.resume()
        case .settle: break  // the broker requeues unsettled deliveries of a lost connection
        case .close(let continuation): continuation.resume()
        }
    }
}

/// What a queue operation reports: the messages it concerned and the queue's consumers.
struct QueueCounts: Sendable {
    var messages: UInt32
    var consumers: UInt32
}

/// Broker round trips on the topology channel.
enum TopologyOperation: Sendable {
    case declare(AMQPTopology)
    case verify(AMQPTopology)
    case purgeQueue(String)
    case deleteQueue(String)
    case inspectQueue(String)
    case unbind(AMQPTopology)
    case deleteExchange(String)
}

/// How a consumer asked to be set up; kept so it can be set up again after a reconnect.
struct ConsumerRegistration: Sendable {
    var queue: String
    var prefetch: UInt16
    var channel: UInt16
    var buffer: DeliveryBuffer
}

/// An ack, nack or reject of one delivery, valid only on the connection that received it.
struct Settlement: Sendable {
    enum Kind: Sendable, Hashable {
        case ack
        case nack(requeue: Bool)
        case reject(requeue: Bool)
    }

    var kind: Kind
    var channel: UInt16
    var deliveryTag: UInt64
    var generation: UInt64
}

/// The queue of commands for one connection thread, with a self-pipe that wakes the thread from `poll(2)`
/// only when it is actually asleep.
final class Mailbox: Sendable {
    private struct State {
        var commands: [Command] = []
        var isSleeping = false
        var isClosed = false
    }

    private let state = Mutex(State())
    /// Readable while commands wait for a sleeping thread (the read end of the pipe).
    let wakeDescriptor: Int32
    private let wakeWriteDescriptor: Int32

    init() throws {
        var descriptors: [Int32] = [-1, -1]
        guard pipe(&descriptors) == 0 else {
            throw AMQPError(code: .protocolError, message: "pipe failed: \(String(cString: strerror(errno)))")
        }
        for descriptor in descriptors {
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        }
        wakeDescriptor = descriptors[0]
        wakeWriteDescriptor = descriptors[1]
    }

    deinit {
        close(wakeDescriptor)
        close(wakeWriteDescriptor)
    }

    /// Queues a command; if the thread has exited, fails it with ``AMQPError/Code-swift.struct/closed``.
    func send(_ command: Command) {
        let (accepted, mustWake) = state.withLock { state -> (Bool, Bool) in
            guard !state.isClosed else { return (false, false) }
            state.commands.append(command)
            let mustWake = state.isSleeping
            state.isSleeping = false
            return (true, mustWake)
        }
        guard accepted else {
            command.fail(with: AMQPError(code: .closed, message: "the connection is closed"))
            return
        }
        if mustWake {
            var byte: UInt8 = 1
            _ = write(wakeWriteDescriptor, &byte, 1)
        }
    }

    /// Takes every queued command, oldest first.
    func takeAll() -> [Command] {
        state.withLock { state in
            defer { state.commands.removeAll(keepingCapacity: true) }
            return state.commands
        }
    }

    /// Whether commands are waiting.
    var hasWork: Bool { state.withLock { !$0.commands.isEmpty } }

    /// Marks the thread asleep if nothing is queued; returns `false` if it must not sleep.
    func prepareToSleep() -> Bool {
        state.withLock { state in
            guard state.commands.isEmpty else { return false }
            state.isSleeping = true
            return true
        }
    }

    /// Called after waking: clears the flag and empties the pipe.
    func didWake() {
        state.withLock { $0.isSleeping = false }
        var scratch = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        while withUnsafeMutableBytes(of: &scratch, { read(wakeDescriptor, $0.baseAddress, $0.count) }) > 0 {}
    }

    /// Refuses further commands and returns the ones still queued.
    func closeAndDrain() -> [Command] {
        state.withLock { state in
            state.isClosed = true
            defer { state.commands.removeAll() }
            return state.commands
        }
    }
}

/// Collects the confirms of one publish call (one or many messages) and resumes its caller once all are in.
final class ConfirmSink: Sendable {
    private struct State {
        var results: [Result<Void, AMQPError>?]
        var remaining: Int
        var continuation: CheckedContinuation<[Result<Void, AMQPError>], Never>?
    }

    private let state: Mutex<State>

    init(count: Int, continuation: CheckedContinuation<[Result<Void, AMQPError>], Never>) {
        precondition(count > 0, "a publish needs at least one message")
        state = Mutex(State(results: Array(repeating: nil, count: count), remaining: count, continuation: continuation))
    }

    /// Records the outcome of message `index`; the last one resumes the caller.
    func complete(index: Int, with result: Result<Void, AMQPError>) {
        let finished = state.withLock {
            state -> (CheckedContinuation<[Result<Void, AMQPError>], Never>, [Result<Void, AMQPError>])? in
            guard state.results[index] == nil else { return nil }
            state.results[index] = result
            state.remaining -= 1
            guard state.remaining == 0, let continuation = state.continuation else { return nil }
            state.continuation = nil
            return (continuation, state.results.map { $0! })
        }
        if let (continuation, results) = finished {
            continuation.resume(returning: results)
        }
    }
}

/// A publish waiting for its confirm: which call, which of its messages, and its delivery tag.
struct PendingConfirm {
    var sink: ConfirmSink
    var index: Int
    var deliveryTag: UInt64
}
