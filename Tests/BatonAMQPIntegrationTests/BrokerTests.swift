import BatonTestSupport
import Foundation
import Logging
import Synchronization
import Testing

@testable import BatonAMQP

/// Against the real RabbitMQ node that the README's test command starts. Serialized: some of these
/// tests close every connection or restart the broker.
@Suite(.serialized) struct BrokerTests {
    @Test func roundTripKeepsBodyPropertiesAndHeaders() async throws {
        let queue = TestBroker.unique("round-trip")
        try await AMQPConnection.withConnection(
            configuration: TestBroker.configuration("round-trip"),
            logger: Logger(label: "t")
        ) { connection in
            try await connection.declare(AMQPTopology(queues: [.init(queue, isDurable: false)]))
            let properties = AMQPProperties(
                contentType: "application/json",
                headers: [
                    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    "attempt": .int64(3),
                    "nested": .table(["ok": true, "list": .array(["a", .int32(7)])]),
                ],
                correlationID: "order-42",
                messageID: "msg-1",
                timestamp: 1_790_000_000,
                type: "orders.OrderPlaced.v1"
            )
            let body = Array(#"{"order_id":"42"}"#.utf8)
            try await connection.publish(
                AMQPOutgoingMessage(exchange: "", routingKey: queue, body: body, properties: properties)
            )

            let consumer = try await connection.consume(queue: queue, prefetch: 10)
            let delivery = try #require(try await consumer.next(timeout: .seconds(10)))
            #expect(delivery.body == body)
            #expect(delivery.properties == properties)
            #expect(delivery.routingKey == queue && delivery.exchange == "" && !delivery.isRedelivered)
            delivery.ack()
            #expect(try await connection.deleteQueue(queue) == 0, "the ack emptied the queue")
        }
    }

    @Test func thousandsOfConfirmsInFlight() async throws {
        let queue = TestBroker.unique("confirms")
        try await AMQPConnection.withConnection(
            configuration: TestBroker.configuration("confirms"),
            logger: Logger(label: "t")
        ) { connection in
            try await connection.declare(AMQPTopology(queues: [.init(queue)]))
            // One batch of 5,000 handed over at once, and 200 tasks publishing one at a time concurrently.
            let batch = (0..<5_000).map {
                AMQPOutgoingMessage(exchange: "", routingKey: queue, body: Array("batch-\($0)".utf8))
            }
            async let batchResults = connection.publish(contentsOf: batch)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for lane in 0..<200 {
                    group.addTask {
                        for index in 0..<10 {
                            try await connection.publish(
                                AMQPOutgoingMessage(
                                    exchange: "",
                                    routingKey: queue,
                                    body: Array("lane-\(lane)-\(index)".utf8)
                                )
                            )
                        }
                    }
                }
                try await group.waitForAll()
            }
            let results = await batchResults
            #expect(results.count == 5_000)
            #expect(results.allSatisfy { (try? $0.get()) != nil })
            #expect(try await connection.deleteQueue(queue) == 7_000, "every confirmed message is in the queue")
        }
    }

    @Test func nackedAndRejectedDeliveriesAreDeadLettered() async throws {
        let queue = TestBroker.unique("work")
        let deadLetters = TestBroker.unique("dead")
        try await AMQPConnection.withConnection(
            configuration: TestBroker.configuration("dead-letters"),
            logger: Logger(label: "t")
        ) { connection in
            try await connection.declare(
                AMQPTopology(
                    exchanges: [.init(deadLetters, kind: .fanout, isDurable: false)],
                    queues: [
                        .init(queue, kind: .quorum, deadLetterExchange: deadLetters),
                        .init(deadLetters, isDurable: false),
                    ],
                    bindings: [.init(queue: deadLetters, exchange: deadLetters, bindingKey: "")]
                )
            )
            for id in ["nack-me", "reject-me", "ack-me"] {
                try await connection.publish(
                    AMQPOutgoingMessage(
                        exchange: "",
                        routingKey: queue,
                        body: Array(id.utf8),
                        properties: .init(messageID: id)
                    )
                )
            }
            let work = try await connection.consume(queue: queue, prefetch: 10)
            for _ in 0..<3 {
                let delivery = try #require(try await work.next(timeout: .seconds(10)))
                switch delivery.properties.messageID {
                case "nack-me": delivery.nack(requeue: false)
                case "reject-me": delivery.reject(requeue: false)
                default: delivery.ack()
                }
            }
            let dead = try await connection.consume(queue: deadLetters, prefetch: 10)
            var seen: [String: AMQPFieldValue] = [:]
            for _ in 0..<2 {
                let delivery = try #require(try await dead.next(timeout: .seconds(10)))
                let death = try #require(delivery.properties.headers["x-death"]?.arrayValue?.first?.tableValue)
                seen[delivery.properties.messageID ?? "?"] = death["reason"]
                #expect(death["queue"]?.stringValue == queue)
                delivery.ack()
            }
            #expect(seen == ["nack-me": "rejected", "reject-me": "rejected"])
            #expect(
                try await dead.next(timeout: .milliseconds(300)) == nil,
                "the acked one was not dead-lettered"
            )
            try await connection.deleteQueue(queue)
            try await connection.deleteQueue(deadLetters)
        }
    }

    @Test func prefetchBoundsUnsettledDeliveries() async throws {
        let queue = TestBroker.unique("prefetch")
        try await AMQPConnection.withConnection(
            configuration: TestBroker.configuration("prefetch"),
            logger: Logger(label: "t")
        ) { connection in
            try await connection.declare(AMQPTopology(queues: [.init(queue, isDurable: false)]))
            let messages = (0..<50).map { AMQPOutgoingMessage(exchange: "", routingKey: queue, body: [UInt8($0)]) }
            #expect(await connection.publish(contentsOf: messages).allSatisfy { (try? $0.get()) != nil })

            let consumer = try await connection.consume(queue: queue, prefetch: 7)
            var held: [AMQPDelivery] = []
            while let delivery = try await consumer.next(timeout: .milliseconds(500)) {
                held.append(delivery)
            }
            #expect(held.count == 7, "the broker sends no more than prefetch unsettled deliveries")

            for delivery in held.prefix(3) { delivery.ack() }
            var more = 0
            while try await consumer.next(timeout: .milliseconds(500)) != nil { more += 1 }
            #expect(more == 3, "each ack lets exactly one more through")
        }
    }

    @Test func outOfOrderSettlementKeepsTheChannelHealthy() async throws {
        // Acks are coalesced into `multiple` acks; settling in random order, with nacks and a double ack
        // mixed in, must neither close the channel (unknown delivery tag) nor lose or keep a message.
        let queue = TestBroker.unique("shuffled")
        let deadLetters = TestBroker.unique("shuffled-dead")
        try await AMQPConnection.withConnection(
            configuration: TestBroker.configuration("shuffled"),
            logger: Logger(label: "t")
        ) { connection in
            try await connection.declare(
                AMQPTopology(
                    queues: [
                        .init(queue, isDurable: false, deadLetterExchange: "", deadLetterRoutingKey: deadLetters),
                        .init(deadLetters, isDurable: false),
                    ]
                )
            )
            let count = 400
            let messages = (0..<count).map {
                AMQPOutgoingMessage(exchange: "", routingKey: queue, body: Array("\($0)".utf8))
            }
            #expect(await connection.publish(contentsOf: messages).allSatisfy { (try? $0.get()) != nil })

            let consumer = try await connection.consume(queue: queue, prefetch: 64)
            var generator = SystemRandomNumberGenerator()
            var held: [AMQPDelivery] = []
            var settled = 0
            var nacked = 0
            while settled < count {
                while held.count < 48, let delivery = try await consumer.next(timeout: .milliseconds(200)) {
                    held.append(delivery)
                }
                held.shuffle(using: &generator)
                for delivery in held.prefix(16) {
                    if Int(String(decoding: delivery.body, as: UTF8.self))! % 7 == 0 {
                        delivery.nack(requeue: false)
                        nacked += 1
                    } else {
                        delivery.ack()
                        delivery.ack()  // a second settle of one delivery is dropped, not sent
                    }
                }
                settled += min(16, held.count)
                held.removeFirst(min(16, held.count))
            }
            #expect(nacked == (0..<count).filter { $0 % 7 == 0 }.count)
            // The channel is still open: a new message arrives on the same consumer.
            try await connection.publish(AMQPOutgoingMessage(exchange: "", routingKey: queue, body: Array("last".utf8)))
            let last = try #require(try await consumer.next(timeout: .seconds(10)))
            #expect(last.body == Array("last".utf8))
            last.ack()
            try await Task.sleep(for: .milliseconds(200))
            #expect(try await connection.deleteQueue(queue) == 0, "every delivery was settled")
            #expect(
                try await connection.deleteQueue(deadLetters) == nacked,
                "exactly the nacked ones were dead-lettered"
            )
        }
    }

    @Test func consumerEndsWithAnErrorWhenItsQueueIsDeleted() async throws {
        let queue = TestBroker.unique("doomed")
        try await AMQPConnection.withConnection(
            configuration: TestBroker.configuration("doomed"),
            logger: Logger(label: "t")
        ) { connection in
            try await connection.declare(AMQPTopology(queues: [.init(queue, isDurable: false)]))
            let consumer = try await connection.consume(queue: queue, prefetch: 1)
            try await connection.deleteQueue(queue)
            await #expect {
                _ = try await consumer.next(timeout: .seconds(10))
            } throws: { error in
                (error as? AMQPError)?.code == .notFound
            }
        }
    }

    @Test func connectionNameIsVisibleInTheBroker() async throws {
        let name = TestBroker.unique("orders-node")
        let listed = try await AMQPConnection.withConnection(
            configuration: TestBroker.configuration(name),
            logger: Logger(label: "t")
        ) { _ in
            try await TestBroker.ctl("list_connections", "client_properties")
        }
        #expect(listed.contains(name))
    }

    // MARK: Errors

    @Test func wrongPasswordIsRefusedWithoutEchoingIt() async throws {
        var configuration = try TestBroker.configuration("wrong-password")
        configuration.password = "not-the-password-\(UInt16.random(in: 0...9999))"
        let logs = CapturedLogs()
        let error = await #expect(throws: AMQPError.self) {
            try await AMQPConnection.connect(configuration: configuration, logger: logs.makeLogger()).close()
        }
        #expect(error?.code == .accessRefused)
        #expect(error?.message.contains("ACCESS_REFUSED") == true, "\(String(describing: error))")
        #expect(!"\(String(describing: error))".contains(configuration.password))
        #expect(!logs.all.joined().contains(configuration.password))
    }

    @Test func unknownVirtualHostIsNotAllowed() async throws {
        var configuration = try TestBroker.configuration("unknown-vhost")
        configuration.virtualHost = "no-such-vhost"
        let error = await #expect(throws: AMQPError.self) {
            try await AMQPConnection.connect(configuration: configuration, logger: Logger(label: "t")).close()
        }
        #expect(error?.code == .notAllowed)
        #expect(error?.message.contains("no-such-vhost") == true, "\(String(describing: error))")
    }

    @Test func closedPortFailsFast() async throws {
        var configuration = try TestBroker.configuration("closed-port")
        configuration.port = 1
        let started = ContinuousClock.now
        let error = await #expect(throws: AMQPError.self) {
            try await AMQPConnection.connect(configuration: configuration, logger: Logger(label: "t")).close()
        }
        #expect(error?.code == .connectFailed)
        #expect(error?.message.contains("127.0.0.1:1") == true, "\(String(describing: error))")
        #expect(error?.message.contains("refused or unreachable") == true, "\(String(describing: error))")
        #expect(ContinuousClock.now - started < configuration.connectTimeout)
    }

    @Test func silentPeerTimesOutWithinTheConnectTimeout() async throws {
        // A listener that accepts TCP but never speaks AMQP: the handshake must give up on time.
        let listener = try SilentListener()
        defer { listener.close() }
        var configuration = try TestBroker.configuration("silent-peer")
        configuration.port = listener.port
        configuration.connectTimeout = .milliseconds(700)
        let started = ContinuousClock.now
        let error = await #expect(throws: AMQPError.self) {
            try await AMQPConnection.connect(configuration: configuration, logger: Logger(label: "t")).close()
        }
        let elapsed = ContinuousClock.now - started
        #expect(error?.code == .timedOut, "\(String(describing: error))")
        #expect(elapsed >= .milliseconds(600) && elapsed < .seconds(3), "gave up after \(elapsed)")
    }

    @Test func publishToMissingExchangeFailsAndThePublisherRecovers() async throws {
        try await AMQPConnection.withConnection(
            configuration: TestBroker.configuration("missing-exchange"),
            logger: Logger(label: "t")
        ) { connection in
            let missing = TestBroker.unique("no-such-exchange")
            let error = await #expect(throws: AMQPError.self) {
                try await connection.publish(AMQPOutgoingMessage(exchange: missing, routingKey: "x", body: [1]))
            }
            #expect(error?.code == .notFound && error?.replyCode == 404)
            #expect(error?.message.contains("no exchange '\(missing)'") == true, "\(String(describing: error))")

            let queue = TestBroker.unique("after-error")
            try await connection.declare(AMQPTopology(queues: [.init(queue, isDurable: false)]))
            try await connection.publish(AMQPOutgoingMessage(exchange: "", routingKey: queue, body: [2]))
            #expect(try await connection.deleteQueue(queue) == 1, "the publish channel was reopened")
        }
    }

    @Test func oneRefusedMessageAmongManyLeavesTheOthersOfUnknownOutcomeNotRefused() async throws {
        try await AMQPConnection.withConnection(
            configuration: TestBroker.configuration("refused-among-many"),
            logger: Logger(label: "t")
        ) { connection in
            let queue = TestBroker.unique("among-many")
            try await connection.declare(AMQPTopology(queues: [.init(queue, isDurable: false)]))
            let missing = TestBroker.unique("no-such-exchange")
            let batch = (0..<200).map { index in
                AMQPOutgoingMessage(
                    exchange: index == 100 ? missing : "",
                    routingKey: queue,
                    body: [UInt8(index % 256)],
                    properties: AMQPProperties(messageID: "m-\(index)")
                )
            }
            let results = await connection.publish(contentsOf: batch)
            var unknown: [Int] = []
            for (index, result) in results.enumerated() {
                guard case .failure(let error) = result else { continue }
                // Only the culprit may be reported refused, and only when it was alone in flight.
                #expect(index == 100 || error.code == .outcomeUnknown, "message \(index): \(error)")
                #expect(error.replyCode == 404 && error.message.contains(missing), "the broker's reason: \(error)")
                unknown.append(index)
            }
            #expect(unknown.contains(100), "the message to the missing exchange did not go through")
            // Sent again one by one, each gets its own answer: the culprit is refused, the rest are taken.
            for index in unknown {
                let result = await connection.publish(contentsOf: [batch[index]])[0]
                if index == 100 {
                    #expect(throws: AMQPError.self) { try result.get() }
                    if case .failure(let error) = result { #expect(error.code == .notFound) }
                } else {
                    #expect(throws: Never.self) { try result.get() }
                }
            }
            #expect(try await connection.deleteQueue(queue) >= 199, "every other message arrived (some maybe twice)")
        }
    }

    @Test func aMandatoryPublishThatNoQueueTakesFails() async throws {
        let exchange = TestBroker.unique("lonely")
        let queue = TestBroker.unique("taker")
        try await AMQPConnection.withConnection(
            configuration: TestBroker.configuration("mandatory"),
            logger: Logger(label: "t")
        ) {
            connection in
            try await connection.declare(
                AMQPTopology(
                    exchanges: [.init(exchange, kind: .topic, isDurable: false)],
                    queues: [.init(queue, isDurable: false)],
                    bindings: [.init(queue: queue, exchange: exchange, bindingKey: "taken.#")]
                )
            )
            func message(_ key: String, _ id: String, mandatory: Bool) -> AMQPOutgoingMessage {
                AMQPOutgoingMessage(
                    exchange: exchange,
                    routingKey: key,
                    body: [1],
                    properties: .init(messageID: id),
                    isMandatory: mandatory
                )
            }
            let results = await connection.publish(contentsOf: [
                message("taken.a", "m-1", mandatory: true),
                message("nobody.b", "m-2", mandatory: true),
                message("nobody.c", "m-3", mandatory: false),
                message("taken.d", "m-4", mandatory: true),
            ])
            #expect((try? results[0].get()) != nil && (try? results[3].get()) != nil)
            #expect((try? results[2].get()) != nil, "without mandatory the broker drops it silently")
            guard case .failure(let error) = results[1] else {
                Issue.record("the unroutable mandatory publish succeeded")
                return
            }
            #expect(error.code == .unroutable && error.replyCode == 312)
            #expect(error.message.contains("routing key 'nobody.b'"), "\(error)")
            #expect(try await connection.deleteQueue(queue) == 2)
        }
    }

    @Test func conflictingRedeclarationIsAPreconditionFailure() async throws {
        let queue = TestBroker.unique("conflict")
        try await AMQPConnection.withConnection(
            configuration: TestBroker.configuration("conflict"),
            logger: Logger(label: "t")
        ) { connection in
            try await connection.declare(AMQPTopology(queues: [.init(queue, isDurable: false)]))
            let error = await #expect(throws: AMQPError.self) {
                try await connection.declare(AMQPTopology(queues: [.init(queue, kind: .quorum)]))
            }
            #expect(error?.code == .preconditionFailed && error?.replyCode == 406)
            // The topology channel is usable again.
            #expect(try await connection.deleteQueue(queue) == 0)
        }
    }

    @Test func amqpsVerifiesTheBrokerAgainstTheConfiguredCA() async throws {
        let tlsSetup = try TestBroker.tls()
        let trusted = AMQPConnection.Configuration.TLS(caCertificatePath: tlsSetup.ca)
        let connected = try await AMQPConnection.withConnection(
            configuration: .init(url: tlsSetup.url, tls: trusted, connectionName: "tls"),
            logger: Logger(label: "t")
        ) { connection in
            let queue = TestBroker.unique("tls")
            try await connection.declare(AMQPTopology(queues: [.init(queue, isDurable: false)]))
            try await connection.publish(AMQPOutgoingMessage(exchange: "", routingKey: queue, body: [42]))
            return try await connection.deleteQueue(queue)
        }
        #expect(connected == 1)

        let untrusted = AMQPConnection.Configuration.TLS(caCertificatePath: tlsSetup.wrongCA)
        let error = await #expect(throws: AMQPError.self) {
            try await AMQPConnection.connect(
                configuration: .init(url: tlsSetup.url, tls: untrusted, connectionName: "tls-wrong-ca"),
                logger: Logger(label: "t")
            ).close()
        }
        #expect(error?.code == .tlsFailed, "\(String(describing: error))")

        let missing = AMQPConnection.Configuration.TLS(caCertificatePath: "/nonexistent/ca.pem")
        let missingError = await #expect(throws: AMQPError.self) {
            try await AMQPConnection.connect(
                configuration: .init(url: tlsSetup.url, tls: missing, connectionName: "tls-no-ca"),
                logger: Logger(label: "t")
            ).close()
        }
        #expect(missingError?.code == .invalidConfiguration)
        #expect(missingError?.message.contains("/nonexistent/ca.pem") == true)
    }

}

/// Tests that disturb the whole broker (close every connection, freeze it, restart it). The test command runs
/// them alone, after every other suite, so they pull the broker from under no one else.
@Suite(.serialized) struct BrokerDisruptionTests {

    @Test func reconnectsAfterTheBrokerClosesAllConnections() async throws {
        let queue = TestBroker.unique("survivor")
        let logs = CapturedLogs()
        let connection = try await AMQPConnection.connect(
            configuration: TestBroker.configuration("survivor"),
            logger: logs.makeLogger()
        )
        try await connection.declare(AMQPTopology(queues: [.init(queue, isDurable: false)]))
        let consumer = try await connection.consume(queue: queue, prefetch: 5)

        try await TestBroker.ctl("close_all_connections", "test: forced close")
        #expect(try await eventually { connection.connectionCount == 2 && connection.isConnected })

        // The recorded topology was declared again and the consumer resumed on the new connection.
        try await publishRetrying(
            connection,
            AMQPOutgoingMessage(exchange: "", routingKey: queue, body: Array("after".utf8))
        )
        let delivery = try #require(try await consumer.next(timeout: .seconds(10)))
        #expect(delivery.body == Array("after".utf8))
        delivery.ack()
        try await connection.deleteQueue(queue)
        await connection.close()
        #expect(logs.all.contains { $0.contains("AMQP connection lost") && $0.contains("forced close") })
        #expect(!logs.all.joined().contains(TestBroker.password))
    }

    @Test func detectsASilentBrokerWhileIdleAndReconnects() async throws {
        let connection = try await AMQPConnection.connect(
            configuration: TestBroker.configuration("heartbeat", heartbeat: .seconds(1)),
            logger: Logger(label: "t")
        )
        let pid = try await TestBroker.ctl("eval", "list_to_integer(os:getpid()).")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        // Freeze the broker: the socket stays open, only heartbeats stop.
        kill(pid_t(pid)!, SIGSTOP)
        let noticed = try await eventually(timeout: .seconds(15)) { !connection.isConnected }
        kill(pid_t(pid)!, SIGCONT)
        #expect(noticed, "a silent broker is noticed by missed heartbeats")
        #expect(try await eventually { connection.isConnected && connection.connectionCount >= 2 })
        await connection.close()
    }

    /// A consistent-hash exchange (how a partitioned service's input is split) still routes every key after the
    /// broker restarts. Whether each key stays in its queue is RabbitMQ's to keep, and 3.10.8 does not always:
    /// its ring is rebuilt from the bindings at boot, in an order that can differ (rabbitmq-server#3386) — in two
    /// restarts of ten here, about half the keys moved. That is recorded as a known, intermittent issue (the
    /// README's limitations say what it costs); a lost message is not.
    @Test func theKeyToPartitionMappingSurvivesABrokerRestart() async throws {
        let prefix = TestBroker.unique("partitions")
        let queues = (0..<4).map { "\(prefix).\($0)" }
        let connection = try await AMQPConnection.connect(
            configuration: TestBroker.configuration("partitions"),
            logger: Logger(label: "t")
        )
        try await connection.declare(
            AMQPTopology(
                exchanges: [.init(prefix, kind: .consistentHash, arguments: ["hash-header": .string("key")])],
                queues: queues.map { .init($0, kind: .quorum) },
                bindings: queues.map { .init(queue: $0, exchange: prefix, bindingKey: "1") }
            )
        )
        let keys = (0..<40).map { "order-\($0)" }
        func mapping() async throws -> [String: String] {
            let messages = keys.map { key in
                AMQPOutgoingMessage(
                    exchange: prefix,
                    routingKey: "",
                    body: Array(key.utf8),
                    properties: .init(headers: ["key": .string(key)])
                )
            }
            for result in await connection.publish(contentsOf: messages) { try result.get() }
            var queueOfKey: [String: String] = [:]
            for queue in queues {
                let consumer = try await connection.consume(queue: queue, prefetch: 100)
                while let delivery = try await consumer.next(timeout: .milliseconds(500)) {
                    queueOfKey[String(decoding: delivery.body, as: UTF8.self)] = queue
                    delivery.ack()
                }
                await consumer.cancel()
            }
            return queueOfKey
        }

        let before = try await mapping()
        #expect(before.count == keys.count, "every key routed: \(before.count)")
        #expect(Set(before.values).count >= 2, "the keys spread: \(before)")
        try await TestBroker.ctl("stop_app")
        try await TestBroker.ctl("start_app")
        #expect(try await eventually { connection.isConnected })
        // Publishing may fail while the queues recover: try again (a key sent twice lands twice in its queue).
        var after: [String: String] = [:]
        for attempt in 1...10 {
            do {
                after = try await mapping()
                break
            } catch  where attempt < 10 {
                try await Task.sleep(for: .seconds(1))
            }
        }
        #expect(after.count == keys.count, "every key routed after the restart: \(after.count)")
        let moved = keys.filter { after[$0] != before[$0] }
        withKnownIssue("RabbitMQ 3.10 may rebuild the consistent-hash ring in another order", isIntermittent: true) {
            #expect(moved.isEmpty, "each key in the same queue after the restart; \(moved.count) moved")
        }
        for queue in queues { _ = try? await connection.deleteQueue(queue) }
        await connection.close()
    }

    @Test func noConfirmedMessageIsLostAcrossABrokerRestart() async throws {
        let queue = TestBroker.unique("durable")
        let connection = try await AMQPConnection.connect(
            configuration: TestBroker.configuration("restart"),
            logger: Logger(label: "t")
        )
        try await connection.declare(AMQPTopology(queues: [.init(queue, kind: .quorum)]))

        // Publish in batches until well after the restart; whatever fails (lost connection, reconnecting)
        // is published again.
        let restarted = Mutex(false)
        let restarter = Task {
            try await Task.sleep(for: .milliseconds(300))
            try await TestBroker.ctl("stop_app")
            try await TestBroker.ctl("start_app")
            restarted.withLock { $0 = true }
        }
        var confirmed = Set<Int>()
        var pending: [Int] = []
        var nextID = 0
        var failures = 0
        var publishedAfterRestart = 0
        while !pending.isEmpty || publishedAfterRestart < 1_000 {
            if restarted.withLock({ $0 }) { publishedAfterRestart += 50 }
            pending += (nextID..<nextID + 50)
            nextID += 50
            let batch = pending
            let results = await connection.publish(
                contentsOf: batch.map {
                    AMQPOutgoingMessage(
                        exchange: "",
                        routingKey: queue,
                        body: Array("\($0)".utf8),
                        properties: .init(messageID: "\($0)")
                    )
                }
            )
            for (id, result) in zip(batch, results) {
                if case .success = result { confirmed.insert(id) } else { failures += 1 }
            }
            pending = batch.filter { !confirmed.contains($0) }
            if !pending.isEmpty { try await Task.sleep(for: .milliseconds(50)) }
        }
        let total = nextID
        try await restarter.value
        #expect(failures > 0, "the restart interrupted publishing")
        #expect(connection.connectionCount >= 2)

        var received = Set<Int>()
        let consumer = try await connection.consume(queue: queue, prefetch: 500)
        while received.count < total, let delivery = try await consumer.next(timeout: .seconds(5)) {
            received.insert(Int(String(decoding: delivery.body, as: UTF8.self))!)
            delivery.ack()
        }
        #expect(confirmed.isSubset(of: received), "missing: \(confirmed.subtracting(received).sorted().prefix(10))")
        try await connection.deleteQueue(queue)
        await connection.close()
    }

    /// The broker's resource alarms block every publishing connection until they clear.
    static let alarms = [
        (command: "set_vm_memory_high_watermark", raise: "0.000001", clear: "0.4"),  // memory
        (command: "set_disk_free_limit", raise: "100000GB", clear: "50MB"),  // disk
    ]

    @Test(arguments: alarms.indices)
    func anAlarmHoldsPublishesUntilItClearsAndLosesNone(_ alarm: Int) async throws {
        let (command, raise, clear) = Self.alarms[alarm]
        let queue = TestBroker.unique("alarm")
        let logs = CapturedLogs()
        let connection = try await AMQPConnection.connect(
            configuration: TestBroker.configuration("alarmed"),
            logger: logs.makeLogger()
        )
        try await connection.declare(AMQPTopology(queues: [.init(queue, kind: .quorum)]))
        // A connection that never publishes is never blocked: it looks at the queue meanwhile.
        let observer = try await AMQPConnection.connect(
            configuration: TestBroker.configuration("alarm-observer"),
            logger: logs.makeLogger()
        )
        defer { Task { await observer.close() } }
        try await TestBroker.ctl(command, raise)  // every publisher blocked
        let started = ContinuousClock.now
        let publishing = Task {
            await connection.publish(
                contentsOf: (0..<20).map {
                    AMQPOutgoingMessage(exchange: "", routingKey: queue, body: Array("\($0)".utf8))
                }
            )
        }
        try? await Task.sleep(for: .seconds(4))
        let during = try? await observer.inspectQueue(queue).messages
        try await TestBroker.ctl(command, clear)  // before anything else can fail: the later tests need the broker
        #expect(during == 0, "nothing got through the alarm")
        let outcomes = await publishing.value
        #expect(ContinuousClock.now - started >= .seconds(4), "the publishes waited for the alarm to clear")
        #expect(outcomes.allSatisfy { (try? $0.get()) != nil }, "every publish confirmed: \(outcomes)")
        #expect(try await eventually { try await observer.inspectQueue(queue).messages == 20 }, "none lost")
        #expect(connection.isConnected && connection.connectionCount == 1, "the connection rode it out")
        try await connection.deleteQueue(queue)
        await connection.close()
    }

    private func publishRetrying(_ connection: AMQPConnection, _ message: AMQPOutgoingMessage) async throws {
        for _ in 0..<100 {
            do {
                return try await connection.publish(message)
            } catch let error as AMQPError where error.code == .notConnected || error.code == .connectionLost {
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        Issue.record("could not publish after 100 attempts")
    }
}

/// A TCP listener on loopback that accepts connections and never answers.
final class SilentListener: Sendable {
    let port: Int
    private let descriptor: Int32

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.descriptor = descriptor
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(descriptor, pointer, length) == 0 && listen(descriptor, 8) == 0
                    && getsockname(descriptor, pointer, &length) == 0
            }
        }
        guard bound else { throw AMQPError(code: .protocolError, message: "cannot listen on loopback") }
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    func close() {
        _ = Glibc.close(descriptor)
    }
}
