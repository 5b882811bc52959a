import Baton
import BatonNode
import BatonSQLite
import Benchmark
import Foundation
import Logging
import Synchronization

// The hot paths of one handled message: the envelope in and out of JSON, the payload through the registry,
// the process manager's pure decision, and the unit of work that commits it with its inbox record.

struct OrderConfirmed: Event {
    static let messageName = "bench.OrderConfirmed"
    var orderID: String
    var address: String
}

struct ReserveInventory: Command {
    static let messageName = "benchstock.ReserveInventory"
    var orderID: String
}

struct Fulfillment: ProcessState {
    var orderID = ""
    var address = ""
}

let fulfillment = ProcessManager<Fulfillment>(name: "fulfillment", listensTo: ["bench"]) { pm in
    pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { event, process in
        process.state = Fulfillment(orderID: event.orderID, address: event.address)
        process.send(ReserveInventory(orderID: event.orderID))
        process.schedule("step-timeout", after: .seconds(30))
    }
    pm.onTimer("step-timeout") { process in
        process.markAsFailed(reason: "step timed out")
    }
}

func confirmed(_ index: Int) -> Envelope {
    Envelope(
        messageID: "msg-\(index)",
        messageType: OrderConfirmed.messageType,
        correlationID: "ord-\(index)",
        timestamp: Date(),
        payload: MessageRegistry.encode(OrderConfirmed(orderID: "ord-\(index)", address: "221B Baker Street, London"))
    )
}

let registry: MessageRegistry = {
    var registry = MessageRegistry()
    registry.register(OrderConfirmed.self)
    return registry
}()

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, .mallocCountTotal],
        maxDuration: .seconds(2),
        maxIterations: 100_000
    )

    let envelope = confirmed(1)
    let json = try! JSONEncoder.baton.encode(envelope)

    Benchmark("Envelope encode (JSON)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! JSONEncoder.baton.encode(envelope)) }
    }

    let payload = OrderConfirmed(orderID: "ord-1", address: "221B Baker Street, London")
    Benchmark("Payload encode (JSONEncoder.baton)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! JSONEncoder.baton.encode(payload)) }
    }

    Benchmark("Payload encode (WireJSON)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! WireJSON.encode(payload)) }
    }

    let payloadJSON = try! WireJSON.encode(payload)
    Benchmark("Payload decode (JSONDecoder.baton)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try! JSONDecoder.baton.decode(OrderConfirmed.self, from: payloadJSON))
        }
    }

    Benchmark("Payload decode (WireJSON)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! WireJSON.decode(OrderConfirmed.self, from: payloadJSON)) }
    }

    Benchmark("Envelope decode (JSON)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! JSONDecoder.baton.decode(Envelope.self, from: json)) }
    }

    Benchmark("Payload decode (registry)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! registry.decode(envelope)) }
    }

    let engine = try! ProcessEngine(fulfillment)
    let message = try! registry.decode(envelope)
    let now = Date()
    Benchmark("Process manager handle (engine, pure)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try! engine.handle(message, envelope: envelope, instanceID: "ord-1", instance: nil, now: now))
        }
    }

    let fixture = try! CommitFixture()
    Benchmark(
        "Unit of work commit (PM handle + inbox, SQLite on disk)",
        configuration: .init(maxDuration: .seconds(3), maxIterations: 5_000, teardown: { fixture.remove() })
    ) { benchmark in
        for _ in benchmark.scaledIterations {
            let envelope = confirmed(fixture.nextIndex())
            let message = try registry.decode(envelope)
            try await fixture.store.write { work in
                try fixture.host.handle(message, envelope: envelope, in: work, now: Date(), logger: fixture.logger)
                try work.markHandled(envelope.messageID, consumer: "benchmark", issuedAt: Date(), at: Date())
            }
        }
    }
}

/// A store on disk that the commit benchmark writes new instances into, one transaction per iteration.
final class CommitFixture: Sendable {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("baton-hot-\(UUID().uuidString)")
    let store: SQLiteStore
    let host: ProcessManagerHost<Fulfillment>
    let logger = Logger(label: "benchmark")
    private let counter = Mutex(0)

    init() throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        store = try SQLiteStore(path: directory.appendingPathComponent("store.sqlite").path)
        host = try ProcessManagerHost(fulfillment)
    }

    func nextIndex() -> Int {
        counter.withLock {
            $0 += 1
            return $0
        }
    }

    func remove() { try? FileManager.default.removeItem(at: directory) }
}
