import Baton
import BatonNode
import BatonTestSupport
import BatonTesting
import Foundation
import Logging
import PostgresNIO
import Testing

@testable import BatonPostgres

/// The PostgreSQL store against the private server the README's test command starts
/// (`Deploy/local/postgres.sh`): the whole store conformance suite, its races on two connections in parallel,
/// each case in a schema of its own.
@Suite struct PostgresStoreTests {
    static var configuration: PostgresConnection.Configuration {
        get throws { try PostgresDatabaseURL(TestDatabase.url).configuration() }
    }

    static func makeStore(
        schema: String = "conformance_\(UInt32.random(in: 0...UInt32.max))",
        outboxLease: Duration = .seconds(15)
    ) async throws -> PostgresStore {
        try await PostgresStore.connect(
            configuration: try configuration,
            schema: schema,
            outboxLease: outboxLease,
            logger: Logger(label: "postgres-test")
        )
    }

    /// Runs `body` with `store`, then closes it, whether `body` threw or not: an open connection must not be
    /// deinitialized (it would crash the run).
    static func using(_ store: PostgresStore, _ body: (PostgresStore) async throws -> Void) async throws {
        do {
            try await body(store)
        } catch {
            await store.close()
            throw error
        }
        await store.close()
    }

    /// Runs `body` with a store connected to a schema that `earlierRelease` first brought back to an earlier
    /// release's tables (and gave its rows), so that connecting upgrades it.
    static func usingUpgradedStore(
        from earlierRelease: @escaping @Sendable (PostgresUnitOfWork) throws -> Void,
        _ body: (PostgresStore) async throws -> Void
    ) async throws {
        let schema = "upgrade_\(UInt32.random(in: 0...UInt32.max))"
        try await using(try await makeStore(schema: schema)) { first in
            try await first.write { try earlierRelease($0 as! PostgresUnitOfWork) }
        }
        try await using(try await makeStore(schema: schema), body)
    }

    @Test(arguments: StoreConformance.Case.allCases)
    func conforms(_ check: StoreConformance.Case) async throws {
        try await Self.using(try await Self.makeStore()) { store in try await StoreConformance { store }.run(check) }
    }

    /// Tables of the release before retention (an inbox without `issued_at`, sent outbox rows kept, no order
    /// scopes) are brought under it when the store connects: old records count from when they were handled,
    /// sent rows go, pending rows get their scopes.
    @Test func tablesOfTheReleaseBeforeRetentionAreUpgraded() async throws {
        let earlierRelease: @Sendable (PostgresUnitOfWork) throws -> Void = { work in
            try work.execute(
                """
                ALTER TABLE inbox DROP COLUMN issued_at;
                ALTER TABLE outbox DROP COLUMN scope;
                INSERT INTO inbox (consumer, message_id, handled_at) VALUES ('c', 'm-1', 100000)
                """
            )
            for (id, sent) in [("sent", 2 as Int64?), ("pending", nil), ("other", nil)] {
                let envelope = Envelope(
                    messageID: id,
                    messageType: "t",
                    correlationID: "key-\(id)",
                    timestamp: Date(),
                    payload: Data("{}".utf8)
                )
                try work.query(
                    """
                    INSERT INTO outbox (message_id, exchange, routing_key, envelope, created_at, sent_at)
                    VALUES ($1, 'x', 'k', $2, 1, $3)
                    """,
                    [
                        .init(string: id), .init(bytes: [UInt8](envelope.storedRecord)),
                        sent.map { .init(int64: $0) } ?? .null,
                    ]
                )
            }
        }
        try await Self.usingUpgradedStore(from: earlierRelease) { store in
            let (handled, keys) = try await store.read {
                (try $0.hasHandled("m-1", consumer: "c"), try $0.outboxMessageIDs())
            }
            #expect(handled && keys == ["pending", "other"], "the record stays, the sent row goes")
            let pending = try await store.read { try $0.pendingOutbox(limit: 10) }
            let now = Date()
            try await store.write { try $0.markFailed([pending[0].sequence], at: now) }
            let ready = try await store.read { try $0.pendingOutbox(limit: 10, readyAt: now) }
            #expect(ready.map(\.envelope.messageID) == ["other"], "the rows got their order scopes")
            let forgotten = try await store.write {
                try $0.forgetHandled(issuedBefore: Date(timeIntervalSince1970: 101), limit: 10)
            }
            #expect(forgotten == 1, "an old record counts from when it was handled")
        }
    }

    /// Documents of the release that listed them by id (no `saved` column) are listed in the order first saved
    /// once the store connects: the rows there in the table's order, later ones after them.
    @Test func documentsOfTheReleaseListingThemByIdAreListedInTheOrderFirstSaved() async throws {
        let earlierRelease: @Sendable (PostgresUnitOfWork) throws -> Void = { work in
            try work.execute(
                """
                ALTER TABLE documents DROP COLUMN saved;
                CREATE INDEX documents_status ON documents (collection, status, id);
                INSERT INTO documents (collection, id, status, body, updated_at) VALUES
                    ('orders', 'o-2', 'open', '\\x32', 1), ('orders', 'o-1', 'open', '\\x31', 1)
                """
            )
        }
        try await Self.usingUpgradedStore(from: earlierRelease) { store in
            try await store.write {
                try $0.saveDocument(Data("0".utf8), in: "orders", id: "o-0", alias: nil, status: "open", at: Date())
            }
            let listed = try await store.read { try $0.documentBodies(in: "orders", status: "open", limit: 10) }
            #expect(listed == ["2", "1", "0"].map { Data($0.utf8) })
        }
    }
}

/// A node runs on the PostgreSQL store: a process manager's events handled once, its commands relayed.
@Suite struct PostgresNodeTests {
    struct Opened: Event {
        static let messageName = "pgtest.Opened"
        var id: String
    }
    struct Closed: Event {
        static let messageName = "pgtest.Closed"
        var id: String
    }
    struct Notify: Command {
        static let messageName = "pgtest.Notify"
        var id: String
    }
    struct Tracked: ProcessState {
        var id = ""
    }

    static let definition = ProcessManager<Tracked>(name: "tracked", listensTo: ["pgtest"]) { pm in
        pm.start(on: Opened.self, correlation: .field(\.id)) { event, process in
            process.state.id = event.id
            process.send(Notify(id: event.id))
        }
        pm.end(on: Closed.self, correlation: .field(\.id))
    }

    static func publish<E: Event>(_ event: E, id: String, to transport: InProcessTransport) async {
        let envelope = Envelope(
            messageID: id,
            messageType: E.messageType,
            timestamp: .now,
            payload: MessageRegistry.encode(event)
        )
        _ = await transport.publish([
            OutgoingMessage(exchange: Routing.eventExchange, routingKey: E.messageName, envelope: envelope)
        ])
    }

    /// A node hosting ``definition`` on `store`, its topology declared on `transport` with a queue that
    /// takes the commands it issues.
    static func node(
        _ name: String,
        on store: PostgresStore,
        _ transport: InProcessTransport,
        logger: Logger
    ) async throws -> Node {
        let node = Node(
            configuration: .init(name: name),
            store: store,
            transport: transport,
            handlers: [try ProcessManagerHost(definition)],
            logger: logger
        )
        try await transport.declare(
            Topology(
                exchanges: Routing.exchanges,
                queues: [.init("notified")],
                bindings: [.init(queue: "notified", exchange: Routing.commandExchange, bindingKey: "pgtest.#")]
            )
        )
        try await transport.declare(node.topology)
        return node
    }

    @Test func aProcessRunsOnPostgreSQL() async throws {
        let store = try await PostgresStoreTests.makeStore()
        let transport = InProcessTransport()
        let node = try await Self.node("tracked", on: store, transport, logger: Logger(label: "postgres-node-test"))
        let running = Task { try await node.run() }
        await Self.publish(Opened(id: "p-1"), id: "e-1", to: transport)
        await Self.publish(Opened(id: "p-1"), id: "e-1", to: transport)  // a redelivery
        await Self.publish(Closed(id: "p-1"), id: "e-2", to: transport)
        #expect(
            try await eventually {
                try await store.read { try $0.instances(of: "tracked") }.first?.lifecycle == .completed
            }
        )
        #expect(try await eventually { try await store.read { try $0.pendingOutboxCount() } == 0 })
        running.cancel()
        try await running.value
        #expect(transport.readyMessages("notified").map(\.envelope.messageType) == [Notify.messageType])
        #expect(try await store.read { try $0.transitions(of: "tracked", instance: "p-1") }.count == 2)
        await store.close()
    }
}
