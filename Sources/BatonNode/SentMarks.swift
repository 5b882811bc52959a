/// The outbox rows the broker confirmed that no committed transaction has deleted yet.
///
/// A row's deletion rides in the node's next transaction — a batch's or a timer round's — instead of a
/// transaction of the relay's own: ``pending`` is what such a transaction deletes with its work, and
/// ``remove(through:)`` forgets it once the transaction commits. The relay writes them itself only when no
/// transaction of the node comes within ``delay``, before it reads the table (so that a read never returns a
/// sent row) and when it stops. Two transactions may delete the same rows (the second deletes nothing): marks
/// are removed by position, so each forgets only what it deleted.
///
/// A deletion lost to a crash only sends the row again under its id, which its consumers drop as a duplicate.
struct SentMarks {
    /// The marks a transaction deletes, and the position to remove through once it commits.
    struct Pending: Sendable {
        let sequences: [Int64]
        fileprivate let through: Int
    }

    /// How long the marks wait for a transaction of the node before the relay writes them itself.
    static let delay: Duration = .milliseconds(50)

    private var sequences: [Int64] = []
    /// How many marks were ever removed: the position of `sequences.first` among all marks ever added.
    private var removed = 0
    /// When the oldest of `sequences` was added (or the last removal left it the oldest); `nil` when there are
    /// none.
    private(set) var oldest: ContinuousClock.Instant?

    /// Adds the rows of a publish round the broker confirmed.
    mutating func add(_ confirmed: [Int64], at now: ContinuousClock.Instant) {
        guard !confirmed.isEmpty else { return }
        if sequences.isEmpty { oldest = now }
        sequences.append(contentsOf: confirmed)
    }

    /// The marks to delete now.
    var pending: Pending {
        Pending(sequences: sequences, through: removed + sequences.count)
    }

    /// Forgets the marks a committed transaction deleted (those of `pending`, unless an earlier removal did).
    mutating func remove(through deleted: Pending, at now: ContinuousClock.Instant) {
        guard deleted.through > removed else { return }
        sequences.removeFirst(deleted.through - removed)
        removed = deleted.through
        oldest = sequences.isEmpty ? nil : now
    }
}
