import BatonNode
import BatonTesting
import BookstoreContracts
import Orders
import Testing

/// The orders context's handlers on their own, the storefront subscriber included.
@Suite struct OrdersServiceTests {
    let checkout = CheckoutCompleted(
        checkoutID: "chk-1",
        customer: "Ada",
        shippingAddress: "12 St James's Sq",
        lines: [OrderLine(sku: "b", quantity: 1)]
    )

    @Test func aCheckoutPlacesAndConfirmsOneOrderThroughTheDispatchedCommand() async throws {
        var scenario = ServiceScenario(handlers: OrdersService.handlers)
        let placed = try await scenario.when(checkout, messageID: "m-1")
        #expect(placed.publishedTypes == ["orders.OrderPlaced.v1", "orders.OrderConfirmed.v1"])
        let order = orderID(forCheckout: "chk-1")
        #expect(placed.events(OrderConfirmed.self).map(\.orderID) == [order])
        #expect(try await scenario.when(checkout, messageID: "m-2").published.isEmpty, "a second checkout, one order")
        #expect(try await scenario.document(OrderView.self, in: "orders", id: "chk-1")?.status == "CONFIRMED")
    }

    @Test func anOrderIsCompletedOrCancelledOnceAndAnUnknownOneIsRefused() async throws {
        var scenario = ServiceScenario(handlers: OrdersService.handlers)
        try await scenario.when(checkout)
        let order = orderID(forCheckout: "chk-1")
        let cancelled = try await scenario.when(CancelOrder(orderID: order, reason: "changed my mind"))
        #expect(cancelled.events(OrderCancelled.self).map(\.reason) == ["changed my mind"])
        #expect(try await scenario.when(CompleteOrder(orderID: order)).published.isEmpty, "a cancelled order stays so")
        await #expect(throws: Rejection.self) {
            try await scenario.when(CancelOrder(orderID: "ord-nobody", reason: "r"))
        }
    }
}
