import Baton
import BatonNode
import BatonService
import BookstoreContracts
import Foundation

/// The orders bounded context: orders from checkouts (the storefront subscriber) or the CLI, confirmed at
/// once, completed or cancelled by the fulfillment process.
public enum OrdersService: ServiceDefinition {
    public static let name = "orders"

    /// What the node hosts.
    public static var handlers: [any NodeHandler] {
        [
            MessageHandlerHost.subscriber(
                CheckoutCompleted.self,
                name: "storefront-subscriber",
                exchange: CheckoutCompleted.exchange,
                routingKey: CheckoutCompleted.routingKey
            ) { checkout, context in
                // The edge translates; the order itself is placed by the command handler, in this transaction.
                context.dispatch(
                    PlaceOrder(
                        checkoutID: checkout.checkoutID,
                        customer: checkout.customer,
                        shippingAddress: checkout.shippingAddress,
                        lines: checkout.lines
                    )
                )
            },
            MessageHandlerHost.command(PlaceOrder.self, name: "place-order") { command, context in
                try place(
                    checkoutID: command.checkoutID,
                    customer: command.customer,
                    address: command.shippingAddress,
                    lines: command.lines,
                    &context
                )
            },
            MessageHandlerHost.command(CompleteOrder.self, name: "complete-order") { command, context in
                var order = try context.load(Order.self, id: command.orderID)
                guard order.state.status == .confirmed else { return }  // already completed, or cancelled
                try context.record(
                    [OrderCompleted(orderID: command.orderID, checkoutID: order.state.checkoutID)],
                    to: &order
                )
                try saveView(order, &context)
            },
            MessageHandlerHost.command(CancelOrder.self, name: "cancel-order") { command, context in
                var order = try context.load(Order.self, id: command.orderID)
                guard order.version > 0 else { throw Rejection("no order \(command.orderID)") }
                guard order.state.status == .pending || order.state.status == .confirmed else { return }
                try context.record(
                    [
                        OrderCancelled(
                            orderID: command.orderID,
                            checkoutID: order.state.checkoutID,
                            reason: command.reason
                        )
                    ],
                    to: &order
                )
                try saveView(order, &context)
            },
        ]
    }

    /// Places and confirms the order of a checkout, once per checkout id.
    static func place(
        checkoutID: String,
        customer: String,
        address: String,
        lines: [OrderLine],
        _ context: inout HandlerContext
    ) throws {
        let id = orderID(forCheckout: checkoutID)
        var order = try context.load(Order.self, id: id)
        guard order.version == 0 else { return }  // a duplicate checkout names the same order
        try context.record(
            [
                OrderPlaced(orderID: id, checkoutID: checkoutID, customer: customer),
                OrderConfirmed(orderID: id, checkoutID: checkoutID, shippingAddress: address, lines: lines),
            ],
            to: &order
        )
        order.state.customer = customer
        order.state.shippingAddress = address
        order.state.lines = lines
        try saveView(order, &context)
    }

    static func saveView(_ order: Loaded<Order>, _ context: inout HandlerContext) throws {
        var view =
            try context.work.document(OrderView.self, in: "orders", idOrAlias: order.id)
            ?? OrderView(
                orderID: order.id,
                checkoutID: order.state.checkoutID,
                status: "",
                customer: order.state.customer,
                shippingAddress: order.state.shippingAddress,
                lines: order.state.lines,
                cancelReason: nil
            )
        view.status = order.state.status.rawValue
        view.cancelReason = order.state.cancelReason
        try context.work.save(
            view,
            in: "orders",
            id: order.id,
            alias: order.state.checkoutID,
            status: view.status,
            at: context.now
        )
    }
}

/// An order as `orders show` and `orders list` print it.
public struct OrderView: Codable, Sendable, Hashable {
    public var orderID: String
    public var checkoutID: String
    /// `PENDING`, `CONFIRMED`, `COMPLETED` or `CANCELLED`.
    public var status: String
    public var customer: String
    public var shippingAddress: String
    public var lines: [OrderLine]
    public var cancelReason: String?

    /// Writes every field, `cancel_reason` as `null` when there is none: clients can rely on the keys.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(orderID, forKey: .orderID)
        try container.encode(checkoutID, forKey: .checkoutID)
        try container.encode(status, forKey: .status)
        try container.encode(customer, forKey: .customer)
        try container.encode(shippingAddress, forKey: .shippingAddress)
        try container.encode(lines, forKey: .lines)
        try container.encode(cancelReason, forKey: .cancelReason)
    }
}

/// The order aggregate: its stream `order-<id>` decides what may happen next.
struct Order: Aggregate {
    enum Status: String, Codable, Sendable {
        case pending = "PENDING"
        case confirmed = "CONFIRMED"
        case completed = "COMPLETED"
        case cancelled = "CANCELLED"
    }

    static let category = "order"
    static let eventTypes: [any Event.Type] = [
        OrderPlaced.self, OrderConfirmed.self, OrderCompleted.self, OrderCancelled.self,
    ]

    var status = Status.pending
    var checkoutID = ""
    var customer = ""
    var shippingAddress = ""
    var lines: [OrderLine] = []
    var cancelReason: String?

    mutating func apply(_ event: any Event) {
        switch event {
        case let placed as OrderPlaced:
            checkoutID = placed.checkoutID
            customer = placed.customer
            status = .pending
        case let confirmed as OrderConfirmed:
            shippingAddress = confirmed.shippingAddress
            lines = confirmed.lines
            status = .confirmed
        case is OrderCompleted:
            status = .completed
        case let cancelled as OrderCancelled:
            status = .cancelled
            cancelReason = cancelled.reason
        default:
            break
        }
    }
}
