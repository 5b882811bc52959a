import Baton
import BatonNode
import Foundation
import PostgresNIO

/// Aggregate streams, process instances and their timers.
extension PostgresUnitOfWork {
    // MARK: Aggregate streams

    func append(_ events: [Envelope], to stream: String, expectedVersion: Int64) throws {
        let current = try streamVersion(stream)
        guard current == expectedVersion else {
            throw ConcurrencyError(stream: stream, expectedVersion: expectedVersion, actualVersion: current)
        }
        // A concurrent writer at the same version is refused by the (stream, position) key.
        for (offset, event) in events.enumerated() {
            try query(
                """
                INSERT INTO streams (stream, position, message_id, message_type, payload, recorded_at)
                VALUES ($1, $2, $3, $4, $5, $6)
                """,
                [
                    .init(string: stream), .init(int64: expectedVersion + Int64(offset) + 1),
                    .init(string: event.messageID), .init(string: event.messageType),
                    .init(bytes: [UInt8](event.payload)),
                    .init(int64: event.timestamp.millisecondsSince1970),
                ]
            )
        }
    }

    func streamVersion(_ stream: String) throws -> Int64 {
        try query("SELECT MAX(position) FROM streams WHERE stream = $1", [.init(string: stream)]).first?
            .decode(Int64?.self) ?? 0
    }

    func readStream(_ stream: String) throws -> [(messageType: String, payload: Data)] {
        try query(
            "SELECT message_type, payload FROM streams WHERE stream = $1 ORDER BY position",
            [.init(string: stream)]
        )
        .map { try $0.decode((String, Data).self) }
    }

    // MARK: Process instances

    private func key(_ processManager: String, _ instanceID: String) -> [PostgresData] {
        [.init(string: processManager), .init(string: instanceID)]
    }

    func storedInstance(_ instanceID: String, processManager: String) throws -> StoredInstance? {
        try query(
            "SELECT version, state FROM process_instances WHERE process_manager = $1 AND instance_id = $2",
            key(processManager, instanceID)
        ).first.map {
            let (version, state) = try $0.decode((Int64, Data).self)
            return StoredInstance(version: version, state: state)
        }
    }

    func instanceVersion(_ instanceID: String, processManager: String) throws -> Int64? {
        try query(
            "SELECT version FROM process_instances WHERE process_manager = $1 AND instance_id = $2",
            key(processManager, instanceID)
        ).first?.decode(Int64.self)
    }

    func transitions(
        of processManager: String,
        instance instanceID: String,
        after version: Int64
    ) throws -> [ProcessTransition] {
        try query(
            """
            SELECT record FROM process_transitions
            WHERE process_manager = $1 AND instance_id = $2 AND version > $3 ORDER BY version
            """,
            key(processManager, instanceID) + [.init(int64: version)]
        ).map { try ProcessTransition(storedRecord: try $0.decode(Data.self)) }
    }

    func record(
        _ transition: ProcessTransition,
        processManager: String,
        instanceID: String,
        lifecycle: ProcessLifecycle,
        state: Data,
        route: (IssuedMessage) -> (exchange: String, routingKey: String)
    ) throws {
        let time = PostgresData(int64: transition.at.millisecondsSince1970)
        // A second writer of the same version is refused by the transitions' key.
        try query(
            "INSERT INTO process_transitions (process_manager, instance_id, version, record) VALUES ($1, $2, $3, $4)",
            key(processManager, instanceID) + [
                .init(int64: transition.version), .init(bytes: [UInt8](transition.storedRecord)),
            ]
        )
        try query(
            """
            INSERT INTO process_instances (process_manager, instance_id, lifecycle, version, started_at, updated_at, state)
            VALUES ($1, $2, $3, $4, $5, $5, $6)
            ON CONFLICT (process_manager, instance_id) DO UPDATE SET
                lifecycle = excluded.lifecycle, version = excluded.version, updated_at = excluded.updated_at,
                state = excluded.state
            """,
            key(processManager, instanceID) + [
                .init(string: lifecycle.rawValue), .init(int64: transition.version), time, .init(bytes: [UInt8](state)),
            ]
        )
        for operation in transition.timers {
            switch operation {
            case .schedule(let name, let dueAt):
                try query(
                    """
                    INSERT INTO timers (process_manager, instance_id, name, due_at, fire_at) VALUES ($1, $2, $3, $4, $4)
                    ON CONFLICT (process_manager, instance_id, name) DO UPDATE SET
                        due_at = excluded.due_at, fire_at = excluded.fire_at, attempts = 0, dead_letter_id = NULL
                    """,
                    key(processManager, instanceID) + [.init(string: name), .init(int64: dueAt.millisecondsSince1970)]
                )
            case .cancel(let name):
                try query(
                    "DELETE FROM timers WHERE process_manager = $1 AND instance_id = $2 AND name = $3",
                    key(processManager, instanceID) + [.init(string: name)]
                )
            }
        }
        for (association, value) in transition.associations {
            try query(
                """
                INSERT INTO process_associations (process_manager, name, value, instance_id) VALUES ($1, $2, $3, $4)
                ON CONFLICT (process_manager, name, value) DO UPDATE SET instance_id = excluded.instance_id
                """,
                [
                    .init(string: processManager), .init(string: association), .init(string: value),
                    .init(string: instanceID),
                ]
            )
        }
        for message in transition.issued {
            let destination = route(message)
            try enqueue(message.envelope, exchange: destination.exchange, routingKey: destination.routingKey, key: nil)
        }
    }

    func instance(associatedWith value: String, as name: String, processManager: String) throws -> String? {
        try query(
            "SELECT instance_id FROM process_associations WHERE process_manager = $1 AND name = $2 AND value = $3",
            [.init(string: processManager), .init(string: name), .init(string: value)]
        ).first?.decode(String.self)
    }

    /// Instances of a process manager, most recently changed first: one index range per lifecycle asked for
    /// (`process_instances_listed`), merged, so a page deep in a million instances costs what the first does.
    func instances(of processManager: String, matching filter: InstanceFilter, limit: Int) throws -> [InstanceSummary] {
        let lifecycles = (filter.lifecycles.isEmpty ? Set(ProcessLifecycle.allCases) : filter.lifecycles)
            .map(\.rawValue).sorted()
        let ranges = lifecycles.indices.map { index in
            """
            (SELECT instance_id, lifecycle, version, started_at, updated_at, purged_at FROM process_instances
            WHERE process_manager = $1 AND lifecycle = $\(index + 6) AND ($2::bigint IS NULL OR updated_at < $2)
                AND ($3::bigint IS NULL OR (updated_at <= $3 AND (updated_at < $3 OR instance_id > $4::text)))
            ORDER BY updated_at DESC, instance_id LIMIT $5)
            """
        }
        let after = filter.after
        return try query(
            "SELECT * FROM (" + ranges.joined(separator: " UNION ALL ")
                + ") AS listed ORDER BY updated_at DESC, instance_id LIMIT $5",
            [
                .init(string: processManager),
                filter.changedBefore.map { .init(int64: $0.millisecondsSince1970) } ?? .null,
                after.map { .init(int64: $0.updatedAt.millisecondsSince1970) } ?? .null,
                .init(string: after?.instanceID ?? ""), .init(int: limit),
            ] + lifecycles.map { .init(string: $0) }
        ).map { row in
            let (id, lifecycle, version, started, updated, purged) = try row.decode(
                (String, String, Int64, Int64, Int64, Int64?).self
            )
            return InstanceSummary(
                instanceID: id,
                lifecycle: ProcessLifecycle(rawValue: lifecycle) ?? .failed,
                version: version,
                startedAt: Date(millisecondsSince1970: started),
                updatedAt: Date(millisecondsSince1970: updated),
                purgedAt: purged.map(Date.init(millisecondsSince1970:))
            )
        }
    }

    /// Purges closed instances oldest first, from the `process_instances_unpurged` index: their transitions
    /// and timers go; the row (with its state) and its associations stay as a tombstone. Replicas purging at
    /// once skip each other's instances.
    func purgeInstances(
        of processManager: String,
        closedBefore time: Date,
        at now: Date,
        limit: Int
    ) throws -> [String] {
        let purged = try query(
            """
            UPDATE process_instances SET purged_at = $1
            WHERE process_manager = $2 AND instance_id IN (
                SELECT instance_id FROM process_instances
                WHERE process_manager = $2 AND lifecycle IN ('completed', 'failed') AND purged_at IS NULL
                    AND updated_at < $3
                ORDER BY updated_at, instance_id LIMIT $4 FOR UPDATE SKIP LOCKED)
            RETURNING instance_id, updated_at
            """,
            [
                .init(int64: now.millisecondsSince1970), .init(string: processManager),
                .init(int64: time.roundedToMilliseconds.millisecondsSince1970), .init(int: limit),
            ]
        ).map { try $0.decode((String, Int64).self) }.sorted { ($0.1, $0.0) < ($1.1, $1.0) }.map(\.0)
        for instanceID in purged {
            try deleteRows(of: instanceID, processManager, from: ["process_transitions", "timers"])
        }
        return purged
    }

    /// Deletes tombstones oldest first, from the `process_instances_tombstones` index, with everything kept of
    /// them.
    func removeTombstones(of processManager: String, purgedBefore time: Date, limit: Int) throws -> Int {
        let doomed = try query(
            """
            DELETE FROM process_instances
            WHERE process_manager = $1 AND instance_id IN (
                SELECT instance_id FROM process_instances
                WHERE process_manager = $1 AND purged_at IS NOT NULL AND purged_at < $2
                ORDER BY purged_at LIMIT $3 FOR UPDATE SKIP LOCKED)
            RETURNING instance_id
            """,
            [.init(string: processManager), .init(int64: time.millisecondsSince1970), .init(int: limit)]
        ).map { try $0.decode(String.self) }
        for instanceID in doomed {
            try deleteRows(
                of: instanceID,
                processManager,
                from: ["process_transitions", "process_associations", "timers"]
            )
        }
        return doomed.count
    }

    /// Deletes an instance's rows from `tables` (each keyed by process manager and instance id).
    private func deleteRows(of instanceID: String, _ processManager: String, from tables: [String]) throws {
        for table in tables {
            try query(
                "DELETE FROM \(table) WHERE process_manager = $1 AND instance_id = $2",
                key(processManager, instanceID)
            )
        }
    }

    // MARK: Timers

    private func timers(where condition: String, _ binds: [PostgresData]) throws -> [DueTimer] {
        try query(
            "SELECT process_manager, instance_id, name, due_at, fire_at, attempts FROM timers WHERE \(condition)",
            binds
        ).map { row in
            let (processManager, instanceID, name, dueAt, fireAt, attempts) = try row.decode(
                (String, String, String, Int64, Int64, Int32).self
            )
            return DueTimer(
                processManager: processManager,
                instanceID: instanceID,
                name: name,
                dueAt: Date(millisecondsSince1970: dueAt),
                nextAttemptAt: Date(millisecondsSince1970: fireAt),
                attempts: Int(attempts)
            )
        }
    }

    /// The key of a timer with the deadline it was read with (a rescheduled one has another).
    private func key(of timer: DueTimer) -> [PostgresData] {
        key(timer.processManager, timer.instanceID) + [
            .init(string: timer.name), .init(int64: timer.dueAt.millisecondsSince1970),
        ]
    }

    func dueTimers(before time: Date, limit: Int) throws -> [DueTimer] {
        try timers(
            where: "fire_at <= $1 AND dead_letter_id IS NULL ORDER BY fire_at LIMIT $2",
            [.init(int64: time.millisecondsSince1970), .init(int: limit)]
        )
    }

    func claimDueTimers(before time: Date, limit: Int) throws -> [DueTimer] {
        try timers(
            where: "fire_at <= $1 AND dead_letter_id IS NULL ORDER BY fire_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            [.init(int64: time.millisecondsSince1970), .init(int: limit)]
        )
    }

    func deleteTimer(_ timer: DueTimer) throws {
        try query(
            "DELETE FROM timers WHERE process_manager = $1 AND instance_id = $2 AND name = $3 AND due_at = $4",
            key(of: timer)
        )
    }

    func retryTimer(_ timer: DueTimer, at time: Date) throws {
        try query(
            """
            UPDATE timers SET attempts = attempts + 1, fire_at = $5
            WHERE process_manager = $1 AND instance_id = $2 AND name = $3 AND due_at = $4
            """,
            key(of: timer) + [.init(int64: time.millisecondsSince1970)]
        )
    }

    func deferTimer(_ timer: DueTimer, to time: Date) throws {
        try query(
            """
            UPDATE timers SET fire_at = $5
            WHERE process_manager = $1 AND instance_id = $2 AND name = $3 AND due_at = $4
            """,
            key(of: timer) + [.init(int64: time.millisecondsSince1970)]
        )
    }

    func parkTimer(_ timer: DueTimer, deadLetter id: Int64) throws {
        try query(
            """
            UPDATE timers SET attempts = attempts + 1, dead_letter_id = $5
            WHERE process_manager = $1 AND instance_id = $2 AND name = $3 AND due_at = $4
            """,
            key(of: timer) + [.init(int64: id)]
        )
    }

    func parkedTimers() throws -> [DueTimer] {
        try timers(where: "dead_letter_id IS NOT NULL ORDER BY dead_letter_id", [])
    }

    func rearmTimer(deadLetter id: Int64, at now: Date) throws -> Bool {
        try !query(
            """
            UPDATE timers SET attempts = 0, fire_at = $1, dead_letter_id = NULL WHERE dead_letter_id = $2
            RETURNING name
            """,
            [.init(int64: now.millisecondsSince1970), .init(int64: id)]
        ).isEmpty
    }
}
