import BatonNode
import BatonTesting
import Testing

@testable import ExampleFulfillment

@Suite struct FulfillmentExampleTests {
    @Test func aFailedShipmentCompensatesTheReservation() throws {
        var scenario = try ProcessScenario(fulfillment)
        try scenario.given(
            OrderConfirmed(orderID: "o-1", address: "12 St James's Sq"),
            InventoryReserved(orderID: "o-1")
        )
        let outcome = try scenario.when(ShipmentFailed(orderID: "o-1", reason: "blank address"))
        #expect(outcome.lifecycle == .compensating)
        #expect(outcome.commands(ReleaseInventory.self).map(\.orderID) == ["o-1"])
        try scenario.advance(by: .seconds(31))  // the clock is yours: due timers fire
    }

    @Test func theServiceHostsTheProcessManager() throws {
        let hosts = ExampleFulfillmentService.handlers
        #expect(hosts.map(\.name) == ["fulfillment"])
        #expect(
            Set(hosts.flatMap(\.messageTypes).map { $0.messageType })
                == fulfillment.messageTypes.union(
                    ProcessManagerHost<Fulfillment>.administrationTypes.map { $0.messageType }
                ),
            "its events, and the operator's commands"
        )
        #expect(Set(hosts.flatMap(\.bindings).map(\.bindingKey)) == fulfillment.messageNames)
        #expect(fulfillment.messageNames.contains("baton.CommandFailed.fulfillment"), "its own failure replies only")
    }
}
