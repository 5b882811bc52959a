import DequeModule

/// The publisher-confirm bookkeeping of one channel: which delivery tag belongs to which publish, and
/// which publishes a `basic.ack` / `basic.nack` (with or without `multiple`) settles.
///
/// A value type with no I/O; the connection thread owns one per confirm channel.
struct ConfirmTracker<Token> {
    /// The delivery tag of `pending.first`. Tags start at 1 on every new channel.
    private var firstTag: UInt64 = 1
    /// One slot per tag from `firstTag`; `nil` once settled out of order.
    private var pending: Deque<Token?> = []
    /// How many publishes await their confirm.
    private(set) var outstanding = 0

    /// The tag the next ``register(_:)`` will return.
    var nextTag: UInt64 { firstTag + UInt64(pending.count) }

    /// Records a publish and returns the delivery tag the broker will confirm it under.
    mutating func register(_ token: Token) -> UInt64 {
        pending.append(token)
        outstanding += 1
        return firstTag + UInt64(pending.count - 1)
    }

    /// Settles the publishes a confirm frame names, returning them in tag order.
    ///
    /// - Parameters:
    ///   - deliveryTag: The tag in the frame.
    ///   - multiple: Whether the frame covers every tag up to and including `deliveryTag`.
    /// - Returns: The tokens settled now; tags already settled or never issued are ignored.
    mutating func settle(deliveryTag: UInt64, multiple: Bool) -> [Token] {
        guard deliveryTag >= firstTag else { return [] }
        let index = Int(deliveryTag - firstTag)
        guard index < pending.count else { return [] }
        var settled: [Token] = []
        if multiple {
            for _ in 0...index {
                if let token = pending.removeFirst() { settled.append(token) }
            }
            firstTag = deliveryTag + 1
        } else {
            guard let token = pending[index] else { return [] }
            pending[index] = nil
            settled.append(token)
        }
        while let first = pending.first, first == nil {
            pending.removeFirst()
            firstTag += 1
        }
        outstanding -= settled.count
        return settled
    }

    /// The channel is gone: returns every unsettled publish, in tag order, and starts over at tag 1.
    mutating func reset() -> [Token] {
        let unsettled = pending.compactMap { $0 }
        pending.removeAll()
        firstTag = 1
        outstanding = 0
        return unsettled
    }
}
