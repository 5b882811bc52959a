/// A message the broker delivered to a consumer. Settle it exactly once with ``ack()``, ``nack(requeue:)``
/// or ``reject(requeue:)``; until then it counts against the consumer's prefetch.
public struct AMQPDelivery: Sendable {
    /// The body bytes.
    public var body: [UInt8]
    /// The properties it was published with.
    public var properties: AMQPProperties
    /// The exchange it was published to.
    public var exchange: String
    /// The routing key it was published with.
    public var routingKey: String
    /// Whether the broker delivered it before (to this or another consumer) without an ack.
    public var isRedelivered: Bool

    let deliveryTag: UInt64
    let channel: UInt16
    let generation: UInt64
    let mailbox: Mailbox

    /// Acknowledges the delivery: the broker forgets the message.
    public func ack() {
        settle(.ack)
    }

    /// Rejects the delivery. With `requeue: false` the broker dead-letters it (if the queue has a
    /// dead-letter exchange) or drops it.
    /// - Parameter requeue: Whether to put it back at the head of the queue.
    public func nack(requeue: Bool = false) {
        settle(.nack(requeue: requeue))
    }

    /// Rejects the delivery with `basic.reject`; the same effect as ``nack(requeue:)`` for one message.
    /// - Parameter requeue: Whether to put it back at the head of the queue.
    public func reject(requeue: Bool = false) {
        settle(.reject(requeue: requeue))
    }

    private func settle(_ kind: Settlement.Kind) {
        mailbox.send(
            .settle(Settlement(kind: kind, channel: channel, deliveryTag: deliveryTag, generation: generation))
        )
    }
}
