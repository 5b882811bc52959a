import Baton
import BatonNode
import BatonSQLite
import BatonTesting
import Foundation
import Logging
import Metrics

/// The embedded mode: a 4-step process manager and a worker, two nodes in one process — the framework's own
/// cost, without a broker. Either each node has its SQLite file on disk and they talk over the in-process
/// transport (each message through the sender's outbox, its relay and the receiver's inbox), or both share one
/// file and a message between them is a row of it (`SQLiteTransport`), written by the sender's transaction and
/// taken by the receiver's.
struct EmbeddedBenchmark {
    var workflows: Int
    var directory: URL
    /// Where both nodes' metrics go, sampling the stores as a served node does: `nil` records none.
    var metrics: (any MetricsFactory)? = nil
    /// Both nodes on one file, messages between them its rows.
    var sharedStore = false

    func run() async throws -> EmbeddedResult {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var logger = Logger(label: "baton-benchmark")
        logger.logLevel = .warning
        let transport: any Transport
        let (coordinatorStore, workerStore): (SQLiteStore, SQLiteStore)
        let completed: @Sendable () async throws -> Int
        if sharedStore {
            let file = try SQLiteStore(path: directory.appendingPathComponent("shared.sqlite").path)
            let queues = try SQLiteTransport(store: file)
            (transport, completed) = (queues, { try await queues.messageCount("completed") })
            (coordinatorStore, workerStore) = (file.shared(by: "bench-coordinator"), file.shared(by: "bench-worker"))
        } else {
            let queues = InProcessTransport()
            (transport, completed) = (queues, { queues.readyCount("completed") })
            coordinatorStore = try SQLiteStore(path: directory.appendingPathComponent("coordinator.sqlite").path)
            workerStore = try SQLiteStore(path: directory.appendingPathComponent("worker.sqlite").path)
        }
        let coordinator = try Self.coordinator(
            transport: transport,
            store: coordinatorStore,
            metrics: metrics,
            logger: logger
        )
        let worker = Self.worker(transport: transport, store: workerStore, metrics: metrics, logger: logger)
        try await transport.declare(coordinator.topology)
        try await transport.declare(worker.topology)
        try await transport.declare(Self.sink("completed", for: WorkflowCompleted.self))
        let nodes = [coordinator, worker].map { node in Task { try await node.run() } }

        let label = ["embedded", sharedStore ? "one shared store" : nil, metrics == nil ? nil : "metrics on"]
        let progress = ProgressBar(label.compactMap { $0 }.joined(separator: ", "), total: workflows)
        let started = ContinuousClock.now
        for first in stride(from: 0, to: workflows, by: 500) {
            _ = await transport.publish((first..<min(workflows, first + 500)).map(Self.start))
        }
        while try await completed() < workflows {
            try await Task.sleep(for: .milliseconds(5))
            progress.update(try await completed())
        }
        let elapsed = (ContinuousClock.now - started).seconds
        progress.update(workflows)
        for node in nodes { node.cancel() }
        for node in nodes { try await node.value }
        // Per workflow: 4 events handled by the process manager, 3 commands by the worker.
        return EmbeddedResult(
            workflows: workflows,
            seconds: elapsed,
            workflowsPerSecond: Double(workflows) / elapsed,
            messagesPerSecond: Double(workflows * 7) / elapsed
        )
    }

    /// The event that starts workflow `index`.
    static func start(_ index: Int) -> OutgoingMessage {
        event(WorkflowStarted(workflowID: "wf-\(index)"), id: "start-\(index)")
    }

    /// An event as the worker would publish it.
    static func event<E: Event>(_ event: E, id: String) -> OutgoingMessage {
        OutgoingMessage(
            exchange: Routing.eventExchange,
            routingKey: E.messageName,
            envelope: Envelope(
                messageID: id,
                messageType: E.messageType,
                timestamp: Date(),
                payload: MessageRegistry.encode(event)
            )
        )
    }

    /// A queue that collects one message type, for the benchmark to count or read.
    static func sink<M: Message>(_ queue: String, for type: M.Type) -> Topology {
        let exchange = M.self is any Command.Type ? Routing.commandExchange : Routing.eventExchange
        return Topology(
            exchanges: Routing.exchanges,
            queues: [.init(queue)],
            bindings: [.init(queue: queue, exchange: exchange, bindingKey: M.messageName)]
        )
    }

    /// The node hosting the 4-step process manager.
    static func coordinator(
        transport: any Transport,
        store: any Store,
        metrics: (any MetricsFactory)? = nil,
        logger: Logger
    ) throws -> Node {
        Node(
            configuration: configuration("bench-coordinator", metrics: metrics),
            store: store,
            transport: transport,
            handlers: [try ProcessManagerHost(fourSteps())],
            logger: logger
        )
    }

    /// The node doing the three steps.
    static func worker(
        transport: any Transport,
        store: any Store,
        metrics: (any MetricsFactory)? = nil,
        logger: Logger
    ) -> Node {
        Node(
            configuration: configuration("bench-worker", metrics: metrics),
            store: store,
            transport: transport,
            handlers: [
                MessageHandlerHost.command(DoStepA.self, name: "step-a") { command, context in
                    context.publish(StepADone(workflowID: command.workflowID))
                },
                MessageHandlerHost.command(DoStepB.self, name: "step-b") { command, context in
                    context.publish(StepBDone(workflowID: command.workflowID))
                },
                MessageHandlerHost.command(DoStepC.self, name: "step-c") { command, context in
                    context.publish(StepCDone(workflowID: command.workflowID))
                },
            ],
            logger: logger
        )
    }
}

extension EmbeddedBenchmark {
    /// A benchmark node's configuration: with `metrics`, recorded there and the store sampled as `serve --http`
    /// does; without, no metrics at all.
    static func configuration(_ name: String, metrics: (any MetricsFactory)?) -> Node.Configuration {
        var configuration = Node.Configuration(name: name)
        configuration.metricsFactory = metrics ?? NOOPMetricsHandler.instance
        if metrics != nil { configuration.storeSampling = .seconds(5) }
        return configuration
    }
}

struct EmbeddedResult: Codable {
    var workflows: Int
    var seconds: Double
    var workflowsPerSecond: Double
    var messagesPerSecond: Double
}

struct WorkflowStarted: Event {
    static let messageName = "bench.WorkflowStarted"
    var workflowID: String
}
struct StepADone: Event {
    static let messageName = "bench.StepADone"
    var workflowID: String
}
struct StepBDone: Event {
    static let messageName = "bench.StepBDone"
    var workflowID: String
}
struct StepCDone: Event {
    static let messageName = "bench.StepCDone"
    var workflowID: String
}
struct WorkflowCompleted: Event {
    static let messageName = "bench.WorkflowCompleted"
    var workflowID: String
}
struct DoStepA: Command {
    static let messageName = "benchwork.DoStepA"
    var workflowID: String
}
struct DoStepB: Command {
    static let messageName = "benchwork.DoStepB"
    var workflowID: String
}
struct DoStepC: Command {
    static let messageName = "benchwork.DoStepC"
    var workflowID: String
}
struct Steps: ProcessState {
    var workflowID = ""
    var step = 0
}

/// The time a step may take in the benchmarks' process managers (here and the mesh's fulfillment): a day, the
/// longest `fulfillment serve --step-timeout` takes. A benchmark measures how fast work flows, so no deadline may
/// fire while a backlog waits — at 100,000 workflows offered at once it waits minutes.
let benchmarkStepTimeout = Duration.seconds(86_400)

/// Start, three steps, complete; each step has a deadline (``benchmarkStepTimeout``).
func fourSteps() -> ProcessManager<Steps> {
    ProcessManager<Steps>(name: "four-steps", listensTo: ["bench"]) { pm in
        pm.start(on: WorkflowStarted.self, correlation: .field(\.workflowID)) { event, process in
            process.state.workflowID = event.workflowID
            process.send(DoStepA(workflowID: event.workflowID))
            process.schedule("step-timeout", after: benchmarkStepTimeout)
        }
        pm.on(StepADone.self, correlation: .field(\.workflowID)) { event, process in
            process.state.step = 1
            process.send(DoStepB(workflowID: event.workflowID))
            process.schedule("step-timeout", after: benchmarkStepTimeout)
        }
        pm.on(StepBDone.self, correlation: .field(\.workflowID)) { event, process in
            process.state.step = 2
            process.send(DoStepC(workflowID: event.workflowID))
            process.schedule("step-timeout", after: benchmarkStepTimeout)
        }
        pm.on(StepCDone.self, correlation: .field(\.workflowID)) { event, process in
            process.state.step = 3
            process.publish(WorkflowCompleted(workflowID: event.workflowID))
            process.markAsComplete()
        }
        pm.onTimer("step-timeout") { process in
            process.markAsFailed(reason: "step timed out")
        }
    }
}
