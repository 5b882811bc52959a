import Foundation

/// Where re-running a stored history with the current code decides differently from what was recorded: the
/// replay check users run before a deploy (as Temporal's replay tests), through
/// ``ProcessEngine/verify(_:instanceID:registry:)`` or `<service> processes verify`.
public struct ReplayDifference: Sendable, Hashable, CustomStringConvertible {
    /// The instance.
    public var instanceID: String
    /// The recorded transition where the decisions part.
    public var version: Int64
    /// What triggered it, e.g. `event orders.OrderConfirmed (m-1)`.
    public var trigger: String
    /// What differs, or why the history could not be replayed.
    public var difference: String

    public var description: String { "\(instanceID) at v\(version) (\(trigger)): \(difference)" }
}

extension ProcessEngine {
    /// Re-runs an instance's recorded history with the current handlers and compares every decision with the
    /// record: the lifecycle, what was issued (types in order, and bodies), the timers scheduled and cancelled
    /// (by name: a changed delay is configuration, not a decision) and the reason. Never throws: a history that
    /// cannot be decoded, or a handler that now throws, is a difference too.
    ///
    /// The ids of what was issued are not compared: an id derives from the instance, the trigger and the
    /// message's position among those issued, so equal types in equal order have equal ids; and a history
    /// recorded by an earlier release, which derived them without their time prefix, still compares.
    /// - Parameters:
    ///   - transitions: The instance's transitions, from its start, in order.
    ///   - instanceID: The instance.
    ///   - registry: Decodes the recorded events (by default, the definition's own types, with their upcasters).
    /// - Returns: The first difference, or `nil` if the current code decides as the recorded one did.
    public func verify(
        _ transitions: [ProcessTransition],
        instanceID: String,
        registry: MessageRegistry? = nil
    ) -> ReplayDifference? {
        let registry = registry ?? definition.registry
        var instance: ProcessInstance<State>?
        for recorded in transitions {
            func differs(_ text: String) -> ReplayDifference {
                ReplayDifference(
                    instanceID: instanceID,
                    version: recorded.version,
                    trigger: recorded.trigger.summary,
                    difference: text
                )
            }
            let decision: Decision
            do {
                decision = try redecide(
                    recorded.trigger,
                    instanceID: instanceID,
                    instance: instance,
                    at: recorded.at,
                    registry
                )
            } catch {
                return differs("cannot be replayed: \(error)")
            }
            switch decision {
            case .transition(var next, let replayed):
                if let text = Self.difference(between: recorded, and: replayed) { return differs(text) }
                next.timers = Self.applying(recorded.timers, to: instance?.timers ?? [:])
                instance = next
            case .skipped(let reason):
                return differs("now skipped: \(reason)")
            case .refused(let reason):
                return differs("now dead-lettered: \(reason)")
            case .answered:
                return differs("now answered as for a missing instance")
            }
        }
        return nil
    }

    /// What the current code decides for a recorded trigger.
    func redecide(
        _ trigger: ProcessTrigger,
        instanceID: String,
        instance: ProcessInstance<State>?,
        at time: Date,
        _ registry: MessageRegistry
    ) throws -> Decision {
        switch trigger {
        case .event(let recorded):
            let envelope = try registry.upcast(recorded)
            let message = try registry.decode(envelope)
            return try handle(message, envelope: envelope, instanceID: instanceID, instance: instance, now: time)
        case .timer(let name, let dueAt):
            guard let current = instance else {
                throw ProcessHandlerError(message: "timer before start in '\(instanceID)'")
            }
            return try fire(timer: name, dueAt: dueAt, instance: current, now: time)
        case .abort(let messageID, let reason):
            guard let current = instance else {
                throw ProcessHandlerError(message: "abort before start in '\(instanceID)'")
            }
            return try abort(current, reason: reason, messageID: messageID, now: time)
        }
    }

    private static func difference(between recorded: ProcessTransition, and replayed: ProcessTransition) -> String? {
        if replayed.version != recorded.version {
            return "version \(replayed.version) instead of \(recorded.version)"
        }
        if replayed.lifecycle != recorded.lifecycle {
            return "lifecycle was \(recorded.lifecycle.rawValue), now \(replayed.lifecycle.rawValue)"
        }
        func issued(_ transition: ProcessTransition) -> [String] { transition.issued.map(\.envelope.messageType) }
        if issued(replayed) != issued(recorded) {
            return "issued \(issued(recorded)) then, now \(issued(replayed))"
        }
        for (then, now) in zip(recorded.issued, replayed.issued) where then.envelope.payload != now.envelope.payload {
            return
                "the body of \(then.envelope.messageType) was \(String(decoding: then.envelope.payload, as: UTF8.self)), now \(String(decoding: now.envelope.payload, as: UTF8.self))"
        }
        func timers(_ transition: ProcessTransition) -> [String] {
            transition.timers.map {
                switch $0 {
                case .schedule(let name, _): "schedule \(name)"
                case .cancel(let name): "cancel \(name)"
                }
            }
        }
        if timers(replayed) != timers(recorded) {
            return "timers \(timers(recorded)) then, now \(timers(replayed))"
        }
        if replayed.reason != recorded.reason {
            return "reason was \(recorded.reason ?? "none"), now \(replayed.reason ?? "none")"
        }
        return nil
    }
}

extension ProcessTrigger {
    /// A short text for reports and timelines.
    public var summary: String {
        switch self {
        case .event(let envelope): "event \(envelope.messageName) (\(envelope.messageID))"
        case .timer(let name, _): "timer \(name)"
        case .abort(let messageID, let reason): "abort \"\(reason)\" (\(messageID))"
        }
    }
}
