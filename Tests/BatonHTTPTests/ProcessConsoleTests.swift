import Baton
import BatonHTTP
import BatonNode
import BatonTestSupport
import BatonTesting
import Foundation
import Logging
import ServiceLifecycle
import Testing

struct TicketOpened: Event {
    static let messageName = "desk.TicketOpened"
    var ticketID: String
    var title: String
}
struct TicketClosed: Event {
    static let messageName = "desk.TicketClosed"
    var ticketID: String
}
struct NotifyAgent: Command {
    static let messageName = "agents.NotifyAgent"
    var ticketID: String
}
struct WithdrawNotice: Command {
    static let messageName = "agents.WithdrawNotice"
    var ticketID: String
}
struct Ticket: ProcessState {
    var title = ""
}

/// The console of a running node (in-memory store, in-process transport) over HTTP: keyset pages, bad filters,
/// unknown ids, escaping, and actions refused without the token, from another site or origin, and done with it.
@Suite(.serialized) struct ProcessConsoleTests {
    static let token = "a-console-token-for-tests"

    static let tickets = ProcessManager<Ticket>(name: "tickets", listensTo: ["desk"]) { pm in
        pm.start(on: TicketOpened.self, correlation: .field(\.ticketID)) { event, process in
            process.state.title = event.title
            process.send(NotifyAgent(ticketID: event.ticketID))
            process.onCompensation(WithdrawNotice(ticketID: event.ticketID))
        }
        pm.end(on: TicketClosed.self, correlation: .field(\.ticketID))
    }

    /// A running node with its console; `body` gets the node, the transport and the console's port.
    func withConsole(
        token: String? = token,
        _ body: (Node, InProcessTransport, Int) async throws -> Void
    ) async throws {
        let transport = InProcessTransport()
        let logger = Logger(label: "console-test")
        let host = try ProcessManagerHost(Self.tickets)
        let node = Node(
            configuration: Node.Configuration(name: "desk"),
            store: InMemoryStore(),
            transport: transport,
            handlers: [host],
            logger: logger
        )
        let listening = AsyncStream.makeStream(of: Int.self)
        let endpoint = OperationsEndpoint(
            host: "127.0.0.1",
            port: 0,
            metrics: .init(),
            readiness: { node.readiness },
            onListening: { listening.continuation.yield($0) },
            console: ProcessConsole(node: node, hosts: [host], token: token, logger: logger),
            logger: logger
        )
        try await transport.declare(node.topology)
        let group = ServiceGroup(services: [endpoint, node], logger: logger)
        let running = Task { try await group.run() }
        var ports = listening.stream.makeAsyncIterator()
        let port = try #require(await ports.next())
        do {
            try await body(node, transport, port)
        } catch {
            await group.triggerGracefulShutdown()
            _ = try? await running.value
            throw error
        }
        await group.triggerGracefulShutdown()
        try await running.value
    }

    func publish<E: Event>(_ event: E, id: String, on transport: InProcessTransport) async throws {
        let envelope = Envelope(
            messageID: id,
            messageType: E.messageType,
            timestamp: Date(),
            payload: MessageRegistry.encode(event)
        )
        try await transport.publish([
            OutgoingMessage(exchange: Routing.eventExchange, routingKey: E.messageName, envelope: envelope)
        ])[0].get()
    }

    func instances(_ node: Node) async throws -> [InstanceSummary] {
        try await node.store.read { try $0.instances(of: "tickets", matching: InstanceFilter(), limit: 1000) }
    }

    @Test func pagesListEveryInstanceOnceAndBadInputIsRefusedWithItsReason() async throws {
        try await withConsole { node, transport, port in
            for index in 1...120 {
                try await publish(
                    TicketOpened(ticketID: "t-\(index)", title: "printer \(index)"),
                    id: "open-\(index)",
                    on: transport
                )
            }
            for index in 1...30 {
                try await publish(TicketClosed(ticketID: "t-\(index)"), id: "close-\(index)", on: transport)
            }
            let settled = try await eventually {
                let all = try await instances(node)
                return all.count == 120 && all.filter { $0.lifecycle == .completed }.count == 30
            }
            #expect(settled)

            // Keyset pages of 50: every instance once, in the store's order.
            var listed: [String] = []
            var path = "console/instances?limit=50"
            while true {
                let (status, body, _) = try await HTTPProbe.request(port: port, path)
                #expect(status == 200)
                listed += Self.matches(of: #"data-instance="([^"]+)""#, in: body)
                guard let next = Self.matches(of: #"id="next-page" href="/([^"]+)""#, in: body).first else { break }
                path = next.replacingOccurrences(of: "&amp;", with: "&")
            }
            #expect(listed == (try await instances(node)).map(\.instanceID))
            #expect(Set(listed).count == 120)
            let completed = try await HTTPProbe.request(port: port, "console/instances?lifecycle=completed&limit=500")
            #expect(Self.matches(of: #"data-instance="([^"]+)""#, in: completed.body).count == 30)
            #expect(completed.body.contains(#"data-lifecycle="completed"><b>30</b>"#))
            let found = try await HTTPProbe.request(port: port, "console/instances?key=t-7")
            #expect(Self.matches(of: #"data-instance="([^"]+)""#, in: found.body) == ["t-7"])

            for (query, reason) in [
                ("lifecycle=sideways", "not 'sideways'"), ("older=soon", "not 'soon'"),
                ("after=yesterday", "not 'yesterday'"),
                ("limit=0", "not '0'"), ("limit=5000", "not '5000'"), ("pm=nobody", "no process manager 'nobody'"),
            ] {
                let (status, body, _) = try await HTTPProbe.request(port: port, "console/instances?\(query)")
                #expect(status == 400 && body.contains(ProcessDiagram.escapeMarkup(reason)), "\(query)")
            }
            let unknown = try await HTTPProbe.request(port: port, "console/instances/t-999")
            #expect(unknown.status == 404 && unknown.body.contains("no instance &#39;t-999&#39;"))
            #expect(try await HTTPProbe.request(port: port, "console/dead-letters/77").status == 404)
            #expect(try await HTTPProbe.request(port: port, "console/dead-letters/x").status == 404)
        }
    }

    @Test func whatAnInstanceCarriesIsShownAsText() async throws {
        try await withConsole { node, transport, port in
            try await publish(
                TicketOpened(ticketID: "t-x", title: "<img src=x onerror=alert(1)> & \"quotes\""),
                id: "open-x",
                on: transport
            )
            #expect(try await eventually { try await instances(node).count == 1 })
            let (status, body, _) = try await HTTPProbe.request(port: port, "console/instances/t-x")
            #expect(status == 200)
            #expect(!body.contains("<img src=x"), "no markup from the message")
            #expect(body.contains("&lt;img src=x onerror=alert(1)&gt; &amp;"))
            #expect(body.contains(#"data-step="start:desk.TicketOpened.v1" data-visited="1""#), "its path")
        }
    }

    @Test func aPurgedInstanceShowsItsTombstone() async throws {
        try await withConsole { node, transport, port in
            try await publish(TicketOpened(ticketID: "t-p", title: "old"), id: "open-p", on: transport)
            try await publish(TicketClosed(ticketID: "t-p"), id: "close-p", on: transport)
            #expect(try await eventually { try await instances(node).first?.lifecycle == .completed })
            let purged = try await node.store.write {
                try $0.purgeInstances(of: "tickets", closedBefore: .distantFuture, at: Date(), limit: 10)
            }
            #expect(purged == ["t-p"])
            let (status, body, _) = try await HTTPProbe.request(port: port, "console/instances/t-p")
            #expect(status == 200 && body.contains(#"id="purged""#), "\(body)")
            #expect(body.contains(#"id="lifecycle">completed<"#) && body.contains(#"id="version">2<"#))
            #expect(body.contains("&quot;title&quot; : &quot;old&quot;"), "its state, as JSON")
        }
    }

    @Test func actionsNeedTheTokenFromTheConsolesOwnPages() async throws {
        try await withConsole { node, transport, port in
            try await publish(TicketOpened(ticketID: "t-1", title: "printer"), id: "open-1", on: transport)
            #expect(try await eventually { try await instances(node).first?.lifecycle == .started })
            let abort = "console/instances/t-1/abort"
            let form = ["reason": "duplicate ticket", "token": Self.token]
            for (headers, fields, reason) in [
                ([:], ["reason": "duplicate ticket"], "token is wrong or missing"),
                (
                    [:], ["reason": "duplicate ticket", "token": "a-console-token-for-test"],
                    "token is wrong or missing"
                ),
                (["Sec-Fetch-Site": "cross-site"], form, "another site (cross-site)"),
                (["Origin": "http://evil.example"], form, "another origin (http://evil.example)"),
            ] {
                let (status, body, _) = try await HTTPProbe.request(port: port, abort, form: fields, headers: headers)
                #expect(status == 403 && body.contains(reason), "\(headers) \(fields)")
            }
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await instances(node).first?.lifecycle == .started, "nothing refused changed anything")

            let noReason = try await HTTPProbe.request(port: port, abort, form: ["token": Self.token, "reason": " "])
            #expect(noReason.status == 400 && noReason.body.contains("must say why"))
            let (status, body, url) = try await HTTPProbe.request(
                port: port,
                abort,
                form: form,
                headers: ["Origin": "http://127.0.0.1:\(port)", "Sec-Fetch-Site": "same-origin"]
            )
            #expect(status == 200 && url.contains("/console/instances/t-1?") && body.contains("abort requested"))
            #expect(try await eventually { try await instances(node).first?.lifecycle == .failed })
            let transitions = try await node.store.read { try $0.transitions(of: "tickets", instance: "t-1") }
            #expect(transitions.last?.reason == "duplicate ticket")
            #expect(transitions.last?.issued.map(\.envelope.messageName) == ["agents.WithdrawNotice"], "compensated")
        }
    }

    @Test func withoutATokenTheConsoleOnlyReads() async throws {
        try await withConsole(token: nil) { node, transport, port in
            try await publish(TicketOpened(ticketID: "t-1", title: "printer"), id: "open-1", on: transport)
            #expect(try await eventually { try await instances(node).count == 1 })
            let page = try await HTTPProbe.request(port: port, "console/instances/t-1")
            #expect(page.body.contains("Actions are off") && !page.body.contains("abort-form"))
            let refused = try await HTTPProbe.request(
                port: port,
                "console/instances/t-1/abort",
                form: ["reason": "x", "token": ""]
            )
            #expect(refused.status == 403 && refused.body.contains("started without BATON_CONSOLE_TOKEN"))
        }
        #expect(throws: ConsoleTokenError.self) { try ProcessConsole.token(from: ["BATON_CONSOLE_TOKEN": "short"]) }
        #expect(try ProcessConsole.token(from: [:]) == nil)
    }

    @Test func aDeadLetterIsReplayedFromItsPage() async throws {
        try await withConsole { node, transport, port in
            let envelope = Envelope(
                messageID: "broken-1",
                messageType: TicketOpened.messageType,
                timestamp: Date(),
                payload: Data(#"{"ticket_id": 7}"#.utf8)
            )
            try await transport.publish([
                OutgoingMessage(
                    exchange: Routing.eventExchange,
                    routingKey: TicketOpened.messageName,
                    envelope: envelope
                )
            ])[0].get()
            let letters = { try await node.store.read { try $0.deadLetters(includeReplayed: true, limit: 10) } }
            #expect(try await eventually { try await letters().count == 1 })
            let id = try #require(try await letters().first?.id)
            let list = try await HTTPProbe.request(port: port, "console/dead-letters")
            #expect(list.body.contains(#"data-dead-letter="\#(id)""#))
            let refused = try await HTTPProbe.request(port: port, "console/dead-letters/\(id)/replay", form: [:])
            #expect(refused.status == 403)
            let replayed = try await HTTPProbe.request(
                port: port,
                "console/dead-letters/\(id)/replay",
                form: ["token": Self.token]
            )
            #expect(replayed.status == 200 && replayed.body.contains("dead letter \(id) replayed"))
            #expect(try await letters().first { $0.id == id }?.replayedAt != nil)
            let again = try await HTTPProbe.request(
                port: port,
                "console/dead-letters/\(id)/replay",
                form: ["token": Self.token]
            )
            #expect(again.status == 404, "replayed once")
        }
    }

    static func matches(of pattern: String, in text: String) -> [String] {
        let expression = try! NSRegularExpression(pattern: pattern)
        return expression.matches(in: text, range: NSRange(text.startIndex..., in: text)).compactMap {
            Range($0.range(at: 1), in: text).map { String(text[$0]) }
        }
    }
}
