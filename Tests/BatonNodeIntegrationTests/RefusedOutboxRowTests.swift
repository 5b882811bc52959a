import Baton
import BatonAMQP
import BatonAMQPTransport
import BatonNode
import BatonSQLite
import BatonTestSupport
import Foundation
import Logging
import Testing

// A ticket desk: each request opens a ticket, which records two events at once.

private struct TicketRequested: Message {
    static let messageName = "desk.TicketRequested"
    var ticketID: String
}
private struct TicketOpened: Event {
    static let messageName = "desk.TicketOpened"
    var ticketID: String
}
private struct TicketAudited: Event {
    static let messageName = "desk.TicketAudited"
    var ticketID: String
}
private struct Ticket: Aggregate {
    static let category = "ticket"
    static let eventTypes: [any Event.Type] = [TicketOpened.self, TicketAudited.self]
    var isOpen = false
    mutating func apply(_ event: any Event) {
        if event is TicketOpened { isOpen = true }
    }
}

/// The relay against the real broker when the broker refuses some rows: a least-privilege deployment (a topic
/// permission lets the node publish `desk.TicketOpened` but not `desk.TicketAudited`).
@Suite struct RefusedOutboxRowTests {
    @Test func anOutboxRowTheBrokerRefusesDoesNotHoldUpTheOthers() async throws {
        let virtualHost = TestBroker.unique("refused-row")
        let user = TestBroker.unique("relay")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(virtualHost)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try await TestBroker.makeVirtualHost(virtualHost)
        try await TestBroker.ctl("add_user", user, "relay-secret")
        do {
            try await run(virtualHost: virtualHost, user: user, directory: directory)
        } catch {
            await cleanUp(virtualHost: virtualHost, user: user, directory: directory)
            throw error
        }
        await cleanUp(virtualHost: virtualHost, user: user, directory: directory)
    }

    private func run(virtualHost: String, user: String, directory: URL) async throws {
        try await TestBroker.ctl("set_permissions", "-p", virtualHost, user, ".*", ".*", ".*")
        try await TestBroker.ctl(
            "set_topic_permissions",
            "-p",
            virtualHost,
            user,
            Routing.eventExchange,
            "^desk\\.TicketOpened$",
            ".*"
        )
        let base = URLComponents(string: TestBroker.url.replacingOccurrences(of: "amqp://", with: "http://"))!
        let url = "amqp://\(user):relay-secret@\(base.host!):\(base.port!)/\(virtualHost)"
        var logger = Logger(label: "refused-row")
        logger.logLevel = .critical
        let connection = try await AMQPConnection.connect(configuration: .init(url: url), logger: logger)
        let observer = try await AMQPConnection.connect(
            configuration: .init(url: TestBroker.url(virtualHost: virtualHost)),
            logger: logger
        )
        let transport = AMQPTransport(connection: connection)
        let node = Node(
            configuration: Node.Configuration(name: "desk"),
            store: try SQLiteStore(path: directory.appendingPathComponent("desk.sqlite").path),
            transport: transport,
            handlers: [
                MessageHandlerHost.subscriber(
                    TicketRequested.self,
                    name: "ticket-requests",
                    exchange: "requests",
                    routingKey: "ticket.requested"
                ) { request, context in
                    var ticket = try context.load(Ticket.self, id: request.ticketID)
                    guard !ticket.state.isOpen else { return }
                    try context.record(
                        [TicketOpened(ticketID: request.ticketID), TicketAudited(ticketID: request.ticketID)],
                        to: &ticket
                    )
                }
            ],
            logger: logger
        )
        try await transport.declare(node.topology)
        try await AMQPTransport(connection: observer).declare(
            Topology(
                queues: [.init("opened", isDurable: false)],
                bindings: [.init(queue: "opened", exchange: Routing.eventExchange, bindingKey: "desk.TicketOpened")]
            )
        )
        let running = Task { try await node.run() }
        let requests = (0..<60).map { index in
            AMQPOutgoingMessage(
                exchange: "requests",
                routingKey: "ticket.requested",
                body: Array(#"{"ticket_id":"t-\#(index)"}"#.utf8),
                properties: AMQPProperties(contentType: "application/json", messageID: "request-\(index)")
            )
        }
        for result in await observer.publish(contentsOf: requests) { try result.get() }

        // Each permitted event arrives, some maybe twice (sent again when its batch's outcome was unknown).
        let consumer = try await observer.consume(queue: "opened", prefetch: 500)
        var ids = Set<String>()
        while ids.count < 60, let delivery = try await consumer.next(timeout: .seconds(20)) {
            ids.insert(delivery.properties.messageID ?? "")
            delivery.ack()
        }
        await consumer.cancel()
        #expect(ids.count == 60, "every permitted event went out beside the refused ones (\(ids.count))")
        let refusedWait = try await eventually(timeout: .seconds(20)) {
            try await node.store.read { try $0.pendingOutboxCount() } == 60
        }
        #expect(refusedWait, "the 60 refused events wait in the outbox, not lost; the rest are marked sent")
        running.cancel()
        try await running.value
        await observer.close()
        await connection.close()
    }

    private func cleanUp(virtualHost: String, user: String, directory: URL) async {
        _ = try? await TestBroker.ctl("delete_user", user)
        await TestBroker.deleteVirtualHost(virtualHost)
        try? FileManager.default.removeItem(at: directory)
    }
}
