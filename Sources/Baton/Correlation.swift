/// How an event (or a command addressed to an instance) finds its process instance.
public struct Correlation<E: Message>: Sendable {
    enum Rule: Sendable {
        /// The instance id is computed from the event (a field, or several joined).
        case key(@Sendable (E, Envelope) -> String?)
        /// The event carries a value the instance associated with itself under a name.
        case association(name: String, value: @Sendable (E) -> String)
    }

    let rule: Rule
    let summary: String

    /// The instance id is a field of the event.
    public static func field(_ value: @escaping @Sendable (E) -> String) -> Self {
        Correlation(rule: .key { event, _ in value(event) }, summary: "event field")
    }

    /// The instance id is several fields of the event joined with `|` (a composite key).
    public static func composite(_ values: [@Sendable (E) -> String]) -> Self {
        precondition(values.count >= 2, "a composite key needs at least two parts")
        return Correlation(
            rule: .key { event, _ in values.map { $0(event) }.joined(separator: "|") },
            summary: "composite key"
        )
    }

    /// The instance id is the envelope's correlation id.
    public static var correlationID: Self {
        Correlation(rule: .key { _, envelope in envelope.correlationID }, summary: "correlation id")
    }

    /// The event carries a value that an instance associated with itself (see
    /// ``ProcessContext/associate(_:with:)``) — a mapping from an instance field to an event field.
    /// - Parameters:
    ///   - name: The association's name, declared on the builder.
    ///   - value: The event field to look up.
    public static func mapped(_ name: String, by value: @escaping @Sendable (E) -> String) -> Self {
        Correlation(rule: .association(name: name, value: value), summary: "mapping '\(name)'")
    }
}

/// What an event resolved to, before the instance is loaded.
public enum CorrelationKey: Sendable, Hashable {
    /// The instance with this id.
    case instance(String)
    /// The instance associated with `value` under `name`.
    case association(name: String, value: String)
}
