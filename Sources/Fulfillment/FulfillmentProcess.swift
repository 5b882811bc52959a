import Baton
import BatonNode
import BatonService
import BookstoreContracts
import Foundation

/// What the fulfillment process remembers per order (it never reads another service's store).
public struct FulfillmentState: ProcessState {
    /// v2 added ``expedited``; instances stored before are not expedited.
    public static let stateVersion = 2
    public static let stateUpcasters = [Upcaster(from: 1) { json in json["expedited"] = false }]

    public var orderID = ""
    public var checkoutID = ""
    public var address = ""
    public var lines: [OrderLine] = []
    public var trackingNumber: String?
    /// The step under way: `reserving`, `shipping`, `completing`, `cancelling`.
    public var step = ""
    /// Whether customer service asked to hurry it (``ExpediteOrder``), and who.
    public var expedited = false
    public var expeditedBy: String?
    public init() {}
}

/// The process-manager node: order confirmed → reserve inventory → create shipment → complete order, with
/// compensation when a step fails, times out or the customer cancels.
public enum FulfillmentService: ServiceDefinition {
    public static let name = "fulfillment"
    static let timer = "step-timeout"
    /// The time a step may take by default (`serve --step-timeout`).
    public static let defaultStepTimeout = Duration.seconds(30)

    /// Process instances kept in memory by default (`serve --instance-cache`).
    public static let defaultInstanceCache = 10_000

    /// What its node hosts: the process manager with a step timeout.
    /// - Parameters:
    ///   - stepTimeout: The time a step may take.
    ///   - instanceCache: Instances kept in memory between events.
    /// - Throws: ``DefinitionError`` if the definition is broken (it is checked by the tests).
    public static func handlers(
        stepTimeout: Duration,
        instanceCache: Int = defaultInstanceCache
    ) throws -> [any NodeHandler] {
        [try ProcessManagerHost(processManager(stepTimeout: stepTimeout), cacheCapacity: instanceCache)]
    }

    /// What its node hosts with the default step timeout.
    public static var handlers: [any NodeHandler] {
        // The definition is fixed code, validated by the tests; a broken one is a programming error.
        try! handlers(stepTimeout: defaultStepTimeout)
    }

    /// The process manager, with the time a step may take before the order is compensated.
    public static func processManager(stepTimeout: Duration) -> ProcessManager<FulfillmentState> {
        ProcessManager(name: "fulfillment", version: 2, listensTo: ["orders", "inventory", "shipping"]) { pm in
            pm.association("tracking")
            pm.start(on: OrderConfirmed.self, correlation: .field(\.orderID)) { event, process in
                process.state.orderID = event.orderID
                process.state.checkoutID = event.checkoutID
                process.state.address = event.shippingAddress
                process.state.lines = event.lines
                process.state.step = "reserving"
                process.send(ReserveInventory(orderID: event.orderID, lines: event.lines))
                process.schedule(timer, after: stepTimeout)
            }
            pm.on(InventoryReserved.self, correlation: .field(\.orderID)) { event, process in
                guard process.lifecycle != .compensating else {
                    // Reserved after the order started compensating: give it back.
                    process.send(
                        ReleaseInventory(orderID: event.orderID, reason: "reserved after the order was compensated")
                    )
                    return
                }
                process.onCompensation(ReleaseInventory(orderID: event.orderID, reason: "order compensated"))
                process.state.step = "shipping"
                process.send(CreateShipment(orderID: event.orderID, address: process.state.address))
                process.schedule(timer, after: stepTimeout)
            }
            pm.on(InventoryReservationFailed.self, correlation: .field(\.orderID)) { event, process in
                cancel(&process, reason: event.reason)
            }
            pm.on(ShipmentCreated.self, correlation: .field(\.orderID)) { event, process in
                process.state.trackingNumber = event.trackingNumber
                process.associate("tracking", with: event.trackingNumber)
                guard process.lifecycle != .compensating else {
                    process.send(
                        CancelShipment(orderID: event.orderID, reason: "created after the order was compensated")
                    )
                    return
                }
                process.onCompensation(CancelShipment(orderID: event.orderID, reason: "order compensated"))
                process.state.step = "completing"
                process.send(CompleteOrder(orderID: event.orderID))
                // Reserved and shipped: what is left is the orders service's own bookkeeping, which cannot be
                // called back. A timeout here would compensate an order that completes anyway (found by the
                // chaos run: a partitioned orders service completed orders whose stock had been released).
                process.cancelTimer(timer)
            }
            pm.on(ShipmentFailed.self, correlation: .field(\.orderID)) { event, process in
                cancel(&process, reason: "shipment failed: \(event.reason)")
            }
            pm.end(on: OrderCompleted.self, correlation: .field(\.orderID))
            pm.on(OrderCancelled.self, correlation: .field(\.orderID)) { event, process in
                // The customer cancelled mid-flight, or the cancellation compensation asked for arrived.
                process.compensate(reason: event.reason)
                process.markAsFailed(reason: event.reason)
            }
            // Replies that arrive after the instance closed get their own compensation.
            pm.afterClose(ShipmentCreated.self, correlation: .field(\.orderID)) { event, process in
                guard process.lifecycle == .failed else { return }
                process.send(CancelShipment(orderID: event.orderID, reason: "created after the order was cancelled"))
            }
            pm.afterClose(InventoryReserved.self, correlation: .field(\.orderID)) { event, process in
                guard process.lifecycle == .failed else { return }
                process.send(ReleaseInventory(orderID: event.orderID, reason: "reserved after the order was cancelled"))
            }
            // A step its service refused outright (dead-lettered there): compensate now, not at the timeout.
            pm.onFailure(of: ReserveInventory.self) { failure, process in
                cancel(&process, reason: "inventory refused the reservation: \(failure.reason)")
            }
            pm.onFailure(of: CreateShipment.self) { failure, process in
                cancel(&process, reason: "shipping refused the shipment: \(failure.reason)")
            }
            // Customer service's command to the order's process.
            pm.handle(ExpediteOrder.self, correlation: .field(\.orderID)) { command, process in
                process.state.expedited = true
                process.state.expeditedBy = command.requestedBy
            }
            // An operator's abort (`fulfillment processes abort`): the compensation runs, and the order is cancelled.
            pm.onAbort { reason, process in
                process.state.step = "aborted"
                process.send(CancelOrder(orderID: process.state.orderID, reason: reason))
            }
            pm.onTimer(timer) { process in
                let reason = "step '\(process.state.step)' timed out"
                process.compensate(reason: reason)
                process.state.step = "cancelling"
                process.send(CancelOrder(orderID: process.state.orderID, reason: reason))
            }
        }
    }

    /// Undoes what the order did so far and cancels it (once: a second failure while compensating is moot).
    private static func cancel(_ process: inout ProcessContext<FulfillmentState>, reason: String) {
        guard process.lifecycle != .compensating else { return }
        process.state.step = "cancelling"
        process.compensate(reason: reason)
        process.send(CancelOrder(orderID: process.state.orderID, reason: reason))
    }
}
