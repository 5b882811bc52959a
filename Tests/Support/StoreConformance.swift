import Baton
import BatonNode
import Foundation
import Synchronization
import Testing

/// The store port's conformance suite: what every adapter must do the same way, races included — two writers
/// on one stream version, on one instance version, on one inbox id, on one due timer, and outbox rows of
/// concurrent transactions. Each adapter's test target runs every case against a fresh store of its own.
/// A race passes on a store that serialises its writers only because the losing writer checks what the
/// winner committed; an adapter with concurrent writers (PostgreSQL) must refuse the loser the same way.
public struct StoreConformance: Sendable {
    /// The behaviours checked.
    public enum Case: String, CaseIterable, Sendable {
        case aTransactionCommitsAllOrNothing
        case aSavepointRollsBackOnlyItsOwnChanges
        case theInboxRecordsEachMessageOnce
        case theInboxForgetsMessagesIssuedBeforeItsWindow
        case theOutboxKeepsOneRowPerKeyInOrder
        case failedPublishesWaitOutTheirBackoff
        case laterRowsOfAnOrderScopeWaitBehindAnEarlierUnsentOne
        case aWriterHandsOverExactlyWhatItCommitted
        case streamsAppendAtTheirExpectedVersion
        case instancesKeepTheirStateTimelineAndAssociations
        case instancesAreListedByLifecycleAndAgeAndClosedOnesPurged
        case purgedInstancesLeaveTombstonesUntilTheyAreRemoved
        case instancesAreWrittenByTheirOwnRowsAfterARollbackOrARemoval
        case timersAreScheduledRetriedParkedAndRearmed
        case deadLettersAreReplayedByKind
        case heldMessagesWaitInOrderPerKey
        case documentsAreFoundByIdAliasAndStatus
        case concurrentWritersOfOneStreamVersion
        case concurrentWritersOfOneInstanceVersion
        case concurrentWritersOfOneInboxID
        case concurrentFiringsOfOneDueTimer
        case outboxRowsOfConcurrentTransactions
        case statisticsCountTheOutboxDeadLettersAndInstances
    }

    /// A fresh, empty store.
    public let makeStore: @Sendable () async throws -> any Store

    /// Checks the stores `makeStore` makes.
    public init(_ makeStore: @escaping @Sendable () async throws -> any Store) {
        self.makeStore = makeStore
    }

    /// Runs one case on a new store.
    public func run(_ check: Case) async throws {
        let store = try await makeStore()
        switch check {
        case .aTransactionCommitsAllOrNothing: try await aTransactionCommitsAllOrNothing(store)
        case .aSavepointRollsBackOnlyItsOwnChanges: try await aSavepointRollsBackOnlyItsOwnChanges(store)
        case .theInboxRecordsEachMessageOnce: try await theInboxRecordsEachMessageOnce(store)
        case .theInboxForgetsMessagesIssuedBeforeItsWindow:
            try await theInboxForgetsMessagesIssuedBeforeItsWindow(store)
        case .theOutboxKeepsOneRowPerKeyInOrder: try await theOutboxKeepsOneRowPerKeyInOrder(store)
        case .failedPublishesWaitOutTheirBackoff: try await failedPublishesWaitOutTheirBackoff(store)
        case .laterRowsOfAnOrderScopeWaitBehindAnEarlierUnsentOne:
            try await laterRowsOfAnOrderScopeWaitBehindAnEarlierUnsentOne(store)
        case .aWriterHandsOverExactlyWhatItCommitted: try await aWriterHandsOverExactlyWhatItCommitted(store)
        case .streamsAppendAtTheirExpectedVersion: try await streamsAppendAtTheirExpectedVersion(store)
        case .instancesKeepTheirStateTimelineAndAssociations:
            try await instancesKeepTheirStateTimelineAndAssociations(store)
        case .instancesAreListedByLifecycleAndAgeAndClosedOnesPurged:
            try await instancesAreListedByLifecycleAndAgeAndClosedOnesPurged(store)
        case .purgedInstancesLeaveTombstonesUntilTheyAreRemoved:
            try await purgedInstancesLeaveTombstonesUntilTheyAreRemoved(store)
        case .instancesAreWrittenByTheirOwnRowsAfterARollbackOrARemoval:
            try await instancesAreWrittenByTheirOwnRowsAfterARollbackOrARemoval(store)
        case .timersAreScheduledRetriedParkedAndRearmed: try await timersAreScheduledRetriedParkedAndRearmed(store)
        case .deadLettersAreReplayedByKind: try await deadLettersAreReplayedByKind(store)
        case .heldMessagesWaitInOrderPerKey: try await heldMessagesWaitInOrderPerKey(store)
        case .documentsAreFoundByIdAliasAndStatus: try await documentsAreFoundByIdAliasAndStatus(store)
        case .concurrentWritersOfOneStreamVersion: try await concurrentWritersOfOneStreamVersion(store)
        case .concurrentWritersOfOneInstanceVersion: try await concurrentWritersOfOneInstanceVersion(store)
        case .concurrentWritersOfOneInboxID: try await concurrentWritersOfOneInboxID(store)
        case .concurrentFiringsOfOneDueTimer: try await concurrentFiringsOfOneDueTimer(store)
        case .outboxRowsOfConcurrentTransactions: try await outboxRowsOfConcurrentTransactions(store)
        case .statisticsCountTheOutboxDeadLettersAndInstances:
            try await statisticsCountTheOutboxDeadLettersAndInstances(store)
        }
    }

    public static let epoch = Date(millisecondsSince1970: 1_767_225_600_000)

    public static func envelope(_ id: String, type: String = "test.Happened.v1") -> Envelope {
        Envelope(messageID: id, messageType: type, timestamp: epoch, payload: Data(#"{"id":"\#(id)"}"#.utf8))
    }

    /// Where the suite's transitions send what they issue: the command exchange, under the message's name.
    public static func route(_ message: IssuedMessage) -> (exchange: String, routingKey: String) {
        (Routing.commandExchange, message.envelope.messageName)
    }

    /// A transition of `instance` to `version`, issuing one command and changing timers.
    public static func transition(
        _ version: Int64,
        timers: [TimerOperation] = [],
        associations: [String: String] = [:],
        lifecycle: ProcessLifecycle = .running
    ) -> ProcessTransition {
        ProcessTransition(
            version: version,
            trigger: .event(envelope("trigger-\(version)")),
            at: epoch.addingTimeInterval(Double(version)),
            lifecycle: lifecycle,
            issued: [IssuedMessage(kind: .command, envelope: envelope("issued-\(version)", type: "test.Do.v1"))],
            timers: timers,
            associations: associations,
            reason: nil
        )
    }

    /// Records `transition` for instance `i-1` of `pm` with a state naming its version.
    public static func record(_ transition: ProcessTransition, _ work: any UnitOfWork, instance: String = "i-1") throws
    {
        try work.record(
            transition,
            processManager: "pm",
            instanceID: instance,
            lifecycle: transition.lifecycle,
            state: Data(#"{"version":\#(transition.version)}"#.utf8),
            route: route
        )
    }

    /// Runs two writers at once; how many succeeded.
    static func race(_ store: any Store, _ body: @escaping @Sendable (any UnitOfWork) throws -> Void) async -> Int {
        await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<2 { group.addTask { (try? await store.write(body)) != nil } }
            var succeeded = 0
            for await success in group where success { succeeded += 1 }
            return succeeded
        }
    }

    struct Planned: Error {}

    func aTransactionCommitsAllOrNothing(_ store: any Store) async throws {
        await #expect(throws: Planned.self) {
            try await store.write { work throws in
                try work.markHandled("m-1", consumer: "c", issuedAt: Self.epoch, at: Self.epoch)
                try work.enqueue(Self.envelope("out-1"), exchange: "x", routingKey: "k")
                try work.save(["a": 1], in: "docs", id: "d-1", at: Self.epoch)
                throw Planned()
            }
        }
        try await store.read { work throws in
            #expect(try !work.hasHandled("m-1", consumer: "c"))
            #expect(try work.pendingOutboxCount() == 0)
            #expect(try work.document([String: Int].self, in: "docs", idOrAlias: "d-1") == nil)
        }
    }

    func aSavepointRollsBackOnlyItsOwnChanges(_ store: any Store) async throws {
        try await store.write { work throws in
            try work.enqueue(Self.envelope("kept-1"), exchange: "x", routingKey: "k")
            let rethrown = Result {
                try work.inSavepoint {
                    try work.markHandled("m-1", consumer: "c", issuedAt: Self.epoch, at: Self.epoch)
                    try work.enqueue(Self.envelope("dropped"), exchange: "x", routingKey: "k")
                    throw Planned()
                }
            }
            #expect(throws: Planned.self, "the savepoint rethrows") { try rethrown.get() }
            try work.inSavepoint { try work.enqueue(Self.envelope("kept-2"), exchange: "x", routingKey: "k") }
        }
        try await store.read { work throws in
            #expect(try !work.hasHandled("m-1", consumer: "c"))
            #expect(try work.outboxMessageIDs() == ["kept-1", "kept-2"])
        }
    }

    func theInboxRecordsEachMessageOnce(_ store: any Store) async throws {
        try await store.write { try $0.markHandled("m-1", consumer: "c", issuedAt: Self.epoch, at: Self.epoch) }
        await #expect(throws: (any Error).self, "a second record of one message is refused") {
            try await store.write { try $0.markHandled("m-1", consumer: "c", issuedAt: Self.epoch, at: Self.epoch) }
        }
        try await store.read { work throws in
            #expect(try work.hasHandled("m-1", consumer: "c"))
            #expect(try !work.hasHandled("m-1", consumer: "other"), "each consumer has its own inbox")
            #expect(try !work.hasHandled("m-2", consumer: "c"))
        }
    }

    func theInboxForgetsMessagesIssuedBeforeItsWindow(_ store: any Store) async throws {
        // Issued at t=1…5 (handled later, in another order): the window counts from the message's timestamp.
        try await store.write { work throws in
            for (id, issued) in [("m-3", 3.0), ("m-1", 1.0), ("m-5", 5.0), ("m-2", 2.0), ("m-4", 4.0)] {
                try work.markHandled(
                    id,
                    consumer: id == "m-2" ? "other" : "c",
                    issuedAt: Self.epoch.addingTimeInterval(issued),
                    at: Self.epoch.addingTimeInterval(100 - issued)
                )
            }
        }
        let before4 = Self.epoch.addingTimeInterval(4)
        #expect(try await store.write { try $0.forgetHandled(issuedBefore: before4, limit: 2) } == 2, "the limit")
        try await store.read { work throws in
            #expect(try !work.hasHandled("m-1", consumer: "c") && !work.hasHandled("m-2", consumer: "other"))
            #expect(try work.hasHandled("m-3", consumer: "c"), "oldest first: m-3 waits for the next chunk")
        }
        #expect(try await store.write { try $0.forgetHandled(issuedBefore: before4, limit: 2) } == 1)
        #expect(try await store.write { try $0.forgetHandled(issuedBefore: before4, limit: 2) } == 0)
        try await store.read { work throws in
            #expect(try !work.hasHandled("m-3", consumer: "c"))
            #expect(try work.hasHandled("m-4", consumer: "c") && work.hasHandled("m-5", consumer: "c"))
        }
        await #expect(throws: (any Error).self, "a kept record still refuses a second one") {
            try await store.write { try $0.markHandled("m-4", consumer: "c", issuedAt: Self.epoch, at: Self.epoch) }
        }
    }

    func theOutboxKeepsOneRowPerKeyInOrder(_ store: any Store) async throws {
        try await store.write { work throws in
            for id in ["a", "b", "a", "c"] { try work.enqueue(Self.envelope(id), exchange: "x", routingKey: "k-\(id)") }
            try work.enqueue(Self.envelope("a"), exchange: "dlx", routingKey: "k", key: "dead-letter:1")
        }
        let pending = try await store.read { try $0.pendingOutbox(limit: 10) }
        #expect(pending.map(\.envelope.messageID) == ["a", "b", "c", "a"])
        #expect(pending.map(\.routingKey) == ["k-a", "k-b", "k-c", "k"])
        #expect(pending.map(\.sequence) == pending.map(\.sequence).sorted() && !pending[0].wasRefused)
        try await store.write { try $0.removeSent([pending[0].sequence, pending[2].sequence]) }
        try await store.read { work throws in
            #expect(try work.pendingOutbox(limit: 10).map(\.routingKey) == ["k-b", "k"])
            #expect(try work.pendingOutboxCount() == 2)
            #expect(try work.outboxMessageIDs() == ["b", "dead-letter:1"], "sent rows are deleted")
        }
        try await store.write { try $0.enqueue(Self.envelope("b"), exchange: "x", routingKey: "again") }
        try await store.read { work throws in
            #expect(try work.pendingOutbox(limit: 10).map(\.routingKey) == ["k-b", "k"], "b waits: not queued twice")
        }
    }

    func failedPublishesWaitOutTheirBackoff(_ store: any Store) async throws {
        try await store.write { work throws in
            for id in ["a", "b"] { try work.enqueue(Self.envelope(id), exchange: "x", routingKey: "k") }
        }
        let rows = try await store.read { try $0.pendingOutbox(limit: 10) }
        try await store.write { work throws in
            try work.markFailed([rows[0].sequence], at: Self.epoch)
            try work.markFailed([rows[1].sequence], at: Self.epoch, refused: true)
        }
        try await store.read { work throws in
            #expect(try work.pendingOutbox(limit: 10, readyAt: Self.epoch).isEmpty, "both wait")
            #expect(try work.nextOutboxAttempt()?.millisecondsSince1970 == Self.epoch.millisecondsSince1970 + 100)
            let ready = try work.pendingOutbox(limit: 10, readyAt: Self.epoch.addingTimeInterval(0.1))
            #expect(ready.map(\.wasRefused) == [false, true])
            #expect(try work.pendingOutboxCount() == 2)
        }
        try await store.write { try $0.markFailed([rows[0].sequence], at: Self.epoch) }
        try await store.read { work throws in
            let ready = try work.pendingOutbox(limit: 10, readyAt: Self.epoch.addingTimeInterval(0.1))
            #expect(ready.map(\.envelope.messageID) == ["b"], "the second failure doubles the wait")
        }
    }

    /// An envelope whose partition key is `key`.
    public static func envelope(_ id: String, key: String) -> Envelope {
        var envelope = envelope(id)
        envelope.headers[partitionKeyHeader] = key
        return envelope
    }

    func laterRowsOfAnOrderScopeWaitBehindAnEarlierUnsentOne(_ store: any Store) async throws {
        // Key `a`: two events, and a command to each of two services; key `b`: one event.
        let ((), rows) = try await store.writeHandingOverOutbox { work in
            try work.enqueue(Self.envelope("a-0", key: "a"), exchange: Routing.eventExchange, routingKey: "x.E")
            try work.enqueue(Self.envelope("b-0", key: "b"), exchange: Routing.eventExchange, routingKey: "x.E")
            try work.enqueue(Self.envelope("a-1", key: "a"), exchange: Routing.eventExchange, routingKey: "x.F")
            try work.enqueue(Self.envelope("a-2", key: "a"), exchange: Routing.commandExchange, routingKey: "one.Do")
            try work.enqueue(Self.envelope("a-3", key: "a"), exchange: Routing.commandExchange, routingKey: "two.Do")
        }
        let (a0, b0, a1, toOne) = (rows[0], rows[1], rows[2], rows[3])
        #expect(Set(rows.map(\.orderScope)).count == 4, "a's events share a scope; each service's commands have one")
        try await store.write { try $0.markFailed([a0.sequence], at: Self.epoch) }
        try await store.read { work throws in
            let ready = try work.pendingOutbox(limit: 10, readyAt: Self.epoch)
            #expect(ready.map(\.envelope.messageID) == ["b-0", "a-2", "a-3"], "a-1 waits behind a-0")
            #expect(try work.pendingOutbox(limit: 2, readyAt: Self.epoch).map(\.envelope.messageID) == ["b-0", "a-2"])
            let later = try work.pendingOutbox(limit: 10, readyAt: Self.epoch.addingTimeInterval(0.1))
            #expect(later.map(\.envelope.messageID) == ["a-0", "b-0", "a-1", "a-2", "a-3"], "a-0's retry is due")
            #expect(try work.outboxRowsHeldBack([a1, toOne]) == [a1.sequence], "a-0 is unsent and not among them")
            #expect(try work.outboxRowsHeldBack([a0, b0, a1]).isEmpty, "a-0 goes first in the same round")
            #expect(try work.outboxRowsHeldBack([b0]).isEmpty)
            // A row the relay sent, whose deletion rides in a transaction not committed yet, holds nothing back.
            #expect(try work.outboxRowsHeldBack([a1], sent: [a0.sequence]).isEmpty, "a-0 was sent")
            #expect(
                try work.outboxRowsHeldBack([a1, toOne], sent: [b0.sequence]) == [a1.sequence],
                "b-0's sending frees no a"
            )
        }
        try await store.write { try $0.removeSent([a0.sequence]) }
        try await store.read { work throws in
            #expect(try work.outboxRowsHeldBack([a1]).isEmpty)
            #expect(try work.pendingOutbox(limit: 10, readyAt: Self.epoch).map(\.envelope.messageID).first == "b-0")
            #expect(try work.pendingOutbox(limit: 10, readyAt: Self.epoch).count == 4)
        }
    }

    func aWriterHandsOverExactlyWhatItCommitted(_ store: any Store) async throws {
        try await store.write { try $0.enqueue(Self.envelope("earlier"), exchange: "x", routingKey: "k") }
        let ((), handed) = try await store.writeHandingOverOutbox { work in
            try work.enqueue(Self.envelope("kept-1"), exchange: "x", routingKey: "k")
            try work.enqueue(Self.envelope("earlier"), exchange: "x", routingKey: "k")  // queued before: not again
            try? work.inSavepoint {
                try work.enqueue(Self.envelope("dropped"), exchange: "x", routingKey: "k")
                throw Planned()
            }
            try work.enqueue(Self.envelope("kept-2"), exchange: "y", routingKey: "k")
        }
        #expect(handed.map(\.envelope.messageID) == ["kept-1", "kept-2"] && handed.map(\.exchange) == ["x", "y"])
        let pending = try await store.read { try $0.pendingOutbox(limit: 10) }
        #expect(Array(pending.suffix(2)) == handed, "the rows handed over are the rows committed")
        await #expect(throws: Planned.self) {
            _ = try await store.writeHandingOverOutbox { work in
                try work.enqueue(Self.envelope("rolled-back"), exchange: "x", routingKey: "k")
                throw Planned()
            }
        }
        #expect(try await store.read { try $0.pendingOutboxCount() } == 3)
    }

    func streamsAppendAtTheirExpectedVersion(_ store: any Store) async throws {
        try await store.write {
            try $0.append([Self.envelope("e-1"), Self.envelope("e-2")], to: "s", expectedVersion: 0)
        }
        await #expect(throws: ConcurrencyError(stream: "s", expectedVersion: 1, actualVersion: 2)) {
            try await store.write { try $0.append([Self.envelope("e-3")], to: "s", expectedVersion: 1) }
        }
        try await store.write { try $0.append([Self.envelope("e-3")], to: "s", expectedVersion: 2) }
        try await store.read { work throws in
            #expect(try work.streamVersion("s") == 3 && work.streamVersion("t") == 0)
            let events = try work.readStream("s")
            #expect(events.map(\.payload) == ["e-1", "e-2", "e-3"].map { Self.envelope($0).payload })
        }
    }

    func instancesKeepTheirStateTimelineAndAssociations(_ store: any Store) async throws {
        try await store.write { work throws in
            try Self.record(Self.transition(1, associations: ["tracking": "T-1"], lifecycle: .started), work)
            try Self.record(Self.transition(2), work)
            try Self.record(Self.transition(1, lifecycle: .completed), work, instance: "i-2")
        }
        await #expect(throws: (any Error).self, "a version is recorded once") {
            try await store.write { try Self.record(Self.transition(2), $0) }
        }
        try await store.read { work throws in
            let stored = try #require(try work.storedInstance("i-1", processManager: "pm"))
            #expect(stored.version == 2 && stored.state == Data(#"{"version":2}"#.utf8))
            #expect(try work.instanceVersion("i-1", processManager: "pm") == 2)
            #expect(try work.instanceVersion("i-3", processManager: "pm") == nil)
            #expect(try work.storedInstance("i-1", processManager: "other") == nil)
            #expect(try work.transitions(of: "pm", instance: "i-1").map(\.version) == [1, 2])
            #expect(try work.transitions(of: "pm", instance: "i-1", after: 1) == [Self.transition(2)])
            #expect(try work.instance(associatedWith: "T-1", as: "tracking", processManager: "pm") == "i-1")
            #expect(try work.instance(associatedWith: "T-2", as: "tracking", processManager: "pm") == nil)
            #expect(try work.outboxMessageIDs() == ["issued-1", "issued-2"], "issued-1 once, for both instances")
            #expect(try work.instances(of: "pm", matching: .open, limit: 10).map(\.instanceID) == ["i-1"])
            let all = try work.instances(of: "pm")
            #expect(all.map(\.instanceID) == ["i-1", "i-2"] && all.map(\.lifecycle) == [.running, .completed])
            #expect(all.first?.startedAt == Self.epoch.addingTimeInterval(1))
            #expect(all.first?.updatedAt == Self.epoch.addingTimeInterval(2))
        }
    }

    func instancesAreListedByLifecycleAndAgeAndClosedOnesPurged(_ store: any Store) async throws {
        // i-1 running since t=2, i-2 completed at t=1, i-3 failed at t=3, i-4 started at t=1; another manager's
        // closed instance at t=1.
        try await store.write { work throws in
            try Self.record(Self.transition(1, lifecycle: .started), work)
            try Self.record(Self.transition(2, timers: [.schedule(name: "t", dueAt: Self.epoch)]), work)
            try Self.record(
                Self.transition(1, associations: ["tracking": "T-2"], lifecycle: .completed),
                work,
                instance: "i-2"
            )
            try Self.record(Self.transition(1, lifecycle: .started), work, instance: "i-3")
            try Self.record(Self.transition(2), work, instance: "i-3")
            try Self.record(Self.transition(3, lifecycle: .failed), work, instance: "i-3")
            try Self.record(Self.transition(1, lifecycle: .started), work, instance: "i-4")
            try work.record(
                Self.transition(1, lifecycle: .completed),
                processManager: "other",
                instanceID: "i-2",
                lifecycle: .completed,
                state: Data("{}".utf8),
                route: Self.route
            )
        }
        let t2 = Self.epoch.addingTimeInterval(2)
        try await store.read { work throws in
            func ids(_ filter: InstanceFilter) throws -> [String] {
                try work.instances(of: "pm", matching: filter, limit: 10).map(\.instanceID)
            }
            #expect(try ids(InstanceFilter()) == ["i-3", "i-1", "i-2", "i-4"], "most recently changed first")
            #expect(try ids(.open) == ["i-1", "i-4"])
            #expect(try ids(.closed) == ["i-3", "i-2"])
            #expect(try ids(InstanceFilter(lifecycles: [.started])) == ["i-4"])
            #expect(try ids(InstanceFilter(changedBefore: t2)) == ["i-2", "i-4"], "last moved before t=2")
            #expect(try ids(InstanceFilter(lifecycles: InstanceFilter.open.lifecycles, changedBefore: t2)) == ["i-4"])
            #expect(try work.instances(of: "pm", matching: InstanceFilter(), limit: 2).count == 2)
            func pages(_ filter: InstanceFilter, size: Int) throws -> [String] {
                var (filter, listed) = (filter, [String]())
                while case let page = try work.instances(of: "pm", matching: filter, limit: size), !page.isEmpty {
                    listed += page.map(\.instanceID)
                    filter.after = page.last.map(InstancePosition.init)
                }
                return listed
            }
            #expect(try pages(InstanceFilter(), size: 1) == ["i-3", "i-1", "i-2", "i-4"], "keyset pages (ties by id)")
            #expect(try pages(InstanceFilter(), size: 3) == ["i-3", "i-1", "i-2", "i-4"])
            #expect(try pages(.closed, size: 1) == ["i-3", "i-2"])
            #expect(try pages(InstanceFilter(changedBefore: t2), size: 1) == ["i-2", "i-4"])
            let position = InstancePosition(updatedAt: Self.epoch.addingTimeInterval(1), instanceID: "i-2")
            #expect(InstancePosition(position.description) == position, "a page link's position reads back")
            #expect(try ids(InstanceFilter(after: position)) == ["i-4"])
        }
        let purged = try await store.write {
            try $0.purgeInstances(of: "pm", closedBefore: t2, at: Self.epoch.addingTimeInterval(10), limit: 100)
        }
        #expect(purged == ["i-2"], "closed before t=2: i-3 closed later, the others are open")
        try await store.read { work throws in
            #expect(try work.transitions(of: "pm", instance: "i-2").isEmpty, "its timeline is gone")
            #expect(try work.transitions(of: "other", instance: "i-2").count == 1, "another manager's is kept")
            #expect(try work.transitions(of: "pm", instance: "i-3").count == 3)
            #expect(try work.nextTimer()?.instanceID == "i-1", "an open instance keeps its timers")
        }
        let again = try await store.write {
            try $0.purgeInstances(of: "pm", closedBefore: t2, at: Self.epoch.addingTimeInterval(11), limit: 100)
        }
        #expect(again.isEmpty, "a tombstone is not purged again")
    }

    /// What a transaction learned of an instance's row (a store may keep it, to write the row by its id) must not
    /// outlive the row: not a savepoint that rolled back the row's insert (the next new row may take its id), not
    /// the removal of its tombstone.
    func instancesAreWrittenByTheirOwnRowsAfterARollbackOrARemoval(_ store: any Store) async throws {
        try await store.write { work throws in
            #expect(try work.storedInstance("i-1", processManager: "pm") == nil)
            let rolledBack = Result {
                try work.inSavepoint {
                    try Self.record(Self.transition(1), work)
                    throw Planned()
                }
            }
            #expect(throws: Planned.self) { try rolledBack.get() }
            try Self.record(Self.transition(1), work, instance: "i-2")
            try Self.record(Self.transition(1), work)
            try Self.record(Self.transition(2), work, instance: "i-2")
        }
        try await store.read { work throws in
            for (id, version) in [("i-1", 1), ("i-2", 2)] {
                #expect(
                    try work.storedInstance(id, processManager: "pm")?.state == Data(#"{"version":\#(version)}"#.utf8)
                )
                #expect(try work.transitions(of: "pm", instance: id).map(\.version) == Array(1...Int64(version)))
            }
        }
        try await store.write { try Self.record(Self.transition(3, lifecycle: .completed), $0, instance: "i-2") }
        let closedBefore = Self.epoch.addingTimeInterval(10)
        _ = try await store.write {
            try $0.purgeInstances(of: "pm", closedBefore: closedBefore, at: closedBefore, limit: 10)
        }
        try await store.write { work throws in
            #expect(try work.instanceVersion("i-2", processManager: "pm") == 3, "a tombstone")
            let purgedBefore = Self.epoch.addingTimeInterval(20)
            #expect(try work.removeTombstones(of: "pm", purgedBefore: purgedBefore, limit: 10) == 1)
            try Self.record(Self.transition(1), work, instance: "i-2")
        }
        try await store.read { work throws in
            #expect(try work.storedInstance("i-2", processManager: "pm")?.version == 1, "started again")
            #expect(try work.transitions(of: "pm", instance: "i-2").map(\.version) == [1])
        }
    }

    func purgedInstancesLeaveTombstonesUntilTheyAreRemoved(_ store: any Store) async throws {
        // i-1 and i-2 closed at t=2 (i-1 with a timer left over), i-3 closed at t=1, i-4 still open.
        try await store.write { work throws in
            try Self.record(Self.transition(1, associations: ["tracking": "T-1"], lifecycle: .started), work)
            try Self.record(
                Self.transition(2, timers: [.schedule(name: "t", dueAt: Self.epoch)], lifecycle: .failed),
                work
            )
            try Self.record(Self.transition(1, lifecycle: .started), work, instance: "i-2")
            try Self.record(Self.transition(2, lifecycle: .completed), work, instance: "i-2")
            try Self.record(Self.transition(1, lifecycle: .completed), work, instance: "i-3")
            try Self.record(Self.transition(1, lifecycle: .started), work, instance: "i-4")
        }
        let t3 = Self.epoch.addingTimeInterval(3)
        let (t10, t20) = (Self.epoch.addingTimeInterval(10), Self.epoch.addingTimeInterval(20))
        let first = try await store.write { try $0.purgeInstances(of: "pm", closedBefore: t3, at: t10, limit: 2) }
        #expect(first == ["i-3", "i-1"], "oldest first (ties by id), the limit")
        let second = try await store.write { try $0.purgeInstances(of: "pm", closedBefore: t3, at: t20, limit: 2) }
        #expect(second == ["i-2"], "the open instance stays whole")
        try await store.read { work throws in
            let tombstone = try #require(try work.storedInstance("i-1", processManager: "pm"))
            #expect(tombstone.version == 2 && tombstone.state == Data(#"{"version":2}"#.utf8), "state kept")
            #expect(try work.instance(associatedWith: "T-1", as: "tracking", processManager: "pm") == "i-1")
            #expect(try work.transitions(of: "pm", instance: "i-1").isEmpty, "the timeline went")
            #expect(try work.nextTimer() == nil, "its timer went")
            let listed = try work.instances(of: "pm", matching: .closed, limit: 10)
            #expect(Set(listed.map(\.instanceID)) == ["i-1", "i-2", "i-3"], "tombstones are listed as closed")
            #expect(listed.first { $0.instanceID == "i-1" }?.lifecycle == .failed)
            #expect(listed.first { $0.instanceID == "i-1" }?.purgedAt == t10, "when it was purged")
            #expect(try work.instances(of: "pm", matching: .open, limit: 10).map(\.purgedAt) == [nil])
        }
        // A late reply moves a tombstone on: it is recorded, and goes with the tombstone.
        try await store.write { try Self.record(Self.transition(3, lifecycle: .failed), $0) }
        let removedEarly = try await store.write { try $0.removeTombstones(of: "other", purgedBefore: t20, limit: 10) }
        #expect(removedEarly == 0, "another manager's tombstones only")
        let removed = try await store.write { try $0.removeTombstones(of: "pm", purgedBefore: t20, limit: 10) }
        #expect(removed == 2, "i-3 and i-1, purged at t=10; i-2, purged at t=20, stays")
        try await store.read { work throws in
            for id in ["i-1", "i-3"] {
                #expect(try work.storedInstance(id, processManager: "pm") == nil, "\(id)")
                #expect(try work.instanceVersion(id, processManager: "pm") == nil, "\(id)")
            }
            #expect(try work.instance(associatedWith: "T-1", as: "tracking", processManager: "pm") == nil)
            #expect(try work.transitions(of: "pm", instance: "i-1").isEmpty, "the late reply's record went too")
            #expect(try work.storedInstance("i-2", processManager: "pm")?.version == 2)
            #expect(try work.storedInstance("i-4", processManager: "pm")?.version == 1)
        }
        #expect(try await store.write { try $0.removeTombstones(of: "pm", purgedBefore: t20, limit: 10) } == 0)
    }

    func timersAreScheduledRetriedParkedAndRearmed(_ store: any Store) async throws {
        let (early, late) = (Self.epoch.addingTimeInterval(10), Self.epoch.addingTimeInterval(20))
        try await store.write { work throws in
            try Self.record(
                Self.transition(
                    1,
                    timers: [.schedule(name: "late", dueAt: late), .schedule(name: "early", dueAt: early)]
                ),
                work
            )
            try Self.record(Self.transition(1, timers: [.schedule(name: "gone", dueAt: early)]), work, instance: "i-2")
            try Self.record(Self.transition(2, timers: [.cancel(name: "gone")]), work, instance: "i-2")
        }
        let due = try await store.read { try $0.dueTimers(before: late, limit: 10) }
        #expect(due.map(\.name) == ["early", "late"] && due.map(\.attempts) == [0, 0])
        #expect(try await store.read { try $0.dueTimers(before: early.addingTimeInterval(-0.001), limit: 10) }.isEmpty)
        let retryAt = Self.epoch.addingTimeInterval(30)
        try await store.write { work throws in
            try work.retryTimer(due[0], at: retryAt)
            try work.parkTimer(due[1], deadLetter: 7)
        }
        try await store.read { work throws in
            let now = try work.dueTimers(before: retryAt, limit: 10)
            #expect(now.map(\.name) == ["early"] && now.first?.attempts == 1 && now.first?.nextAttemptAt == retryAt)
            #expect(now.first?.dueAt == early, "the deadline stays what the instance set")
            #expect(try work.parkedTimers().map(\.name) == ["late"])
            #expect(try work.nextTimer()?.name == "early")
        }
        #expect(try await store.write { try $0.rearmTimer(deadLetter: 7, at: retryAt) })
        #expect(try await store.write { try $0.rearmTimer(deadLetter: 7, at: retryAt) } == false)
        try await store.write { work throws in
            var stale = due[0]
            stale.dueAt = late  // a firing whose deadline was rescheduled since: it deletes nothing
            try work.deleteTimer(stale)
            try work.deleteTimer(due[1])
        }
        let left = try await store.read { try $0.dueTimers(before: retryAt, limit: 10) }
        #expect(left.map(\.name) == ["early"] && left.first?.attempts == 1)
        let deferredTo = Self.epoch.addingTimeInterval(40)
        try await store.write { try $0.deferTimer(left[0], to: deferredTo) }
        #expect(try await store.read { try $0.dueTimers(before: retryAt, limit: 10) }.isEmpty, "put off")
        let deferred = try await store.read { try $0.dueTimers(before: deferredTo, limit: 10) }
        #expect(deferred.first?.nextAttemptAt == deferredTo && deferred.first?.attempts == 1, "no attempt counted")
    }

    func statisticsCountTheOutboxDeadLettersAndInstances(_ store: any Store) async throws {
        let empty = try await store.read { try $0.statistics(idleSince: Self.epoch) }
        #expect(empty == StoreStatistics())
        // i-1 running since t=2 and i-4 started at t=1 (open), i-2 completed; each transition issues one command.
        let ids = try await store.write { work throws in
            try Self.record(Self.transition(1, lifecycle: .started), work)
            try Self.record(Self.transition(2), work)
            try Self.record(Self.transition(3, lifecycle: .completed), work, instance: "i-2")
            try Self.record(Self.transition(1, lifecycle: .started), work, instance: "i-4")
            var letter = DeadLetter(
                messageID: "d-1",
                messageType: "test.Happened.v1",
                exchange: "baton.events",
                routingKey: "test.Happened",
                headers: [:],
                body: Data("{}".utf8),
                reason: "it broke",
                handler: "h",
                attempts: 1,
                deadAt: Self.epoch
            )
            let first = try work.addDeadLetter(letter)
            letter.messageID = "d-2"
            try work.addDeadLetter(letter)
            return (first, try work.pendingOutbox(limit: 10, readyAt: Self.epoch).map(\.sequence))
        }
        try await store.write { work throws in
            try work.markReplayed(deadLetter: ids.0, at: Self.epoch)
            try work.removeSent([ids.1[0]])
        }
        let statistics = try await store.read { try $0.statistics(idleSince: Self.epoch.addingTimeInterval(2)) }
        #expect(statistics.pendingOutbox == 2, "issued-1 was sent; issued-2 and issued-3 wait")
        #expect(statistics.oldestPendingOutbox == Self.epoch)
        #expect(statistics.openDeadLetters == 1, "d-1 was replayed")
        #expect(statistics.instances == ["pm": [.started: 1, .running: 1, .completed: 1]])
        #expect(statistics.idleInstances == ["pm": 1], "i-4: open, last moved at t=1; i-1 moved at t=2")
    }

    func deadLettersAreReplayedByKind(_ store: any Store) async throws {
        @Sendable func letter(_ id: String, type: String = "test.Happened.v1") -> DeadLetter {
            DeadLetter(
                messageID: id,
                messageType: type,
                exchange: "baton.events",
                routingKey: "test.Happened",
                headers: ["h": "1"],
                body: Data("{}".utf8),
                reason: "it broke",
                handler: "h",
                attempts: 3,
                deadAt: Self.epoch
            )
        }
        let ids = try await store.write { work throws in
            [
                try work.addDeadLetter(letter("plain")), try work.addDeadLetter(letter("held")),
                try work.addDeadLetter(letter("timer", type: DueTimer.deadLetterType)),
            ]
        }
        #expect(Set(ids).count == 3)
        try await store.write { work throws in
            try work.park(Self.parked("held", key: "k", attempts: 3, deadLetter: ids[1]), at: Self.epoch)
        }
        try await store.read { work throws in
            #expect(try work.deadLetters().map(\.messageID) == ["timer", "held", "plain"], "newest first")
            #expect(try work.hasOpenDeadLetter(messageID: "plain") && !work.hasOpenDeadLetter(messageID: "x"))
            #expect(try work.deadLetter(id: ids[0])?.reason == "it broke")
        }
        let route: @Sendable (DeadLetter) -> (exchange: String, routingKey: String, headers: [String: String]) = {
            ("baton.nodes", "node", ["from": $0.exchange])
        }
        let replayed = try await store.write { work throws in
            try ids.map { try work.replayDeadLetter(id: $0, at: Self.epoch, route: route) }
        }
        #expect(replayed == [true, true, true])
        #expect(try await store.write { try $0.replayDeadLetter(id: ids[0], at: Self.epoch, route: route) } == false)
        try await store.read { work throws in
            let pending = try work.pendingOutbox(limit: 10)
            #expect(pending.map(\.envelope.messageID) == ["plain"], "only the plain message goes back to the broker")
            #expect(pending.first?.envelope.headers == ["h": "1", "from": "baton.events"])
            #expect(pending.first?.exchange == "baton.nodes" && pending.first?.routingKey == "node")
            #expect(try work.deadLetters().isEmpty && work.deadLetters(includeReplayed: true).count == 3)
            #expect(try work.dueParkedMessages(before: Self.epoch, limit: 10).map(\.messageID) == ["held"])
        }
    }

    static func parked(
        _ id: String,
        key: String?,
        attempts: Int = 0,
        next: Date? = nil,
        deadLetter: Int64? = nil
    ) -> ParkedMessage {
        ParkedMessage(
            orderingKey: key,
            messageID: id,
            exchange: "baton.events",
            routingKey: "test.Happened",
            messageType: "test.Happened.v1",
            contentType: "application/json",
            correlationID: "c",
            timestamp: epoch,
            headers: ["h": "1"],
            body: Data("{}".utf8),
            attempts: attempts,
            nextAttemptAt: next,
            deadLetterID: deadLetter
        )
    }

    func heldMessagesWaitInOrderPerKey(_ store: any Store) async throws {
        let soon = Self.epoch.addingTimeInterval(1)
        try await store.write { work throws in
            try work.park(Self.parked("k-1", key: "k", attempts: 1, next: soon), at: Self.epoch)
            try work.park(Self.parked("k-2", key: "k"), at: Self.epoch)
            try work.park(Self.parked("alone", key: nil, attempts: 1, next: soon), at: Self.epoch)
        }
        try await store.read { work throws in
            #expect(try work.hasParkedMessages() && work.isParked(messageID: "k-2") && !work.isParked(messageID: "x"))
            #expect(try work.isBlocked(orderingKey: "k") && !work.isBlocked(orderingKey: "other"))
            #expect(try work.dueParkedMessages(before: Self.epoch, limit: 10).isEmpty)
            #expect(try work.nextParkedAttempt() == soon)
            let due = try work.dueParkedMessages(before: soon, limit: 10)
            #expect(due.map(\.messageID) == ["k-1", "alone"], "only the first of a key is due")
            #expect(due.first == Self.withSequence(Self.parked("k-1", key: "k", attempts: 1, next: soon), due[0]))
        }
        let first = try await store.read { try $0.dueParkedMessages(before: soon, limit: 1)[0] }
        try await store.write {
            try $0.retryParkedMessage(first.sequence, at: soon.addingTimeInterval(1), error: "again")
        }
        #expect(try await store.read { try $0.parkedMessages() }.first?.lastError == "again")
        try await store.write { try $0.releaseParkedMessage(first, at: soon) }
        try await store.read { work throws in
            let due = try work.dueParkedMessages(before: soon, limit: 10)
            #expect(due.map(\.messageID) == ["alone", "k-2"] || due.map(\.messageID) == ["k-2", "alone"])
            #expect(due.first { $0.messageID == "k-2" }?.nextAttemptAt == soon, "the next of its key is due now")
        }
        let second = try await store.read { try $0.parkedMessages().first { $0.messageID == "k-2" }! }
        try await store.write { try $0.deadLetterParkedMessage(second.sequence, deadLetter: 9, error: "gave up") }
        try await store.read { work throws in
            #expect(try work.dueParkedMessages(before: soon, limit: 10).map(\.messageID) == ["alone"])
            #expect(try work.isBlocked(orderingKey: "k"), "a dead-lettered message keeps its key blocked")
        }
        #expect(try await store.write { try $0.rearmParkedMessage(deadLetter: 9, at: soon) })
        let rearmed = try await store.read { try $0.parkedMessages().first { $0.messageID == "k-2" }! }
        #expect(rearmed.attempts == 0 && rearmed.deadLetterID == nil && rearmed.nextAttemptAt == soon)
    }

    static func withSequence(_ message: ParkedMessage, _ stored: ParkedMessage) -> ParkedMessage {
        var message = message
        message.sequence = stored.sequence
        return message
    }

    func documentsAreFoundByIdAliasAndStatus(_ store: any Store) async throws {
        try await store.write { work throws in
            try work.save(["n": 1], in: "orders", id: "o-2", alias: "chk-2", status: "OPEN", at: Self.epoch)
            try work.save(["n": 2], in: "orders", id: "o-1", alias: "chk-1", status: "DONE", at: Self.epoch)
            try work.save(["n": 3], in: "orders", id: "o-3", alias: "o-1", status: "OPEN", at: Self.epoch)
            try work.save(["n": 4], in: "items", id: "o-1", at: Self.epoch)
            try work.save(["n": 5], in: "orders", id: "o-2", alias: "chk-2", status: "DONE", at: Self.epoch)
        }
        try await store.read { work throws in
            #expect(try work.document([String: Int].self, in: "orders", idOrAlias: "o-1") == ["n": 2], "id first")
            #expect(try work.document([String: Int].self, in: "orders", idOrAlias: "chk-2") == ["n": 5])
            #expect(try work.document([String: Int].self, in: "orders", idOrAlias: "nope") == nil)
            #expect(
                try work.documents([String: Int].self, in: "orders").map { $0["n"] } == [5, 2, 3],
                "first saved first"
            )
            #expect(try work.documents([String: Int].self, in: "orders", status: "DONE").map { $0["n"] } == [5, 2])
            #expect(try work.documents([String: Int].self, in: "orders", limit: 1).count == 1)
        }
    }

    func concurrentWritersOfOneStreamVersion(_ store: any Store) async throws {
        try await store.write { try $0.append([Self.envelope("e-0")], to: "s", expectedVersion: 0) }
        let seen = try await store.read { try $0.streamVersion("s") }
        let counter = Counter()
        let succeeded = await Self.race(store) { work in
            try work.append([Self.envelope("e-\(counter.next())")], to: "s", expectedVersion: seen)
        }
        #expect(succeeded == 1, "one of two writers that read version \(seen) may append")
        #expect(try await store.read { try $0.streamVersion("s") } == 2)
    }

    func concurrentWritersOfOneInstanceVersion(_ store: any Store) async throws {
        try await store.write { try Self.record(Self.transition(1), $0) }
        let succeeded = await Self.race(store) { try Self.record(Self.transition(2), $0) }
        #expect(succeeded == 1, "one of two writers of version 2 may record it")
        #expect(try await store.read { try $0.transitions(of: "pm", instance: "i-1").map(\.version) } == [1, 2])
    }

    func concurrentWritersOfOneInboxID(_ store: any Store) async throws {
        let succeeded = await Self.race(store) { work in
            guard try !work.hasHandled("m-1", consumer: "c") else { throw Planned() }
            try work.enqueue(Self.envelope("effect-\(UUID())"), exchange: "x", routingKey: "k")
            try work.markHandled("m-1", consumer: "c", issuedAt: Self.epoch, at: Self.epoch)
        }
        #expect(succeeded == 1, "one message, one effect")
        #expect(try await store.read { try $0.pendingOutboxCount() } == 1)
    }

    func concurrentFiringsOfOneDueTimer(_ store: any Store) async throws {
        let due = Self.epoch.addingTimeInterval(5)
        try await store.write { try Self.record(Self.transition(1, timers: [.schedule(name: "t", dueAt: due)]), $0) }
        let timers = try await store.read { try $0.dueTimers(before: due, limit: 10) }
        #expect(timers.count == 1)
        // Both firings read the due timer before either wrote; each records the instance's next version.
        let succeeded = await Self.race(store) { work in
            try Self.record(Self.transition(2, timers: [.cancel(name: "t")]), work)
        }
        #expect(succeeded == 1, "a due timer fires once")
        #expect(try await store.read { try $0.dueTimers(before: due, limit: 10) }.isEmpty)
    }

    func outboxRowsOfConcurrentTransactions(_ store: any Store) async throws {
        await withTaskGroup(of: Void.self) { group in
            for writer in 0..<4 {
                group.addTask {
                    _ = try? await store.write { work throws in
                        for row in 0..<25 {
                            try work.enqueue(Self.envelope("w\(writer)-\(row)"), exchange: "x", routingKey: "k")
                        }
                    }
                }
            }
        }
        let pending = try await store.read { try $0.pendingOutbox(limit: 1000) }
        #expect(pending.count == 100, "every committed row is pending, whatever the commit order")
        #expect(pending.map(\.sequence) == pending.map(\.sequence).sorted(), "in queue order")
        for writer in 0..<4 {
            let own = pending.map(\.envelope.messageID).filter { $0.hasPrefix("w\(writer)-") }
            #expect(own == (0..<25).map { "w\(writer)-\($0)" }, "each transaction's rows keep its order")
        }
    }
}

/// Distinct numbers for concurrent writers.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func next() -> Int { value.add(1, ordering: .relaxed).newValue }
}
