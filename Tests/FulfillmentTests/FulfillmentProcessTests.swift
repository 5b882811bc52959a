import BatonTesting
import BookstoreContracts
import Fulfillment
import Testing

/// The fulfillment process manager on its own, through the testing kit (no broker, no store).
@Suite struct FulfillmentProcessTests {
    let lines = [OrderLine(sku: "book-0001", quantity: 2)]

    @Test func aTimeoutBeforeTheShipmentCompensates() throws {
        var scenario = try ProcessScenario(FulfillmentService.processManager(stepTimeout: .seconds(10)))
        try scenario.given(
            OrderConfirmed(orderID: "o-1", checkoutID: "c-1", shippingAddress: "12 St James's Sq", lines: lines),
            InventoryReserved(orderID: "o-1")
        )
        let fired = try scenario.advance(by: .seconds(11))
        #expect(fired.first?.lifecycle == .compensating)
        #expect(fired.first?.commands(ReleaseInventory.self).map(\.orderID) == ["o-1"])
        #expect(fired.first?.commands(CancelOrder.self).map(\.reason) == ["step 'shipping' timed out"])
    }

    @Test func onceShippedTheOrderIsNeverCompensatedForATimeout() throws {
        // Regression (found by the chaos run): with the orders service cut off, the "completing" timeout
        // released the stock and cancelled the shipment of an order that the orders service then completed.
        var scenario = try ProcessScenario(FulfillmentService.processManager(stepTimeout: .seconds(10)))
        try scenario.given(
            OrderConfirmed(orderID: "o-2", checkoutID: "c-2", shippingAddress: "12 St James's Sq", lines: lines),
            InventoryReserved(orderID: "o-2"),
            ShipmentCreated(orderID: "o-2", trackingNumber: "TRK-2")
        )
        #expect(try scenario.advance(by: .seconds(600)).isEmpty, "no timer is left to fire")
        let completed = try scenario.when(OrderCompleted(orderID: "o-2", checkoutID: "c-2"))
        #expect(completed.lifecycle == .completed)
        #expect(completed.issued.isEmpty)
    }
}
