import Baton
import BatonNode
import BatonSQLite
import BookstoreContracts
import Foundation
import Fulfillment
import Logging
import Testing

/// `Fixtures/fulfillment-8b4a14c.sqlite` was written by the release before process versioning (8b4a14c: state
/// snapshotted every 20th transition, no state or definition versions), through its own `ProcessManagerHost`:
/// `o-reserving` (confirmed), `o-shipping` (reserved), `o-done` (completed). This release must open it, upgrade
/// it in place and carry its instances on.
@Suite struct StoreUpgradeTests {
    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/fulfillment-8b4a14c.sqlite")

    @Test func aStoreOfTheReleaseBeforeVersioningUpgradesInPlaceAndItsInstancesGoOn() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("upgrade-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("fulfillment.sqlite").path
        try FileManager.default.copyItem(atPath: Self.fixture.path, toPath: path)

        let definition = FulfillmentService.processManager(stepTimeout: .seconds(30))
        let engine = try ProcessEngine(definition)
        let store = try SQLiteStore(path: path)  // migrates in place
        let (reserving, shipping, done, differences) = try await store.read { work in
            (
                try work.loadInstance("o-reserving", of: engine), try work.loadInstance("o-shipping", of: engine),
                try work.loadInstance("o-done", of: engine),
                try ["o-reserving", "o-shipping", "o-done"].compactMap {
                    engine.verify(try work.transitions(of: "fulfillment", instance: $0), instanceID: $0)
                }
            )
        }
        #expect(differences.isEmpty, "this release decides the old histories as the old one did: \(differences)")
        #expect(reserving?.state.step == "reserving" && reserving?.lifecycle == .started)
        #expect(reserving?.definitionVersion == 1, "started under the old definition")
        #expect(reserving?.stateVersion == FulfillmentState.stateVersion && reserving?.state.expedited == false)
        #expect(shipping?.state.step == "shipping" && shipping?.compensations.count == 1, "its undo step is kept")
        #expect(done?.lifecycle == .completed)
        let timers = try await store.read { try $0.dueTimers(before: .distantFuture, limit: 10) }
        #expect(Set(timers.map(\.instanceID)) == ["o-reserving", "o-shipping"], "the old deadlines are still pending")

        // o-shipping goes on: its shipment is created, then its order completes.
        let host = try ProcessManagerHost(definition)
        for (index, event) in [
            ShipmentCreated(orderID: "o-shipping", trackingNumber: "TRK-1") as any Event,
            OrderCompleted(orderID: "o-shipping", checkoutID: "c-o-shipping"),
        ].enumerated() {
            let envelope = Envelope(
                messageID: "after-upgrade-\(index)",
                messageType: type(of: event).messageType,
                timestamp: Date(timeIntervalSince1970: 1_800_000_100 + Double(index)),
                payload: MessageRegistry.encode(event)
            )
            try await store.write { work in
                try host.handle(
                    event,
                    envelope: envelope,
                    in: work,
                    now: envelope.timestamp,
                    logger: Logger(label: "t")
                )
            }
        }
        let finished = try await store.read { try $0.loadInstance("o-shipping", of: engine) }
        #expect(finished?.lifecycle == .completed && finished?.version == 4)
        let issued = try await store.read { try $0.pendingOutbox(limit: 100) }.map(\.envelope.messageType)
        #expect(issued.last == "orders.CompleteOrder.v1", "what it issues after the upgrade is queued as before")
    }
}
