import BatonAMQP
import BatonService
import Foundation

/// Whether the four services have nothing left to do: for runs that check the stores once the mesh is idle.
public enum MeshQuiet {
    /// The bookstore's services, by their queues' names.
    public static let services = ["orders", "inventory", "shipping", "fulfillment"]

    /// No message waits in a service's queue (or its partitions') and no outbox row waits for a relay.
    public static func isQuiet(_ connection: AMQPConnection, _ options: ServiceOptions) async throws -> Bool {
        for service in services {
            for queue in try options.inputQueues(of: service) {
                guard try await connection.inspectQueue(queue).messages == 0 else { return false }
            }
            let pending = try? await options.read(from: service) { try $0.pendingOutboxCount() }
            guard (pending ?? 0) == 0 else { return false }
        }
        return true
    }

    /// Waits until the mesh is quiet twice in a row a second apart (a message being handled is in neither a
    /// queue nor an outbox), or until `deadline`.
    public static func wait(
        _ connection: AMQPConnection,
        _ options: ServiceOptions,
        until deadline: ContinuousClock.Instant
    ) async throws {
        var quietRounds = 0
        while quietRounds < 2, ContinuousClock.now < deadline {
            quietRounds = try await isQuiet(connection, options) ? quietRounds + 1 : 0
            try await Task.sleep(for: .seconds(1))
        }
    }
}
