import ArgumentParser
import Baton
import BatonNode
import BatonSQLite
import Foundation
import Logging

/// Framework benchmarks. `embedded`: a 4-step process manager over the in-process transport, with each node's
/// SQLite store on disk — the framework's own cost without a broker.
@main
struct BenchmarkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "baton-benchmark",
        abstract: "Baton framework benchmarks.",
        subcommands: [Embedded.self]
    )
}

struct Embedded: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A 4-step process manager, in-process transport, SQLite on disk: messages/s and workflows/s."
    )

    @Option(help: "Workflows to run.")
    var workflows = 5_000

    @Option(help: "Directory for the SQLite files (default: a fresh temporary directory).")
    var dataDir: String?

    @Option(help: "Also write the results as JSON to this file.")
    var json: String?

    func validate() throws {
        guard workflows > 0 else { throw ValidationError("--workflows must be positive") }
    }

    func run() async throws {
        let directory = URL(fileURLWithPath: dataDir ?? NSTemporaryDirectory()).appendingPathComponent(
            "baton-embedded-\(UUID().uuidString)"
        )
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var logger = Logger(label: "baton-benchmark")
        logger.logLevel = .warning

        let transport = InProcessTransport()
        let (coordinator, worker) = try makeNodes(transport: transport, directory: directory, logger: logger)
        try await transport.declare(coordinator.topology)
        try await transport.declare(worker.topology)
        try await transport.declare(
            .init(
                exchanges: Routing.exchanges,
                queues: [.init("completed")],
                bindings: [
                    .init(
                        queue: "completed",
                        exchange: Routing.eventExchange,
                        bindingKey: WorkflowCompleted.messageName
                    )
                ]
            )
        )
        let nodes = [coordinator, worker].map { node in Task { try await node.run() } }

        let started = ContinuousClock.now
        var published = 0
        var lastReport = started
        while published < workflows {
            let batch = (published..<min(workflows, published + 500)).map { index in
                OutgoingMessage(
                    exchange: Routing.eventExchange,
                    routingKey: WorkflowStarted.messageName,
                    envelope: Envelope(
                        messageID: "start-\(index)",
                        messageType: WorkflowStarted.messageType,
                        timestamp: Date(),
                        payload: MessageRegistry.encode(WorkflowStarted(workflowID: "wf-\(index)"))
                    )
                )
            }
            _ = await transport.publish(batch)
            published += batch.count
        }
        while transport.readyCount("completed") < workflows {
            try await Task.sleep(for: .milliseconds(20))
            if ContinuousClock.now - lastReport > .seconds(1) {
                lastReport = .now
                progress(transport.readyCount("completed"), of: workflows)
            }
        }
        let elapsed = (ContinuousClock.now - started).seconds
        progress(workflows, of: workflows)
        FileHandle.standardError.write(Data("\n".utf8))
        for node in nodes { node.cancel() }
        for node in nodes { try await node.value }

        // Per workflow: 4 events handled by the process manager, 3 commands by the worker.
        let handled = Double(workflows * 7)
        let result = EmbeddedResult(
            workflows: workflows,
            seconds: elapsed,
            workflowsPerSecond: Double(workflows) / elapsed,
            messagesPerSecond: handled / elapsed
        )
        print(
            """
            embedded: \(workflows) workflows of a 4-step process manager, in-process transport, SQLite on disk
              elapsed        \(String(format: "%.2f", elapsed)) s
              workflows/s    \(String(format: "%.0f", result.workflowsPerSecond))
              messages/s     \(String(format: "%.0f", result.messagesPerSecond))  (7 handled per workflow)
            """
        )
        if let json {
            try JSONEncoder().encode(result).write(to: URL(fileURLWithPath: json))
        }
    }

    private func progress(_ done: Int, of total: Int) {
        let width = 30
        let filled = width * done / max(total, 1)
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        FileHandle.standardError.write(Data("\r[\(bar)] \(done)/\(total) workflows".utf8))
    }

    private func makeNodes(transport: InProcessTransport, directory: URL, logger: Logger) throws -> (Node, Node) {
        var coordinatorRegistry = MessageRegistry()
        for type in [WorkflowStarted.self, StepADone.self, StepBDone.self, StepCDone.self] as [any Event.Type] {
            coordinatorRegistry.register(type)
        }
        let coordinator = Node(
            configuration: Node.Configuration(name: "bench-coordinator"),
            store: try SQLiteStore(path: directory.appendingPathComponent("coordinator.sqlite").path),
            transport: transport,
            registry: coordinatorRegistry,
            handlers: [try ProcessManagerHost(fourSteps, registry: coordinatorRegistry)],
            logger: logger
        )
        var workerRegistry = MessageRegistry()
        workerRegistry.register(DoStepA.self)
        workerRegistry.register(DoStepB.self)
        workerRegistry.register(DoStepC.self)
        let worker = Node(
            configuration: Node.Configuration(name: "bench-worker"),
            store: try SQLiteStore(path: directory.appendingPathComponent("worker.sqlite").path),
            transport: transport,
            registry: workerRegistry,
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
        return (coordinator, worker)
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

let fourSteps = ProcessManager<Steps>(name: "four-steps", listensTo: ["bench"]) { pm in
    pm.start(on: WorkflowStarted.self, correlation: .field(\.workflowID)) { event, process in
        process.state.workflowID = event.workflowID
        process.send(DoStepA(workflowID: event.workflowID))
        process.schedule("step-timeout", after: .seconds(30))
    }
    pm.on(StepADone.self, correlation: .field(\.workflowID)) { event, process in
        process.state.step = 1
        process.send(DoStepB(workflowID: event.workflowID))
        process.schedule("step-timeout", after: .seconds(30))
    }
    pm.on(StepBDone.self, correlation: .field(\.workflowID)) { event, process in
        process.state.step = 2
        process.send(DoStepC(workflowID: event.workflowID))
        process.schedule("step-timeout", after: .seconds(30))
    }
    pm.on(StepCDone.self, correlation: .field(\.workflowID), mayClose: true) { event, process in
        process.state.step = 3
        process.publish(WorkflowCompleted(workflowID: event.workflowID))
        process.markAsComplete()
    }
    pm.onTimer("step-timeout", mayClose: true) { process in
        process.markAsFailed(reason: "step timed out")
    }
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
