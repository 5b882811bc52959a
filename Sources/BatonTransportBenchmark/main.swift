import ArgumentParser
import BatonAMQP
import ChildProcesses
import Foundation
import Logging

/// Measures the Swift transport against a plain-C program driving the same librabbitmq, in the same run,
/// against the same broker, and prints both with their ratio.
@main
struct TransportBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "baton-transport-benchmark",
        abstract: "Publish, consume and round-trip figures of BatonAMQP next to plain C over librabbitmq."
    )

    @Option(name: .customLong("amqp-url"), help: "Broker URL (default: $BATON_AMQP_URL, else the local node).")
    var amqpURL: String =
        ProcessInfo.processInfo.environment["BATON_AMQP_URL"]
        ?? "amqp://baton:baton-local-secret@127.0.0.1:5673/%2F"

    @Option(help: "Messages per publish and consume measurement.")
    var messages = 50_000

    @Option(help: "Round trips for the latency measurement.")
    var roundTrips = 2_000

    @Option(help: "Rounds; each figure is the best of them.")
    var rounds = 2

    @Option(help: "Body size in bytes.")
    var bodySize = 256

    @Option(help: "Publishes in flight at most (C: a sliding window; Swift: window/100 lanes of batches of 100).")
    var window = 1_000

    @Option(help: "Path of the amqp-c-baseline executable (default: next to this one).")
    var baseline: String?

    @Option(help: "Also write the results as JSON to this file.")
    var json: String?

    func validate() throws {
        guard messages > 0, roundTrips > 0, rounds > 0, bodySize > 0, window >= 4 else {
            throw ValidationError(
                "--messages, --round-trips, --rounds and --body-size must be positive, --window at least 4"
            )
        }
    }

    func run() async throws {
        let baselinePath =
            baseline
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("amqp-c-baseline").path
        guard FileManager.default.isExecutableFile(atPath: baselinePath) else {
            throw ValidationError(
                "no C baseline at \(baselinePath): build it with `swift build -c release --product amqp-c-baseline`"
            )
        }
        var logger = Logger(label: "baton-transport-benchmark")
        logger.logLevel = .warning
        let configuration = try AMQPConnection.Configuration(url: amqpURL, connectionName: "baton-transport-benchmark")
        let harness = Harness(
            url: amqpURL,
            baselinePath: baselinePath,
            bodySize: bodySize,
            window: window,
            queue: "baton-bench-\(ProcessInfo.processInfo.processIdentifier)"
        )
        let results = try await AMQPConnection.withConnection(configuration: configuration, logger: logger) {
            connection in
            try await harness.runAll(on: connection, messages: messages, roundTrips: roundTrips, rounds: rounds)
        }
        print(Figure.table(results, messages: messages, roundTrips: roundTrips, bodySize: bodySize, rounds: rounds))
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(results).write(to: URL(fileURLWithPath: json))
        }
    }
}

/// One line of the table: the Swift and C figures of one measurement.
struct Figure: Codable {
    var name: String
    var unit: String
    var swift: Double
    var c: Double
    var higherIsBetter: Bool

    /// Swift relative to C, so that 1.0 means "as good as C" either way.
    var ratio: Double { higherIsBetter ? swift / c : c / swift }

    static func table(_ figures: [Figure], messages: Int, roundTrips: Int, bodySize: Int, rounds: Int) -> String {
        func pad(_ text: String, _ width: Int) -> String {
            text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
        }
        var lines = [
            "BatonAMQP vs plain C over librabbitmq — \(messages) messages, \(roundTrips) round trips, "
                + "\(bodySize)-byte persistent bodies, best of \(rounds)",
            "measurement".padding(toLength: 34, withPad: " ", startingAt: 0) + pad("Swift", 14) + pad("C", 14)
                + pad("Swift/C", 9),
        ]
        for figure in figures {
            lines.append(
                figure.name.padding(toLength: 34, withPad: " ", startingAt: 0)
                    + pad(String(format: "%.1f", figure.swift), 10) + " "
                    + figure.unit.padding(toLength: 3, withPad: " ", startingAt: 0)
                    + pad(String(format: "%.1f", figure.c), 10) + " "
                    + figure.unit.padding(toLength: 3, withPad: " ", startingAt: 0)
                    + pad(String(format: "%.2f", figure.ratio), 9)
            )
        }
        lines.append("Swift/C: throughput Swift÷C, latency C÷Swift — 1.00 means as good as C.")
        return lines.joined(separator: "\n")
    }
}

struct Harness: Sendable {
    var url: String
    var baselinePath: String
    var bodySize: Int
    var window: Int
    var queue: String

    func runAll(on connection: AMQPConnection, messages: Int, roundTrips: Int, rounds: Int) async throws -> [Figure] {
        try await connection.declare(AMQPTopology(queues: [.init(queue)]))
        defer { Task { [queue] in _ = try? await connection.deleteQueue(queue) } }
        var best: [String: Figure] = [:]
        var order: [String] = []
        func record(_ name: String, _ unit: String, swift: Double, c: Double, higherIsBetter: Bool) {
            if best[name] == nil { order.append(name) }
            let candidate = Figure(name: name, unit: unit, swift: swift, c: c, higherIsBetter: higherIsBetter)
            guard var current = best[name] else {
                best[name] = candidate
                return
            }
            current.swift = higherIsBetter ? max(current.swift, swift) : min(current.swift, swift)
            current.c = higherIsBetter ? max(current.c, c) : min(current.c, c)
            best[name] = current
        }
        for round in 1...rounds {
            progress("round \(round)/\(rounds): publish with confirms")
            try await connection.purgeQueue(queue)
            let cPublish = try await baselineRun("publish", messages, window)["publish_per_s"]!
            try await connection.purgeQueue(queue)
            let swiftPublish = try await publish(connection, count: messages)
            record(
                "publish, confirms, \(window) in flight",
                "/s",
                swift: swiftPublish,
                c: cPublish,
                higherIsBetter: true
            )

            for prefetch in [50, 500] {
                progress("round \(round)/\(rounds): consume, prefetch \(prefetch)")
                try await refill(connection, count: messages)
                let cConsume = try await baselineRun("consume", messages, prefetch)["consume_per_s"]!
                try await refill(connection, count: messages)
                let swiftConsume = try await consume(connection, count: messages, prefetch: UInt16(prefetch))
                record(
                    "consume + ack, prefetch \(prefetch)",
                    "/s",
                    swift: swiftConsume,
                    c: cConsume,
                    higherIsBetter: true
                )
            }

            progress("round \(round)/\(rounds): durable round trips")
            try await connection.purgeQueue(queue)
            let cLatency = try await baselineRun("latency", roundTrips, bodySize)
            let swiftLatency = try await latency(connection, count: roundTrips)
            record(
                "round trip p50",
                "ms",
                swift: swiftLatency.p50,
                c: cLatency["p50_us"]! / 1000,
                higherIsBetter: false
            )
            record(
                "round trip p99",
                "ms",
                swift: swiftLatency.p99,
                c: cLatency["p99_us"]! / 1000,
                higherIsBetter: false
            )
        }
        try await connection.purgeQueue(queue)
        return order.map { best[$0]! }
    }

    private func progress(_ text: String) {
        FileHandle.standardError.write(Data("… \(text)\n".utf8))
    }

    private func message(_ index: Int) -> AMQPOutgoingMessage {
        AMQPOutgoingMessage(
            exchange: "",
            routingKey: queue,
            body: [UInt8](repeating: UInt8(ascii: "x"), count: bodySize),
            properties: AMQPProperties(contentType: "application/octet-stream")
        )
    }

    /// `count` publishes in concurrent lanes of batches of 100, so at most `window` are unconfirmed at once.
    private func publish(_ connection: AMQPConnection, count: Int) async throws -> Double {
        let batchSize = min(100, window)
        let lanes = window / batchSize
        let template = message(0)
        let started = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for lane in 0..<lanes {
                group.addTask {
                    var sent = lane * batchSize
                    while sent < count {
                        let size = min(batchSize, count - sent)
                        for result in await connection.publish(contentsOf: Array(repeating: template, count: size)) {
                            try result.get()
                        }
                        sent += lanes * batchSize
                    }
                }
            }
            try await group.waitForAll()
        }
        return Double(count) / (ContinuousClock.now - started).seconds
    }

    private func refill(_ connection: AMQPConnection, count: Int) async throws {
        try await connection.purgeQueue(queue)
        _ = try await publish(connection, count: count)
    }

    private func consume(_ connection: AMQPConnection, count: Int, prefetch: UInt16) async throws -> Double {
        let started = ContinuousClock.now
        let consumer = try await connection.consume(queue: queue, prefetch: prefetch)
        var received = 0
        for try await delivery in consumer {
            delivery.ack()
            received += 1
            if received == count { break }
        }
        let elapsed = ContinuousClock.now - started
        await consumer.cancel()
        return Double(count) / elapsed.seconds
    }

    private func latency(_ connection: AMQPConnection, count: Int) async throws -> (p50: Double, p99: Double) {
        let consumer = try await connection.consume(queue: queue, prefetch: 10)
        var iterator = consumer.makeAsyncIterator()
        var samples: [Double] = []
        samples.reserveCapacity(count)
        let template = message(0)
        for _ in 0..<count {
            let started = ContinuousClock.now
            try await connection.publish(template)
            guard let delivery = try await iterator.next() else { throw CancellationError() }
            samples.append((ContinuousClock.now - started).seconds * 1000)
            delivery.ack()
        }
        await consumer.cancel()
        samples.sort()
        return (samples[count / 2], samples[count * 99 / 100])
    }

    /// Runs the C baseline and parses its "key value" lines.
    private func baselineRun(_ mode: String, _ count: Int, _ parameter: Int) async throws -> [String: Double] {
        let (termination, output) = try await ChildProcess.run(
            baselinePath,
            [url, mode, queue, "\(count)", "\(parameter)", "\(bodySize)"]
        )
        guard termination.isSuccess else {
            throw ValidationError("amqp-c-baseline \(mode) failed (\(termination)): \(output)")
        }
        var figures: [String: Double] = [:]
        for line in output.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let value = Double(parts[1]) { figures[String(parts[0])] = value }
        }
        return figures
    }
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
