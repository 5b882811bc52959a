import ArgumentParser
import BatonAMQP
import BatonAMQPTransport
import BatonNode
import Foundation
import Logging

/// `repartition --to N`: changes a running service's partition count (drain, then rebind; see
/// ``Repartitioning``), with an operator's broker credential (`--amqp-url`) and the service's store.
public struct RepartitionCommand<Service: ServiceDefinition>: AsyncParsableCommand {
    public static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "repartition",
            abstract:
                "Change the \(Service.name) service's partition count while it runs (an operator's broker credential).",
            discussion: """
                Feeds the new count's queues instead of the old ones, sends a marker through each old queue and \
                waits until the running replicas have handled everything before it; then the store records the \
                new count, replicas started with it consume their queues, and the old queues are removed once \
                nothing consumes them. Restart the replicas still running with the old count with the new one. \
                Running it again resumes an unfinished change.
                """
        )
    }

    @OptionGroup var options: ServiceOptions

    @Option(help: "The new partition count, 1 to 64.") var to: Int

    @Option(help: "How many seconds to wait for the old queues to drain.") var wait = 600

    public init() {}

    public func validate() throws {
        guard Node.partitionCounts.contains(to) else {
            throw ValidationError("--to must be \(Node.partitionCountsText), not '\(to)'")
        }
        guard wait >= 0 else { throw ValidationError("--wait must be a number of seconds, not '\(wait)'") }
    }

    public func run() async throws {
        let service = Service.name
        var logger = Logger(label: "\(service)-repartition")
        logger.logLevel = .critical
        if try options.databaseURL == nil, !FileManager.default.fileExists(atPath: options.storePath(for: service)) {
            throw CommandFailure(
                "no \(service) data in \(options.dataDirectory): start `\(service) serve` with this --data-dir (or BATON_DATA_DIR) first"
            )
        }
        let opened = try await options.openStore(for: service, logger: logger)
        do {
            try await repartition(store: opened.store)
            await opened.close()
        } catch {
            await opened.close()
            throw error
        }
    }

    private func repartition(store: any Store) async throws {
        let service = Service.name
        let connection = try await options.connect(name: "\(service)-repartition")
        let repartitioning = Repartitioning(
            configuration: Node.Configuration(name: service),
            handlers: Service.handlers,
            store: store,
            connection: connection,
            progress: { print($0) }
        )
        let outcome: Repartitioning.Outcome
        do {
            outcome = try await repartitioning.run(to: to, waitingAtMost: .seconds(wait))
            await connection.close()
        } catch {
            await connection.close()
            switch error {
            case let error as RepartitionError: throw CommandFailure(error.message)
            case let error as AMQPError:
                throw CommandFailure("the broker refused a step (it needs an operator's credential): \(error.message)")
            default: throw error
            }
        }
        if case .switched(let kept) = outcome, !kept.isEmpty {
            print("\(service) runs with \(to) partition(s); \(kept.count) old queue(s) remain until run again")
        }
    }
}
