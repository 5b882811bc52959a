/// Turns the acks an application sends for one consumer channel into as few `basic.ack` frames as possible,
/// without ever holding an ack back.
///
/// Delivery tags on a channel count up from 1. Acks that extend the fully settled prefix go out as one ack
/// with `multiple` set, under the highest tag acked *now* (the broker refuses a tag it has settled already,
/// even with `multiple`); an ack beyond a gap (a delivery still being handled) goes out on its own at once, so
/// a slow handler never keeps the broker from seeing the others (which could exhaust the prefetch window).
/// A value type with no I/O; the connection thread keeps one per consumer channel and connection.
struct AckCoalescer {
    /// A `basic.ack` to send.
    struct Frame: Hashable {
        var deliveryTag: UInt64
        var multiple: Bool
    }

    /// Every tag up to and including this one is settled.
    private(set) var settledThrough: UInt64 = 0
    /// Tags above `settledThrough` that are settled already.
    private var settledAhead: Set<UInt64> = []

    /// Takes a batch of acked tags and returns the frames that acknowledge exactly them.
    mutating func acknowledge(_ tags: [UInt64]) -> [Frame] {
        var frames: [Frame] = []
        var prefixEnd = settledThrough
        var highestNewInPrefix: UInt64?
        var individual: [UInt64] = []
        for tag in tags.sorted() where tag > prefixEnd && !settledAhead.contains(tag) {
            if tag == prefixEnd + 1 {
                prefixEnd = tag
                highestNewInPrefix = tag
                while settledAhead.remove(prefixEnd + 1) != nil { prefixEnd += 1 }
            } else if individual.last != tag {
                individual.append(tag)
            }
        }
        if let highestNewInPrefix {
            frames.append(Frame(deliveryTag: highestNewInPrefix, multiple: true))
            settledThrough = prefixEnd
        }
        for tag in individual {
            frames.append(Frame(deliveryTag: tag, multiple: false))
            settledAhead.insert(tag)
        }
        return frames
    }

    /// Records a tag settled some other way (nack or reject), so later prefixes can pass over it.
    /// - Returns: Whether the tag was still unsettled (a second settle of one delivery is dropped).
    mutating func markSettled(_ tag: UInt64) -> Bool {
        guard tag > settledThrough, !settledAhead.contains(tag) else { return false }
        if tag == settledThrough + 1 {
            settledThrough = tag
            while settledAhead.remove(settledThrough + 1) != nil { settledThrough += 1 }
        } else {
            settledAhead.insert(tag)
        }
        return true
    }
}
