import BatonAMQP
import BatonNode
import BatonTestSupport
import Logging
import Testing

@testable import BatonAMQPTransport

/// The RabbitMQ adapter passes the transport port's conformance suite, against the real broker the README's
/// test command starts (a connection of its own per case: some cases make the broker close a channel).
@Suite struct AMQPTransportConformanceTests {
    @Test(arguments: TransportConformance.Case.allCases)
    func conforms(_ check: TransportConformance.Case) async throws {
        try await AMQPConnection.withConnection(
            configuration: .init(url: TestBroker.url, connectionName: "transport-conformance"),
            logger: Logger(label: "transport-conformance")
        ) { connection in
            try await TransportConformance(AMQPTransport(connection: connection)).run(check)
        }
    }

    @Test func brokerRefusalsAreTheirOwnOutcome() {
        func outcome(_ code: AMQPError.Code) -> PublishOutcome {
            AMQPTransport.outcome(of: AMQPError(code: code, message: "m"))
        }
        for code in [AMQPError.Code.accessRefused, .notFound, .preconditionFailed, .notAllowed, .brokerClosedChannel] {
            #expect(outcome(code) == .refused(AMQPError(code: code, message: "m").description))
        }
        #expect(outcome(.outcomeUnknown) == .unknown(AMQPError(code: .outcomeUnknown, message: "m").description))
        #expect(outcome(.unroutable) == .failed(AMQPError(code: .unroutable, message: "m").description))
    }
}
