import BatonNode
import BatonTesting
import BookstoreContracts
import Inventory
import Testing

/// The inventory context's handlers on their own (``ServiceScenario``: no broker, an in-memory store).
@Suite struct InventoryServiceTests {
    func stocked(_ items: [String: Int]) async throws -> ServiceScenario {
        var scenario = ServiceScenario(handlers: InventoryService.handlers)
        for (sku, quantity) in items.sorted(by: { $0.key < $1.key }) {
            try await scenario.when(AddStock(sku: sku, quantity: quantity, title: "Title of \(sku)"))
        }
        return scenario
    }

    func item(_ scenario: ServiceScenario, _ sku: String) async throws -> StockItem? {
        try await scenario.document(StockItem.self, in: "items", id: sku)
    }

    @Test func aReservationIsAllOrNothingAndOncePerOrder() async throws {
        var scenario = try await stocked(["a": 5, "b": 1])
        let short = try await scenario.when(
            ReserveInventory(
                orderID: "o-1",
                lines: [OrderLine(sku: "a", quantity: 2), OrderLine(sku: "b", quantity: 2)]
            )
        )
        #expect(
            short.events(InventoryReservationFailed.self).map(\.reason) == ["out of stock: b (wanted 2, available 1)"]
        )
        #expect(try await item(scenario, "a")?.reserved == 0, "nothing of a failed reservation stays reserved")

        let reserved = try await scenario.when(
            ReserveInventory(orderID: "o-2", lines: [OrderLine(sku: "a", quantity: 2)])
        )
        #expect(reserved.publishedTypes == ["inventory.InventoryReserved.v1"])
        let again = try await scenario.when(ReserveInventory(orderID: "o-2", lines: [OrderLine(sku: "a", quantity: 2)]))
        #expect(again.published.isEmpty, "once per order")
        #expect(try await item(scenario, "a").map { [$0.available, $0.reserved] } == [3, 2])
    }

    @Test func aReleaseGivesTheStockBackAndOneBeforeTheReservationRefusesIt() async throws {
        var scenario = try await stocked(["a": 5])
        try await scenario.when(ReserveInventory(orderID: "o-1", lines: [OrderLine(sku: "a", quantity: 2)]))
        let released = try await scenario.when(ReleaseInventory(orderID: "o-1", reason: "cancelled"))
        #expect(released.events(InventoryReleased.self).map(\.reason) == ["cancelled"])
        #expect(try await item(scenario, "a").map { [$0.available, $0.reserved] } == [5, 0])

        let early = try await scenario.when(ReleaseInventory(orderID: "o-2", reason: "timed out"))
        #expect(early.published.isEmpty, "nothing was reserved, nothing is released")
        let late = try await scenario.when(ReserveInventory(orderID: "o-2", lines: [OrderLine(sku: "a", quantity: 1)]))
        #expect(late.published.isEmpty, "a reservation after its release is refused")
        #expect(try await item(scenario, "a")?.available == 5)
    }

    @Test func aSKUTheCatalogueNeverHadRefusesTheCommandAndKeepsNothing() async throws {
        var scenario = try await stocked(["a": 5])
        await #expect(throws: Rejection.self) {
            try await scenario.when(
                ReserveInventory(
                    orderID: "o-1",
                    lines: [OrderLine(sku: "a", quantity: 1), OrderLine(sku: "zz", quantity: 1)]
                )
            )
        }
        #expect(try await item(scenario, "a")?.reserved == 0)
        #expect(
            try await scenario.document(Reservation.self, in: "reservations", id: "o-1") == nil,
            "a replay may retry"
        )
    }
}
