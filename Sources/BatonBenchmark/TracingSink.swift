#if OpenTelemetry
import Foundation
import Hummingbird
import Logging
import OTel
import ServiceLifecycle
import Synchronization
import Tracing

/// Tracing on for the benchmark: swift-otel's tracer, bootstrapped for the process, exporting every span over
/// OTLP/HTTP (protobuf) to a receiver in this process that counts what arrives and drops it — what tracing costs
/// a node, short of the collector's network hop.
final class TracingSink: Sendable {
    private let receiver: ServiceGroup
    private let exporter: ServiceGroup
    private let running: [Task<Void, any Error>]
    private let spans: SpanCount

    /// What the receiver got.
    final class SpanCount: Sendable {
        let value = Mutex(0)
    }

    private init(receiver: ServiceGroup, exporter: ServiceGroup, running: [Task<Void, any Error>], spans: SpanCount) {
        self.receiver = receiver
        self.exporter = exporter
        self.running = running
        self.spans = spans
    }

    /// Starts the receiver and the exporter, and makes swift-otel's tracer the process's.
    static func start() async throws -> TracingSink {
        var logger = Logger(label: "tracing-sink")
        logger.logLevel = .warning
        let received = SpanCount()
        let router = Router()
        router.post("v1/traces") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 64 << 20)
            let count = Self.spanCount(inProtobuf: body.readableBytesView)
            received.value.withLock { $0 += count }
            return Response(status: .ok, headers: [.contentType: "application/x-protobuf"])
        }
        let listening = AsyncStream.makeStream(of: Int.self)
        let application = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { listening.continuation.yield($0.localAddress?.port ?? 0) },
            logger: logger
        )
        let receiver = ServiceGroup(services: [application], logger: logger)
        let receiving = Task { try await receiver.run() }
        var ports = listening.stream.makeAsyncIterator()
        guard let port = await ports.next() else { throw BenchmarkError("the trace receiver did not start") }

        var configuration = OTel.Configuration.default
        configuration.serviceName = "baton-benchmark"
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        configuration.traces.otlpExporter.endpoint = "http://127.0.0.1:\(port)/v1/traces"
        configuration.traces.otlpExporter.protocol = .httpProtobuf
        configuration.diagnosticLogLevel = .warning
        // Room for every span of the run: a full queue drops spans, which would make tracing look cheaper.
        configuration.traces.batchSpanProcessor.maxQueueSize = 1 << 20
        configuration.traces.batchSpanProcessor.maxExportBatchSize = 4096
        configuration.traces.batchSpanProcessor.scheduleDelay = .milliseconds(200)
        let backend = try OTel.makeTracingBackend(configuration: configuration)
        InstrumentationSystem.bootstrap(backend.factory)
        let exporter = ServiceGroup(services: [backend.service], logger: logger)
        let exporting = Task { try await exporter.run() }
        return TracingSink(receiver: receiver, exporter: exporter, running: [exporting, receiving], spans: received)
    }

    /// Stops the exporter (which sends what it holds first), then the receiver.
    /// - Returns: The spans the receiver got.
    func stop() async -> Int {
        await exporter.triggerGracefulShutdown()
        _ = try? await running[0].value
        await receiver.triggerGracefulShutdown()
        _ = try? await running[1].value
        return spans.value.withLock { $0 }
    }

    /// The spans in an OTLP `ExportTraceServiceRequest`, counted from the protobuf without decoding it all: a span
    /// is field 2 of a ScopeSpans (field 2 of a ResourceSpans, field 1 of the request).
    static func spanCount(inProtobuf bytes: some Collection<UInt8>) -> Int {
        func fields(_ bytes: ArraySlice<UInt8>) -> [(field: UInt64, value: ArraySlice<UInt8>)] {
            var found: [(UInt64, ArraySlice<UInt8>)] = []
            var index = bytes.startIndex
            func varint() -> UInt64? {
                var value: UInt64 = 0
                var shift: UInt64 = 0
                while index < bytes.endIndex {
                    let byte = bytes[index]
                    index += 1
                    value |= UInt64(byte & 0x7f) << shift
                    if byte & 0x80 == 0 { return value }
                    shift += 7
                    if shift > 63 { return nil }
                }
                return nil
            }
            while index < bytes.endIndex, let key = varint() {
                switch key & 7 {
                case 0: guard varint() != nil else { return found }
                case 1: index += 8
                case 5: index += 4
                case 2:
                    guard let length = varint(),
                        let end = bytes.index(index, offsetBy: Int(length), limitedBy: bytes.endIndex)
                    else { return found }
                    found.append((key >> 3, bytes[index..<end]))
                    index = end
                default: return found
                }
            }
            return found
        }
        func children(_ field: UInt64, of parents: [ArraySlice<UInt8>]) -> [ArraySlice<UInt8>] {
            parents.flatMap { parent in fields(parent).filter { $0.field == field }.map(\.value) }
        }
        let resourceSpans = children(1, of: [ArraySlice(Array(bytes))])
        return children(2, of: children(2, of: resourceSpans)).count
    }
}
#endif
