import Baton
import BatonTesting
import BookstoreContracts
import Foundation
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

    @Test func aReservationInventoryRefusedCancelsTheOrderWithoutWaitingForTheTimeout() throws {
        var scenario = try ProcessScenario(FulfillmentService.processManager(stepTimeout: .seconds(30)))
        let confirmed = try scenario.when(
            OrderConfirmed(orderID: "o-3", checkoutID: "c-3", shippingAddress: "12 St James's Sq", lines: lines)
        )
        let reserve = try #require(confirmed.issued.first?.envelope)
        let refused = try scenario.when(
            CommandFailed(
                commandType: reserve.messageType,
                commandID: reserve.messageID,
                reason: "unknown SKU book-0001: not in the catalogue",
                refusedBy: "inventory/reserve-inventory",
                attempts: 1,
                processManager: "fulfillment",
                instanceID: "o-3",
                causation: [reserve.messageID]
            )
        )
        #expect(refused.lifecycle == .compensating)
        #expect(
            refused.commands(CancelOrder.self).map(\.reason) == [
                "inventory refused the reservation: unknown SKU book-0001: not in the catalogue"
            ]
        )
        #expect(refused.commands(ReleaseInventory.self).isEmpty, "nothing was reserved, nothing to release")
    }

    @Test func anOperatorsAbortReleasesTheStockCancelsTheShipmentAndTheOrder() throws {
        var scenario = try ProcessScenario(FulfillmentService.processManager(stepTimeout: .seconds(30)))
        try scenario.given(
            OrderConfirmed(orderID: "o-4", checkoutID: "c-4", shippingAddress: "12 St James's Sq", lines: lines),
            InventoryReserved(orderID: "o-4")
        )
        let aborted = try scenario.abort("o-4", reason: "customer called")
        #expect(aborted.lifecycle == .failed)
        #expect(aborted.commands(ReleaseInventory.self).map(\.orderID) == ["o-4"])
        #expect(aborted.commands(CancelOrder.self).map(\.reason) == ["customer called"])
        #expect(scenario.instance("o-4")?.state.step == "aborted")
    }

    @Test func customerServiceExpeditesARunningOrderAndACommandForNoOrderIsDeadLettered() throws {
        var scenario = try ProcessScenario(FulfillmentService.processManager(stepTimeout: .seconds(30)))
        try scenario.given(
            OrderConfirmed(orderID: "o-5", checkoutID: "c-5", shippingAddress: "12 St James's Sq", lines: lines)
        )
        let expedited = try scenario.when(ExpediteOrder(orderID: "o-5", requestedBy: "agent-7"))
        #expect(expedited.lifecycle == .running)
        #expect(scenario.instance("o-5")?.state.expeditedBy == "agent-7")
        #expect(scenario.instance("o-5")?.definitionVersion == 2)
        let nobody = try scenario.when(ExpediteOrder(orderID: "o-nobody", requestedBy: "agent-7"))
        #expect(nobody.isRefused, "a command for an order with no process is dead-lettered")
    }

    @Test func aStateStoredBeforeExpeditingExistedLoadsAsNotExpedited() throws {
        let stored = Data(
            #"{"compensations":[],"id":"o-6","lifecycle":"running","state":{"address":"a","checkout_id":"c","lines":[],"order_id":"o-6","step":"shipping"},"timers":{},"version":2}"#
                .utf8
        )
        let instance = try ProcessInstance<FulfillmentState>.decodeStored(stored)
        #expect(instance.state.step == "shipping" && instance.state.expedited == false)
        #expect(instance.stateVersion == 2 && instance.definitionVersion == 1)
    }
}
