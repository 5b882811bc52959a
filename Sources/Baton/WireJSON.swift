import Foundation

/// The wire's JSON (``JSONEncoder/baton``'s bytes), written without Foundation's encoder on the hot path.
///
/// Every message a node sends, every process state it stores and every read-model document goes through here,
/// so its cost is paid several times per message. Foundation's encoder converts each key to snake_case on every
/// encode and formats dates through a closure and a nested container; this one converts a key once (with
/// Foundation's own conversion, so the names are the same) and keeps it, and writes dates and scalars directly.
/// The bytes are the same as ``JSONEncoder/baton``'s — `WireJSONTests` compares the two over values of every
/// kind and their corner cases (escapes, unicode, key order, dictionaries, floats, dates, class hierarchies,
/// seeded random strings) — so either may
/// write what the other reads, and values written before this encoder existed compare equal to values written
/// after. Floating-point and `Decimal` numbers, rare in messages, are formatted by Foundation itself.
public enum WireJSON {
    /// `value` as ``JSONEncoder/baton`` encodes it.
    /// - Throws: `EncodingError.invalidValue` for a non-finite float or a value that encodes nothing.
    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        let root = try WireEncoder.value(of: value, codingPath: [])
        var bytes: [UInt8] = []
        bytes.reserveCapacity(256)
        root.write(to: &bytes)
        return Data(bytes)
    }
}

/// A JSON value while it is built. Containers are classes, so a nested container fills its parent in place.
private enum WireValue {
    /// A number, `true`, `false` or `null`, as written.
    case literal(String)
    case string(String)
    case array(WireArray)
    case object(WireObject)
    /// What an encoder handed out by `superEncoder()` holds when the whole value is written.
    case deferred(WireEncoder)

    func write(to bytes: inout [UInt8]) {
        switch self {
        case .literal(let text): bytes.append(contentsOf: text.utf8)
        case .string(let text): Self.write(string: text, to: &bytes)
        case .array(let array):
            bytes.append(UInt8(ascii: "["))
            for (index, element) in array.elements.enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                element.write(to: &bytes)
            }
            bytes.append(UInt8(ascii: "]"))
        case .object(let object):
            bytes.append(UInt8(ascii: "{"))
            for (index, member) in object.sortedMembers().enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                Self.write(string: member.key, to: &bytes)
                bytes.append(UInt8(ascii: ":"))
                member.value.write(to: &bytes)
            }
            bytes.append(UInt8(ascii: "}"))
        case .deferred(let encoder): (encoder.value ?? .object(WireObject())).write(to: &bytes)
        }
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// A JSON string as Foundation escapes it with `.withoutEscapingSlashes`: quote, backslash and the control
    /// characters, the five with short escapes, the rest as lowercase `\u00xx`.
    private static func write(string: String, to bytes: inout [UInt8]) {
        bytes.append(UInt8(ascii: "\""))
        for byte in string.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x08: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
            case 0x09: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0x0A: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0C: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
            case 0x0D: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0..<0x20:
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
                bytes.append(Self.hexDigits[Int(byte >> 4)])
                bytes.append(Self.hexDigits[Int(byte & 0x0F)])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}

private final class WireArray {
    var elements: [WireValue] = []
}

private final class WireObject {
    var members: [(key: String, value: WireValue)] = []

    /// The members in Swift's string order (Foundation's `.sortedKeys` on Linux); of a key set twice, the last.
    func sortedMembers() -> [(key: String, value: WireValue)] {
        let order = members.indices.sorted { (members[$0].key, $0) < (members[$1].key, $1) }
        var sorted: [(key: String, value: WireValue)] = []
        sorted.reserveCapacity(order.count)
        for index in order {
            if let last = sorted.last, last.key == members[index].key {
                sorted[sorted.count - 1] = members[index]
            } else {
                sorted.append(members[index])
            }
        }
        return sorted
    }
}

/// Marks the dictionaries whose keys are written as they are (Foundation converts the keys of structs and of
/// dictionaries keyed by other types, not of `[String: V]`).
private protocol StringKeyedDictionary {}
extension Dictionary: StringKeyedDictionary where Key == String, Value: Encodable {}

private final class WireEncoder: Encoder {
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    /// Whether keys are converted to snake_case (all but `[String: V]`'s).
    let convertsKeys: Bool
    /// What the value asked for (a container) or encoded (a single value).
    var value: WireValue?

    init(codingPath: [any CodingKey], convertsKeys: Bool) {
        self.codingPath = codingPath
        self.convertsKeys = convertsKeys
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        let object: WireObject
        if case .object(let existing) = value {
            object = existing
        } else {
            object = WireObject()
            value = .object(object)
        }
        return KeyedEncodingContainer(
            WireKeyedContainer(object: object, codingPath: codingPath, convertsKeys: convertsKeys)
        )
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        let array: WireArray
        if case .array(let existing) = value {
            array = existing
        } else {
            array = WireArray()
            value = .array(array)
        }
        return WireUnkeyedContainer(array: array, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { WireSingleValueContainer(encoder: self) }

    /// `value` as a JSON value: the types Foundation writes itself as it writes them, others through their
    /// `encode(to:)`.
    static func value<T: Encodable>(of value: T, codingPath: @autoclosure () -> [any CodingKey]) throws -> WireValue {
        // By the type, not the value: casting a value to test it boxes it.
        switch T.self {
        case is String.Type: return .string(value as! String)
        case is Date.Type: return .string(ISO8601Milliseconds.format(value as! Date))
        case is Data.Type: return .string((value as! Data).base64EncodedString())
        case is URL.Type: return .string((value as! URL).absoluteString)
        case is Number.Type: return try foundationLiteral((value as! Number).value, codingPath: codingPath())
        case is Decimal.Type, is Double.Type, is Float.Type:
            return try foundationLiteral(value, codingPath: codingPath())
        default:
            let encoder = WireEncoder(
                codingPath: codingPath(),
                convertsKeys: !(T.self is any StringKeyedDictionary.Type)
            )
            try value.encode(to: encoder)
            guard let encoded = encoder.value else {
                guard !encoder.codingPath.isEmpty else {
                    throw EncodingError.invalidValue(
                        value,
                        .init(codingPath: [], debugDescription: "Top-level \(T.self) did not encode any values.")
                    )
                }
                return .object(WireObject())  // as Foundation writes a nested value that encoded nothing
            }
            return encoded
        }
    }

    /// A number as Foundation formats it (`1e-07`, `0.1` for a `Float`, `12.5` for a `Decimal`), or its error
    /// for a non-finite one.
    static func foundationLiteral(_ value: any Encodable, codingPath: [any CodingKey]) throws -> WireValue {
        do {
            return .literal(String(decoding: try JSONEncoder().encode(value), as: UTF8.self))
        } catch EncodingError.invalidValue(let value, let context) {
            throw EncodingError.invalidValue(
                value,
                .init(codingPath: codingPath + context.codingPath, debugDescription: context.debugDescription)
            )
        }
    }
}

private struct WireKeyedContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let object: WireObject
    let codingPath: [any CodingKey]
    let convertsKeys: Bool

    private func name(_ key: Key) -> String { convertsKeys ? SnakeCaseKeys.name(key.stringValue) : key.stringValue }
    private func set(_ value: WireValue, _ key: Key) { object.members.append((name(key), value)) }

    mutating func encodeNil(forKey key: Key) throws { set(.literal("null"), key) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { set(.literal(value ? "true" : "false"), key) }
    mutating func encode(_ value: String, forKey key: Key) throws { set(.string(value), key) }
    mutating func encode(_ value: Int, forKey key: Key) throws { set(.literal(String(value)), key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { set(.literal(String(value)), key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { set(.literal(String(value)), key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { set(.literal(String(value)), key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { set(.literal(String(value)), key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { set(.literal(String(value)), key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { set(.literal(String(value)), key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { set(.literal(String(value)), key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { set(.literal(String(value)), key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { set(.literal(String(value)), key) }
    mutating func encode(_ value: Double, forKey key: Key) throws { try encode(Number(value), forKey: key) }
    mutating func encode(_ value: Float, forKey key: Key) throws { try encode(Number(value), forKey: key) }

    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        set(try WireEncoder.value(of: value, codingPath: codingPath + [key]), key)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy keyType: NestedKey.Type,
        forKey key: Key
    ) -> KeyedEncodingContainer<NestedKey> {
        let nested = WireObject()
        set(.object(nested), key)
        return KeyedEncodingContainer(
            WireKeyedContainer<NestedKey>(object: nested, codingPath: codingPath + [key], convertsKeys: convertsKeys)
        )
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let nested = WireArray()
        set(.array(nested), key)
        return WireUnkeyedContainer(array: nested, codingPath: codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder { superEncoder(named: "super") }
    mutating func superEncoder(forKey key: Key) -> any Encoder { superEncoder(named: name(key)) }

    private func superEncoder(named name: String) -> any Encoder {
        let encoder = WireEncoder(codingPath: codingPath + [WireKey(name)], convertsKeys: true)
        object.members.append((name, .deferred(encoder)))
        return encoder
    }
}

private struct WireUnkeyedContainer: UnkeyedEncodingContainer {
    let array: WireArray
    let codingPath: [any CodingKey]
    var count: Int { array.elements.count }

    private func append(_ value: WireValue) { array.elements.append(value) }
    private var nextKey: any CodingKey { WireKey(index: count) }

    mutating func encodeNil() throws { append(.literal("null")) }
    mutating func encode(_ value: Bool) throws { append(.literal(value ? "true" : "false")) }
    mutating func encode(_ value: String) throws { append(.string(value)) }
    mutating func encode(_ value: Int) throws { append(.literal(String(value))) }
    mutating func encode(_ value: Int8) throws { append(.literal(String(value))) }
    mutating func encode(_ value: Int16) throws { append(.literal(String(value))) }
    mutating func encode(_ value: Int32) throws { append(.literal(String(value))) }
    mutating func encode(_ value: Int64) throws { append(.literal(String(value))) }
    mutating func encode(_ value: UInt) throws { append(.literal(String(value))) }
    mutating func encode(_ value: UInt8) throws { append(.literal(String(value))) }
    mutating func encode(_ value: UInt16) throws { append(.literal(String(value))) }
    mutating func encode(_ value: UInt32) throws { append(.literal(String(value))) }
    mutating func encode(_ value: UInt64) throws { append(.literal(String(value))) }
    mutating func encode(_ value: Double) throws { try encode(Number(value)) }
    mutating func encode(_ value: Float) throws { try encode(Number(value)) }

    mutating func encode<T: Encodable>(_ value: T) throws {
        append(try WireEncoder.value(of: value, codingPath: codingPath + [nextKey]))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy keyType: NestedKey.Type
    ) -> KeyedEncodingContainer<NestedKey> {
        let nested = WireObject()
        let path = codingPath + [nextKey]
        append(.object(nested))
        return KeyedEncodingContainer(
            WireKeyedContainer<NestedKey>(object: nested, codingPath: path, convertsKeys: true)
        )
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let nested = WireArray()
        let path = codingPath + [nextKey]
        append(.array(nested))
        return WireUnkeyedContainer(array: nested, codingPath: path)
    }

    mutating func superEncoder() -> any Encoder {
        let encoder = WireEncoder(codingPath: codingPath + [nextKey], convertsKeys: true)
        append(.deferred(encoder))
        return encoder
    }
}

private struct WireSingleValueContainer: SingleValueEncodingContainer {
    let encoder: WireEncoder
    var codingPath: [any CodingKey] { encoder.codingPath }

    private func set(_ value: WireValue) { encoder.value = value }

    mutating func encodeNil() throws { set(.literal("null")) }
    mutating func encode(_ value: Bool) throws { set(.literal(value ? "true" : "false")) }
    mutating func encode(_ value: String) throws { set(.string(value)) }
    mutating func encode(_ value: Int) throws { set(.literal(String(value))) }
    mutating func encode(_ value: Int8) throws { set(.literal(String(value))) }
    mutating func encode(_ value: Int16) throws { set(.literal(String(value))) }
    mutating func encode(_ value: Int32) throws { set(.literal(String(value))) }
    mutating func encode(_ value: Int64) throws { set(.literal(String(value))) }
    mutating func encode(_ value: UInt) throws { set(.literal(String(value))) }
    mutating func encode(_ value: UInt8) throws { set(.literal(String(value))) }
    mutating func encode(_ value: UInt16) throws { set(.literal(String(value))) }
    mutating func encode(_ value: UInt32) throws { set(.literal(String(value))) }
    mutating func encode(_ value: UInt64) throws { set(.literal(String(value))) }
    mutating func encode(_ value: Double) throws { try encode(Number(value)) }
    mutating func encode(_ value: Float) throws { try encode(Number(value)) }

    mutating func encode<T: Encodable>(_ value: T) throws {
        set(try WireEncoder.value(of: value, codingPath: codingPath))
    }
}

/// A floating-point number a container was given as such (not through the generic `encode`): written by
/// Foundation, as the generic path writes one.
private struct Number: Encodable {
    let value: any Encodable
    init(_ value: some BinaryFloatingPoint & Encodable) { self.value = value }
    func encode(to encoder: any Encoder) throws { try value.encode(to: encoder) }
}

/// A key the encoder makes itself: `super`, an array index.
private struct WireKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(_ name: String) { (stringValue, intValue) = (name, nil) }
    init(index: Int) { (stringValue, intValue) = ("Index \(index)", index) }
    init?(stringValue: String) { self.init(stringValue) }
    init?(intValue: Int) { self.init(index: intValue) }
}

/// Keys in snake_case as Foundation's `convertToSnakeCase` writes them, each converted once.
private enum SnakeCaseKeys {
    private static let converted = ConvertedKeys(capacity: 10_000, by: foundationName)

    static func name(_ key: String) -> String {
        // Without an uppercase letter (`sku`, `order_id`, `42`) the conversion changes nothing.
        if key.utf8.allSatisfy({ $0 < 0x80 && !(UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) }) { return key }
        return converted.name(for: key)
    }

    /// Foundation's conversion of `key`, read back from the object it writes around it.
    private static func foundationName(_ key: String) -> String {
        struct OneKey: Encodable {
            let key: String
            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: WireKey.self)
                try container.encodeNil(forKey: WireKey(key))
            }
        }
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        guard let data = try? encoder.encode(OneKey(key: key)),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let name = object.keys.first
        else { return key }
        return name
    }
}
