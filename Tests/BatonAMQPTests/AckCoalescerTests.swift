import Testing

@testable import BatonAMQP

@Suite struct AckCoalescerTests {
    typealias Frame = AckCoalescer.Frame

    @Test func contiguousAcksBecomeOneMultipleAck() {
        var coalescer = AckCoalescer()
        #expect(coalescer.acknowledge([3, 1, 2]) == [Frame(deliveryTag: 3, multiple: true)])
        #expect(coalescer.settledThrough == 3)
    }

    @Test func acksBeyondAGapAreSentAtOnceOnTheirOwn() {
        var coalescer = AckCoalescer()
        #expect(
            coalescer.acknowledge([1, 2, 4, 5])
                == [
                    Frame(deliveryTag: 2, multiple: true), Frame(deliveryTag: 4, multiple: false),
                    Frame(deliveryTag: 5, multiple: false),
                ]
        )
        // Tag 3 fills the gap: the prefix now reaches 5; the frame names 3, as 4 and 5 are settled already.
        #expect(coalescer.acknowledge([3]) == [Frame(deliveryTag: 3, multiple: true)])
        #expect(coalescer.settledThrough == 5)
    }

    @Test func aTagIsNeverAcknowledgedTwice() {
        var coalescer = AckCoalescer()
        _ = coalescer.acknowledge([1, 3])
        #expect(coalescer.acknowledge([1, 3, 3]) == [])
    }

    @Test func nackedTagsArePassedOverButNotAcknowledged() {
        var coalescer = AckCoalescer()
        let first = coalescer.markSettled(2)
        let second = coalescer.markSettled(2)
        #expect(first && !second, "a delivery settles once")
        #expect(coalescer.acknowledge([1]) == [Frame(deliveryTag: 1, multiple: true)], "never names the nacked tag")
        #expect(coalescer.settledThrough == 2)
        #expect(coalescer.acknowledge([3]) == [Frame(deliveryTag: 3, multiple: true)])
        #expect(coalescer.settledThrough == 3)
    }
}
