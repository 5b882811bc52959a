import Testing

@testable import BatonNode

/// The marks of sent outbox rows: what a transaction deletes, and what it forgets once it commits.
@Suite struct SentMarksTests {
    let start = ContinuousClock.now

    /// A transaction deletes the marks it was given; marks added meanwhile wait for the next one.
    @Test func aCommitForgetsOnlyTheMarksItDeleted() {
        var marks = SentMarks()
        #expect(marks.pending.sequences.isEmpty && marks.oldest == nil)
        marks.add([1, 2], at: start)
        #expect(marks.oldest == start)
        let taken = marks.pending
        marks.add([3], at: start + .milliseconds(5))
        #expect(marks.oldest == start, "the oldest mark is still the first")
        marks.remove(through: taken, at: start + .milliseconds(7))
        #expect(marks.pending.sequences == [3])
        #expect(marks.oldest == start + .milliseconds(7), "no older than the removal")
        marks.remove(through: marks.pending, at: start + .milliseconds(9))
        #expect(marks.pending.sequences.isEmpty && marks.oldest == nil)
    }

    /// Two transactions may delete overlapping marks (the relay's own and a batch's, in either order): each
    /// forgets what it deleted, and the one that commits second forgets nothing twice.
    @Test func overlappingDeletionsForgetEachMarkOnce() {
        var marks = SentMarks()
        marks.add([1, 2], at: start)
        let batch = marks.pending
        marks.add([3, 4], at: start)
        let relay = marks.pending
        marks.add([5], at: start)
        marks.remove(through: relay, at: start)
        #expect(marks.pending.sequences == [5])
        marks.remove(through: batch, at: start)
        #expect(marks.pending.sequences == [5], "the batch's marks were gone already")
        marks.add([6], at: start)
        marks.remove(through: batch, at: start)
        #expect(marks.pending.sequences == [5, 6])
    }
}
