import Baton
import BatonNode
import Foundation

/// Aggregate streams, process instances and their timers.
extension InMemoryUnitOfWork {
    // MARK: Aggregate streams

    func append(_ events: [Envelope], to stream: String, expectedVersion: Int64) throws {
        try mutate { state in
            let current = Int64(state.streams[stream]?.count ?? 0)
            guard current == expectedVersion else {
                throw ConcurrencyError(stream: stream, expectedVersion: expectedVersion, actualVersion: current)
            }
            state.streams[stream, default: []].append(contentsOf: events.map { ($0.messageType, $0.payload) })
        }
    }

    func streamVersion(_ stream: String) throws -> Int64 {
        Int64(state.streams[stream]?.count ?? 0)
    }

    func readStream(_ stream: String) throws -> [(messageType: String, payload: Data)] {
        state.streams[stream] ?? []
    }

    // MARK: Process instances

    func storedInstance(_ instanceID: String, processManager: String) throws -> StoredInstance? {
        state.instances[.init(processManager: processManager, instanceID: instanceID)].map {
            StoredInstance(version: $0.version, state: $0.state)
        }
    }

    func instanceVersion(_ instanceID: String, processManager: String) throws -> Int64? {
        state.instances[.init(processManager: processManager, instanceID: instanceID)]?.version
    }

    func transitions(
        of processManager: String,
        instance instanceID: String,
        after version: Int64
    ) throws
        -> [ProcessTransition]
    {
        (state.instances[.init(processManager: processManager, instanceID: instanceID)]?.transitions ?? [])
            .filter { $0.version > version }
    }

    func record(
        _ transition: ProcessTransition,
        processManager: String,
        instanceID: String,
        lifecycle: ProcessLifecycle,
        state instanceState: Data,
        route: (IssuedMessage) -> (exchange: String, routingKey: String)
    ) throws {
        try mutate { state in
            let key = StoreState.InstanceKey(processManager: processManager, instanceID: instanceID)
            var instance =
                state.instances[key]
                ?? .init(
                    lifecycle: lifecycle,
                    version: 0,
                    startedAt: transition.at,
                    updatedAt: transition.at,
                    state: instanceState
                )
            guard !instance.transitions.contains(where: { $0.version == transition.version }) else {
                throw InMemoryStoreError(
                    description:
                        "instance \(instanceID) of \(processManager) has a transition \(transition.version) already"
                )
            }
            instance.transitions.append(transition)
            instance.lifecycle = lifecycle
            instance.version = transition.version
            instance.updatedAt = transition.at
            instance.state = instanceState
            state.instances[key] = instance
            for operation in transition.timers {
                switch operation {
                case .schedule(let name, let dueAt):
                    state.timers[.init(processManager: processManager, instanceID: instanceID, name: name)] = .init(
                        dueAt: dueAt,
                        fireAt: dueAt
                    )
                case .cancel(let name):
                    state.timers[.init(processManager: processManager, instanceID: instanceID, name: name)] = nil
                }
            }
            for (association, value) in transition.associations {
                state.associations[Self.associationKey(processManager, association, value)] = instanceID
            }
        }
        for message in transition.issued {
            let destination = route(message)
            try enqueue(message.envelope, exchange: destination.exchange, routingKey: destination.routingKey, key: nil)
        }
    }

    private static func associationKey(_ processManager: String, _ name: String, _ value: String) -> String {
        [processManager, name, value].joined(separator: "\u{1f}")
    }

    func instance(associatedWith value: String, as name: String, processManager: String) throws -> String? {
        state.associations[Self.associationKey(processManager, name, value)]
    }

    func instances(of processManager: String, matching filter: InstanceFilter, limit: Int) throws -> [InstanceSummary] {
        let summaries = state.instances.filter { key, instance in
            key.processManager == processManager
                && filter.matches(instance.lifecycle, updatedAt: instance.updatedAt, instanceID: key.instanceID)
        }.map { key, instance in
            InstanceSummary(
                instanceID: key.instanceID,
                lifecycle: instance.lifecycle,
                version: instance.version,
                startedAt: instance.startedAt,
                updatedAt: instance.updatedAt,
                purgedAt: instance.purgedAt
            )
        }
        return Array(
            summaries.sorted { ($0.updatedAt, $1.instanceID) > ($1.updatedAt, $0.instanceID) }.prefix(limit)
        )
    }

    func purgeInstances(
        of processManager: String,
        closedBefore time: Date,
        at now: Date,
        limit: Int
    ) throws -> [String] {
        try mutate { state in
            let cutoff = time.roundedToMilliseconds
            let purged = state.instances.filter {
                $0.key.processManager == processManager && $0.value.lifecycle.isClosed && $0.value.purgedAt == nil
                    && $0.value.updatedAt < cutoff
            }
            .sorted { ($0.value.updatedAt, $0.key.instanceID) < ($1.value.updatedAt, $1.key.instanceID) }
            .prefix(limit).map(\.key)
            for key in purged {
                state.instances[key]?.transitions = []
                state.instances[key]?.purgedAt = now
                state.timers = state.timers.filter {
                    $0.key.processManager != processManager || $0.key.instanceID != key.instanceID
                }
            }
            return purged.map(\.instanceID)
        }
    }

    func removeTombstones(of processManager: String, purgedBefore time: Date, limit: Int) throws -> Int {
        try mutate { state in
            let doomed = state.instances.compactMap { key, instance in
                key.processManager == processManager ? instance.purgedAt.map { (key, $0) } : nil
            }
            .filter { $0.1 < time }.sorted { $0.1 < $1.1 }.prefix(limit).map(\.0)
            for key in doomed {
                state.instances[key] = nil
                state.timers = state.timers.filter {
                    $0.key.processManager != processManager || $0.key.instanceID != key.instanceID
                }
                state.associations = state.associations.filter { association, value in
                    value != key.instanceID || !association.hasPrefix(processManager + "\u{1f}")
                }
            }
            return doomed.count
        }
    }

    // MARK: Timers

    private func dueTimer(_ key: StoreState.TimerKey, _ timer: StoreState.Timer) -> DueTimer {
        DueTimer(
            processManager: key.processManager,
            instanceID: key.instanceID,
            name: key.name,
            dueAt: timer.dueAt,
            nextAttemptAt: timer.fireAt,
            attempts: timer.attempts
        )
    }

    /// The timer under `timer`'s key, if it still has `timer`'s deadline.
    private func key(of timer: DueTimer) -> StoreState.TimerKey? {
        let key = StoreState.TimerKey(
            processManager: timer.processManager,
            instanceID: timer.instanceID,
            name: timer.name
        )
        guard state.timers[key]?.dueAt.millisecondsSince1970 == timer.dueAt.millisecondsSince1970 else { return nil }
        return key
    }

    func dueTimers(before time: Date, limit: Int) throws -> [DueTimer] {
        Array(
            state.timers.filter { $0.value.deadLetterID == nil && $0.value.fireAt <= time }
                .sorted { $0.value.fireAt < $1.value.fireAt }.prefix(limit).map(dueTimer)
        )
    }

    func deleteTimer(_ timer: DueTimer) throws {
        guard let key = key(of: timer) else { return }
        try mutate { $0.timers[key] = nil }
    }

    func retryTimer(_ timer: DueTimer, at time: Date) throws {
        guard let key = key(of: timer) else { return }
        try mutate { state in
            state.timers[key]?.attempts += 1
            state.timers[key]?.fireAt = time
        }
    }

    func deferTimer(_ timer: DueTimer, to time: Date) throws {
        guard let key = key(of: timer) else { return }
        try mutate { state in state.timers[key]?.fireAt = time }
    }

    func parkTimer(_ timer: DueTimer, deadLetter id: Int64) throws {
        guard let key = key(of: timer) else { return }
        try mutate { state in
            state.timers[key]?.attempts += 1
            state.timers[key]?.deadLetterID = id
        }
    }

    func parkedTimers() throws -> [DueTimer] {
        state.timers.filter { $0.value.deadLetterID != nil }.sorted { $0.value.deadLetterID! < $1.value.deadLetterID! }
            .map(dueTimer)
    }

    func rearmTimer(deadLetter id: Int64, at now: Date) throws -> Bool {
        guard let key = state.timers.first(where: { $0.value.deadLetterID == id })?.key else { return false }
        try mutate { state in
            state.timers[key]?.attempts = 0
            state.timers[key]?.fireAt = now
            state.timers[key]?.deadLetterID = nil
        }
        return true
    }
}
