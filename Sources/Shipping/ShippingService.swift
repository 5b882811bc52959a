import Baton
import BatonNode
import BatonService
import BookstoreContracts
import Foundation

/// The shipping bounded context: one shipment per order, created (fails on a blank address), cancelled,
/// delivered (the carrier subscriber).
public enum ShippingService: ServiceDefinition {
    public static let name = "shipping"

    /// What the node hosts.
    public static var handlers: [any NodeHandler] {
        [
            MessageHandlerHost.command(CreateShipment.self, name: "create-shipment") { command, context in
                // Once per order; a shipment cancelled before it existed stays cancelled.
                guard try context.work.document(Shipment.self, in: "shipments", idOrAlias: command.orderID) == nil
                else { return }
                if command.address.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
                    let reason = "the shipping address is empty"
                    try save(
                        Shipment(orderID: command.orderID, status: .failed, trackingNumber: nil, reason: reason),
                        &context
                    )
                    context.publish(ShipmentFailed(orderID: command.orderID, reason: reason))
                    return
                }
                let tracking = trackingNumber(for: command.orderID)
                try save(
                    Shipment(orderID: command.orderID, status: .created, trackingNumber: tracking, reason: nil),
                    &context
                )
                context.publish(ShipmentCreated(orderID: command.orderID, trackingNumber: tracking))
            },
            MessageHandlerHost.command(CancelShipment.self, name: "cancel-shipment") { command, context in
                var shipment =
                    try context.work.document(Shipment.self, in: "shipments", idOrAlias: command.orderID)
                    ?? Shipment(
                        orderID: command.orderID,
                        status: .cancelled,
                        trackingNumber: nil,
                        reason: command.reason
                    )
                guard shipment.status != .delivered else { return }
                let wasLive = shipment.status == .created
                shipment.status = .cancelled
                shipment.reason = command.reason
                try save(shipment, &context)
                if wasLive { context.publish(ShipmentCancelled(orderID: command.orderID, reason: command.reason)) }
            },
            MessageHandlerHost.subscriber(
                ParcelDelivered.self,
                name: "carrier-subscriber",
                exchange: ParcelDelivered.exchange,
                routingKey: ParcelDelivered.routingKey
            ) { parcel, context in
                // The edge translates; the delivery is recorded by the command handler, in this transaction.
                context.dispatch(RecordDelivery(trackingNumber: parcel.trackingNumber, deliveredAt: parcel.deliveredAt))
            },
            MessageHandlerHost.command(RecordDelivery.self, name: "record-delivery") { command, context in
                guard
                    var shipment = try context.work.document(
                        Shipment.self,
                        in: "shipments",
                        idOrAlias: command.trackingNumber
                    )
                else { throw Rejection("no shipment with tracking number \(command.trackingNumber)") }
                guard shipment.status == .created else {
                    throw Rejection(
                        "shipment \(command.trackingNumber) is \(shipment.status.rawValue), it cannot be delivered"
                    )
                }
                shipment.status = .delivered
                try save(shipment, &context)
                context.publish(
                    ShipmentDelivered(
                        orderID: shipment.orderID,
                        trackingNumber: command.trackingNumber,
                        deliveredAt: command.deliveredAt
                    )
                )
            },
        ]
    }

    /// The tracking number an order's shipment gets (deterministic: a re-run creates the same one).
    public static func trackingNumber(for orderID: String) -> String {
        "TRK-" + MessageID.derived(from: "shipment", orderID).prefix(10).uppercased()
    }

    static func save(_ shipment: Shipment, _ context: inout HandlerContext) throws {
        try context.work.save(
            shipment,
            in: "shipments",
            id: shipment.orderID,
            alias: shipment.trackingNumber,
            status: shipment.status.rawValue,
            at: context.now
        )
    }
}

/// A shipment, as `shipping show` and `shipping list` print it.
public struct Shipment: Codable, Sendable, Hashable {
    public enum Status: String, Codable, Sendable {
        case created = "CREATED"
        case failed = "FAILED"
        case cancelled = "CANCELLED"
        case delivered = "DELIVERED"
    }

    public var orderID: String
    public var status: Status
    public var trackingNumber: String?
    public var reason: String?

    /// Writes every field, missing ones as `null`: clients can rely on the keys.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(orderID, forKey: .orderID)
        try container.encode(status, forKey: .status)
        try container.encode(trackingNumber, forKey: .trackingNumber)
        try container.encode(reason, forKey: .reason)
    }
}

/// The shipping service's own command for a delivery the carrier reported: what its carrier subscriber
/// dispatches. Internal to the service (not part of the published contract).
public struct RecordDelivery: Command {
    public static let messageName = "shipping.RecordDelivery"
    /// The shipment's tracking number.
    public var trackingNumber: String
    /// When it was delivered (ISO 8601).
    public var deliveredAt: String

    /// Creates the command.
    public init(trackingNumber: String, deliveredAt: String) {
        self.trackingNumber = trackingNumber
        self.deliveredAt = deliveredAt
    }
}
