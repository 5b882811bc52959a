import ArgumentParser
import BatonAMQP
import BatonService
import BookstoreContracts
import BookstoreOperations
import ChildProcesses
import Foundation
import Logging
import Synchronization

/// The chaos run: workflows flow through the four services while a seeded schedule kill -9's them, restarts
/// the broker and cuts one service off the network; afterwards every invariant is checked. Started by
/// `Deploy/local/chaos.sh`, which provides the broker node and the network namespace.
@main
struct BookstoreChaos: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bookstore-chaos",
        abstract:
            "Run workflows through the bookstore while killing services, restarting and killing the broker and partitioning."
    )

    @OptionGroup var options: ServiceOptions
    @Option(help: "Workflows (checkouts) to run.") var workflows = 300
    @Option(help: "Seed of the random schedule (default: random; printed).") var seed: UInt64?
    @Option(help: "Checkouts per second.") var rate: Double = 25
    @Option(help: "Mean seconds between two kill -9s.") var killInterval: Double = 3
    @Option(help: "Seconds the partitioned service is cut off.") var partitionSeconds: Double = 20
    @Option(help: "Seconds its link drops packets at random (both ways), before the partition; 0: none.")
    var lossSeconds: Double = 10
    @Option(help: "Share of packets the lossy link drops each way.") var loss: Double = 0.05
    @Option(help: "Seconds the broker's packets to it are dropped while its own still arrive, after the partition.")
    var oneWaySeconds: Double = 15
    @Option(help: "Network namespace the partitioned service runs in (empty: no partition).") var namespace = ""
    @Option(help: "Broker URL(s) as seen from inside the namespace.") var namespaceURL = ""
    @Option(help: "Database URL as seen from inside the namespace (for replicas on a shared database).")
    var namespaceDatabaseURL = ""
    @Option(help: "The root-side link of the namespace, taken down to partition.") var link = ""
    @Option(
        help: "Script that stops, kills and starts the broker (`SCRIPT stop|kill|start`); empty: no broker disruption."
    )
    var brokerScript = ""
    @Option(
        help:
            "Times the broker is killed with SIGKILL (its durable state kept) and started again, each time twice in a row: the second kill falls while the services reconnect from the first."
    )
    var brokerKills = 1
    @Option(help: "Directory of the service executables.") var binaries: String
    @Option(help: "Seconds fulfillment gives a step before compensating.") var stepTimeout: Double = 10
    @Option(help: "Seconds to wait for every order to settle after the schedule.") var settleTimeout: Double = 300
    @Option(
        help:
            "Processes of each service (the scale-out run: replicas share a PostgreSQL database, BATON_DATABASE_URL); the kill -9s and the partition pick among all of them."
    )
    var replicas = 1

    static let services = MeshQuiet.services
    static let injected = 5

    func validate() throws {
        guard workflows >= 10 else { throw ValidationError("--workflows must be at least 10") }
        guard (0...0.5).contains(loss), lossSeconds >= 0, oneWaySeconds >= 0 else {
            throw ValidationError("--loss must be 0 to 0.5, --loss-seconds and --one-way-seconds not negative")
        }
        guard rate > 0, killInterval > 0, partitionSeconds >= 0, (0...10).contains(brokerKills) else {
            throw ValidationError(
                "--rate and --kill-interval must be positive, --partition-seconds not negative, --broker-kills 0 to 10"
            )
        }
        guard (1...4).contains(replicas), try replicas == 1 || options.databaseURL != nil else {
            throw ValidationError("--replicas must be 1 to 4, and replicas need a shared database (--database-url)")
        }
        guard namespace.isEmpty == namespaceURL.isEmpty, namespace.isEmpty == link.isEmpty else {
            throw ValidationError("--namespace, --namespace-url and --link go together")
        }
    }

    func run() async throws {
        let seed = self.seed ?? UInt64.random(in: 1...UInt64(UInt32.max))
        var random = SeededGenerator(seed: seed)
        say("chaos run: \(workflows) workflows, seed \(seed)")
        let processes = Self.services.flatMap { service in
            (1...replicas).map { $0 == 1 ? service : "\(service)-\($0)" }
        }
        let victim = namespace.isEmpty ? nil : processes.randomElement(using: &random)!
        let logs = URL(fileURLWithPath: options.dataDirectory).appendingPathComponent("logs")
        try FileManager.default.createDirectory(at: logs, withIntermediateDirectories: true)
        let supervisor = ServiceSupervisor(
            binaries: URL(fileURLWithPath: binaries),
            logs: logs,
            services: processes.map { name in
                let service = String(name.prefix { $0 != "-" })
                let arguments = service == "fulfillment" ? ["serve", "--step-timeout", String(stepTimeout)] : ["serve"]
                guard name == victim else { return .init(name: name, executable: service, arguments: arguments) }
                return .init(
                    name: name,
                    executable: service,
                    arguments: arguments,
                    launcher: ["/usr/sbin/ip", "netns", "exec", namespace],
                    environment: ["BATON_AMQP_URL": namespaceURL].merging(
                        namespaceDatabaseURL.isEmpty ? [:] : ["BATON_DATABASE_URL": namespaceDatabaseURL]
                    ) { $1 }
                )
            }
        )
        for process in processes { try await supervisor.start(process) }

        var logger = Logger(label: "chaos")
        logger.logLevel = .critical
        let connection = try await AMQPConnection.connect(
            configuration: options.connectionConfiguration(name: "chaos-driver"),
            logger: logger
        )
        // Load only once every service consumes: a checkout published before orders bound its queues (or its
        // partitions' exchange) to the storefront's exchange would be routed nowhere.
        for service in Self.services {
            try await retrying { try await ServiceClient.checkRunning(service, options: options) }
        }
        let audit = try await WireAudit.start(on: connection)
        let catalogue = [("book-0001", 100_000), ("book-0002", 100_000), ("book-0003", 100_000), ("book-0004", 20)]
        for (sku, quantity) in catalogue {
            try await retrying {
                try await ServiceClient.send(
                    AddStock(sku: sku, quantity: quantity, title: sku),
                    to: "inventory",
                    options: options
                )
            }
        }
        let schedule = Schedule.make(
            duration: max(Double(workflows) / rate, 30),
            killInterval: killInterval,
            processes: processes.count,
            link: victim == nil
                ? nil
                : LinkPlan(
                    loss: loss,
                    lossSeconds: lossSeconds,
                    partitionSeconds: partitionSeconds,
                    oneWaySeconds: oneWaySeconds
                ),
            brokerRestart: !brokerScript.isEmpty,
            brokerKills: brokerScript.isEmpty ? 0 : brokerKills,
            using: &random
        )
        let started = ContinuousClock.now
        let log = EventLog()
        let load = Load(workflows: workflows, rate: rate, injected: Self.injected)
        let disruptions = Disruptions(brokerScript: brokerScript, link: link, victim: victim, processes: processes)
        async let pushed: Void = load.push(over: connection)
        async let disrupted: Void = disruptions.run(schedule, supervisor: supervisor, log: log)
        let supervising = Task {
            while !Task.isCancelled {
                for name in (try? await supervisor.restartDead()) ?? [] { log.record("restarted \(name)") }
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
        do {
            try await pushed
            try await disrupted
        } catch {
            supervising.cancel()
            await connection.close()
            throw error
        }
        say("schedule done after \(Int((ContinuousClock.now - started).seconds)) s; waiting for the orders to settle")

        let deadline = ContinuousClock.now + .seconds(settleTimeout)
        var snapshot = try await MeshSnapshot.read(options)
        while !(snapshot.orders.count >= workflows && snapshot.isSettled), ContinuousClock.now < deadline {
            try await Task.sleep(for: .seconds(1))
            snapshot = try await MeshSnapshot.read(options)
        }
        let settled = ContinuousClock.now - started
        // Settled orders do not mean a quiet mesh: a compensation for a partitioned service (a release of
        // stock) waits in its queue until it reconnects. Wait until every queue and outbox is empty, twice in a
        // row a second apart (a message being handled is in neither), then for late compensations on the wire.
        try await MeshQuiet.wait(connection, options, until: deadline)
        try await Task.sleep(for: .seconds(2))  // late compensations still on the wire
        supervising.cancel()
        await supervising.value  // no restart may slip in after the stop
        let terminations = await supervisor.stopAll()
        snapshot = try await MeshSnapshot.read(options)
        let conflicts = await audit.stop()
        await connection.close()

        var checks: [(String, [String])] = []
        var notTerminal = snapshot.orders.filter { $0.status != "COMPLETED" && $0.status != "CANCELLED" }
            .map { "order \($0.orderID) is \($0.status)" }
        if snapshot.orders.count != workflows {
            notTerminal.append("\(snapshot.orders.count) orders for \(workflows) checkouts")
        }
        checks.append(("every order terminal, one per checkout", notTerminal))
        checks.append(
            (
                "stock conserved, no live shipment for a cancelled order",
                snapshot.problems(stocked: Dictionary(uniqueKeysWithValues: catalogue))
            )
        )
        checks.append(("no message id on the wire with two contents", conflicts))
        let expectedDeadLetters = Set((0..<Self.injected).map { "chaos-injected-\($0)" })
        let deadLetters = snapshot.deadLetters.flatMap { service, letters in letters.map { (service, $0) } }
        checks.append(
            (
                "dead letters: exactly the \(Self.injected) injected ones",
                deadLetters.filter { !expectedDeadLetters.contains($0.1.messageID) }
                    .map { "\($0.0): \($0.1.messageID) \($0.1.messageType): \($0.1.reason)" }
                    + expectedDeadLetters.subtracting(deadLetters.map(\.1.messageID)).map {
                        "\($0) was not dead-lettered"
                    }
            )
        )
        checks.append(
            (
                "each process timeline consistent",
                try await TimelineAudit.problems(options, orders: snapshot.orders)
            )
        )
        if try options.partitions > 1 {
            checks.append(
                (
                    "per-instance order: each emitter's events handled in its commit order",
                    try await TimelineAudit.orderProblems(options)
                )
            )
        }
        checks.append(
            (
                "every service stops gracefully",
                terminations.filter { !$0.value.isSuccess }.map { "\($0.key) ended with \($0.value)" }
            )
        )

        let kills = log.count(prefix: "kill -9 ")
        say("")
        printTable(
            ["FIGURE", "VALUE"],
            [
                ["workflows", String(workflows)],
                ["replicas / partitions per service", "\(replicas) / \(try options.partitions)"],
                [
                    "completed / cancelled",
                    "\(snapshot.ordersByStatus["COMPLETED", default: 0]) / \(snapshot.ordersByStatus["CANCELLED", default: 0])",
                ],
                [
                    "cancelled because",
                    Dictionary(grouping: snapshot.orders.compactMap(\.cancelReason)) { $0 }
                        .map { "\($0.key): \($0.value.count)" }.sorted().joined(separator: "; "),
                ],
                [
                    "kill -9",
                    Self.services.map { "\($0) \(log.count(prefix: "kill -9 \($0)"))" }.joined(separator: ", ")
                        + " (\(kills))",
                ],
                ["restarts by the supervisor", String(log.count(prefix: "restarted "))],
                ["broker restarts", String(log.count(prefix: "broker restarted"))],
                ["broker kill -9s", String(log.count(prefix: "broker killed"))],
                ["partition", victim.map { "\($0), \(Int(partitionSeconds)) s" } ?? "none"],
                [
                    "lossy link",
                    victim.map { "\($0), \(Int(loss * 100))% dropped each way, \(Int(lossSeconds)) s" } ?? "none",
                ],
                [
                    "one-way cut",
                    victim.map { "\($0) hears nothing from the broker, \(Int(oneWaySeconds)) s" } ?? "none",
                ],
                ["messages audited on the wire", String(await audit.count)],
                ["settled after", "\(Int(settled.seconds)) s"],
                ["seed", String(seed)],
            ]
        )
        say("")
        printTable(["INVARIANT", "RESULT"], checks.map { [$0.0, $0.1.isEmpty ? "holds" : "BROKEN (\($0.1.count))"] })
        fflush(nil)  // the tables went through print's buffer; what follows does not
        let broken = checks.filter { !$0.1.isEmpty }
        guard broken.isEmpty else {
            for (name, problems) in broken {
                say("\nBROKEN: \(name)")
                for problem in problems.prefix(20) { say("  \(problem)") }
            }
            say("\nchaos run FAILED with seed \(seed) (rerun: --seed \(seed))")
            throw ExitCode.failure
        }
        say("\nchaos run passed (seed \(seed))")
    }

}

/// The storefront's load.
struct Load: Sendable {
    var workflows: Int
    var rate: Double
    var injected: Int

    /// The storefront: checkouts at `rate`, each published until the broker confirms it (across the broker
    /// restart), plus the injected malformed messages.
    func push(over connection: AMQPConnection) async throws {
        let started = ContinuousClock.now
        for index in 0..<workflows {
            try await Task.sleep(until: started + .seconds(Double(index) / rate))
            let lines =
                index % 10 == 3
                ? [["sku": "book-0004", "quantity": 3]]
                : [["sku": "book-000\(index % 3 + 1)", "quantity": 1 + index % 2]]
            let body: [String: Any] = [
                "checkout_id": "chaos-\(index)", "customer": "Customer \(index)",
                "shipping_address": index % 10 == 7 ? "" : "\(index) Chaos Street", "lines": lines,
            ]
            try await publish(
                try JSONSerialization.data(withJSONObject: body),
                id: "chaos-checkout-\(index)",
                on: connection
            )
            if index % (workflows / injected) == 0, index / (workflows / injected) < injected {
                let injected = index / (workflows / injected)
                try await publish(
                    Data(#"{"checkout_id": \#(index), "customer": "x"}"#.utf8),
                    id: "chaos-injected-\(injected)",
                    on: connection
                )
            }
        }
    }

    private func publish(_ body: Data, id: String, on connection: AMQPConnection) async throws {
        let message = AMQPOutgoingMessage(
            exchange: CheckoutCompleted.exchange,
            routingKey: CheckoutCompleted.routingKey,
            body: Array(body),
            properties: AMQPProperties(contentType: "application/json", messageID: id)
        )
        try await retrying { try await connection.publish(message) }
    }

}

/// The disruptions and what they act on.
struct Disruptions: Sendable {
    var brokerScript: String
    var link: String
    var victim: String?
    /// The processes a kill -9 picks from (`orders`, `orders-2`, …).
    var processes: [String]

    /// Runs the schedule, each disruption at its time: kill -9s (the supervisor restarts the service), one
    /// broker restart, broker kill -9s, one partition, overlapping as they fall — but the broker's own
    /// disruptions one after the other (a stop or a start under load takes seconds: a kill falling into the
    /// restart waits for it).
    func run(_ schedule: [Schedule.Event], supervisor: ServiceSupervisor, log: EventLog) async throws {
        let started = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for event in schedule where event.action.isBrokers {
                    try await Task.sleep(until: started + .seconds(event.at))
                    try await disruptBroker(event.action, started: started, log: log)
                }
            }
            for event in schedule where !event.action.isBrokers {
                group.addTask {
                    try await Task.sleep(until: started + .seconds(event.at))
                    switch event.action {
                    case .kill(let index):
                        let name = processes[index]
                        await supervisor.kill(name)
                        log.record("kill -9 \(name)")
                    case .link(let plan, let partitionAt):
                        try await disruptLink(plan, partitionAt: partitionAt, started: started, log: log)
                    case .restartBroker, .killBroker:
                        break
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    private func disruptBroker(
        _ action: Schedule.Event.Action,
        started: ContinuousClock.Instant,
        log: EventLog
    )
        async throws
    {
        let now = { Int((ContinuousClock.now - started).seconds) }
        switch action {
        case .restartBroker:
            say("t=\(now()) s: restarting the broker")
            try await shell(brokerScript, "stop")
            try await Task.sleep(for: .seconds(2))
            try await shell(brokerScript, "start")
            log.record("broker restarted")
        case .killBroker:
            for round in 1...2 {
                say("t=\(now()) s: kill -9 of the broker (\(round) of 2)")
                try await shell(brokerScript, "kill")
                log.record("broker killed")
                try await Task.sleep(for: .seconds(1))
                try await startBroker()
                // The services reconnect with a backoff: the second kill falls in the middle of it.
                if round == 1 { try await Task.sleep(for: .milliseconds(1500)) }
            }
        case .kill, .link:
            break
        }
    }
}

/// What happens to the victim's link, in order: packets dropped at random both ways, then the link down (a
/// partition), then the broker's packets to it dropped while its own still arrive (a one-way cut: heartbeats
/// from one side only). A phase of 0 s is left out.
struct LinkPlan: Sendable {
    var loss: Double
    var lossSeconds: Double
    var partitionSeconds: Double
    var oneWaySeconds: Double
}

extension Disruptions {
    func disruptLink(
        _ plan: LinkPlan,
        partitionAt: Double,
        started: ContinuousClock.Instant,
        log: EventLog
    )
        async throws
    {
        let now = { Int((ContinuousClock.now - started).seconds) }
        let random = ["-m", "statistic", "--mode", "random", "--probability", String(plan.loss), "-j", "DROP"]
        if plan.lossSeconds > 0, plan.loss > 0 {
            say(
                "t=\(now()) s: \(victim!)'s link drops \(Int(plan.loss * 100))% of packets each way for \(Int(plan.lossSeconds)) s"
            )
            try await dropping(
                [["INPUT", "-i", link] + random, ["OUTPUT", "-o", link] + random],
                for: plan.lossSeconds
            )
            log.record("lossy link healed")
        }
        if plan.partitionSeconds > 0 {
            try await Task.sleep(until: started + .seconds(partitionAt))
            say("t=\(now()) s: cutting \(victim!) off the network for \(Int(plan.partitionSeconds)) s")
            try await shell("ip", "link", "set", link, "down")
            try await Task.sleep(for: .seconds(plan.partitionSeconds))
            try await shell("ip", "link", "set", link, "up")
            log.record("partition healed")
        }
        if plan.oneWaySeconds > 0 {
            try await Task.sleep(for: .seconds(2))
            say(
                "t=\(now()) s: the broker's packets to \(victim!) dropped for \(Int(plan.oneWaySeconds)) s (its own arrive)"
            )
            try await dropping([["OUTPUT", "-o", link, "-j", "DROP"]], for: plan.oneWaySeconds)
            log.record("one-way cut healed")
        }
    }

    /// Inserts iptables rules, waits, and deletes them again (chaos.sh sweeps any left behind).
    private func dropping(_ rules: [[String]], for seconds: Double) async throws {
        for rule in rules { try await shell("iptables", ["-I"] + rule) }
        try? await Task.sleep(for: .seconds(seconds))
        for rule in rules { try await shell("iptables", ["-D"] + rule) }
    }

    /// Starts the broker after a kill, as a supervisor would: a node that does not come up (its recovery after
    /// SIGKILL can fail) is killed and started again, three times at most.
    func startBroker() async throws {
        for attempt in 1...3 {
            do {
                return try await shell(brokerScript, "start")
            } catch  where attempt < 3 {
                say("the broker did not start (attempt \(attempt)); killing it and starting it again: \(error)")
                try await shell(brokerScript, "kill")
            }
        }
    }
}

/// Prints a line at once (standard output is buffered when it is a file, and the run is long).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// Retries an operation every 200 ms until it succeeds (the broker may be restarting).
@discardableResult
func retrying<T: Sendable>(_ operation: () async throws -> T) async throws -> T {
    let deadline = ContinuousClock.now + .seconds(120)
    while true {
        do {
            return try await operation()
        } catch  where ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(200))
        }
    }
}

/// Runs a command to its end and throws if it fails.
func shell(_ command: String, _ arguments: String...) async throws {
    try await shell(command, arguments)
}

/// Runs a command to its end and throws if it fails.
func shell(_ command: String, _ arguments: [String]) async throws {
    let (termination, output) = try await ChildProcess.run(command, arguments)
    guard termination.isSuccess else {
        throw CommandFailure("\(([command] + arguments).joined(separator: " ")) failed (\(termination)): \(output)")
    }
}

/// What the disruptions did, counted for the summary.
final class EventLog: Sendable {
    private let entries = Mutex<[String]>([])
    func record(_ entry: String) { entries.withLock { $0.append(entry) } }
    func count(prefix: String) -> Int { entries.withLock { $0.filter { $0.hasPrefix(prefix) }.count } }
}

/// The seeded plan of disruptions.
enum Schedule {
    struct Event: Sendable {
        enum Action: Sendable {
            case kill(Int)
            case restartBroker
            /// kill -9 of the broker, start, and again while the services reconnect.
            case killBroker
            /// The victim's link: lossy, then (at `partitionAt`) down, then one way only.
            case link(LinkPlan, partitionAt: Double)

            /// A disruption of the broker node itself.
            var isBrokers: Bool {
                switch self {
                case .restartBroker, .killBroker: true
                case .kill, .link: false
                }
            }
        }
        var at: Double
        var action: Action
    }

    static func make(
        duration: Double,
        killInterval: Double,
        processes: Int,
        link: LinkPlan?,
        brokerRestart: Bool,
        brokerKills: Int,
        using random: inout SeededGenerator
    ) -> [Event] {
        var events: [Event] = []
        var time = Double.random(in: 1...killInterval, using: &random)
        while time < duration {
            events.append(Event(at: time, action: .kill(Int.random(in: 0..<processes, using: &random))))
            time += Double.random(in: killInterval / 2...killInterval * 1.5, using: &random)
        }
        if brokerRestart {
            events.append(Event(at: duration * Double.random(in: 0.2...0.35, using: &random), action: .restartBroker))
        }
        // After the restart (0.2–0.35 of the run), one in each share of the rest.
        for kill in 0..<brokerKills {
            let share = 0.55 / Double(brokerKills)
            let start = 0.4 + share * Double(kill)
            events.append(
                Event(
                    at: duration * Double.random(in: start...(start + share * 0.3), using: &random),
                    action: .killBroker
                )
            )
        }
        if let link {
            let partitionAt = duration * Double.random(in: 0.5...0.6, using: &random)
            events.append(Event(at: duration * 0.1, action: .link(link, partitionAt: partitionAt)))
        }
        return events.sorted { $0.at < $1.at }
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

/// Everything published on `baton.commands` and `baton.events`, by message id: a re-send must carry the same
/// type and body as the first send; two contents under one id would mean a handler issued different
/// messages under a derived id (a broken replay).
actor WireAudit {
    static let queue = "chaos.audit"
    private let consumer: AMQPConsumer
    private var seen: [String: (type: String, body: [UInt8])] = [:]
    private var conflicts: [String] = []
    private(set) var count = 0
    private var reader: Task<Void, Never>?

    private init(consumer: AMQPConsumer) {
        self.consumer = consumer
    }

    static func start(on connection: AMQPConnection) async throws -> WireAudit {
        try await connection.declare(
            AMQPTopology(
                exchanges: [.init("baton.commands", kind: .topic), .init("baton.events", kind: .topic)],
                queues: [.init(queue)],
                bindings: [
                    .init(queue: queue, exchange: "baton.commands", bindingKey: "#"),
                    .init(queue: queue, exchange: "baton.events", bindingKey: "#"),
                ]
            )
        )
        let audit = WireAudit(consumer: try await connection.consume(queue: queue, prefetch: 1000))
        await audit.read()
        return audit
    }

    private func read() {
        reader = Task {
            do {
                for try await delivery in consumer {
                    note(delivery)
                    delivery.ack()
                }
            } catch {}
        }
    }

    private func note(_ delivery: AMQPDelivery) {
        count += 1
        let id = delivery.properties.messageID ?? "(none)"
        let content = (type: delivery.properties.type ?? "", body: delivery.body)
        if let first = seen[id] {
            if first.type != content.type || first.body != content.body {
                conflicts.append("\(id): \(first.type) sent with two different bodies")
            }
        } else {
            seen[id] = content
        }
    }

    /// Stops reading; returns the conflicts found.
    func stop() async -> [String] {
        await consumer.cancel()
        reader?.cancel()
        return conflicts
    }
}
