/// A value in an AMQP field table (message headers, queue and exchange arguments).
public indirect enum AMQPFieldValue: Sendable, Hashable {
    case bool(Bool)
    case int8(Int8)
    case uint8(UInt8)
    case int16(Int16)
    case uint16(UInt16)
    case int32(Int32)
    case uint32(UInt32)
    case int64(Int64)
    case uint64(UInt64)
    case float(Float)
    case double(Double)
    /// A decimal: `value / 10^scale`.
    case decimal(scale: UInt8, value: UInt32)
    /// A long string (`S`), the usual kind for text.
    case string(String)
    /// Raw bytes (`x`).
    case bytes([UInt8])
    /// Seconds since the Unix epoch (`T`).
    case timestamp(UInt64)
    case array([AMQPFieldValue])
    case table([String: AMQPFieldValue])
    case void

    /// The text, if this is a string value.
    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// The number as `Int64`, if this is any integer kind that fits.
    public var int64Value: Int64? {
        switch self {
        case .int8(let v): return Int64(v)
        case .uint8(let v): return Int64(v)
        case .int16(let v): return Int64(v)
        case .uint16(let v): return Int64(v)
        case .int32(let v): return Int64(v)
        case .uint32(let v): return Int64(v)
        case .int64(let v): return v
        case .uint64(let v): return Int64(exactly: v)
        case .timestamp(let v): return Int64(exactly: v)
        default: return nil
        }
    }

    /// The nested table, if this is a table value.
    public var tableValue: [String: AMQPFieldValue]? {
        if case .table(let value) = self { return value }
        return nil
    }

    /// The elements, if this is an array value.
    public var arrayValue: [AMQPFieldValue]? {
        if case .array(let value) = self { return value }
        return nil
    }
}

extension AMQPFieldValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .int64(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}
