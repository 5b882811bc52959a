import Baton

/// A message about one order: a partitioned service keeps the messages of one order in one partition, so they
/// are handled in the order they were committed (an `OrderCancelled` never overtakes the `OrderConfirmed`
/// before it), whichever conversation each came from.
public protocol OrderScoped: Message {
    /// The order.
    var orderID: String { get }
}

extension OrderScoped {
    /// The order's id.
    public var partitionKey: String? { orderID }
}

extension PlaceOrder {
    /// The id of the order the checkout becomes.
    public var partitionKey: String? { orderID(forCheckout: checkoutID) }
}

extension CompleteOrder: OrderScoped {}
extension CancelOrder: OrderScoped {}
extension OrderPlaced: OrderScoped {}
extension OrderConfirmed: OrderScoped {}
extension OrderCompleted: OrderScoped {}
extension OrderCancelled: OrderScoped {}
extension ReserveInventory: OrderScoped {}
extension ReleaseInventory: OrderScoped {}
extension InventoryReserved: OrderScoped {}
extension InventoryReservationFailed: OrderScoped {}
extension InventoryReleased: OrderScoped {}
extension CreateShipment: OrderScoped {}
extension CancelShipment: OrderScoped {}
extension ShipmentCreated: OrderScoped {}
extension ShipmentFailed: OrderScoped {}
extension ShipmentCancelled: OrderScoped {}
extension ShipmentDelivered: OrderScoped {}
extension ExpediteOrder: OrderScoped {}
