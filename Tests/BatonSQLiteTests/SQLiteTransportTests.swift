import Baton
import BatonNode
import BatonSQLite
import BatonTestSupport
import Foundation
import Synchronization
import Testing

/// The store's transport passes the transport port's conformance suite, on a file on disk.
@Suite struct SQLiteTransportConformanceTests {
    @Test(arguments: TransportConformance.Case.allCases)
    func conforms(_ check: TransportConformance.Case) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("baton-queues-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let store = try SQLiteStore(path: directory.appendingPathComponent("store.sqlite").path)
        try await TransportConformance(SQLiteTransport(store: store)).run(check)
    }
}

/// Nodes sharing one file: their own rows stay theirs, and messages between them are rows taken in a transaction.
@Suite struct SharedStoreTests {
    private let directory = FileManager.default.temporaryDirectory.appendingPathComponent("baton-shared-\(UUID())")

    private func openStore() throws -> SQLiteStore {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return try SQLiteStore(path: directory.appendingPathComponent("store.sqlite").path)
    }

    private static func parked(_ id: String) -> ParkedMessage {
        ParkedMessage(
            orderingKey: "key",
            messageID: id,
            exchange: Routing.eventExchange,
            routingKey: "test.Thing",
            messageType: "test.Thing.v1",
            contentType: nil,
            correlationID: nil,
            timestamp: nil,
            headers: [:],
            body: Data("{}".utf8),
            attempts: 1,
            nextAttemptAt: StoreConformance.epoch
        )
    }

    @Test func eachNodeOfASharedFileSeesOnlyItsOwnOutboxHeldMessagesTimersAndInboxRetention() async throws {
        let file = try openStore()
        defer { try? FileManager.default.removeItem(at: directory) }
        let (first, second) = (file.shared(by: "first"), file.shared(by: "second"))
        try await first.write { work in
            try StoreConformance.record(
                StoreConformance.transition(1, timers: [.schedule(name: "t", dueAt: StoreConformance.epoch)]),
                work
            )
            try work.park(Self.parked("held"), at: StoreConformance.epoch)
        }
        let later = StoreConformance.epoch.addingTimeInterval(60)
        let seen = { (store: SQLiteStore) in
            try await store.read { work in
                (
                    outbox: try work.pendingOutbox(limit: 10).map(\.envelope.messageID),
                    held: try work.hasParkedMessages() ? try work.dueParkedMessages(before: later, limit: 10).count : 0,
                    blocked: try work.isBlocked(orderingKey: "key"),
                    timers: try work.dueTimers(before: later, limit: 10).map(\.name)
                )
            }
        }
        let old = StoreConformance.epoch.addingTimeInterval(-60)
        for (store, consumer) in [(first, "first"), (second, "second")] {
            try await store.write { try $0.markHandled("m", consumer: consumer, issuedAt: old, at: old) }
        }
        let forgotten = try await first.write { try $0.forgetHandled(issuedBefore: later, limit: 10) }
        let kept = try await second.read { try $0.hasHandled("m", consumer: "second") }
        #expect(forgotten == 1 && kept, "each node's retention forgets its own inbox records, by its own window")
        let mine = try await seen(first)
        #expect(mine.outbox == ["issued-1"] && mine.held == 1 && mine.blocked && mine.timers == ["t"])
        let theirs = try await seen(second)
        #expect(theirs.outbox.isEmpty && theirs.held == 0 && !theirs.blocked && theirs.timers.isEmpty, "\(theirs)")
    }

    @Test func aSharedHandleKeepsTheFileServingAfterTheHandleThatOpenedItIsGone() async throws {
        let shared = try openStore().shared(by: "only")
        defer { try? FileManager.default.removeItem(at: directory) }
        let committed = Committed()
        Task {  // not awaited: with the file's syncing thread stopped, the write would wait for the disk forever
            try await shared.write { try $0.markHandled("m", consumer: "c", issuedAt: .now, at: .now) }
            committed.flag.withLock { $0 = true }
        }
        #expect(
            try await eventually(timeout: .seconds(10)) { committed.flag.withLock { $0 } },
            "the write reached the disk: the file's syncing thread still runs"
        )
    }

    @Test func aMessageAQueueOfTheFileTakesIsWrittenThereInTheTransactionInsteadOfTheOutbox() async throws {
        let file = try openStore()
        defer { try? FileManager.default.removeItem(at: directory) }
        let transport = try SQLiteTransport(store: file)
        try await transport.declare(
            Topology(
                exchanges: Routing.exchanges,
                queues: [.init("worker")],
                bindings: [.init(queue: "worker", exchange: Routing.commandExchange, bindingKey: "test.Do")]
            )
        )
        let sender = file.shared(by: "sender")
        let (_, handedOver) = try await sender.writeHandingOverOutbox { work in
            try StoreConformance.record(StoreConformance.transition(1), work)  // issues test.Do
            try work.enqueue(StoreConformance.envelope("nobody"), exchange: Routing.commandExchange, routingKey: "x.Y")
        }
        #expect(handedOver.map(\.envelope.messageID) == ["nobody"], "a command no queue takes waits in the outbox")
        #expect(try await transport.messageCount("worker") == 1)

        let source = try await transport.subscribe(queue: "worker", prefetch: 10)
        let delivery = try #require(try await source.nextBatch(maxCount: 10)?.first)
        #expect(delivery.messageID == "issued-1" && delivery.isWrittenOnce)
        let receiver = file.shared(by: "receiver")
        let taken = try await receiver.write { work in try delivery.takeInTransaction?(work) ?? false }
        let left = try await transport.messageCount("worker")
        #expect(taken && left == 0, "taken in the receiver's transaction")
        delivery.acknowledge()
        await source.cancel()

        // A transaction that rolls back takes nothing.
        _ = try await sender.write { work in try StoreConformance.record(StoreConformance.transition(2), work) }
        let again = try await transport.subscribe(queue: "worker", prefetch: 10)
        let next = try #require(try await again.nextBatch(maxCount: 10)?.first)
        await #expect(throws: Refused.self) {
            try await receiver.write { work in
                _ = try next.takeInTransaction?(work)
                throw Refused()
            }
        }
        next.requeue()
        #expect(try await transport.messageCount("worker") == 1)
        let redelivered = try #require(try await again.nextBatch(maxCount: 10)?.first)
        #expect(redelivered.messageID == "issued-2" && redelivered.isRedelivered)
        redelivered.acknowledge()
        await again.cancel()
        #expect(try await eventually { try await transport.messageCount("worker") == 0 }, "acknowledged: deleted")
    }

    @Test func theFileKeepsWhatWasDeclaredAcrossARestart() async throws {
        let path = try openStore().path
        defer { try? FileManager.default.removeItem(at: directory) }
        do {
            let transport = try SQLiteTransport(store: try SQLiteStore(path: path))
            try await transport.declare(
                Topology(
                    exchanges: Routing.exchanges,
                    queues: [.init("kept")],
                    bindings: [.init(queue: "kept", exchange: Routing.eventExchange, bindingKey: "test.#")]
                )
            )
        }
        let reopened = try SQLiteTransport(store: try SQLiteStore(path: path))
        let message = OutgoingMessage(
            exchange: Routing.eventExchange,
            routingKey: "test.Thing",
            envelope: StoreConformance.envelope("after-restart")
        )
        #expect(await reopened.publish([message]) == [.confirmed])
        #expect(try await reopened.messageCount("kept") == 1)
    }

    @Test func aPartitionedTopologyIsRefusedWithTheReason() async throws {
        let transport = try SQLiteTransport(store: try openStore())
        defer { try? FileManager.default.removeItem(at: directory) }
        await #expect(throws: TransportError.self) {
            try await transport.declare(
                Topology(exchanges: [.init("parts", kind: .consistentHash, hashedBy: .messageID)])
            )
        }
        await #expect(throws: TransportError.self) {
            try await transport.declare(Topology(queues: [.init("p-1", hasSingleActiveConsumer: true)]))
        }
    }

    private struct Refused: Error {}

    private final class Committed: Sendable {
        let flag = Mutex(false)
    }
}
