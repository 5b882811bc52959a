import Baton
import Foundation
import Logging

/// What a node keeps of handled work, and for how long. Sent outbox rows are deleted as soon as the broker
/// confirms them; the rest ages out here.
public struct Retention: Sendable, Hashable {
    /// How long the inbox remembers a handled message, counted from the message's own timestamp. A copy of a
    /// message (a redelivery, a publisher's retry) carries its original's timestamp, so a copy issued inside the
    /// window always finds the original's record; a message issued before the window is dead-lettered with that
    /// reason instead of being handled blindly (an operator may replay it). It must be longer than any copy can
    /// take to arrive: a service down for days leaves its unacknowledged deliveries and unsent outbox rows
    /// waiting that long. Default: 7 days.
    public var inboxWindow: Duration
    /// How long a closed instance keeps its timeline before it is purged to a tombstone (lifecycle, state and
    /// associations: a late reply still gets its after-close handling); `nil` (the default) keeps timelines until
    /// an operator purges them (`processes purge`).
    public var closedInstances: Duration?
    /// How long a tombstone stays before the instance is forgotten altogether (a reply then finds no instance);
    /// `nil` (the default) keeps tombstones.
    public var tombstones: Duration?
    /// How often the node applies the policy.
    public var interval: Duration

    /// Creates a policy; the defaults keep a week of inbox and every instance.
    public init(
        inboxWindow: Duration = .seconds(7 * 86_400),
        closedInstances: Duration? = nil,
        tombstones: Duration? = nil,
        interval: Duration = .seconds(60)
    ) {
        self.inboxWindow = inboxWindow
        self.closedInstances = closedInstances
        self.tombstones = tombstones
        self.interval = interval
    }

    /// An age as operators write it: `7d`, `2h`, `5m`, `90s`.
    static func age(_ duration: Duration) -> String {
        let seconds = duration.components.seconds
        for (unit, length) in [("d", Int64(86_400)), ("h", 3_600), ("m", 60)] where seconds % length == 0 {
            return "\(seconds / length)\(unit)"
        }
        return "\(seconds)s"
    }

    /// How far back the inbox keeps records: the window and a tenth more, so that clocks that disagree or
    /// step back a little never let a copy inside the window slip past a pruned record.
    var inboxHorizon: Duration { inboxWindow + inboxWindow / 10 }
}

/// What one application of the retention policy removed.
public struct RetentionReport: Sendable, Hashable {
    /// Inbox records forgotten.
    public var forgottenMessages = 0
    /// Closed instances purged to tombstones.
    public var purgedInstances = 0
    /// Tombstones removed.
    public var removedTombstones = 0

    var isEmpty: Bool { forgottenMessages + purgedInstances + removedTombstones == 0 }
}

extension Node {
    /// Rows removed per transaction: short transactions, so handling never waits long behind retention.
    static let retentionChunk = 1_000

    /// Applies the retention policy every ``Retention/interval`` until the node stops.
    func retentionLoop() async {
        while !housekeeping.isStopping {
            do {
                let report = try await applyRetention()
                if !report.isEmpty {
                    logger.info(
                        "retention applied",
                        metadata: [
                            "forgotten_messages": "\(report.forgottenMessages)",
                            "purged_instances": "\(report.purgedInstances)",
                            "removed_tombstones": "\(report.removedTombstones)",
                        ]
                    )
                }
            } catch {
                logger.warning("retention failed; trying again later", metadata: ["error": "\(error)"])
            }
            await waitFor(
                housekeeping.signal,
                orUntil: { [interval = configuration.retention.interval] in
                    try? await Task.sleep(for: interval)
                }
            )
        }
    }

    /// Applies the retention policy now (``Configuration/retention``), in transactions of a thousand rows at
    /// most, in business time: forgets inbox records older than the window, purges closed instances to
    /// tombstones and removes old tombstones, of every process manager the node hosts. Replicas sharing a store
    /// may apply it at once. What it removes is gone for good; losing a transaction of it to a power failure only
    /// repeats it.
    /// - Returns: What it removed.
    /// - Throws: The store's error (what was removed before it stays removed).
    @discardableResult
    public func applyRetention() async throws -> RetentionReport {
        let policy = configuration.retention
        let now = businessNow()
        var report = RetentionReport()
        report.forgottenMessages = try await removeInChunks { work, limit in
            try work.forgetHandled(issuedBefore: now.adding(.zero - policy.inboxHorizon), limit: limit)
        }
        let processManagers = handlers.compactMap { ($0 as? any ProcessManagerHosting)?.processManagerName }
        for processManager in processManagers {
            if let keep = policy.closedInstances {
                report.purgedInstances += try await removeInChunks { work, limit in
                    try work.purgeInstances(
                        of: processManager,
                        closedBefore: now.adding(.zero - keep),
                        at: now,
                        limit: limit
                    ).count
                }
            }
            if let keep = policy.tombstones {
                report.removedTombstones += try await removeInChunks { work, limit in
                    try work.removeTombstones(of: processManager, purgedBefore: now.adding(.zero - keep), limit: limit)
                }
            }
        }
        return report
    }

    /// Runs `remove` in one transaction after another until it removes less than a chunk.
    /// - Returns: How many it removed in all.
    private func removeInChunks(
        _ remove: @escaping @Sendable (any UnitOfWork, Int) throws -> Int
    ) async throws -> Int {
        var total = 0
        while !housekeeping.isStopping {
            let removed = try await store.writeWithoutWaitingForDisk { try remove($0, Self.retentionChunk) }
            total += removed
            if removed < Self.retentionChunk { break }
        }
        return total
    }

    /// Whether a message was issued before the inbox's window, so that its record may have been forgotten.
    func isOlderThanInboxWindow(_ envelope: Envelope, now: Date) -> Bool {
        envelope.timestamp < now.adding(.zero - configuration.retention.inboxWindow)
    }
}
