import Baton
import BatonAMQP
import BatonNode
import BatonSQLite
import BatonTestSupport
import Foundation
import Logging
import Testing

/// Kills a real node process at each point of the consume path and restarts it, against the real broker
/// and a real SQLite file: every effect must happen once, every issued command be published once.
@Suite(.serialized) struct CrashInjectionTests {
    static let url =
        ProcessInfo.processInfo.environment["BATON_TEST_AMQP_URL"]
        ?? "amqp://baton:baton-local-secret@127.0.0.1:5673/%2F"

    @Test(arguments: Node.FaultPoint.allCases)
    func aCrashAtAnyPointLosesNothingAndDoublesNothing(_ point: Node.FaultPoint) async throws {
        let name = "crash-\(point.rawValue)-\(UInt32.random(in: 0...UInt32.max))"
        let probeID = "probe-\(UUID().uuidString)"
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let observer = "\(name).observer"

        try await AMQPConnection.withConnection(
            configuration: .init(url: Self.url, connectionName: "crash-test"),
            logger: Logger(label: "crash-test")
        ) { connection in
            // Where the probe's commands land, so the test can count them.
            try await connection.declare(
                AMQPTopology(
                    exchanges: Routing.exchanges,
                    queues: [.init(observer, isDurable: false), .init(name, kind: .quorum)],
                    bindings: [
                        .init(queue: observer, exchange: Routing.commandExchange, bindingKey: "probe.#"),
                        .init(queue: name, exchange: Routing.eventExchange, bindingKey: "probe.#"),
                    ]
                )
            )
            let started = try Self.probe(name, directory, fault: point.rawValue)
            try await connection.publish(
                AMQPOutgoingMessage(
                    exchange: Routing.eventExchange,
                    routingKey: "probe.ProbeStarted",
                    body: Array(#"{"probe_id":"\#(probeID)"}"#.utf8),
                    properties: .init(
                        contentType: "application/json",
                        messageID: "start-\(probeID)",
                        type: "probe.ProbeStarted.v1"
                    )
                )
            )
            #expect(try await Self.exits(started, within: .seconds(30)), "the probe must kill itself at \(point)")
            #expect(
                started.terminationReason == .uncaughtSignal && started.terminationStatus == SIGKILL,
                "the probe died at \(point)"
            )

            let restarted = try Self.probe(name, directory, fault: "none")
            var commands: [String: Int] = [:]
            let consumer = try await connection.consume(queue: observer, prefetch: 50)
            while commands.values.reduce(0, +) < 2, let delivery = try await consumer.next(timeout: .seconds(20)) {
                commands[delivery.properties.messageID ?? "?", default: 0] += 1
                delivery.ack()
            }
            // Anything published twice would arrive now.
            while let delivery = try await consumer.next(timeout: .milliseconds(1500)) {
                commands[delivery.properties.messageID ?? "?", default: 0] += 1
                delivery.ack()
            }
            restarted.terminate()
            restarted.waitUntilExit()
            #expect(restarted.terminationStatus == 0, "SIGTERM stops the node gracefully")
            #expect(commands.count == 2, "both commands were published: \(commands)")
            #expect(commands.values.allSatisfy { $0 == 1 }, "each command id was published once: \(commands)")
            try await connection.deleteQueue(observer)
            try await connection.deleteQueue(name)
            try await connection.deleteQueue("\(name).dead-letters")
        }
        let store = try SQLiteStore(path: directory.appendingPathComponent("probe.sqlite").path)
        let (transitions, outbox, pending) = try await store.read { work in
            (
                try work.transitions(of: "probe-process", instance: probeID),
                try work.outboxMessageIDs(),
                try work.pendingOutboxCount()
            )
        }
        #expect(transitions.count == 1, "the start event had exactly one effect")
        #expect(outbox.count == 2 && Set(outbox).count == 2, "the outbox holds each command once")
        #expect(pending == 0, "everything was relayed")
    }

    /// Waits for the process to end; kills it and returns `false` if it outlives `timeout`.
    private static func exits(_ process: Process, within timeout: Duration) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            guard ContinuousClock.now < deadline else {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                return false
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    private static func probe(_ name: String, _ directory: URL, fault: String) throws -> Process {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("BatonCrashProbe")
        let process = Process()
        process.executableURL = binary
        process.arguments = [url, directory.path, name, fault]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        // Wait for "ready": the probe is connected and about to consume.
        _ = output.fileHandleForReading.availableData
        return process
    }
}
