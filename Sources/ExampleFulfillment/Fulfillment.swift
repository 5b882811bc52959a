import Baton

struct Fulfillment: ProcessState {  // stored per instance (as JSON, inside its record)
    var orderID = ""
    var address = ""
}

let fulfillment = ProcessManager<Fulfillment>(
    name: "fulfillment",
    listensTo: ["orders", "inventory", "shipping"]
) { pm in
    pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { event, process in
        process.state = Fulfillment(orderID: event.orderID, address: event.address)
        process.send(ReserveInventory(orderID: event.orderID))  // id derived: instance + trigger + index
        process.schedule("step-timeout", after: .seconds(30))  // a stored deadline, not a sleep
    }
    pm.on(InventoryReserved.self, correlation: .field(\.orderID)) { event, process in
        process.onCompensation(ReleaseInventory(orderID: event.orderID))  // how to undo this step
        process.send(CreateShipment(orderID: event.orderID, address: process.state.address))
        process.schedule("step-timeout", after: .seconds(30))  // rescheduling replaces the deadline
    }
    pm.on(ShipmentCreated.self, correlation: .field(\.orderID)) { event, process in
        process.onCompensation(CancelShipment(orderID: event.orderID))
        process.send(CompleteOrder(orderID: event.orderID))
    }
    pm.on(ShipmentFailed.self, correlation: .field(\.orderID)) { event, process in
        process.compensate(reason: event.reason)  // issues the undo steps, last first
        process.send(CancelOrder(orderID: event.orderID, reason: event.reason))
    }
    pm.on(OrderCancelled.self, correlation: .field(\.orderID)) { event, process in
        process.compensate(reason: event.reason)  // a customer cancel mid-flight
        process.markAsFailed(reason: event.reason)
    }
    pm.end(on: OrderCompleted.self, correlation: .field(\.orderID))  // closes the instance as completed
    pm.afterClose(ShipmentCreated.self, correlation: .field(\.orderID)) { event, process in
        process.send(CancelShipment(orderID: event.orderID))  // a late reply gets its own compensation
    }
    pm.onFailure(of: CreateShipment.self) { failure, process in  // shipping refused or dead-lettered it
        process.compensate(reason: failure.reason)  // at once, not at the step timeout
        process.send(CancelOrder(orderID: process.state.orderID, reason: failure.reason))
    }
    pm.onTimer("step-timeout") { process in
        process.compensate(reason: "step timed out")
        process.send(CancelOrder(orderID: process.state.orderID, reason: "step timed out"))
    }
}
