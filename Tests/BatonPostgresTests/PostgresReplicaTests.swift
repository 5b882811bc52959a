import Baton
import BatonNode
import BatonTestSupport
import BatonTesting
import Dispatch
import Foundation
import Logging
import MetricsTestKit
import Testing

@testable import BatonPostgres

/// Replicas of one service share a PostgreSQL store: two store objects on one schema stand for two processes.
/// What one claims the other skips — due timers and held messages while the claiming transaction runs, outbox
/// rows for the lease — and a dead holder's lease runs out.
@Suite struct PostgresReplicaTests {
    typealias Conformance = StoreConformance

    /// Two stores on one new schema, as two replicas of a service would open it.
    static func replicas(outboxLease: Duration = .seconds(15)) async throws -> (PostgresStore, PostgresStore) {
        let schema = "replicas_\(UInt32.random(in: 0...UInt32.max))"
        let first = try await PostgresStoreTests.makeStore(schema: schema, outboxLease: outboxLease)
        let second = try await PostgresStoreTests.makeStore(schema: schema, outboxLease: outboxLease)
        return (first, second)
    }

    /// Runs `holding` in a transaction of `first` and, while it still runs (between its claim and its commit),
    /// `meanwhile` in a transaction of `second`.
    static func whileHolding<Held: Sendable, Seen: Sendable>(
        _ first: PostgresStore,
        _ holding: @escaping @Sendable (any UnitOfWork) throws -> Held,
        _ second: PostgresStore,
        _ meanwhile: @escaping @Sendable (any UnitOfWork) throws -> Seen
    ) async throws -> (Held, Seen) {
        let claimed = DispatchSemaphore(value: 0)
        let looked = DispatchSemaphore(value: 0)
        async let held = first.write { work in
            let value = try holding(work)
            claimed.signal()
            looked.wait()  // on the store's own lane thread, never on the cooperative pool
            return value
        }
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                claimed.wait()
                continuation.resume()
            }
        }
        let seen: Seen
        do {
            seen = try await second.write(meanwhile)
        } catch {
            looked.signal()
            _ = try? await held
            throw error
        }
        looked.signal()
        return (try await held, seen)
    }

    @Test func aDueTimerIsClaimedByOneReplicaWhileTheOtherSkipsIt() async throws {
        let (first, second) = try await Self.replicas()
        let due = Conformance.epoch.addingTimeInterval(5)
        try await first.write { work in
            try Conformance.record(Conformance.transition(1, timers: [.schedule(name: "t", dueAt: due)]), work)
            try Conformance.record(
                Conformance.transition(1, timers: [.schedule(name: "u", dueAt: due)]),
                work,
                instance: "i-2"
            )
        }
        let (held, seen) = try await Self.whileHolding(
            first,
            { work in try work.claimDueTimers(before: due, limit: 1) },
            second,
            { work in try work.claimDueTimers(before: due, limit: 10) }
        )
        #expect(held.count == 1)
        #expect(seen.count == 1, "the other replica takes the timer not held")
        #expect(Set((held + seen).map(\.instanceID)) == ["i-1", "i-2"], "each timer went to one replica")
        #expect(
            try await second.read { try $0.dueTimers(before: due, limit: 10) }.count == 2,
            "a claim changes nothing"
        )
        await first.close()
        await second.close()
    }

    @Test func aHeldMessageIsRetriedByOneReplica() async throws {
        let (first, second) = try await Self.replicas()
        let now = Conformance.epoch.addingTimeInterval(60)
        try await first.write { work in
            try work.park(
                ParkedMessage(
                    orderingKey: "pm/i-1",
                    messageID: "m-1",
                    exchange: "x",
                    routingKey: "k",
                    messageType: "test.Happened.v1",
                    contentType: "application/json",
                    correlationID: nil,
                    timestamp: Conformance.epoch,
                    headers: [:],
                    body: Data("{}".utf8),
                    attempts: 1,
                    nextAttemptAt: Conformance.epoch,
                    lastError: "failed once"
                ),
                at: Conformance.epoch
            )
        }
        let (held, seen) = try await Self.whileHolding(
            first,
            { work in try work.claimDueParkedMessages(before: now, limit: 10).map(\.messageID) },
            second,
            { work in try work.claimDueParkedMessages(before: now, limit: 10).map(\.messageID) }
        )
        #expect(held == ["m-1"])
        #expect(seen.isEmpty, "held by the first replica's transaction")
        await first.close()
        await second.close()
    }

    @Test func replicasChangingOneDocumentLoseNoUpdate() async throws {
        let (first, second) = try await Self.replicas()
        try await first.write { try $0.save(["count": 0], in: "counters", id: "c", at: Date()) }
        let committed = await withTaskGroup(of: Bool.self) { group in
            for index in 0..<40 {
                group.addTask {
                    let store = index.isMultiple(of: 2) ? first : second
                    let increment: @Sendable (any UnitOfWork) throws -> Void = { work in
                        var counter = try work.document([String: Int].self, in: "counters", idOrAlias: "c") ?? [:]
                        counter["count", default: 0] += 1  // read to change: four transactions at once
                        try work.save(counter, in: "counters", id: "c", at: Date())
                    }
                    return (try? await store.write(increment)) != nil
                }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        let count = try await first.read { try $0.document([String: Int].self, in: "counters", idOrAlias: "c") }
        #expect(count?["count"] == committed, "every committed change counted")
        #expect(committed == 40)
        await first.close()
        await second.close()
    }

    @Test func outboxRowsAreLeasedToTheReplicaThatQueuedThemUntilTheLeaseEnds() async throws {
        let (first, second) = try await Self.replicas(outboxLease: .seconds(4))
        let (_, queued) = try await first.writeHandingOverOutbox { work in
            for index in 0..<3 { try work.enqueue(Conformance.envelope("m-\(index)"), exchange: "x", routingKey: "k") }
        }
        #expect(queued.count == 3)
        #expect(try await second.claimOutbox(limit: 10, readyAt: Date()).rows.isEmpty, "leased to the first")
        let own = try await first.claimOutbox(limit: 10, readyAt: Date()).rows
        #expect(own.map(\.envelope.messageID) == ["m-0", "m-1", "m-2"], "its own rows, in order")
        // The first replica publishes one and dies before marking the others.
        try await first.write { try $0.removeSent([own[0].sequence]) }
        #expect(try await second.claimOutbox(limit: 10, readyAt: Date()).rows.isEmpty, "the lease still runs")
        try await Task.sleep(for: .seconds(4.5))
        let taken = try await second.claimOutbox(limit: 10, readyAt: Date()).rows
        #expect(taken.map(\.envelope.messageID) == ["m-1", "m-2"], "what the dead replica left behind")
        #expect(try await first.claimOutbox(limit: 10, readyAt: Date()).rows.isEmpty, "now leased to the second")
        // A failed publish gives the lease up: after its retry delay, any replica may try.
        try await second.write { try $0.markFailed([taken[0].sequence], at: Date()) }
        try await Task.sleep(for: .milliseconds(150))
        let retried = try await first.claimOutbox(limit: 10, readyAt: Date()).rows
        #expect(retried.map(\.envelope.messageID) == ["m-1"])
        await first.close()
        await second.close()
    }

    /// A row of an order scope whose earlier row another replica holds (its lease runs) is neither claimed nor
    /// handed on: the later one goes only once the earlier one is sent, whichever replica queued either.
    @Test func aRowBehindAnotherReplicasLeasedRowOfItsScopeWaits() async throws {
        let (first, second) = try await Self.replicas()
        let (_, earlier) = try await first.writeHandingOverOutbox { work in
            try work.enqueue(Conformance.envelope("a-0", key: "a"), exchange: Routing.eventExchange, routingKey: "x.E")
        }
        let (_, later) = try await second.writeHandingOverOutbox { work in
            try work.enqueue(Conformance.envelope("a-1", key: "a"), exchange: Routing.eventExchange, routingKey: "x.E")
            try work.enqueue(Conformance.envelope("b-0", key: "b"), exchange: Routing.eventExchange, routingKey: "x.E")
        }
        let claimed = try await second.claimOutbox(limit: 10, readyAt: Date()).rows
        #expect(claimed.map(\.envelope.messageID) == ["b-0"], "a-1 waits behind the first replica's a-0")
        #expect(try await second.read { try $0.outboxRowsHeldBack(later) } == [later[0].sequence])
        try await first.write { try $0.removeSent(earlier.map(\.sequence)) }
        let after = try await second.claimOutbox(limit: 10, readyAt: Date()).rows
        #expect(after.map(\.envelope.messageID) == ["a-1", "b-0"])
        #expect(try await second.read { try $0.outboxRowsHeldBack(later) }.isEmpty)
        await first.close()
        await second.close()
    }

    @Test func readersCreateNothingAndCannotWrite() async throws {
        let schema = "absent_\(UInt32.random(in: 0...UInt32.max))"
        let configuration = try PostgresStoreTests.configuration
        let logger = Logger(label: "postgres-test")
        await #expect {
            _ = try await PostgresStore.connect(
                configuration: configuration,
                schema: schema,
                access: .readOnly,
                logger: logger
            )
        } throws: { ($0 as? PostgresStoreError)?.kind == .missingSchema }
        let created = try await TestDatabase.psql(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = '\(schema)'"
        )
        #expect(created == "0", "a read creates no schema")
        let writer = try await PostgresStoreTests.makeStore(schema: schema)
        let reader = try await PostgresStore.connect(
            configuration: configuration,
            schema: schema,
            access: .readOnly,
            logger: logger
        )
        #expect(try await reader.read { try $0.pendingOutboxCount() } == 0)
        await #expect(throws: PostgresStoreError.self) {
            try await reader.write { try $0.markHandled("m-1", consumer: "c", issuedAt: Date(), at: Date()) }
        }
        #expect(try await writer.read { try $0.hasHandled("m-1", consumer: "c") } == false)
        await reader.close()
        await writer.close()
    }

    @Test func aWrongPasswordOrAnUnreachableServerIsOneClearLine() async throws {
        let logger = Logger(label: "postgres-test")
        let wrong = try PostgresDatabaseURL(TestDatabase.url(user: "baton", password: "not-the-password"))
        do {
            _ = try await PostgresStore.connect(url: wrong, logger: logger)
            Issue.record("a wrong password connected")
        } catch {
            #expect(error.kind == .refused)
            #expect(error.message.contains("password authentication failed"), "\(error.message)")
            #expect(!error.message.contains("not-the-password"))
            #expect(!error.message.contains("\n"))
        }
        var closed = wrong
        closed.port = 1  // nothing listens there
        let started = ContinuousClock.now
        do {
            _ = try await PostgresStore.connect(url: closed, logger: logger)
            Issue.record("connected to a closed port")
        } catch {
            #expect(error.kind == .unreachable)
            #expect(error.message.contains("cannot reach PostgreSQL at postgres://baton:***@"), "\(error.message)")
            #expect(!error.message.contains("\n"))
        }
        #expect(ContinuousClock.now - started < .seconds(15), "never a hang")
    }

    @Test func aStoreConnectsAgainAfterItsConnectionsWereClosed() async throws {
        let database = try await TestDatabase.create()
        let store = try await PostgresStore.connect(
            configuration: try PostgresDatabaseURL(TestDatabase.url(database: database)).configuration(),
            schema: "reconnected",
            logger: Logger(label: "postgres-test")
        )
        try await store.write { try $0.markHandled("before", consumer: "c", issuedAt: Date(), at: Date()) }
        let terminated = try await TestDatabase.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '\(database)'"
        )
        #expect(terminated == "2", "both of the store's connections")
        var failures = 0
        var written = false
        for attempt in 0..<4 where !written {
            do {
                try await store.write {
                    try $0.markHandled("after-\(attempt)", consumer: "c", issuedAt: Date(), at: Date())
                }
                written = true
            } catch {
                failures += 1
            }
        }
        #expect(written, "the store connected again")
        #expect(failures <= 2, "at most one failed transaction per broken connection")
        for _ in 0..<2 {  // both lanes, each set up as at the start: the same schema
            #expect(try await store.read { try $0.hasHandled("before", consumer: "c") })
        }
        await store.close()
        await TestDatabase.drop(database)
    }
}

/// The database goes away under a running node and comes back: the node keeps its deliveries unacknowledged,
/// tries again with a backoff (a few log lines, not a storm) and carries on by itself.
@Suite struct PostgresOutageTests {
    typealias Fixture = PostgresNodeTests

    @Test func aNodeRidesOutItsDatabaseGoingAway() async throws {
        let server = TestDatabase.PrivateServer()
        try await server.start()
        defer { Task { await server.remove() } }
        let logs = CapturedLogs()
        let store = try await PostgresStore.connect(
            url: try PostgresDatabaseURL(server.url),
            schema: "outage",
            logger: Logger(label: "postgres-test")
        )
        let transport = InProcessTransport()
        let node = try await Fixture.node("outage", on: store, transport, logger: logs.makeLogger())
        let running = Task { try await node.run() }
        func instances() async throws -> Int { try await store.read { try $0.instances(of: "tracked") }.count }

        await Fixture.publish(Fixture.Opened(id: "p-0"), id: "e-0", to: transport)
        #expect(try await eventually { try await instances() == 1 })
        #expect(node.readiness.isReady)
        try await server.stop()
        for index in 1...3 { await Fixture.publish(Fixture.Opened(id: "p-\(index)"), id: "e-\(index)", to: transport) }
        try await Task.sleep(for: .seconds(3))
        #expect(transport.unsettledCount("outage") == 3, "kept, unacknowledged, while the database is away")
        let attempts = logs.all.filter { $0.contains("batch not committed") }
        #expect((1...8).contains(attempts.count), "one line per backoff step, not a storm: \(attempts.count)")
        // Each names the database without its password: "cannot reach PostgreSQL at …", or, when a connection
        // the server closed was not known to be closed yet, "PostgreSQL at …: the connection failed".
        #expect(attempts.allSatisfy { $0.contains("PostgreSQL at postgres://baton:***@") }, "\(attempts)")
        let problems = node.readiness.problems  // the deadline loop may have found the store away too
        #expect(problems.contains { $0.hasPrefix("store: a batch could not commit") }, "\(problems)")
        #expect(problems.allSatisfy { $0.hasPrefix("store: ") }, "\(problems)")

        try await server.start()
        // Within a statement's answer timeout (30 s) even if a lane wrote into a closing connection.
        #expect(try await eventually(timeout: .seconds(60)) { try await instances() == 4 }, "it carried on")
        #expect(try await eventually { transport.unsettledCount("outage") == 0 })
        #expect(try await eventually { node.readiness.isReady }, "ready again (each loop once it commits again)")
        #expect(try await eventually { try await store.read { try $0.pendingOutboxCount() } == 0 })
        running.cancel()
        try await running.value
        await store.close()
    }
}

/// A deployment's service role: it owns a schema of its own and may create nothing else in the database
/// (`Deploy/postgres/init-roles.sh`); `serve` still creates and migrates its tables there.
@Suite struct PostgresServiceRoleTests {
    @Test func aRoleThatOwnsOnlyItsSchemaServesFromIt() async throws {
        let database = try await TestDatabase.create()
        let role = "role_\(UInt32.random(in: 0...UInt32.max))"
        try await TestDatabase.psql(
            """
            CREATE ROLE \(role) LOGIN PASSWORD 'role-secret'; REVOKE ALL ON DATABASE \(database) FROM PUBLIC;
            GRANT CONNECT ON DATABASE \(database) TO \(role); REVOKE ALL ON SCHEMA public FROM PUBLIC;
            CREATE SCHEMA \(role) AUTHORIZATION \(role);
            """,
            database: database
        )
        var url = try PostgresDatabaseURL(TestDatabase.url(database: database))
        url.username = role
        url.password = "role-secret"
        let logger = Logger(label: "postgres-test")
        let store = try await PostgresStore.connect(url: url, schema: role, logger: logger)
        try await store.write { try $0.markHandled("m-1", consumer: "c", issuedAt: Date(), at: Date()) }
        await store.close()
        await #expect(throws: PostgresStoreError.self, "no other schema may be created") {
            try await PostgresStore.connect(url: url, schema: "\(role)_other", logger: logger)
        }
        await TestDatabase.drop(database)
        _ = try? await TestDatabase.psql("DROP ROLE IF EXISTS \(role)")
    }
}

/// Replicas that lock the same rows in different orders deadlock; PostgreSQL rolls one transaction back. That is
/// a lost race, not a failure of the messages in it: the batch runs again and nothing is dead-lettered, even
/// with a retry policy that dead-letters at the first failed attempt.
@Suite struct PostgresConflictTests {
    struct Transfer: Command {
        static let messageName = "pgtest.Transfer"
        var from: String
        var to: String
    }

    /// Moves one unit between two accounts, locking `from` first, then — once the other replica had time to
    /// lock its own first row — `to`.
    static let transfer = MessageHandlerHost.command(Transfer.self, name: "transfer") { command, context in
        var from = try context.work.document([String: Int].self, in: "accounts", idOrAlias: command.from) ?? [:]
        Thread.sleep(forTimeInterval: 0.05)  // on the store's lane thread: both replicas hold their first row
        var to = try context.work.document([String: Int].self, in: "accounts", idOrAlias: command.to) ?? [:]
        from["balance", default: 0] -= 1
        to["balance", default: 0] += 1
        try context.work.save(from, in: "accounts", id: command.from, at: context.now)
        try context.work.save(to, in: "accounts", id: command.to, at: context.now)
    }

    @Test func replicasThatDeadlockDeadLetterNothingAndLoseNoTransfer() async throws {
        let logs = CapturedLogs()
        let metrics = TestMetrics()
        var configuration = Node.Configuration(name: "ledger")
        configuration.metricsFactory = metrics
        configuration.retry = RetryPolicy(maxAttempts: 1)  // a counted failure would dead-letter at once
        let transfers = 12
        let commands = (0..<transfers).map { index in
            let (from, to) = index.isMultiple(of: 2) ? ("a", "b") : ("b", "a")
            return ("t-\(index)", Transfer(from: from, to: to))
        }
        try await Self.race(
            commands,
            configuration: configuration,
            handler: Self.transfer,
            logs: logs,
            preparing: { first in
                try await first.write { work in
                    for account in ["a", "b"] {
                        try work.save(["balance": 0], in: "accounts", id: account, at: Date())
                    }
                }
            },
            checking: { first in
                let handled = { @Sendable in
                    try await first.read { work in
                        try (0..<transfers).filter { try work.hasHandled("t-\($0)", consumer: "ledger") }.count
                    }
                }
                #expect(try await eventually(timeout: .seconds(60)) { try await handled() == transfers })
                #expect(try await first.read { try $0.deadLetters(includeReplayed: true, limit: 10) }.isEmpty)
                let balances = try await first.read { work in
                    try ["a", "b"].map {
                        try work.document([String: Int].self, in: "accounts", idOrAlias: $0)?["balance"]
                    }
                }
                #expect(balances == [0, 0], "six transfers each way, none lost or doubled")
                let races = logs.all.filter { $0.contains("lost a race") }
                #expect(!races.isEmpty, "the replicas did deadlock (otherwise this test shows nothing)")
                #expect(races.allSatisfy { $0.contains("40P01") })
                // Counted once their transaction committed: the batches rolled back count nothing.
                let counted = metrics.counterTotal(label: NodeMetric.messages, dimensions: [("outcome", "handled")])
                #expect(counted == Int64(transfers), "each transfer counted once as handled")
                #expect(
                    metrics.counterTotal(label: NodeMetric.messages) == Int64(transfers),
                    "and under no other outcome"
                )
                #expect(metrics.counterTotal(label: NodeMetric.batchRetries, dimensions: [("reason", "conflict")]) >= 1)
            }
        )
    }

    /// Two nodes of one service, each on its own replica of the store and taking one command at a time, both
    /// consuming before the commands are sent one by one (under their ids); `checking` looks at the outcome,
    /// then the nodes stop and the stores close.
    static func race<C: Command>(
        _ commands: [(id: String, command: C)],
        configuration: Node.Configuration,
        handler: any NodeHandler,
        logs: CapturedLogs,
        preparing prepare: (PostgresStore) async throws -> Void = { _ in },
        checking check: (PostgresStore) async throws -> Void
    ) async throws {
        let (first, second) = try await PostgresReplicaTests.replicas()
        try await prepare(first)
        let transport = InProcessTransport()
        var configuration = configuration
        configuration.batchSize = 1
        configuration.prefetch = 1  // one command at a time each: the two replicas take turns
        let nodes = [first, second].map {
            Node(
                configuration: configuration,
                store: $0,
                transport: transport,
                handlers: [handler],
                logger: logs.makeLogger()
            )
        }
        try await transport.declare(nodes[0].topology)
        let running = nodes.map { node in Task { try await node.run() } }
        try await Task.sleep(for: .milliseconds(500))  // both consuming
        for (id, command) in commands {
            let envelope = Envelope(
                messageID: id,
                messageType: C.messageType,
                timestamp: .now,
                payload: MessageRegistry.encode(command)
            )
            _ = await transport.publish([
                OutgoingMessage(exchange: Routing.commandExchange, routingKey: C.messageName, envelope: envelope)
            ])
        }
        try await check(first)
        for task in running { task.cancel() }
        for task in running { try await task.value }
        await first.close()
        await second.close()
    }

    struct Deposit: Command {
        static let messageName = "pgtest.Deposit"
        var account: String
    }

    /// Appends an event to the account's stream at the version it read, then keeps its transaction open a
    /// moment: the other replica reads the same version meanwhile, and its insert waits for this one's commit.
    static let deposit = MessageHandlerHost.command(Deposit.self, name: "deposit") { command, context in
        let event = Envelope(
            messageID: "\(context.envelope.messageID)-deposited",
            messageType: "pgtest.Deposited.v1",
            timestamp: context.now,
            payload: Data("{}".utf8)
        )
        let version = try context.work.streamVersion(command.account)
        try context.work.append([event], to: command.account, expectedVersion: version)
        Thread.sleep(forTimeInterval: 0.05)  // on the store's lane thread, in the open transaction
    }

    /// Replicas that append to one stream at the same version: the second insert waits for the first
    /// transaction and is refused by the stream's key (SQLSTATE 23505). A lost race too: the batch runs again
    /// at the new version, with no failed attempt counted, and every deposit lands. (The same key refuses a
    /// second writer of a process instance's version.) Without 23505 as a conflict each refusal is a failed
    /// attempt of the handler, retried after a delay, and no race is logged. (A replica that reads the stream
    /// after the other's commit but before its own check gets a ``ConcurrencyError``: a failed attempt, retried.)
    @Test func replicasAppendingAtOneVersionRaceAndLoseNoEvent() async throws {
        let logs = CapturedLogs()
        var configuration = Node.Configuration(name: "bank")
        configuration.retry = RetryPolicy(maxAttempts: 5, initialDelay: .milliseconds(10))
        let deposits = 12
        let commands = (0..<deposits).map { ("d-\($0)", Deposit(account: "account-a")) }
        try await Self.race(commands, configuration: configuration, handler: Self.deposit, logs: logs) { first in
            #expect(
                try await eventually(timeout: .seconds(60)) {
                    try await first.read { try $0.streamVersion("account-a") } == Int64(deposits)
                }
            )
            let letters = try await first.read { try $0.deadLetters(includeReplayed: true, limit: 10) }
            #expect(letters.isEmpty, "\(letters.map(\.reason))")
            let races = logs.all.filter { $0.contains("lost a race") }
            #expect(!races.isEmpty, "the replicas did race (otherwise this test shows nothing)")
            #expect(races.allSatisfy { $0.contains("23505") }, "\(races.prefix(2))")
            let refusedAsFailures = logs.all.filter { $0.contains("handler failed") && $0.contains("23505") }
            #expect(refusedAsFailures.isEmpty, "\(refusedAsFailures.prefix(2))")
        }
    }
}
