import Foundation
import Synchronization

/// Why a message could not be turned into a registered Swift value.
public struct MessageError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of problem.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        fileprivate let name: String
        /// No type is registered under the message's type name.
        public static let unknownType = Code(name: "unknownType")
        /// The body is not valid JSON for the registered type.
        public static let undecodable = Code(name: "undecodable")
        /// The body is larger than allowed.
        public static let oversized = Code(name: "oversized")
        /// Decoded, but the values break the contract's rules.
        public static let invalid = Code(name: "invalid")
        /// A later version of a registered message than this code knows: a node that knows it must take it
        /// (during a rolling deploy, a newer one); it is never dead-lettered as unknown.
        public static let newerVersion = Code(name: "newerVersion")
        public var description: String { name }
    }

    /// What kind of problem.
    public var code: Code
    /// The precise reason, naming the field where there is one.
    public var reason: String

    /// Creates an error.
    public init(code: Code, reason: String) {
        self.code = code
        self.reason = reason
    }

    public var description: String { "\(code): \(reason)" }
}

/// The message types a node knows, by their type names, with JSON coding.
public struct MessageRegistry: Sendable {
    private var decoders: [String: @Sendable (Data) throws -> any Message] = [:]
    private var names: Set<String> = []
    /// Per message name: the current version and the upcasters that reach it.
    private var versions: [String: (current: Int, upcasters: [Int: Upcaster])] = [:]
    /// The largest body accepted, in bytes.
    public var maximumPayloadSize: Int

    /// Creates an empty registry.
    /// - Parameter maximumPayloadSize: Larger bodies are refused as `.oversized`. 256 KiB by default.
    public init(maximumPayloadSize: Int = 256 * 1024) {
        self.maximumPayloadSize = maximumPayloadSize
    }

    /// Creates a registry of these types.
    /// - Parameters:
    ///   - types: The message types, e.g. what a node's handlers take.
    ///   - maximumPayloadSize: Larger bodies are refused as `.oversized`. 256 KiB by default.
    public init(types: [any Message.Type], maximumPayloadSize: Int = 256 * 1024) {
        self.init(maximumPayloadSize: maximumPayloadSize)
        for type in types { register(type) }
    }

    /// Registers a message type under its ``Message/messageType``.
    public mutating func register<M: Message>(_ type: M.Type) {
        names.insert(M.messageName)
        versions[M.messageName] = (
            M.messageVersion, Upcaster.chain(M.upcasters, current: M.messageVersion, of: M.messageName)
        )
        decoders[M.messageType] = { data in
            let message = try WireJSON.decode(M.self, from: data)
            if let validated = message as? any ValidatedMessage { try validated.validate() }
            return message
        }
    }

    /// Whether a type name (`<context>.<Name>.v<n>`) is registered.
    public func contains(_ messageType: String) -> Bool {
        decoders[messageType] != nil
    }

    /// Whether a type with this message name (`<context>.<Name>`, its routing key) is registered.
    public func contains(messageName: String) -> Bool {
        names.contains(messageName)
    }

    /// Brings an envelope of an older version of a registered message up to the current version: its payload
    /// through the type's upcasters, its type name to the current one. Any other envelope is returned as it is.
    /// - Throws: ``MessageError`` `.newerVersion` for a version later than the registered one; `.undecodable`
    ///   when an upcaster is missing or fails.
    public func upcast(_ envelope: Envelope) throws(MessageError) -> Envelope {
        guard decoders[envelope.messageType] == nil, let known = versions[envelope.messageName],
            let version = version(ofMessageType: envelope.messageType)
        else { return envelope }
        guard version < known.current else {
            throw MessageError(
                code: .newerVersion,
                reason:
                    "'\(envelope.messageType)' is newer than the v\(known.current) this node knows: it waits for a node that knows it"
            )
        }
        var upcast = envelope
        do {
            upcast.payload = try Upcaster.upcast(
                envelope.payload,
                from: version,
                to: known.current,
                using: known.upcasters,
                what: envelope.messageName
            )
        } catch {
            throw MessageError(code: .undecodable, reason: error.reason)
        }
        upcast.messageType = "\(envelope.messageName).v\(known.current)"
        return upcast
    }

    /// Decodes an envelope's payload into its registered type (an older version through its upcasters).
    /// - Throws: ``MessageError`` with the precise reason (unknown type, oversized, the JSON path that failed).
    public func decode(_ envelope: Envelope) throws(MessageError) -> any Message {
        guard envelope.payload.count <= maximumPayloadSize else {
            throw MessageError(
                code: .oversized,
                reason: "body of \(envelope.payload.count) bytes exceeds the limit of \(maximumPayloadSize)"
            )
        }
        let envelope = try upcast(envelope)
        guard let decoder = decoders[envelope.messageType] else {
            throw MessageError(code: .unknownType, reason: "no message type '\(envelope.messageType)' is registered")
        }
        do {
            return try decoder(envelope.payload)
        } catch let error as MessageError {
            throw error
        } catch let error as DecodingError {
            throw MessageError(code: .undecodable, reason: error.reason)
        } catch {
            throw MessageError(code: .undecodable, reason: "\(error)")
        }
    }

    /// Encodes a message as the JSON the wire carries.
    public static func encode(_ message: some Message) -> Data {
        // Encoding a Codable value of our own types only fails for non-finite floats: a programming error.
        try! WireJSON.encode(message)
    }
}

extension DecodingError {
    /// A one-line reason naming the JSON path, e.g. `lines[0].quantity: expected Int, found a string`.
    var reason: String {
        func path(_ context: Context) -> String {
            let path = context.codingPath.map { key in
                key.intValue.map { "[\($0)]" } ?? ".\(snakeCased(key.stringValue))"
            }.joined()
            return path.hasPrefix(".") ? String(path.dropFirst()) : (path.isEmpty ? "(root)" : path)
        }
        switch self {
        case .keyNotFound(let key, let context):
            let parent = path(context)
            return "\(parent == "(root)" ? "" : parent + ".")\(snakeCased(key.stringValue)): required field is missing"
        case .typeMismatch(let type, let context):
            return "\(path(context)): expected \(type)"
        case .valueNotFound(let type, let context):
            return "\(path(context)): expected \(type), found null"
        case .dataCorrupted(let context):
            return "\(path(context)): \(context.debugDescription)"
        @unknown default:
            return "\(self)"
        }
    }
}

/// A Swift property name as it appears on the wire (`orderID` → `order_id`), as `convertToSnakeCase` writes it.
func snakeCased(_ name: String) -> String {
    let characters = Array(name)
    var result = ""
    for (index, character) in characters.enumerated() {
        if character.isUppercase, index > 0 {
            let previous = characters[index - 1]
            let nextIsLower = index + 1 < characters.count && characters[index + 1].isLowercase
            if previous.isLowercase || previous.isNumber || (previous.isUppercase && nextIsLower) {
                result.append("_")
            }
        }
        result.append(contentsOf: character.lowercased())
    }
    return result
}

extension JSONEncoder {
    /// The one JSON style of the wire: snake_case keys, ISO 8601 dates with milliseconds, sorted keys
    /// (stable bytes). ``WireJSON`` writes the same bytes in about half the time; the framework writes with it.
    /// Shared: do not change its settings.
    public static let baton: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(ISO8601Milliseconds.format(date))
        }
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()
}

extension JSONDecoder {
    /// Reads what ``JSONEncoder/baton`` writes. Keys go from snake_case back to Swift's camelCase with
    /// its acronyms (`order_id` → `orderID`, `callback_url` → `callbackURL`), which Foundation's
    /// `convertFromSnakeCase` does not do (it gives `orderId`). Shared: do not change its settings.
    public static let baton: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .custom { path in
            SwiftKey(camelCaseFromSnakeCase: path.last!.stringValue)
        }
        decoder.dateDecodingStrategy = .custom { decoder in
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            guard let date = ISO8601Milliseconds.parse(text) else {
                throw DecodingError.dataCorruptedError(
                    in: container,
                    debugDescription: "expected an ISO 8601 date-time, found '\(text)'"
                )
            }
            return date
        }
        return decoder
    }()
}

struct SwiftKey: CodingKey {
    static let acronyms: Set<String> = ["id", "url", "uri", "uuid", "sku", "json", "http"]
    var stringValue: String
    var intValue: Int? { nil }

    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }

    /// Conversions made before (bounded: the keys come from the wire).
    private static let converted = ConvertedKeys(capacity: 4_096, by: camelCase(fromSnakeCase:))

    init(camelCaseFromSnakeCase key: String) {
        stringValue = key.utf8.contains(UInt8(ascii: "_")) ? Self.converted.name(for: key) : key
    }

    private static func camelCase(fromSnakeCase key: String) -> String {
        let parts = key.split(separator: "_", omittingEmptySubsequences: true)
        guard parts.count > 1, !key.hasPrefix("_") else { return key }
        return String(parts[0])
            + parts.dropFirst().map { part in
                acronyms.contains(part.lowercased())
                    ? part.uppercased() : part.prefix(1).uppercased() + part.dropFirst()
            }.joined()
    }
}

/// Key names converted once and kept, by key: every message of a type has the same keys. Bounded, since keys may
/// come from the wire or be a dictionary's ever new values: past `capacity` a key is converted each time.
final class ConvertedKeys: Sendable {
    private let converted = Mutex<[String: String]>([:])
    private let capacity: Int
    private let convert: @Sendable (String) -> String

    init(capacity: Int, by convert: @escaping @Sendable (String) -> String) {
        self.capacity = capacity
        self.convert = convert
    }

    func name(for key: String) -> String {
        if let name = converted.withLock({ $0[key] }) { return name }
        let name = convert(key)
        converted.withLock { if $0.count < capacity { $0[key] = name } }
        return name
    }
}
