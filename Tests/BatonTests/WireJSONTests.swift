import Foundation
import Testing

@testable import Baton

/// `WireJSON` writes the bytes `JSONEncoder.baton` writes: both encode each value here and are compared.
@Suite struct WireJSONTests {
    enum Color: String, Codable, CodingKeyRepresentable { case darkRed, blue }

    enum Shape: Codable, Equatable {
        case circle(radiusInMM: Int)
        case polygon(cornerPoints: [Int], labelText: String?)
        case empty
    }

    struct Everything: Codable {
        var orderID = "ord-1"
        var callbackURL = URL(string: "https://example.com/a/b?c=d")!
        var placedAt = Date(timeIntervalSince1970: 1_790_000_000.123_456)
        var rawBytes = Data([0, 1, 2, 0xFF])
        var ratio = 0.1
        var tinyRatio = 1e-7
        var hugeRatio = 1e20
        var negativeZero = -0.0
        var singleFloat: Float = 0.1
        var amount = Decimal(string: "12.50")!
        var counts: [Int8] = [-128, 127]
        var wideCounts: [UInt64] = [0, .max]
        var smallCounts: [Int16?] = [1, nil, 3]
        var flag = true
        var missing: String? = nil
        var present: String? = "here"
        var explicitNull: Int?? = .some(nil)
        var byName: [String: Int] = ["zebraCrossing": 1, "apple": 2, "B": 3, "a10": 4, "a9": 5, "é": 6, "e": 7]
        var byNumber: [Int: String] = [10: "ten", 9: "nine", -1: "minus one"]
        var byColor: [Color: Int] = [.darkRed: 1, .blue: 2]
        var nested: [[String: [Int]]] = [["xY": [1, 2]], [:]]
        var shapes: [Shape] = [.circle(radiusInMM: 3), .polygon(cornerPoints: [1, 2], labelText: nil), .empty]
        var text =
            "quote \" backslash \\ slash / tab \t newline \n nul \u{0} bell \u{7} unit \u{1F} del \u{7F} "
            + "line separator \u{2028} ünïcode ✓ emoji 😀 combining e\u{301}"
        var htmlLike = "<a href=\"x\">&amp;</a>"
        var alreadySnake_case = 1
        var HTTPStatusCode = 200
        var myHTTPRequestID = "r"
        var version2Value = 2
        var a1B2 = 3
        var _leading = 4
        var trailing_ = 5
    }

    class Base: Codable {
        var baseValue = 1
    }

    final class Derived: Base, @unchecked Sendable {
        var derivedValue = 2
        enum CodingKeys: String, CodingKey { case derivedValue }
        override init() { super.init() }
        required init(from decoder: any Decoder) throws { try super.init(from: decoder) }
        override func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(derivedValue, forKey: .derivedValue)
            try super.encode(to: container.superEncoder())
            var list = container.superEncoder(forKey: .derivedValue).unkeyedContainer()
            try list.encode("replaces the value above")
            try super.encode(to: list.superEncoder())
        }
    }

    struct NestedByHand: Encodable {
        func encode(to encoder: any Encoder) throws {
            var top = encoder.container(keyedBy: AnyKey.self)
            var inner = top.nestedContainer(keyedBy: AnyKey.self, forKey: AnyKey("innerObject"))
            try inner.encode(1.5, forKey: AnyKey("halfValue"))
            try inner.encodeNil(forKey: AnyKey("nothingHere"))
            var list = top.nestedUnkeyedContainer(forKey: AnyKey("someList"))
            try list.encode(Float(2.25))
            try list.encode(Date(timeIntervalSince1970: 0))
            var object = list.nestedContainer(keyedBy: AnyKey.self)
            try object.encode("v", forKey: AnyKey("keyInList"))
            var deeper = list.nestedUnkeyedContainer()
            try deeper.encodeNil()
            try top.encode("second", forKey: AnyKey("sameKey"))
            try top.encode("first", forKey: AnyKey("sameKey"))
        }
    }

    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ string: String) { stringValue = string }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    struct EncodesNothing: Encodable {
        func encode(to encoder: any Encoder) throws {}
    }

    struct HoldsNothing: Encodable {
        var inside = EncodesNothing()
    }

    func expectSameBytes<T: Encodable>(_ value: T, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let foundation = try JSONEncoder.baton.encode(value)
        let wire = try WireJSON.encode(value)
        #expect(
            String(decoding: wire, as: UTF8.self) == String(decoding: foundation, as: UTF8.self),
            sourceLocation: sourceLocation
        )
    }

    @Test func aValueOfEveryKindIsWrittenAsFoundationWritesIt() throws {
        try expectSameBytes(Everything())
        try expectSameBytes(Derived())
        try expectSameBytes(NestedByHand())
        try expectSameBytes(HoldsNothing())
    }

    @Test func topLevelFragmentsAreWrittenAsFoundationWritesThem() throws {
        try expectSameBytes("fragment \u{1}")
        try expectSameBytes(42)
        try expectSameBytes(2.5)
        try expectSameBytes(Optional<Int>.none)
        try expectSameBytes([1, 2, 3])
        try expectSameBytes(Date(timeIntervalSince1970: -1.5))
        try expectSameBytes([String: Int]())
    }

    @Test func everyCharacterBelowSpaceIsEscapedAsFoundationEscapesIt() throws {
        var text = ""
        for byte in 0..<0x20 { text.unicodeScalars.append(Unicode.Scalar(UInt8(byte))) }
        try expectSameBytes(["key \(text)": text])
    }

    @Test func randomStringsAndKeysAreWrittenAsFoundationWritesThem() throws {
        var state: UInt64 = 20_261_203  // a fixed seed: a failure comes back on every run
        func random(_ range: ClosedRange<Int>) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return range.lowerBound + Int(state >> 33) % range.count
        }
        let alphabet = Array("aZ_09 -\"\\/\n\u{0}\u{1F}éÉß✓😀\u{301}")
        func randomString() -> String {
            String((0..<random(0...12)).map { _ in alphabet[random(0...alphabet.count - 1)] })
        }
        for _ in 0..<200 {
            var dictionary: [String: String] = [:]
            for _ in 0..<random(0...6) { dictionary[randomString()] = randomString() }
            try expectSameBytes(dictionary)
        }
    }

    @Test func whatFoundationRefusesIsRefused() throws {
        #expect(throws: EncodingError.self) { try JSONEncoder.baton.encode(["x": Double.nan]) }
        #expect(throws: EncodingError.self) { try WireJSON.encode(["x": Double.nan]) }
        #expect(throws: EncodingError.self) { try WireJSON.encode(Float.infinity) }
        #expect(throws: EncodingError.self) { try WireJSON.encode(EncodesNothing()) }
    }
}

/// `WireJSON.decode` reads what `JSONDecoder.baton` reads, into equal values, on its fast path where it can and
/// through Foundation where it cannot.
@Suite struct WireJSONDecodingTests {
    enum Shape: Codable, Equatable {
        case circle(radiusInches: Int)
        case polygon(cornerPoints: [Int], labelText: String?)
    }

    enum Color: String, Codable, CodingKeyRepresentable { case darkRed, blue }

    struct Order: Codable, Equatable {
        var orderID: String
        var callbackURL: URL
        var placedAt: Date
        var rawBytes: Data
        var ratio: Double
        var count: Int
        var small: Int8
        var wide: UInt64
        var flag: Bool
        var nickname: String?
        var lines: [Line]
        var byName: [String: Int]
        var byNumber: [Int: String]
        var byColor: [Color: Int]
        var shapes: [Shape]
        var nested: [[String: [Int?]]]
    }

    struct Line: Codable, Equatable {
        var sku: String
        var quantity: Int
    }

    let order = Order(
        orderID: "ord-1 ✓ \"quoted\" \\ / \n\u{1} 😀",
        callbackURL: URL(string: "https://example.com/a?b=c")!,
        placedAt: Date(timeIntervalSince1970: 1_790_000_000.123),
        rawBytes: Data([0, 1, 2, 0xFF]),
        ratio: 0.1,
        count: -42,
        small: -128,
        wide: .max,
        flag: true,
        nickname: nil,
        lines: [Line(sku: "book-1", quantity: 2), Line(sku: "pen", quantity: 1)],
        byName: ["snake_case_key": 1, "camelCase": 2, "é": 3],
        byNumber: [10: "ten", -1: "minus one"],
        byColor: [.darkRed: 1, .blue: 2],
        shapes: [.circle(radiusInches: 3), .polygon(cornerPoints: [1, 2], labelText: nil)],
        nested: [["x_y": [1, nil]], [:]]
    )

    /// Decodes `json` on the fast path, expecting the value Foundation reads.
    func expectFast<T: Decodable & Equatable>(
        _ type: T.Type,
        _ json: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let data = Data(json.utf8)
        let foundation = try JSONDecoder.baton.decode(type, from: data)
        let fast = WireJSON.fastDecode(type, from: data)
        #expect(fast == foundation, sourceLocation: sourceLocation)
    }

    /// Expects the fast path to leave `json` to Foundation, and `WireJSON.decode` to answer as Foundation does.
    func expectFoundation<T: Decodable & Equatable>(
        _ type: T.Type,
        _ json: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        let data = Data(json.utf8)
        #expect(WireJSON.fastDecode(type, from: data) == nil, sourceLocation: sourceLocation)
        switch (
            Result { try JSONDecoder.baton.decode(type, from: data) }, Result { try WireJSON.decode(type, from: data) }
        ) {
        case (.success(let foundation), .success(let wire)): #expect(wire == foundation, sourceLocation: sourceLocation)
        case (.failure(let foundation), .failure(let wire)):
            #expect("\(wire)" == "\(foundation)", sourceLocation: sourceLocation)
        default: Issue.record("WireJSON.decode and Foundation disagree on \(json)", sourceLocation: sourceLocation)
        }
    }

    @Test func whatWireJSONWritesIsReadOnTheFastPath() throws {
        let json = String(decoding: try WireJSON.encode(order), as: UTF8.self)
        try expectFast(Order.self, json)
        #expect(WireJSON.fastDecode(Order.self, from: Data(json.utf8)) == order)
    }

    @Test func whatOtherProducersWriteIsReadOnTheFastPath() throws {
        // Whitespace, escapes Foundation does not write, keys in any order, exponents, a surrogate pair.
        try expectFast(
            Line.self,
            #" { "quantity" : 2 ,"sku":"b\/o\u006Fk\ud83d\ude00\t\r\b\f" } "#
        )
        try expectFast([Double].self, "[0, -0, 1e3, 1.5E-3, -12.25, 123456789012345678]")
        try expectFast([Int?].self, "[1, null, -9223372036854775808]")
        try expectFast(String.self, #""top-level fragment""#)
        try expectFast([String: [Line]].self, #"{"a_b": [], "C": [{"sku": "x", "quantity": 0}]}"#)
    }

    @Test func whatTheFastPathDoesNotTakeFoundationReads() {
        expectFoundation(Line.self, #"{"sku": "a", "sku": "b", "quantity": 1}"#)  // a key twice
        expectFoundation(Line.self, #"{"sku": "a", "quantity": 1.0}"#)  // an integer written as a float
        expectFoundation(Line.self, #"{"sku": "a", "quantity": 1e2}"#)
        expectFoundation(Line.self, #"{"sku": "a", "quantity": 99999999999999999999}"#)  // too large
        expectFoundation(Line.self, #"{"sku": "\ud800", "quantity": 1}"#)  // a lone surrogate
        expectFoundation(Line.self, #"{"sku": "a", "quantity": 01}"#)  // not JSON
        expectFoundation(Line.self, #"{"sku": "a", "quantity": "1"}"#)  // the wrong type
        expectFoundation(Line.self, #"{"sku": "a"}"#)  // a key missing
        expectFoundation(Line.self, #"{"sku": "a", "quantity": 1} trailing"#)
        expectFoundation([Float].self, "[0.1]")  // Foundation rounds floats its way
        expectFoundation([Decimal].self, "[12.50]")
        expectFoundation([Date].self, #"["yesterday"]"#)
        expectFoundation([Data].self, #"["not base64!"]"#)
    }

    @Test func aTypeThatCatchesAnErrorIsReadByFoundation() throws {
        /// Reads its amount with `try?`: where the fast path gives up inside, the value it would make is not
        /// Foundation's.
        struct Lenient: Decodable, Equatable {
            var amount: Decimal?
            init(from decoder: any Decoder) throws {
                let container = try decoder.container(keyedBy: CodingKeys.self)
                amount = try? container.decode(Decimal.self, forKey: .amount)
            }
            enum CodingKeys: CodingKey { case amount }
        }
        expectFoundation(Lenient.self, #"{"amount": 12.5}"#)
        #expect(try WireJSON.decode(Lenient.self, from: Data(#"{"amount": 12.5}"#.utf8)).amount == Decimal(12.5))
    }

    @Test func strictUTF8AcceptsAndRefusesWhatTheStandardLibraryDoes() {
        let valid: [[UInt8]] = [
            [], Array("orders.OrderConfirmed.v1".utf8), Array("père Noël 🎁".utf8), [0xEF, 0xBF, 0xBD],
        ]
        let invalid: [[UInt8]] = [
            [0xC3, 0x28], [0x80], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xFF],
            [0x61, 0xF0, 0x9F, 0x98],  // a truncated four-byte sequence: repaired to U+FFFD, three bytes as well
        ]
        for bytes in valid + invalid {
            bytes.withUnsafeBufferPointer { buffer in
                #expect(String(strictUTF8: buffer) == String(validating: buffer, as: UTF8.self), "\(bytes)")
            }
        }
        #expect(invalid.allSatisfy { $0.withUnsafeBufferPointer(String.init(strictUTF8:)) == nil })
    }

    @Test func invalidUTF8IsLeftToFoundation() {
        let data = Data([UInt8(ascii: "\""), 0xC3, 0x28, UInt8(ascii: "\"")])
        #expect(WireJSON.fastDecode(String.self, from: data) == nil)
        #expect(throws: DecodingError.self) { try WireJSON.decode(String.self, from: data) }
    }
}
