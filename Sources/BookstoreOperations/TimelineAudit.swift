import Baton
import BatonNode
import BatonService
import BookstoreContracts
import Foundation
import Orders

/// Checks every fulfillment instance's stored timeline against what the process must have done, and against
/// the order it coordinated: the rules a crash, a redelivery or a lost message would break.
public enum TimelineAudit {
    /// The broken rules, one sentence each (empty when every timeline is consistent).
    /// - Parameters:
    ///   - options: Where the fulfillment store is.
    ///   - orders: The orders service's view of the same orders.
    public static func problems(_ options: ServiceOptions, orders: [OrderView]) async throws -> [String] {
        let timelines = try await timelines(options)
        let ordersByID = Dictionary(orders.map { ($0.orderID, $0) }) { first, _ in first }
        var problems: [String] = []
        var issuedBy: [String: String] = [:]
        for (summary, transitions) in timelines {
            let id = summary.instanceID
            problems += check(id, transitions, summary: summary, order: ordersByID[id])
            for transition in transitions {
                for issued in transition.issued {
                    if let other = issuedBy.updateValue(id, forKey: issued.envelope.messageID) {
                        problems.append("\(id): command id \(issued.envelope.messageID) was issued by \(other) too")
                    }
                }
            }
        }
        return problems
    }

    /// Per-instance order: no instance handled an event before one its emitter committed earlier for it. Each
    /// event carries its position in its emitter's outbox (``BatonHeader/sequence``), the emitter's commit order;
    /// per instance and emitting context those positions must rise along the timeline. (Failure replies come
    /// from any service: they are left out.) Holds where each partition key has one consumer at a time —
    /// partitions, or a single replica — not for replicas sharing one queue.
    public static func orderProblems(_ options: ServiceOptions) async throws -> [String] {
        var problems: [String] = []
        for (summary, transitions) in try await timelines(options) {
            var last: [String: (sequence: Int64, message: String)] = [:]
            for transition in transitions {
                guard case .event(let envelope) = transition.trigger, envelope.category != CommandFailed.category,
                    let sequence = envelope.headers[BatonHeader.sequence].flatMap(Int64.init)
                else { continue }
                if let earlier = last[envelope.category], earlier.sequence >= sequence {
                    problems.append(
                        "\(summary.instanceID): \(envelope.messageName) (\(envelope.category) #\(sequence)) was handled after \(earlier.message) (#\(earlier.sequence)), which its emitter committed later"
                    )
                }
                last[envelope.category] = (sequence, envelope.messageName)
            }
        }
        return problems
    }

    /// Every fulfillment instance with its transitions.
    private static func timelines(_ options: ServiceOptions) async throws -> [(InstanceSummary, [ProcessTransition])] {
        try await options.readIfPresent("fulfillment") { work in
            try work.instances(of: "fulfillment", limit: 10_000_000).map { summary in
                (summary, try work.transitions(of: "fulfillment", instance: summary.instanceID))
            }
        } ?? []
    }

    private static func check(
        _ id: String,
        _ transitions: [ProcessTransition],
        summary: InstanceSummary,
        order: OrderView?
    ) -> [String] {
        var problems: [String] = []
        guard let first = transitions.first else { return ["\(id): an instance without transitions"] }
        if transitions.map(\.version) != Array(1...Int64(transitions.count))
            || summary.version != transitions.last!.version
        {
            problems.append("\(id): versions \(transitions.map(\.version)) are not 1…\(summary.version)")
        }
        let started: String? =
            if case .event(let envelope) = first.trigger { envelope.messageName } else { nil }
        if started != OrderConfirmed.messageName {
            problems.append("\(id): started by \(started ?? "a timer"), not \(OrderConfirmed.messageName)")
        }
        let triggers = transitions.map { $0.trigger.messageID(processManager: "fulfillment", instanceID: id) }
        if Set(triggers).count != triggers.count {
            problems.append("\(id): a trigger was handled twice (\(triggers.count - Set(triggers).count) repeats)")
        }
        let handled = transitions.compactMap { transition -> String? in
            if case .event(let envelope) = transition.trigger { return envelope.messageName }
            return nil
        }
        let issued = transitions.flatMap(\.issued).map(\.envelope.messageName)
        func undone(_ event: String, by command: String) -> Bool {
            !handled.contains(event) || issued.contains(command)
        }
        guard let order else {
            problems.append("\(id): the orders service has no such order")
            return problems
        }
        switch (summary.lifecycle, order.status) {
        case (.completed, "COMPLETED"):
            if !issued.contains(CompleteOrder.messageName) {
                problems.append("\(id): completed without issuing \(CompleteOrder.messageName)")
            }
            // A completed order keeps its stock and its shipment: nothing of it may have been undone.
            for undo in [ReleaseInventory.messageName, CancelShipment.messageName, CancelOrder.messageName]
            where issued.contains(undo) {
                problems.append("\(id): completed, yet it issued \(undo)")
            }
        case (.failed, "CANCELLED"):
            // Whatever was done for a cancelled order was undone: a reservation released, a shipment cancelled.
            if !undone(InventoryReserved.messageName, by: ReleaseInventory.messageName) {
                problems.append("\(id): cancelled with inventory reserved but never released")
            }
            if !undone(ShipmentCreated.messageName, by: CancelShipment.messageName) {
                problems.append("\(id): cancelled with a shipment created but never cancelled")
            }
        default:
            problems.append("\(id): the process is \(summary.lifecycle.rawValue) but the order is \(order.status)")
        }
        return problems
    }
}
