import Foundation

extension WireJSON {
    /// A `T` from JSON, as ``JSONDecoder/baton`` reads it.
    ///
    /// A fast path reads the JSON it understands fully — what ``WireJSON/encode(_:)`` writes and what producers
    /// in other languages send: objects with distinct keys, strings, integers, finite floats, ISO 8601 dates,
    /// base64 data. Everything else — a decoding error, a number it does not take, a key given twice, text that is
    /// not UTF-8, a `Decimal` — goes to ``JSONDecoder/baton`` as it is, so the answer and every error (with its
    /// path, which dead-letter reasons name) are Foundation's own. The fast path's results equal Foundation's:
    /// `WireJSONTests` decodes the same inputs with both.
    public static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        if let value = fastDecode(type, from: data) { return value }
        return try JSONDecoder.baton.decode(type, from: data)
    }

    /// The fast path alone, or `nil`: Foundation must read it. Also `nil` when the value decoded although the
    /// fast path gave up somewhere inside it (a type's `init(from:)` caught the error, as `try?` does, where
    /// Foundation may have decoded the value).
    static func fastDecode<T: Decodable>(_ type: T.Type, from data: Data) -> T? {
        let root = try? data.withUnsafeBytes { buffer in
            var parser = WireParser(bytes: buffer.bindMemory(to: UInt8.self))
            return try parser.document()
        }
        guard let root else { return nil }
        let attempt = FastPathAttempt()
        let value = try? WireDecoder(node: root, parentPath: [], key: nil, convertsKeys: true, attempt: attempt)
            .decodeValue(type)
        return attempt.gaveUp ? nil : value
    }
}

/// Why the fast path gave up; never shown (Foundation reads the input again and says what is wrong).
private struct NotOnTheFastPath: Error {}

/// One fast-path decode: whether it gave up anywhere, even where the error was caught.
private final class FastPathAttempt {
    private(set) var gaveUp = false

    /// The error to throw, remembered.
    func giveUp() -> NotOnTheFastPath {
        gaveUp = true
        return NotOnTheFastPath()
    }
}

/// A parsed JSON value.
private enum WireNode {
    case null
    case bool(Bool)
    /// The number's text as written (validated JSON number syntax).
    case number(String, isInteger: Bool)
    case string(String)
    case array([WireNode])
    case object([(key: String, value: WireNode)])
}

/// A strict JSON parser (RFC 8259): whatever it does not take, Foundation reads instead.
private struct WireParser {
    let bytes: UnsafeBufferPointer<UInt8>
    var index = 0
    /// Objects and arrays may nest this deep (Foundation's limit is 512).
    private static let maximumDepth = 256

    init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    mutating func document() throws -> WireNode {
        let node = try value(depth: 0)
        skipWhitespace()
        guard index == bytes.count else { throw NotOnTheFastPath() }
        return node
    }

    private mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    private mutating func value(depth: Int) throws -> WireNode {
        skipWhitespace()
        guard index < bytes.count, depth < Self.maximumDepth else { throw NotOnTheFastPath() }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"):
            try literal("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try literal("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try literal("null")
            return .null
        default: return try number()
        }
    }

    private mutating func literal(_ word: StaticString) throws {
        let count = word.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw NotOnTheFastPath() }
        for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] { throw NotOnTheFastPath() }
        index += count
    }

    private mutating func object(depth: Int) throws -> WireNode {
        index += 1
        var members: [(key: String, value: WireNode)] = []
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            index += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw NotOnTheFastPath() }
            let key = try string()
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw NotOnTheFastPath() }
            index += 1
            members.append((key, try value(depth: depth)))
            skipWhitespace()
            guard index < bytes.count else { throw NotOnTheFastPath() }
            switch bytes[index] {
            case UInt8(ascii: ","): index += 1
            case UInt8(ascii: "}"):
                index += 1
                return .object(members)
            default: throw NotOnTheFastPath()
            }
        }
    }

    private mutating func array(depth: Int) throws -> WireNode {
        index += 1
        var elements: [WireNode] = []
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
            index += 1
            return .array(elements)
        }
        while true {
            elements.append(try value(depth: depth))
            skipWhitespace()
            guard index < bytes.count else { throw NotOnTheFastPath() }
            switch bytes[index] {
            case UInt8(ascii: ","): index += 1
            case UInt8(ascii: "]"):
                index += 1
                return .array(elements)
            default: throw NotOnTheFastPath()
            }
        }
    }

    /// A string (at its opening quote): valid UTF-8, the escapes of RFC 8259, surrogates only in pairs.
    private mutating func string() throws -> String {
        index += 1
        let start = index
        // The common case: no escape, so the bytes are the string.
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                let text = try Self.validated(UnsafeBufferPointer(rebasing: bytes[start..<index]))
                index += 1
                return text
            }
            if byte == UInt8(ascii: "\\") { break }
            guard byte >= 0x20 else { throw NotOnTheFastPath() }
            index += 1
        }
        var unescaped = Array(bytes[start..<index])
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                return try unescaped.withUnsafeBufferPointer(Self.validated)
            case UInt8(ascii: "\\"):
                index += 1
                guard index < bytes.count else { throw NotOnTheFastPath() }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): unescaped.append(escape)
                case UInt8(ascii: "b"): unescaped.append(0x08)
                case UInt8(ascii: "f"): unescaped.append(0x0C)
                case UInt8(ascii: "n"): unescaped.append(0x0A)
                case UInt8(ascii: "r"): unescaped.append(0x0D)
                case UInt8(ascii: "t"): unescaped.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hexQuad()
                    if (0xD800..<0xDC00).contains(scalar) {
                        try literal("\\u")
                        let low = try hexQuad()
                        guard (0xDC00..<0xE000).contains(low) else { throw NotOnTheFastPath() }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let unicode = Unicode.Scalar(scalar) else { throw NotOnTheFastPath() }
                    unescaped.append(contentsOf: UTF8.encode(unicode)!)
                default: throw NotOnTheFastPath()
                }
            default:
                guard byte >= 0x20 else { throw NotOnTheFastPath() }
                unescaped.append(byte)
                index += 1
            }
        }
        throw NotOnTheFastPath()
    }

    private mutating func hexQuad() throws -> UInt32 {
        guard index + 4 <= bytes.count else { throw NotOnTheFastPath() }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw NotOnTheFastPath()
            }
            value = value << 4 | UInt32(digit)
            index += 1
        }
        return value
    }

    private static func validated(_ bytes: UnsafeBufferPointer<UInt8>) throws -> String {
        guard let text = String(strictUTF8: bytes) else { throw NotOnTheFastPath() }
        return text
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    private mutating func number() throws -> WireNode {
        let start = index
        func digits() -> Int {
            let first = index
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
            return index - first
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
        let integerDigits = digits()
        guard integerDigits > 0, integerDigits == 1 || bytes[index - integerDigits] != UInt8(ascii: "0") else {
            throw NotOnTheFastPath()
        }
        var isInteger = true
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard digits() > 0 else { throw NotOnTheFastPath() }
            isInteger = false
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
                index += 1
            }
            guard digits() > 0 else { throw NotOnTheFastPath() }
            isInteger = false
        }
        return .number(
            String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self),
            isInteger: isInteger
        )
    }
}

/// Marks the dictionaries whose keys are read as they are (as Foundation reads `[String: V]`).
private protocol StringKeyedDictionaryDecodable {}
extension Dictionary: StringKeyedDictionaryDecodable where Key == String, Value: Decodable {}

private struct WireDecoder: Decoder {
    let node: WireNode
    /// The path to the container this value is in, and its key there: the path is made only when asked for.
    let parentPath: [any CodingKey]
    let key: (any CodingKey)?
    var codingPath: [any CodingKey] { key.map { parentPath + [$0] } ?? parentPath }
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    /// Whether object keys go from snake_case to camelCase (all but `[String: V]`'s).
    let convertsKeys: Bool
    let attempt: FastPathAttempt

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let members) = node else { throw attempt.giveUp() }
        return KeyedDecodingContainer(
            try WireKeyedDecodingContainer<Key>(members, codingPath, convertsKeys: convertsKeys, attempt: attempt)
        )
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let elements) = node else { throw attempt.giveUp() }
        return WireUnkeyedDecodingContainer(elements: elements, codingPath: codingPath, attempt: attempt)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { self }

    /// `type` from this node: the types Foundation reads itself as it reads them, others through their
    /// `init(from:)`.
    func decodeValue<T: Decodable>(_ type: T.Type) throws -> T {
        switch type {
        case is String.Type: return try string() as! T  // by the type: casting a value to test it boxes it
        case is Date.Type:
            guard let date = ISO8601Milliseconds.parse(try string()) else { throw attempt.giveUp() }
            return date as! T
        case is Data.Type:
            guard let data = Data(base64Encoded: try string()) else { throw attempt.giveUp() }
            return data as! T
        case is URL.Type:
            guard let url = URL(string: try string()) else { throw attempt.giveUp() }
            return url as! T
        case is Decimal.Type: throw attempt.giveUp()
        default:
            let decoder = WireDecoder(
                node: node,
                parentPath: parentPath,
                key: key,
                convertsKeys: !(T.self is any StringKeyedDictionaryDecodable.Type),
                attempt: attempt
            )
            return try T(from: decoder)
        }
    }

    private func string() throws -> String {
        guard case .string(let text) = node else { throw attempt.giveUp() }
        return text
    }

    func integer<I: FixedWidthInteger>(_ type: I.Type) throws -> I {
        guard case .number(let text, isInteger: true) = node, let value = I(text) else { throw attempt.giveUp() }
        return value
    }

    func double() throws -> Double {
        guard case .number(let text, _) = node, let value = Double(text), value.isFinite else { throw attempt.giveUp() }
        return value
    }
}

extension WireDecoder: SingleValueDecodingContainer {
    func decodeNil() -> Bool {
        if case .null = node { return true }
        return false
    }

    func decode(_ type: Bool.Type) throws -> Bool {
        guard case .bool(let value) = node else { throw attempt.giveUp() }
        return value
    }

    func decode(_ type: String.Type) throws -> String { try string() }
    func decode(_ type: Double.Type) throws -> Double { try double() }
    func decode(_ type: Float.Type) throws -> Float { throw attempt.giveUp() }  // Foundation's rounding
    func decode(_ type: Int.Type) throws -> Int { try integer(type) }
    func decode(_ type: Int8.Type) throws -> Int8 { try integer(type) }
    func decode(_ type: Int16.Type) throws -> Int16 { try integer(type) }
    func decode(_ type: Int32.Type) throws -> Int32 { try integer(type) }
    func decode(_ type: Int64.Type) throws -> Int64 { try integer(type) }
    func decode(_ type: UInt.Type) throws -> UInt { try integer(type) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try integer(type) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try integer(type) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try integer(type) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try integer(type) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try decodeValue(type) }
}

private struct WireKeyedDecodingContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    /// The members by their Swift names (converted from snake_case unless the container reads a `[String: V]`).
    /// A key given twice, or two keys with one Swift name, is Foundation's to read.
    let members: [String: WireNode]
    let codingPath: [any CodingKey]
    let attempt: FastPathAttempt

    init(
        _ members: [(key: String, value: WireNode)],
        _ codingPath: [any CodingKey],
        convertsKeys: Bool,
        attempt: FastPathAttempt
    ) throws {
        var byName: [String: WireNode] = Dictionary(minimumCapacity: members.count)
        for member in members {
            let name = convertsKeys ? SwiftKey(camelCaseFromSnakeCase: member.key).stringValue : member.key
            guard byName.updateValue(member.value, forKey: name) == nil else { throw attempt.giveUp() }
        }
        self.members = byName
        self.codingPath = codingPath
        self.attempt = attempt
    }

    var allKeys: [Key] { members.keys.compactMap { Key(stringValue: $0) } }
    func contains(_ key: Key) -> Bool { members[key.stringValue] != nil }

    private func decoder(_ key: Key) throws -> WireDecoder {
        guard let node = members[key.stringValue] else { throw attempt.giveUp() }
        return WireDecoder(node: node, parentPath: codingPath, key: key, convertsKeys: true, attempt: attempt)
    }

    func decodeNil(forKey key: Key) throws -> Bool { try decoder(key).decodeNil() }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try decoder(key).decode(type) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try decoder(key).decode(type) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try decoder(key).decode(type) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try decoder(key).decode(type) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try decoder(key).decode(type) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try decoder(key).decode(type) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try decoder(key).decode(type) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try decoder(key).decode(type) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try decoder(key).decode(type) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try decoder(key).decode(type) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try decoder(key).decode(type) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try decoder(key).decode(type) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try decoder(key).decode(type) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try decoder(key).decode(type) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try decoder(key).decodeValue(type) }

    func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type,
        forKey key: Key
    ) throws -> KeyedDecodingContainer<NestedKey> {
        try decoder(key).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try decoder(key).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder { throw attempt.giveUp() }
    func superDecoder(forKey key: Key) throws -> any Decoder { throw attempt.giveUp() }
}

private struct WireUnkeyedDecodingContainer: UnkeyedDecodingContainer {
    let elements: [WireNode]
    let codingPath: [any CodingKey]
    let attempt: FastPathAttempt
    var count: Int? { elements.count }
    var isAtEnd: Bool { currentIndex >= elements.count }
    private(set) var currentIndex = 0

    init(elements: [WireNode], codingPath: [any CodingKey], attempt: FastPathAttempt) {
        (self.elements, self.codingPath, self.attempt) = (elements, codingPath, attempt)
    }

    /// The next element's decoder, moving past it.
    private mutating func next() throws -> WireDecoder {
        guard !isAtEnd else { throw attempt.giveUp() }
        defer { currentIndex += 1 }
        return WireDecoder(
            node: elements[currentIndex],
            parentPath: codingPath,
            key: WireIndexKey(intValue: currentIndex),
            convertsKeys: true,
            attempt: attempt
        )
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd else { throw attempt.giveUp() }
        guard case .null = elements[currentIndex] else { return false }
        currentIndex += 1
        return true
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try next().decode(type) }
    mutating func decode(_ type: String.Type) throws -> String { try next().decode(type) }
    mutating func decode(_ type: Double.Type) throws -> Double { try next().decode(type) }
    mutating func decode(_ type: Float.Type) throws -> Float { try next().decode(type) }
    mutating func decode(_ type: Int.Type) throws -> Int { try next().decode(type) }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try next().decode(type) }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try next().decode(type) }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try next().decode(type) }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try next().decode(type) }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try next().decode(type) }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try next().decode(type) }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try next().decode(type) }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try next().decode(type) }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try next().decode(type) }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next().decodeValue(type) }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type
    ) throws -> KeyedDecodingContainer<NestedKey> {
        try next().container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { try next().unkeyedContainer() }
    mutating func superDecoder() throws -> any Decoder { throw attempt.giveUp() }
}

private struct WireIndexKey: CodingKey {
    var stringValue: String { "Index \(intValue!)" }
    var intValue: Int?
    init(intValue: Int) { self.intValue = intValue }
    init?(stringValue: String) { nil }
}
