// The shared-store mode of the probe: two nodes in one process on one SQLite file, messages between them rows of
// `SQLiteTransport` taken in the receiver's transaction (no inbox, no outbox, no broker):
//
//   baton-crash-probe shared-store DATA_DIR FAULT_POINT|none NODE WORKFLOWS
//
// Node `tally` hosts a process manager that bumps a counter three times, one `counter.BumpCounter` at a time, and
// publishes `tally.TallyFinished` after the third; node `counter` appends each bump to the counter's stream (not
// idempotent by itself: handled twice, a bump counts two). The first run publishes WORKFLOWS `tally.TallyStarted`
// into the file; the node named NODE kills itself (SIGKILL) at FAULT_POINT. A run without a fault prints `done`
// and exits once every workflow finished.
import Baton
import BatonNode
import BatonSQLite
import Foundation
import Logging

struct TallyStarted: Event {
    static let messageName = "tally.TallyStarted"
    var tallyID: String
}
struct TallyFinished: Event {
    static let messageName = "tally.TallyFinished"
    var tallyID: String
}
struct Tally: ProcessState {
    var bumps = 0
}

enum SharedStoreProbe {
    /// The queue the finished workflows collect in, for the test to count.
    static let finishedQueue = "tally-finished"

    static func run(dataDirectory: String, fault: Node.FaultPoint?, faultyNode: String, workflows: Int) async throws {
        let store = try SQLiteStore(path: dataDirectory + "/shared.sqlite")
        let transport = try SQLiteTransport(store: store)
        var logger = Logger(label: "shared-store-probe")
        logger.logLevel = .warning
        let nodes = [
            node("tally", [try ProcessManagerHost(tally)]),
            node("counter", [bump]),
        ]
        func node(_ name: String, _ handlers: [any NodeHandler]) -> Node {
            var configuration = Node.Configuration(name: name)
            if let fault, name == faultyNode {
                configuration.faultInjection = { point in
                    if point == fault { kill(getpid(), SIGKILL) }
                }
            }
            return Node(
                configuration: configuration,
                store: store.shared(by: name),
                transport: transport,
                handlers: handlers,
                logger: logger
            )
        }
        for node in nodes { try await transport.declare(node.topology) }
        try await transport.declare(
            Topology(
                exchanges: Routing.exchanges,
                queues: [.init(finishedQueue)],
                bindings: [
                    .init(queue: finishedQueue, exchange: Routing.eventExchange, bindingKey: TallyFinished.messageName)
                ]
            )
        )
        let published = dataDirectory + "/published"
        if !FileManager.default.fileExists(atPath: published) {
            let started = (0..<workflows).map { index in
                OutgoingMessage(
                    exchange: Routing.eventExchange,
                    routingKey: TallyStarted.messageName,
                    envelope: Envelope(
                        messageID: "start-\(index)",
                        messageType: TallyStarted.messageType,
                        timestamp: Date(),
                        payload: MessageRegistry.encode(TallyStarted(tallyID: "t-\(index)"))
                    )
                )
            }
            guard await transport.publish(started).allSatisfy({ $0 == .confirmed }) else {
                FileHandle.standardError.write(Data("the workflows' starts were not written\n".utf8))
                exit(1)
            }
            _ = FileManager.default.createFile(atPath: published, contents: nil)
        }
        let running = nodes.map { node in Task { try await node.run() } }
        FileHandle.standardOutput.write(Data("ready\n".utf8))
        while try await transport.messageCount(finishedQueue) < workflows {
            try await Task.sleep(for: .milliseconds(20))
        }
        for task in running { task.cancel() }
        for task in running { try await task.value }
        FileHandle.standardOutput.write(Data("done\n".utf8))
    }

    static let tally = ProcessManager<Tally>(name: "tally", listensTo: ["tally", "counter"]) { pm in
        pm.start(on: TallyStarted.self, correlation: .field(\.tallyID)) { event, process in
            process.send(BumpCounter(counterID: event.tallyID))
        }
        pm.on(CounterBumped.self, correlation: .field(\.counterID)) { event, process in
            process.state.bumps += 1
            if process.state.bumps < 3 {
                process.send(BumpCounter(counterID: event.counterID))
            } else {
                process.publish(TallyFinished(tallyID: event.counterID))
                process.markAsComplete()
            }
        }
    }

    static let bump = MessageHandlerHost.command(BumpCounter.self, name: "bump-counter") { command, context in
        var counter = try context.load(Counter.self, id: command.counterID)
        let bumped = CounterBumped(counterID: command.counterID, value: counter.state.value + 1, recordedBy: getpid())
        try context.record([bumped], to: &counter)
    }
}
