import Baton
import BatonAMQP
import BatonAMQPTransport
import BatonNode
import BatonSQLite
import BatonTestSupport
import ChildProcesses
import Foundation
import Logging
import Testing

/// Kills real node processes (`BatonCrashProbe`) at each point of the consume path and restarts them, against
/// the real broker and a real SQLite file: every effect must happen once, every issued message be published
/// once. The probe's effects are not idempotent by themselves (a non-start handler that moves its instance
/// and issues a command; a counter aggregate), so each guard is the only thing that keeps them single:
///
/// | guard removed | test that fails |
/// | --- | --- |
/// | the inbox (`hasHandled` always false, its insert `OR IGNORE`) | `aCrashLosesNothingAndDoublesNothing`, both targets, after the commit |
/// | the outbox key (`enqueue` queues a second row for a key it has) | none of these: `StoreConformance.theOutboxKeepsOneRowPerKeyInOrder` (every store adapter) |
///
/// The outbox key stands behind the inbox: with the inbox in place no handler runs twice for one message, so
/// no crash run can tell the key is gone. It keeps a message single when a trigger is handled twice all the
/// same (a replay, a store restored from a backup, an inbox row pruned): the handler issues the same derived
/// ids again and the outbox takes each once. (An aggregate's stream has the same guard in its unique event ids:
/// with the inbox removed, the counter's second append is refused, not doubled.)
/// | the instance version check (a cached instance used without comparing it with the committed version) | `replicasOnOneStoreNeverWriteFromAStaleInstance` |
/// | acknowledging a batch once its commit is on the disk (grouped syncs: acknowledged at the commit) | `aPowerLossLosesNothingAcknowledgedAndSendsNothingItTakesBack` |
/// | handing a commit's rows to the relay once it is on the disk (handed over at the commit) | the same |
@Suite(.serialized) struct CrashInjectionTests {
    /// The message a crash run delivers to the probe armed with a fault.
    enum Target: String, CaseIterable, Sendable {
        /// `probe.ProbeAdvanced` at v1 (the probe knows v2: it upcasts): a non-start process-manager handler that
        /// issues a command.
        case advance
        /// `counter.BumpCounter`: a command handler that appends to a counter aggregate.
        case bump
        /// `probe.RefusedStep`, as the probe process issued it: refused, dead-lettered, and its failure reply
        /// handled by the process, which issues a command.
        case refuse
        /// `probe.ProbeWobbled`: fails its first attempt, is held in the store and retried, then moves the
        /// instance and issues a command.
        case wobble
    }

    @Test(arguments: Node.FaultPoint.allCases, Target.allCases)
    func aCrashLosesNothingAndDoublesNothing(_ point: Node.FaultPoint, _ target: Target) async throws {
        try await ProbeRun.with(name: "crash-\(point.rawValue)-\(target.rawValue)") { run in
            try await run.startProcess()

            // The node dies at `point` while handling the target message …
            let armed = try await run.probe(fault: point.rawValue)
            switch target {
            case .advance: try await run.publishEvent("probe.ProbeAdvanced", id: "advance-\(run.probeID)")
            case .bump: try await run.publishCommand("counter.BumpCounter", id: "bump-\(run.probeID)")
            case .refuse: try await run.publishIssuedStep(id: "refused-\(run.probeID)")
            case .wobble: try await run.publishEvent("probe.ProbeWobbled", id: "wobble-\(run.probeID)")
            }
            let end = try await armed.end(within: .seconds(30))
            #expect(end?.signal == SIGKILL, "the probe must kill itself at \(point), not \(String(describing: end))")

            // … and a new one on the same store and queue finishes the work.
            let restarted = try await run.probe(fault: "none")
            switch target {
            case .advance, .wobble: #expect(try await run.eventually { try await run.commandCount() >= 3 })
            case .refuse: #expect(try await run.eventually { try await run.commandCount() >= 4 })
            case .bump: #expect(try await run.eventually { try await run.eventCount() >= 1 })
            }
            #expect(try await run.isSettled(), "the probe took every message, the redelivered one included")
            #expect(try await restarted.stop()?.isSuccess == true, "SIGTERM stops the node gracefully")

            // Every probe has exited: what they published is in the observer queues, nothing more can come.
            let commands = try await run.drainCommands()
            let events = try await run.drainEvents()
            // The two start commands, the one an advance or the failure reply makes the process issue, and the
            // refused step the test itself published.
            let expectedCommands = target == .bump ? 2 : 3
            let published = expectedCommands + (target == .refuse ? 1 : 0)
            #expect(commands.count == published, "every command was published: \(commands)")
            #expect(commands.values.allSatisfy { $0 == 1 }, "each command id was published once: \(commands)")
            #expect(events.count == (target == .bump ? 1 : 0), "the counter's event was published: \(events)")
            #expect(events.values.allSatisfy { $0 == 1 }, "each event id was published once: \(events)")

            let store = try run.store()
            let (transitions, outbox, pending, counter, letters, held) = try await store.read { work in
                (
                    try work.transitions(of: "probe-process", instance: run.probeID),
                    try work.outboxMessageIDs(),
                    try work.pendingOutboxCount(),
                    try work.readStream("counter-\(run.probeID)"),
                    try work.deadLetters(),
                    try work.parkedMessages()
                )
            }
            #expect(held.isEmpty, "nothing is left held")
            let moves = target == .bump ? 0 : 1
            #expect(transitions.count == 1 + moves, "the start and each advance or reply moved the instance once")
            #expect(counter.count == (target == .bump ? 1 : 0), "the counter was bumped once")
            #expect(letters.count == (target == .refuse ? 1 : 0), "the refused step was dead-lettered once")
            // Each message was published once (above) and its row deleted once the broker confirmed it.
            #expect(outbox.isEmpty && pending == 0, "everything was relayed: \(outbox)")
        }
    }

    /// The power fails while the probe handles a stream of counter bumps, each a transaction of its own on a
    /// slow disk, many of them unacknowledged at once: every write no sync covered is dropped (`power-loss:N`,
    /// a VFS that keeps what each write overwrote), the probe dies, and a new one on the same files finishes.
    /// kill -9 cannot show this: the page cache outlives the process. A node that acknowledged a commit before
    /// the sync that covers it loses a bump (the broker does not deliver it again); one that published a
    /// commit's rows before that sync sends an event the store does not keep (each names the process that
    /// recorded it).
    @Test func aPowerLossLosesNothingAcknowledgedAndSendsNothingItTakesBack() async throws {
        try await ProbeRun.with(name: "power-loss") { run in
            let bumps = 60
            for index in 1...bumps {
                try await run.publishCommand("counter.BumpCounter", id: "bump-\(index)-\(run.probeID)")
            }
            let armed = try await run.probe(fault: "power-loss:\(bumps / 2)")
            let end = try await armed.end(within: .seconds(30))
            #expect(end?.signal == SIGKILL, "the probe must lose power and die, not \(String(describing: end))")
            let dropped = armed.output.split(separator: "\n").lazy
                .compactMap { $0.firstMatch(of: /power lost: (\d+) bytes dropped/).flatMap { Int($0.1) } }.first
            #expect((dropped ?? 0) > 0, "commits no sync covered yet were dropped: \(armed.output)")

            let restarted = try await run.probe(fault: "none")
            #expect(try await run.eventually { try await run.eventCount() >= bumps })
            #expect(try await run.isSettled())
            #expect(try await restarted.stop()?.isSuccess == true)

            let published = try await run.drainEventBodies()
            let stream = try await run.store().read { try $0.readStream("counter-\(run.probeID)") }
            let kept = try stream.map { try JSONDecoder.baton.decode(CounterBumped.self, from: $0.payload) }
            #expect(kept.map(\.value) == Array(1...bumps), "every bump was counted once")
            #expect(published.count == bumps, "an event for every bump was published")
            for (id, copies) in published {
                let bodies = try copies.map { try JSONDecoder.baton.decode(CounterBumped.self, from: Data($0)) }
                #expect(bodies.allSatisfy(kept.contains), "\(id) was sent from a commit the power loss took back")
            }
        }
    }

    /// Two probes on one store and one queue take turns (prefetch 1), one of them is killed mid-way and
    /// restarted: each holds instances in its cache that the other moves meanwhile. A node that trusted its
    /// cache over the committed version would write from a stale instance.
    @Test func replicasOnOneStoreNeverWriteFromAStaleInstance() async throws {
        try await ProbeRun.with(name: "crash-replicas") { run in
            try await run.startProcess()
            let first = try await run.probe(fault: "none", prefetch: 1)
            var second = try await run.probe(fault: "none", prefetch: 1)
            let advances = 40
            for index in 1...advances / 2 {
                try await run.publishEvent("probe.ProbeAdvanced", id: "advance-\(index)-\(run.probeID)")
            }
            #expect(try await run.eventually { try await run.commandCount() >= 2 + advances / 4 })
            await second.kill()
            second = try await run.probe(fault: "none", prefetch: 1)
            for index in advances / 2 + 1...advances {
                try await run.publishEvent("probe.ProbeAdvanced", id: "advance-\(index)-\(run.probeID)")
            }
            #expect(try await run.eventually { try await run.commandCount() >= 2 + advances })
            #expect(try await run.isSettled())
            #expect(try await first.stop()?.isSuccess == true)
            #expect(try await second.stop()?.isSuccess == true)

            // Both relays sweep the one outbox table (they claim no rows: leases come with the PostgreSQL store),
            // so a row may go out twice under its id, which consumers drop; what counts here is the effects.
            let commands = try await run.drainCommands()
            #expect(commands.count == 2 + advances, "one command per advance: \(commands.count)")
            let store = try run.store()
            let (transitions, letters) = try await store.read { work in
                (try work.transitions(of: "probe-process", instance: run.probeID), try work.deadLetters())
            }
            #expect(transitions.map(\.version) == Array(1...Int64(1 + advances)), "one transition per event")
            #expect(letters.isEmpty, "nothing was dead-lettered: \(letters.map(\.reason))")
        }
    }
}

/// One crash scenario: a private queue for the probe, observers for its commands and events, a store
/// directory, and the probe processes.
private struct ProbeRun {
    let connection: AMQPConnection
    let name: String
    let probeID = "probe-\(UUID().uuidString)"
    let directory: URL
    var commandObserver: String { "\(name).commands" }
    var eventObserver: String { "\(name).events" }

    static func with(name: String, _ body: (ProbeRun) async throws -> Void) async throws {
        let name = TestBroker.unique(name)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try await AMQPConnection.withConnection(
            configuration: .init(url: TestBroker.url, connectionName: "crash-test"),
            logger: Logger(label: "crash-test")
        ) { connection in
            let run = ProbeRun(connection: connection, name: name, directory: directory)
            try await AMQPTransport(connection: connection).declare(
                Topology(
                    exchanges: Routing.exchanges,
                    queues: [.init(run.commandObserver), .init(run.eventObserver), .init(name, kind: .quorum)],
                    bindings: [
                        .init(queue: run.commandObserver, exchange: Routing.commandExchange, bindingKey: "probe.#"),
                        .init(queue: run.eventObserver, exchange: Routing.eventExchange, bindingKey: "counter.#"),
                        .init(queue: name, exchange: Routing.eventExchange, bindingKey: "probe.#"),
                        .init(queue: name, exchange: Routing.commandExchange, bindingKey: "counter.#"),
                    ]
                )
            )
            do {
                try await body(run)
            } catch {
                try? await run.deleteQueues()
                throw error
            }
            try await run.deleteQueues()
        }
    }

    private func deleteQueues() async throws {
        for queue in [commandObserver, eventObserver, name, "\(name).dead-letters"] {
            _ = try await connection.deleteQueue(queue)
        }
    }

    /// Starts the instance with a probe that has no fault, and stops it once both start commands are out.
    func startProcess() async throws {
        let probe = try await probe(fault: "none")
        try await publishEvent("probe.ProbeStarted", id: "start-\(probeID)")
        #expect(try await eventually { try await commandCount() >= 2 }, "the instance started")
        #expect(try await probe.stop()?.isSuccess == true)
    }

    func publishEvent(_ name: String, id: String) async throws {
        try await publish(exchange: Routing.eventExchange, name, id: id, body: #"{"probe_id":"\#(probeID)"}"#)
    }

    func publishCommand(_ name: String, id: String) async throws {
        try await publish(exchange: Routing.commandExchange, name, id: id, body: #"{"counter_id":"\#(probeID)"}"#)
    }

    /// A `probe.RefusedStep` as the probe process would issue it: naming the process and its instance.
    func publishIssuedStep(id: String) async throws {
        try await publish(
            exchange: Routing.commandExchange,
            "probe.RefusedStep",
            id: id,
            body: #"{"probe_id":"\#(probeID)"}"#,
            correlationID: probeID,
            headers: [BatonHeader.processManager: .string("probe-process")]
        )
    }

    private func publish(
        exchange: String,
        _ name: String,
        id: String,
        body: String,
        correlationID: String? = nil,
        headers: [String: AMQPFieldValue] = [:]
    ) async throws {
        try await connection.publish(
            AMQPOutgoingMessage(
                exchange: exchange,
                routingKey: name,
                body: Array(body.utf8),
                properties: .init(
                    contentType: "application/json",
                    headers: headers,
                    correlationID: correlationID,
                    messageID: id,
                    type: "\(name).v1"
                )
            )
        )
    }

    /// Polls a condition on the broker's queues (what other processes do), for 30 s at most.
    func eventually(_ condition: () async throws -> Bool) async throws -> Bool {
        try await BatonTestSupport.eventually(condition)
    }

    /// Waits until the probe's queue holds no message, ready or unacknowledged: whatever was delivered was
    /// handled and acknowledged.
    func isSettled() async throws -> Bool { try await TestBroker.areSettled([name]) }

    func commandCount() async throws -> Int { try await connection.inspectQueue(commandObserver).messages }
    func eventCount() async throws -> Int { try await connection.inspectQueue(eventObserver).messages }
    func drainCommands() async throws -> [String: Int] { try await drain(commandObserver).mapValues(\.count) }
    func drainEvents() async throws -> [String: Int] { try await drain(eventObserver).mapValues(\.count) }
    func drainEventBodies() async throws -> [String: [[UInt8]]] { try await drain(eventObserver) }

    /// Takes every message of a queue (call it once no process publishes any more): the body of each copy of
    /// each id.
    private func drain(_ queue: String) async throws -> [String: [[UInt8]]] {
        let count = try await connection.inspectQueue(queue).messages
        var ids: [String: [[UInt8]]] = [:]
        guard count > 0 else { return ids }
        let consumer = try await connection.consume(queue: queue, prefetch: 500)
        for _ in 0..<count {
            guard let delivery = try await consumer.next(timeout: .seconds(10)) else {
                Issue.record("\(queue) said it held \(count) messages; fewer came")
                break
            }
            ids[delivery.properties.messageID ?? "?", default: []].append(delivery.body)
            delivery.ack()
        }
        await consumer.cancel()
        return ids
    }

    func store() throws -> SQLiteStore {
        try SQLiteStore(path: directory.appendingPathComponent("probe.sqlite").path, readOnly: true)
    }

    /// Starts a probe process on this run's store and queue and waits until it is about to consume.
    func probe(fault: String, prefetch: Int? = nil) async throws -> ProbeProcess {
        try await ProbeProcess.start(
            arguments: [TestBroker.url, directory.path, name, fault] + (prefetch.map { [String($0)] } ?? [])
        )
    }
}

/// A running `BatonCrashProbe` process.
private struct ProbeProcess {
    private let process: ChildProcess

    /// What it printed so far.
    var output: String { process.output }

    /// Starts the probe and waits (30 s at most) until it prints "ready": connected and about to consume.
    static func start(arguments: [String]) async throws -> ProbeProcess {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("BatonCrashProbe")
        let process = try ChildProcess(binary.path, arguments, output: .capture)
        let ready = try await eventually { process.output.contains("ready\n") || !process.isRunning }
        guard ready, process.isRunning else {
            await process.kill()
            throw TestSupportError("the probe did not start: \(process.output)")
        }
        return ProbeProcess(process: process)
    }

    /// Waits for the process to end; kills it and returns `nil` if it outlives `timeout`.
    func end(within timeout: Duration) async throws -> Termination? {
        guard try await eventually(timeout: timeout, { !process.isRunning }) else {
            await process.kill()
            return nil
        }
        return await process.wait()
    }

    /// SIGTERM, then waits for the exit (30 s at most).
    func stop() async throws -> Termination? {
        process.send(SIGTERM)
        return try await end(within: .seconds(30))
    }

    /// SIGKILL, then waits for the exit.
    func kill() async {
        await process.kill()
    }
}

/// The probe's `counter.CounterBumped`, as its JSON says: the counter's value after it, and the process that
/// recorded it.
private struct CounterBumped: Decodable, Equatable {
    var value: Int
    var recordedBy: Int32
}
