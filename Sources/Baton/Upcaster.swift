import Foundation

/// Turns the JSON of one version of a message (or of a process's state) into the next version's, so that a
/// deploy can change a shape while old messages are in flight and old instances are stored.
///
/// A type lists its upcasters oldest first, one per version step; the registry chains them at decode:
///
/// ```swift
/// struct OrderConfirmed: Event {
///     static let messageName = "orders.OrderConfirmed"
///     static let messageVersion = 3
///     static let upcasters = [
///         Upcaster(from: 1) { json in json["lines"] = [] },                                   // a field added
///         Upcaster(from: 2) { json in json["shipping_address"] = json.removeValue(forKey: "address") },  // renamed
///     ]
///     var orderID: String
///     var shippingAddress: String
///     var lines: [OrderLine]
/// }
/// ```
///
/// Keys are the wire's (snake_case). An upcaster that cannot make sense of what it is given throws; the message
/// is then dead-lettered with the reason (a state, refused at load), never silently changed.
public struct Upcaster: Sendable {
    /// The version it reads; it writes `from + 1`.
    public let from: Int
    private let transform: @Sendable (inout [String: Any]) throws -> Void

    /// Creates an upcaster from version `from` to `from + 1`.
    public init(from version: Int, _ transform: @escaping @Sendable (inout [String: Any]) throws -> Void) {
        precondition(version >= 1, "versions start at 1")
        self.from = version
        self.transform = transform
    }

    /// Applies a chain of upcasters to a JSON object, from version `version` up to `target`.
    /// - Throws: ``UpcastError`` if a step is missing, the body is no JSON object, or a step throws.
    static func upcast(
        _ data: Data,
        from version: Int,
        to target: Int,
        using upcasters: [Int: Upcaster],
        what: String
    ) throws(UpcastError) -> Data {
        guard version < target else { return data }
        guard var object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw UpcastError(reason: "\(what) v\(version) is not a JSON object")
        }
        for step in version..<target {
            guard let upcaster = upcasters[step] else {
                throw UpcastError(reason: "no upcaster from v\(step) of \(what) (the current version is v\(target))")
            }
            do {
                try upcaster.transform(&object)
            } catch {
                throw UpcastError(reason: "the upcaster from v\(step) of \(what) failed: \(error)")
            }
        }
        guard JSONSerialization.isValidJSONObject(object),
            let upcast = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        else {
            throw UpcastError(reason: "the upcasters of \(what) made something that is not JSON")
        }
        return upcast
    }

    /// The upcasters of a type by the version they read, checked once.
    static func chain(_ upcasters: [Upcaster], current: Int, of what: String) -> [Int: Upcaster] {
        var chain: [Int: Upcaster] = [:]
        for upcaster in upcasters {
            precondition(
                upcaster.from < current,
                "\(what): an upcaster from v\(upcaster.from) reaches past v\(current)"
            )
            precondition(
                chain.updateValue(upcaster, forKey: upcaster.from) == nil,
                "\(what): two upcasters from v\(upcaster.from)"
            )
        }
        return chain
    }
}

/// Why an old version could not be brought up to date.
public struct UpcastError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong, naming the type and version.
    public var reason: String
    public var description: String { reason }
}

/// The version a type name carries: `orders.OrderConfirmed.v2` → 2.
func version(ofMessageType messageType: String) -> Int? {
    guard let range = messageType.range(of: ".v", options: .backwards) else { return nil }
    return Int(messageType[range.upperBound...])
}
