import BatonNode
import BatonTesting
import BookstoreContracts
import Shipping
import Testing

/// The shipping context's handlers on their own, the carrier subscriber included.
@Suite struct ShippingServiceTests {
    @Test func aShipmentIsCreatedOnceWithItsTrackingNumberOrFailsWithoutAnAddress() async throws {
        var scenario = ServiceScenario(handlers: ShippingService.handlers)
        let created = try await scenario.when(CreateShipment(orderID: "o-1", address: "12 St James's Sq"))
        let tracking = ShippingService.trackingNumber(for: "o-1")
        #expect(created.events(ShipmentCreated.self).map(\.trackingNumber) == [tracking])
        #expect(try await scenario.when(CreateShipment(orderID: "o-1", address: "x")).published.isEmpty)
        let blank = try await scenario.when(CreateShipment(orderID: "o-2", address: "  "))
        #expect(blank.events(ShipmentFailed.self).map(\.reason) == ["the shipping address is empty"])
    }

    @Test func theCarrierSubscriberDispatchesTheDeliveryWhichIsRecordedInTheSameTransaction() async throws {
        var scenario = ServiceScenario(handlers: ShippingService.handlers)
        try await scenario.when(CreateShipment(orderID: "o-1", address: "12 St James's Sq"))
        let tracking = ShippingService.trackingNumber(for: "o-1")
        let report = ParcelDelivered(trackingNumber: tracking, deliveredAt: "2026-11-22T10:00:00Z")
        let delivered = try await scenario.when(report, messageID: "carrier-1")
        #expect(delivered.publishedTypes == ["shipping.ShipmentDelivered.v1"], "the internal command stayed inside")
        #expect(try await scenario.document(Shipment.self, in: "shipments", id: tracking)?.status == .delivered)
        #expect(try await scenario.when(report, messageID: "carrier-1").published.isEmpty, "a repeat has no effect")
    }

    @Test func aDeliveryOfAnUnknownParcelIsRefused() async throws {
        var scenario = ServiceScenario(handlers: ShippingService.handlers)
        await #expect(throws: Rejection.self) {
            try await scenario.when(ParcelDelivered(trackingNumber: "TRK-NOPE", deliveredAt: "2026-11-22T10:00:00Z"))
        }
    }
}
