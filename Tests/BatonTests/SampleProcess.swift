import Baton
import Foundation

// A fulfillment-shaped process manager used across the core's tests.

struct OrderConfirmed: Event, Equatable {
    static let messageName = "orders.OrderConfirmed"
    var orderID: String
    var address: String
}
struct OrderCompleted: Event, Equatable {
    static let messageName = "orders.OrderCompleted"
    var orderID: String
}
struct OrderCancelled: Event, Equatable {
    static let messageName = "orders.OrderCancelled"
    var orderID: String
    var reason: String
}
struct InventoryReserved: Event, Equatable {
    static let messageName = "inventory.InventoryReserved"
    var orderID: String
}
struct ReservationFailed: Event, Equatable {
    static let messageName = "inventory.ReservationFailed"
    var orderID: String
    var reason: String
}
struct ShipmentCreated: Event, Equatable {
    static let messageName = "shipping.ShipmentCreated"
    var orderID: String
    var trackingNumber: String
}
struct ShipmentFailed: Event, Equatable {
    static let messageName = "shipping.ShipmentFailed"
    var orderID: String
    var reason: String
}
struct ParcelDelivered: Event, Equatable {
    static let messageName = "shipping.ParcelDelivered"
    var trackingNumber: String
}

struct ReserveInventory: Command, Equatable {
    static let messageName = "inventory.ReserveInventory"
    var orderID: String
}
struct ReleaseInventory: Command, Equatable {
    static let messageName = "inventory.ReleaseInventory"
    var orderID: String
}
struct CreateShipment: Command, Equatable {
    static let messageName = "shipping.CreateShipment"
    var orderID: String
    var address: String
}
struct CancelShipment: Command, Equatable {
    static let messageName = "shipping.CancelShipment"
    var orderID: String
}
struct CompleteOrder: Command, Equatable {
    static let messageName = "orders.CompleteOrder"
    var orderID: String
}
struct CancelOrder: Command, Equatable {
    static let messageName = "orders.CancelOrder"
    var orderID: String
    var reason: String
}

struct Fulfillment: ProcessState {
    var orderID = ""
    var address = ""
    var trackingNumber: String?
    var delivered = false
}

let fulfillment = ProcessManager<Fulfillment>(
    name: "fulfillment",
    listensTo: ["orders", "inventory", "shipping"]
) { pm in
    pm.association("tracking")
    pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { event, process in
        process.state.orderID = event.orderID
        process.state.address = event.address
        process.send(ReserveInventory(orderID: event.orderID))
        process.schedule("step-timeout", after: .seconds(30))
    }
    pm.on(InventoryReserved.self, correlation: .field(\.orderID)) { event, process in
        process.onCompensation(ReleaseInventory(orderID: event.orderID))
        process.send(CreateShipment(orderID: event.orderID, address: process.state.address))
        process.schedule("step-timeout", after: .seconds(30))
    }
    pm.on(ReservationFailed.self, correlation: .field(\.orderID)) { event, process in
        process.send(CancelOrder(orderID: event.orderID, reason: event.reason))
        process.markAsFailed(reason: event.reason)
    }
    pm.on(ShipmentCreated.self, correlation: .field(\.orderID)) { event, process in
        process.state.trackingNumber = event.trackingNumber
        process.associate("tracking", with: event.trackingNumber)
        process.onCompensation(CancelShipment(orderID: event.orderID))
        process.send(CompleteOrder(orderID: event.orderID))
        process.schedule("step-timeout", after: .seconds(30))
    }
    pm.afterClose(ShipmentCreated.self, correlation: .field(\.orderID)) { event, process in
        process.send(CancelShipment(orderID: event.orderID))
    }
    pm.on(ShipmentFailed.self, correlation: .field(\.orderID)) { event, process in
        process.compensate(reason: "shipment failed: \(event.reason)")
        process.send(CancelOrder(orderID: event.orderID, reason: event.reason))
    }
    pm.on(OrderCancelled.self, correlation: .field(\.orderID)) { event, process in
        if process.lifecycle != .compensating { process.compensate(reason: event.reason) }
        process.markAsFailed(reason: event.reason)
    }
    pm.end(on: OrderCompleted.self, correlation: .field(\.orderID))
    pm.on(ParcelDelivered.self, correlation: .mapped("tracking", by: \.trackingNumber)) { _, process in
        process.state.delivered = true
    }
    pm.onTimer("step-timeout") { process in
        process.compensate(reason: "step timed out")
        process.send(CancelOrder(orderID: process.state.orderID, reason: "step timed out"))
    }
}

func sampleRegistry() -> MessageRegistry {
    var registry = MessageRegistry()
    for type in [
        OrderConfirmed.self, OrderCompleted.self, OrderCancelled.self, InventoryReserved.self,
        ReservationFailed.self, ShipmentCreated.self, ShipmentFailed.self, ParcelDelivered.self,
    ] as [any Event.Type] {
        registry.register(type)
    }
    return registry
}
