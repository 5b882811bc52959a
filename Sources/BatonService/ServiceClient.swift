import Baton
import BatonAMQP
import BatonAMQPTransport
import BatonNode
import Foundation

/// What an operator command uses to reach a running service: it sends commands through the broker, after
/// checking that the service consumes its queue, so a command to a stopped service fails at once instead of
/// waiting forever.
public enum ServiceClient {
    /// Sends a command to the service that handles it.
    /// - Parameters:
    ///   - command: The command.
    ///   - service: The service that must be running to handle it.
    ///   - options: Broker settings.
    ///   - directly: Address it to the service by name on `baton.nodes` instead of routing it by its name on
    ///     `baton.commands` (administration commands).
    /// - Returns: The command's message id.
    /// - Throws: ``CommandFailure`` naming what is wrong (broker unreachable, service not running, refused).
    @discardableResult
    public static func send<C: Command>(
        _ command: C,
        to service: String,
        options: ServiceOptions,
        directly: Bool = false,
        messageID: String = UUID().uuidString.lowercased()
    ) async throws -> String {
        try await withRunningService(service, options: options) { connection, _ in
            let envelope = Envelope(
                messageID: messageID,
                messageType: C.messageType,
                timestamp: Date(),
                payload: MessageRegistry.encode(command)
            )
            let message = OutgoingMessage(
                exchange: directly ? Routing.nodeExchange : Routing.commandExchange,
                routingKey: directly ? service : C.messageName,
                envelope: envelope
            )
            switch await AMQPTransport(connection: connection).publish([message])[0] {
            case .confirmed: break
            case .refused(let reason), .failed(let reason), .unknown(let reason):
                throw CommandFailure("the broker refused the command: \(reason)")
            }
            return messageID
        }
    }

    /// How many consumers the service's queues have, checked through the broker (for `health`).
    /// - Throws: ``CommandFailure`` if the broker cannot be reached or nothing consumes the queue.
    @discardableResult
    public static func checkRunning(_ service: String, options: ServiceOptions) async throws -> Int {
        try await withRunningService(service, options: options) { _, consumers in consumers }
    }

    /// Connects, checks that the service consumes its queue, runs `body`, and closes the connection.
    private static func withRunningService<Result: Sendable>(
        _ service: String,
        options: ServiceOptions,
        _ body: (AMQPConnection, _ consumers: Int) async throws -> Result
    ) async throws -> Result {
        let connection = try await options.connect(name: "\(service)-cli")
        do {
            let queues = try options.inputQueues(of: service)
            var consumers = 0
            for queue in queues {
                do {
                    consumers += try await connection.inspectQueue(queue).consumers
                } catch let error as AMQPError where error.code == .notFound {
                    continue
                }
            }
            guard consumers > 0 else {
                let named = queues.count == 1 ? "its queue '\(service)'" : "its \(queues.count) partitions' queues"
                throw CommandFailure(
                    "the \(service) service is not running (nothing consumes \(named)): start `\(service) serve`"
                )
            }
            let result = try await body(connection, consumers)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw error
        }
    }
}
