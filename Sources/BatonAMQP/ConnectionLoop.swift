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
    static let publishChannel: UInt16 = 1
    static let topologyChannel: UInt16 = 2

    let configuration: AMQPConnection.Configuration
    let logger: Logger
    let mailbox: Mailbox
    let status: ConnectionStatus
    let arena = ScratchArena()

    var connection: amqp_connection_state_t?
    var lifecycle: ConnectionLifecycle
    var confirms = ConfirmTracker<PendingConfirm>()
    /// Mandatory publishes awaiting their confirm, by message id: a `basic.return` names them only so.
    var mandatoryTags: [String: UInt64] = [:]
    /// Mandatory publishes the broker returned (no queue took them); their coming ack reports the failure.
    var returnedTags: [UInt64: AMQPError] = [:]
    var topologies: [AMQPTopology] = []
    var consumers: [UInt16: ConsumerRegistration] = [:]
    /// Per consumer channel, what has been settled on the current connection.
    var ackCoalescers: [UInt16: AckCoalescer] = [:]
    /// Deliveries read in the current burst, handed to their consumers together at its end.
    var arrivedDeliveries: [UInt16: [AMQPDelivery]] = [:]
    var random = SystemRandomNumberGenerator()
    /// The node (an index into the configuration's endpoints) the next connection attempt starts with.
    var nextEndpoint = 0
    /// The node of the current (or last) connection.
    var connectedEndpoint = 0
    /// The broker nacked a publish: the publish channel is replaced once nothing is in flight on it.
    var publishChannelIsStale = false
    /// Whoever asked to close, resumed once the connection is closed.
    var closeWaiter: CheckedContinuation<Void, Never>?

    init(configuration: AMQPConnection.Configuration, logger: Logger, mailbox: Mailbox, status: ConnectionStatus) {
        self.configuration = configuration
        self.logger = logger
        self.mailbox = mailbox
        self.status = status
        self.lifecycle = ConnectionLifecycle(
            backoff: configuration.reconnectBackoff,
            heartbeat: configuration.heartbeat,
            closeTimeout: configuration.closeTimeout
        )
    }

    deinit {
        assert(connection == nil, "ConnectionLoop ended with an open connection")
    }

    // MARK: Thread body

    /// The connection's generation: counts successful connections.
    var generation: UInt64 { lifecycle.generation }

    /// Runs until the connection is closed, doing what ``ConnectionLifecycle`` asks. Reports the first
    /// connection attempt through `firstConnect`; if that fails, the thread ends at once.
    func run(firstConnect: CheckedContinuation<Void, any Error>) {
        var firstConnect = Optional(firstConnect)
        while true {
            switch lifecycle.nextAction(now: .now, outstandingConfirms: confirms.outstanding) {
            case .connect:
                do {
                    try establish()
                    if lifecycle.didConnect(now: .now) { restore() }
                    firstConnect?.resume()
                    firstConnect = nil
                } catch {
                    switch lifecycle.didFailToConnect(now: .now, using: &random) {
                    case .giveUp:
                        firstConnect?.resume(throwing: error)
                        firstConnect = nil
                    case .retry(let delay):
                        logger.warning(
                            "AMQP reconnect failed",
                            metadata: [
                                "baton.amqp.connection": "\(configuration.connectionName)", "error": "\(error)",
                                "baton.amqp.retry_in": "\(delay)",
                            ]
                        )
                    }
                }
            case .serve:
                serviceConnection()
            case .wait(let until):
                waitDisconnected(until: until)
            case .finish:
                finish()
                return
            }
        }
    }

    /// One turn: run queued commands, read what arrived, then sleep in `poll(2)` until the socket or the
    /// mailbox wakes us or a heartbeat is due.
    func serviceConnection() {
        if publishChannelIsStale, confirms.outstanding == 0, let connection { replacePublishChannel(connection) }
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
        _ = poll(&descriptors, 2, lifecycle.idleSleep.pollMilliseconds)
        mailbox.didWake()
        checkHeartbeat()
    }

    /// Reads every frame that is ready (at most a bounded batch, so commands are not starved).
    func readFrames(_ connection: amqp_connection_state_t) {
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
            lifecycle.frameReceived(now: .now)
            handle(frame, connection)
            guard self.connection != nil else { return }
        }
    }

    /// librabbitmq only notices a silent broker while it waits for a frame; this covers the idle case.
    func checkHeartbeat() {
        if lifecycle.isHeartbeatOverdue(now: .now) {
            // Any frame (heartbeats included) moves librabbitmq's own deadline; one more read decides.
            var frame = amqp_frame_t()
            var nearlyNow = timeval(tv_sec: 0, tv_usec: 1)
            let result = amqp_simple_wait_frame_noblock(connection, &frame, &nearlyNow)
            if result == AMQP_STATUS_OK.rawValue {
                lifecycle.frameReceived(now: .now)
                handle(frame, connection!)
                handOverDeliveries()
            } else if result != AMQP_STATUS_TIMEOUT.rawValue {
                connectionLost(AMQPError(status: result, context: "read from the broker"))
            }
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
