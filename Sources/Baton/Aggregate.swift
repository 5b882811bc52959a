/// A consistency boundary with a version: its state is the fold of the events in its stream
/// (`<category>-<id>`), and writers append with the version they read, so concurrent writers are detected,
/// never silently merged.
public protocol Aggregate: Sendable {
    /// The stream category, e.g. `order`.
    static var category: String { get }
    /// The event types its stream holds (to decode the stream).
    static var eventTypes: [any Event.Type] { get }
    /// The state before any event.
    init()
    /// Applies one recorded event.
    mutating func apply(_ event: any Event)
}

/// A message that checks its own values beyond their types (lengths, ranges, required text), so an
/// invalid one is refused at the edge with a reason naming the field.
public protocol ValidatedMessage: Message {
    /// Throws ``MessageError`` with code `.invalid` and a reason naming the field.
    func validate() throws(MessageError)
}

extension MessageError {
    /// An invalid field: `"<field>: <problem>"`.
    public static func invalid(_ field: String, _ problem: String) -> MessageError {
        MessageError(code: .invalid, reason: "\(field): \(problem)")
    }
}

/// Checks for ``ValidatedMessage/validate()`` implementations.
public enum Check {
    /// Text whose length (in characters) is within `range`.
    public static func length(_ text: String, _ range: ClosedRange<Int>, field: String) throws(MessageError) {
        guard range.contains(text.count) else {
            throw .invalid(field, "must be \(range.lowerBound) to \(range.upperBound) characters, got \(text.count)")
        }
    }

    /// A number within `range`.
    public static func range(_ value: Int, _ range: ClosedRange<Int>, field: String) throws(MessageError) {
        guard range.contains(value) else {
            throw .invalid(field, "must be \(range.lowerBound) to \(range.upperBound), got \(value)")
        }
    }

    /// A list whose count is within `range`.
    public static func count<T>(_ items: [T], _ range: ClosedRange<Int>, field: String) throws(MessageError) {
        guard range.contains(items.count) else {
            throw .invalid(field, "must have \(range.lowerBound) to \(range.upperBound) items, got \(items.count)")
        }
    }
}
