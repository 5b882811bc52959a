import Baton
import BatonNode
import Foundation
import GRDB

/// Aggregate streams, process instances and their timers.
extension SQLiteUnitOfWork {
    // MARK: Aggregate streams

    /// Appends events to a stream, checking that nobody appended since the writer read it.
    /// - Parameters:
    ///   - events: The envelopes, in order.
    ///   - stream: The stream name, e.g. `order-o-1`.
    ///   - expectedVersion: The stream's length the writer saw (0 for a new stream).
    /// - Throws: ``ConcurrencyError`` if the stream has grown meanwhile.
    func append(_ events: [Envelope], to stream: String, expectedVersion: Int64) throws {
        let head = try firstRow("SELECT id, version FROM stream_names WHERE name = ?", [stream]) {
            (id: $0.int64(0), version: $0.int64(1))
        }
        let current = head?.version ?? 0
        guard current == expectedVersion else {
            throw ConcurrencyError(stream: stream, expectedVersion: expectedVersion, actualVersion: current)
        }
        guard !events.isEmpty else { return }
        let version = expectedVersion + Int64(events.count)
        let streamID: Int64
        if let head {
            streamID = head.id
            try run("UPDATE stream_names SET version = ? WHERE id = ?", [version, streamID])
        } else {
            streamID = try returnedID(
                "INSERT INTO stream_names (name, version) VALUES (?, ?) RETURNING id",
                [stream, version]
            )
        }
        for (offset, event) in events.enumerated() {
            try run(
                """
                INSERT INTO streams (stream, position, message_id, message_type, payload, recorded_at)
                VALUES (?, ?, ?, ?, ?, ?)
                """,
                [
                    streamID, expectedVersion + Int64(offset) + 1, event.messageID, event.messageType, event.payload,
                    event.timestamp.timeIntervalSince1970,
                ]
            )
        }
    }

    /// The number of events in a stream (0 if it does not exist).
    func streamVersion(_ stream: String) throws -> Int64 {
        try firstRow("SELECT version FROM stream_names WHERE name = ?", [stream]) { $0.int64(0) } ?? 0
    }

    /// A stream's events in order, as (type, JSON payload).
    func readStream(_ stream: String) throws -> [(messageType: String, payload: Data)] {
        try allRows(
            """
            SELECT message_type, payload FROM streams
            WHERE stream = (SELECT id FROM stream_names WHERE name = ?) ORDER BY position
            """,
            [stream]
        ) { (messageType: $0.text(0), payload: $0.data(1)) }
    }

    /// The id an `INSERT … RETURNING id` gave its row.
    private func returnedID(_ sql: String, _ arguments: StatementArguments) throws -> Int64 {
        guard let id = try Int64.fetchOne(try statement(sql), arguments: arguments) else {
            throw DatabaseError(resultCode: .SQLITE_INTERNAL, message: "no id returned by \(sql)")
        }
        return id
    }

    // MARK: Process managers

    /// An instance as stored: its committed version and its state after its latest transition. One lookup;
    /// no handler runs.
    /// - Returns: `nil` if the instance does not exist.
    func storedInstance(_ instanceID: String, processManager: String) throws -> StoredInstance? {
        let row = try firstRow(
            """
            SELECT id, version, state_version, state FROM process_instances
            WHERE process_manager = ? AND instance_id = ?
            """,
            [processManager, instanceID]
        ) { row in
            let (version, stateVersion) = (row.int64(1), row.optionalInt64(2))
            let state = row.isNull(3) ? nil : row.data(3)
            return (
                id: row.int64(0),
                stored: StoredInstance(
                    version: version,
                    state: stateVersion == version ? state : nil,
                    earlierState: stateVersion != version ? state : nil
                )
            )
        }
        instanceRows[processManager, instanceID] = row.map { .row($0.id) } ?? .absent
        return row?.stored
    }

    func instanceVersion(_ instanceID: String, processManager: String) throws -> Int64? {
        let row = try firstRow(
            "SELECT id, version FROM process_instances WHERE process_manager = ? AND instance_id = ?",
            [processManager, instanceID]
        ) { (id: $0.int64(0), version: $0.int64(1)) }
        instanceRows[processManager, instanceID] = row.map { .row($0.id) } ?? .absent
        return row?.version
    }

    /// The transitions of an instance after `version`, in order (its timeline).
    func transitions(
        of processManager: String,
        instance instanceID: String,
        after version: Int64
    ) throws
        -> [ProcessTransition]
    {
        try allRows(
            """
            SELECT record FROM process_transitions
            WHERE instance = (\(Self.instanceRow)) AND version > ? ORDER BY version
            """,
            [processManager, instanceID, version]
        ) { try ProcessTransition(storedRecord: $0.data(0)) }
    }

    /// Stores a transition: stores the instance's state after it (what loading reads), appends it to the
    /// instance's transitions, updates timers and associations, and queues what it issued in the outbox. The
    /// unique key on (instance, version) refuses a second writer of the same version.
    func record(
        _ transition: ProcessTransition,
        processManager name: String,
        instanceID: String,
        lifecycle: ProcessLifecycle,
        state: Data,
        route: (IssuedMessage) -> (exchange: String, routingKey: String)
    ) throws {
        let instance = try writeInstance(
            processManager: name,
            instanceID: instanceID,
            lifecycle: lifecycle,
            version: transition.version,
            at: transition.at.timeIntervalSince1970,
            state: state
        )
        try run(
            "INSERT INTO process_transitions (instance, version, record) VALUES (?, ?, ?)",
            [instance, transition.version, transition.storedRecord]
        )
        for operation in transition.timers {
            switch operation {
            case .schedule(let timer, let dueAt):
                try run(
                    """
                    INSERT INTO timers (instance, process_manager, instance_id, name, due_at, fire_at, owner)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (instance, name) DO UPDATE SET
                        due_at = excluded.due_at, fire_at = excluded.fire_at, attempts = 0, dead_letter_id = NULL
                    """,
                    [
                        instance, name, instanceID, timer, dueAt.millisecondsSince1970, dueAt.millisecondsSince1970,
                        owner,
                    ]
                )
            case .cancel(let timer):
                try run("DELETE FROM timers WHERE instance = ? AND name = ?", [instance, timer])
            }
        }
        for (association, value) in transition.associations {
            try run(
                """
                INSERT INTO process_associations (process_manager, name, value, instance_id, instance)
                VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (process_manager, name, value) DO UPDATE SET
                    instance_id = excluded.instance_id, instance = excluded.instance
                """,
                [name, association, value, instanceID, instance]
            )
        }
        for message in transition.issued {
            let destination = route(message)
            try enqueue(message.envelope, exchange: destination.exchange, routingKey: destination.routingKey)
        }
    }

    /// Writes an instance's row after a transition and returns its id: by the id when this transaction knows it
    /// (``InstanceRows``), as a new row when it knows there is none, else by its key (an upsert).
    private func writeInstance(
        processManager name: String,
        instanceID: String,
        lifecycle: ProcessLifecycle,
        version: Int64,
        at time: Double,
        state: Data
    ) throws -> Int64 {
        let instance: Int64
        switch instanceRows[name, instanceID] {
        case .row(let id)?:
            try run(
                """
                UPDATE process_instances SET lifecycle = ?, version = ?, updated_at = ?, state_version = ?, state = ?
                WHERE id = ?
                """,
                [lifecycle.rawValue, version, time, version, state, id]
            )
            guard db.changesCount == 1 else {
                throw DatabaseError(
                    resultCode: .SQLITE_INTERNAL,
                    message: "instance row \(id) of \(instanceID) is gone"
                )
            }
            instance = id
        case .absent?:
            try run(
                """
                INSERT INTO process_instances
                    (process_manager, instance_id, lifecycle, version, started_at, updated_at, state_version, state)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [name, instanceID, lifecycle.rawValue, version, time, time, version, state]
            )
            instance = db.lastInsertedRowID
        case nil:
            instance = try returnedID(
                """
                INSERT INTO process_instances
                    (process_manager, instance_id, lifecycle, version, started_at, updated_at, state_version, state)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (process_manager, instance_id) DO UPDATE SET
                    lifecycle = excluded.lifecycle, version = excluded.version, updated_at = excluded.updated_at,
                    state_version = excluded.state_version, state = excluded.state
                RETURNING id
                """,
                [name, instanceID, lifecycle.rawValue, version, time, time, version, state]
            )
        }
        instanceRows[name, instanceID] = .row(instance)
        return instance
    }

    /// The instance associated with `value` under `name`, if any.
    func instance(associatedWith value: String, as name: String, processManager: String) throws -> String? {
        try firstRow(
            "SELECT instance_id FROM process_associations WHERE process_manager = ? AND name = ? AND value = ?",
            [processManager, name, value]
        ) { $0.text(0) }
    }

    /// Instances of a process manager, most recently changed first (``instanceListing(of:matching:limit:)``).
    func instances(
        of processManager: String,
        matching filter: InstanceFilter,
        limit: Int
    ) throws
        -> [InstanceSummary]
    {
        let (sql, arguments) = Self.instanceListing(of: processManager, matching: filter, limit: limit)
        return try Row.fetchAll(try statement(sql), arguments: arguments).map {
            InstanceSummary(
                instanceID: $0["instance_id"],
                lifecycle: ProcessLifecycle(rawValue: $0["lifecycle"]) ?? .failed,
                version: $0["version"],
                startedAt: Date(timeIntervalSince1970: $0["started_at"]),
                updatedAt: Date(timeIntervalSince1970: $0["updated_at"]),
                purgedAt: ($0["purged_at"] as Double?).map(Date.init(timeIntervalSince1970:))
            )
        }
    }

    /// The query that lists instances: one range of the `process_instances_listed` index per lifecycle asked
    /// for, each read in order up to the limit, merged — so a page costs the same at the millionth instance as at
    /// the first, and a rare lifecycle is not looked for among the common ones.
    static func instanceListing(
        of processManager: String,
        matching filter: InstanceFilter,
        limit: Int
    ) -> (sql: String, arguments: StatementArguments) {
        var conditions = ["process_manager = ?", "lifecycle = ?"]
        var arguments: [any DatabaseValueConvertible] = []
        if let changedBefore = filter.changedBefore {
            conditions.append("updated_at < ?")
            arguments.append(changedBefore.timeIntervalSince1970)
        }
        if let after = filter.after {
            // Stored times are whole milliseconds held as doubles: the position's millisecond is a range.
            let milliseconds = Double(after.updatedAt.millisecondsSince1970)
            conditions.append("updated_at < ? AND (updated_at < ? OR instance_id > ?)")
            arguments += [(milliseconds + 0.5) / 1000, (milliseconds - 0.5) / 1000, after.instanceID]
        }
        let lifecycles = (filter.lifecycles.isEmpty ? Set(ProcessLifecycle.allCases) : filter.lifecycles)
            .map(\.rawValue).sorted()
        let range = """
            SELECT * FROM (SELECT instance_id, lifecycle, version, started_at, updated_at, purged_at FROM process_instances
            WHERE \(conditions.joined(separator: " AND ")) ORDER BY updated_at DESC, instance_id LIMIT ?)
            """
        var all: [any DatabaseValueConvertible] = []
        for lifecycle in lifecycles { all += [processManager, lifecycle] + arguments + [limit] }
        return (
            Array(repeating: range, count: lifecycles.count).joined(separator: " UNION ALL ")
                + " ORDER BY updated_at DESC, instance_id LIMIT ?",
            StatementArguments(all + [limit])
        )
    }

    /// Purges closed instances oldest first, from the `process_instances_unpurged` index (tombstones are not in
    /// it): their transitions and timers go; the instance row, its state and associations stay as a tombstone.
    func purgeInstances(
        of processManager: String,
        closedBefore time: Date,
        at now: Date,
        limit: Int
    ) throws -> [String] {
        let purged = try Row.fetchAll(
            try statement(
                """
                SELECT id, instance_id FROM process_instances INDEXED BY process_instances_unpurged
                WHERE process_manager = ? AND lifecycle IN ('completed', 'failed') AND purged_at IS NULL
                    AND updated_at < ?
                ORDER BY updated_at, instance_id LIMIT ?
                """
            ),
            arguments: [processManager, time.roundedToMilliseconds.timeIntervalSince1970, limit]
        )
        for instance in purged {
            let id: Int64 = instance["id"]
            try deleteRows(of: id, from: ["process_transitions", "timers"])
            try run("UPDATE process_instances SET purged_at = ? WHERE id = ?", [now.timeIntervalSince1970, id])
        }
        return purged.map { $0["instance_id"] }
    }

    /// Deletes tombstones oldest first, from the `process_instances_tombstones` index, with everything kept of
    /// them (and whatever late replies recorded since).
    func removeTombstones(of processManager: String, purgedBefore time: Date, limit: Int) throws -> Int {
        let doomed = try Int64.fetchAll(
            try statement(
                """
                SELECT id FROM process_instances INDEXED BY process_instances_tombstones
                WHERE process_manager = ? AND purged_at IS NOT NULL AND purged_at < ? ORDER BY purged_at LIMIT ?
                """
            ),
            arguments: [processManager, time.timeIntervalSince1970, limit]
        )
        for instance in doomed {
            try deleteRows(of: instance, from: ["process_transitions", "process_associations", "timers"])
            try run("DELETE FROM process_instances WHERE id = ?", [instance])
        }
        if !doomed.isEmpty { instanceRows.forget() }
        return doomed.count
    }

    /// Deletes an instance's rows from `tables` (each with its `instance` column).
    private func deleteRows(of instance: Int64, from tables: [String]) throws {
        for table in tables {
            try run("DELETE FROM \(table) WHERE instance = ?", [instance])
        }
    }

    /// The query for an instance's id (`process_instances.id`) by process manager and instance id, the key of
    /// what hangs off the instance.
    private static let instanceRow = "SELECT id FROM process_instances WHERE process_manager = ? AND instance_id = ?"

    // MARK: Timers

    /// The condition that finds a timer as it was due, by process manager, instance id, name and due time.
    private static let timerKey = "instance = (\(instanceRow)) AND name = ? AND due_at = ?"

    /// Removes a timer row that no longer matches its instance (a stale firing).
    func deleteTimer(_ timer: DueTimer) throws {
        try run(
            "DELETE FROM timers WHERE \(Self.timerKey)",
            [timer.processManager, timer.instanceID, timer.name, timer.dueAt.millisecondsSince1970]
        )
    }

    /// Timers whose next attempt is at or before `time`, earliest first; parked timers are not among them.
    func dueTimers(before time: Date, limit: Int) throws -> [DueTimer] {
        try Row.fetchAll(
            try statement(
                """
                SELECT process_manager, instance_id, name, due_at, fire_at, attempts FROM timers
                WHERE fire_at <= ? AND dead_letter_id IS NULL AND owner = ? ORDER BY fire_at LIMIT ?
                """
            ),
            arguments: [time.millisecondsSince1970, owner, limit]
        ).map(DueTimer.init(row:))
    }

    /// Records a failed firing: the timer is tried again at `time`, on its own, and the others go on.
    /// - Parameters:
    ///   - timer: The timer as it was due.
    ///   - time: Its next attempt (business time).
    func retryTimer(_ timer: DueTimer, at time: Date) throws {
        try run(
            """
            UPDATE timers SET attempts = attempts + 1, fire_at = ?
            WHERE \(Self.timerKey)
            """,
            [
                time.millisecondsSince1970, timer.processManager, timer.instanceID, timer.name,
                timer.dueAt.millisecondsSince1970,
            ]
        )
    }

    func deferTimer(_ timer: DueTimer, to time: Date) throws {
        try run(
            """
            UPDATE timers SET fire_at = ?
            WHERE \(Self.timerKey)
            """,
            [
                time.millisecondsSince1970, timer.processManager, timer.instanceID, timer.name,
                timer.dueAt.millisecondsSince1970,
            ]
        )
    }

    /// Parks a timer that failed its last attempt under its dead letter: it fires again when that is replayed
    /// (``replayDeadLetter(id:at:route:)``), or never if its instance reschedules or cancels it first.
    func parkTimer(_ timer: DueTimer, deadLetter id: Int64) throws {
        try run(
            """
            UPDATE timers SET attempts = attempts + 1, dead_letter_id = ?
            WHERE \(Self.timerKey)
            """,
            [id, timer.processManager, timer.instanceID, timer.name, timer.dueAt.millisecondsSince1970]
        )
    }

    /// The timers parked under dead letters.
    func parkedTimers() throws -> [DueTimer] {
        try Row.fetchAll(
            db,
            sql: """
                SELECT process_manager, instance_id, name, due_at, fire_at, attempts FROM timers
                WHERE dead_letter_id IS NOT NULL AND owner = ? ORDER BY dead_letter_id
                """,
            arguments: [owner]
        ).map(DueTimer.init(row:))
    }

    /// Sets the timer parked under dead letter `id` due at `now` again, with fresh attempts.
    func rearmTimer(deadLetter id: Int64, at now: Date) throws -> Bool {
        try run(
            "UPDATE timers SET attempts = 0, fire_at = ?, dead_letter_id = NULL WHERE dead_letter_id = ?",
            [now.millisecondsSince1970, id]
        )
        return db.changesCount > 0
    }
}

extension DueTimer {
    /// A timer from a row of `timers` (process_manager, instance_id, name, due_at, fire_at, attempts).
    init(row: Row) {
        self.init(
            processManager: row["process_manager"],
            instanceID: row["instance_id"],
            name: row["name"],
            dueAt: Date(millisecondsSince1970: row["due_at"]),
            nextAttemptAt: Date(millisecondsSince1970: row["fire_at"]),
            attempts: row["attempts"]
        )
    }
}
