import BatonAMQP
import Foundation
import Histogram
import Synchronization

/// Pushes checkouts into a mesh (the real services or the bare relays) at a chosen pace, and times each
/// workflow from its publish until its completion arrives on the sink queue.
///
/// The checkouts are the storefront's JSON; the completion is any message on the sink queue whose JSON body
/// has the checkout's `checkout_id` (the real `orders.OrderCompleted`, or the relays' forwarded body).
struct Workload: Sendable {
    /// Where checkouts go in.
    var exchange: String
    var routingKey: String
    /// Where completions come out (already bound).
    var sinkQueue: String
    /// Prefix of this run's checkout ids; the index follows it.
    var runID: String

    /// Publishes `count` checkouts, at `rate` per second (`nil`: as fast as confirms allow), and waits until
    /// every one has completed.
    /// - Throws: If a publish fails, or no completion arrives for `stallTimeout`.
    func run(
        count: Int,
        rate: Double?,
        connection: AMQPConnection,
        progress: ProgressBar,
        stallTimeout: Duration = .seconds(60)
    ) async throws -> WorkloadResult {
        let clock = ContinuousClock()
        let sent = SendTimes(count: count)
        let consumer = try await connection.consume(queue: sinkQueue, prefetch: 1_000)
        let started = clock.now
        async let completions = collect(
            count: count,
            from: consumer,
            sent: sent,
            started: started,
            progress: progress,
            stall: stallTimeout
        )
        do {
            try await publish(count: count, rate: rate, connection: connection, sent: sent, started: started)
        } catch {
            await consumer.cancel()
            _ = try? await completions
            throw error
        }
        let (histogram, timeline, finished) = try await completions
        await consumer.cancel()
        let seconds = (finished - started).seconds
        return WorkloadResult(
            workflows: count,
            offeredRate: rate,
            seconds: seconds,
            workflowsPerSecond: Double(count) / seconds,
            latency: LatencySummary(histogram),
            timeline: timeline
        )
    }

    private func publish(
        count: Int,
        rate: Double?,
        connection: AMQPConnection,
        sent: SendTimes,
        started: ContinuousClock.Instant
    ) async throws {
        let chunkSize = 100
        let lanes = 8  // chunks awaiting their confirms at once
        try await withThrowingTaskGroup(of: Void.self) { group in
            var published = 0
            var inFlight = 0
            while published < count {
                let due = rate.map { min(count, Int($0 * (ContinuousClock.now - started).seconds) + 1) } ?? count
                while published < due {
                    let indices = published..<min(due, published + chunkSize)
                    let messages = indices.map(checkout)
                    sent.stamp(indices)
                    group.addTask {
                        for result in await connection.publish(contentsOf: messages) { try result.get() }
                    }
                    published = indices.upperBound
                    inFlight += 1
                    if inFlight >= lanes {
                        try await group.next()
                        inFlight -= 1
                    }
                }
                if rate != nil { try await Task.sleep(for: .milliseconds(2)) }
            }
            try await group.waitForAll()
        }
    }

    private func checkout(_ index: Int) -> AMQPOutgoingMessage {
        let body =
            #"{"checkout_id":"\#(runID)-\#(index)","customer":"Benchmark customer \#(index)","#
            + #""shipping_address":"\#(index) Benchmark Street, London","lines":[{"sku":"\#(Workload.sku)","quantity":1}]}"#
        return AMQPOutgoingMessage(
            exchange: exchange,
            routingKey: routingKey,
            body: Array(body.utf8),
            properties: AMQPProperties(contentType: "application/json", messageID: "\(runID)-\(index)")
        )
    }

    private struct Completion: Decodable {
        var checkout_id: String
    }

    private func collect(
        count: Int,
        from consumer: AMQPConsumer,
        sent: SendTimes,
        started: ContinuousClock.Instant,
        progress: ProgressBar,
        stall: Duration
    ) async throws -> (Histogram<UInt64>, [LatencySecond], ContinuousClock.Instant) {
        var histogram = Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
        var bySecond: [[UInt64]] = []  // the latencies (µs) of the workflows completed in each second of the run
        var done = [Bool](repeating: false, count: count)
        var completed = 0
        var last = ContinuousClock.now
        let prefix = runID + "-"
        let decoder = JSONDecoder()
        while completed < count {
            guard let delivery = try await consumer.next(timeout: .seconds(1)) else {
                if ContinuousClock.now - last > stall {
                    throw BenchmarkError(
                        "no workflow completed for \(stall) (\(completed) of \(count) done); see the service logs"
                    )
                }
                continue
            }
            let now = ContinuousClock.now
            delivery.ack()
            guard let id = try? decoder.decode(Completion.self, from: Data(delivery.body)).checkout_id,
                id.hasPrefix(prefix), let index = Int(id.dropFirst(prefix.count)), index >= 0, index < count,
                !done[index], let start = sent.time(of: index)
            else { continue }
            done[index] = true
            completed += 1
            last = now
            let latency = UInt64(max(0, (now - start).seconds * 1e6))
            _ = histogram.record(latency)
            let second = max(0, Int((now - started).seconds))
            while bySecond.count <= second { bySecond.append([]) }
            bySecond[second].append(latency)
            progress.update(completed)
        }
        return (histogram, bySecond.enumerated().map { LatencySecond(second: $0, latencies: $1) }, last)
    }

    /// The one SKU every benchmark checkout buys.
    static let sku = "bench-book"
}

/// When each workflow's checkout was handed to the broker; written by the publisher, read by the sink.
final class SendTimes: Sendable {
    private let times: Mutex<[ContinuousClock.Instant?]>

    init(count: Int) { times = Mutex([ContinuousClock.Instant?](repeating: nil, count: count)) }

    func stamp(_ indices: Range<Int>) {
        let now = ContinuousClock.now
        times.withLock { for index in indices { $0[index] = now } }
    }

    func time(of index: Int) -> ContinuousClock.Instant? { times.withLock { $0[index] } }
}

/// One run of a workload: throughput and end-to-end latency.
struct WorkloadResult: Codable, Sendable {
    var workflows: Int
    /// The pace asked for (workflows/s), `nil` at maximum rate.
    var offeredRate: Double?
    var seconds: Double
    var workflowsPerSecond: Double
    var latency: LatencySummary
    /// The latency second by second of the run, by when the workflows completed: where a stall shows.
    var timeline: [LatencySecond]

    /// The seconds whose p99 exceeded `threshold` milliseconds, worst first.
    func slowSeconds(over threshold: Double) -> [LatencySecond] {
        timeline.filter { $0.p99 > threshold }.sorted { $0.p99 > $1.p99 }
    }
}

/// The workflows that completed in one second of a run, and their latency.
struct LatencySecond: Codable, Sendable {
    /// Seconds from the run's first publish to the start of this one.
    var second: Int
    var completed: Int
    /// Milliseconds; zero when none completed.
    var p50: Double
    var p99: Double
    var max: Double

    init(second: Int, latencies: [UInt64]) {
        let sorted = latencies.sorted()
        func percentile(_ fraction: Double) -> Double {
            guard !sorted.isEmpty else { return 0 }
            return Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]) / 1_000
        }
        self.second = second
        completed = sorted.count
        p50 = percentile(0.5)
        p99 = percentile(0.99)
        max = Double(sorted.last ?? 0) / 1_000
    }
}

/// Percentiles of a latency histogram, in milliseconds.
struct LatencySummary: Codable, Sendable {
    var p50: Double
    var p95: Double
    var p99: Double
    var max: Double

    init(_ histogram: Histogram<UInt64>) {
        func milliseconds(_ microseconds: UInt64) -> Double { Double(microseconds) / 1_000 }
        p50 = milliseconds(histogram.valueAtPercentile(50))
        p95 = milliseconds(histogram.valueAtPercentile(95))
        p99 = milliseconds(histogram.valueAtPercentile(99))
        max = milliseconds(histogram.max)
    }
}

struct BenchmarkError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
