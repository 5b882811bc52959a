internal import CRabbitMQ
import Glibc

/// Scratch memory for the C structures of one call (strings, tables, properties). Everything allocated
/// lives until ``reset()``; the connection thread resets it after each call into librabbitmq.
final class ScratchArena {
    private var chunks: [UnsafeMutableRawBufferPointer] = []
    private var offset = 0
    private let chunkSize = 16 * 1024

    init() {}

    deinit {
        for chunk in chunks { chunk.deallocate() }
    }

    /// Room for `count` bytes aligned to `alignment`.
    func allocate(byteCount count: Int, alignment: Int) -> UnsafeMutableRawPointer {
        if let current = chunks.last {
            let aligned = (offset + alignment - 1) & ~(alignment - 1)
            if aligned + count <= current.count {
                offset = aligned + count
                return current.baseAddress! + aligned
            }
        }
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: max(chunkSize, count), alignment: 16)
        chunks.append(chunk)
        offset = count
        return chunk.baseAddress!
    }

    /// Frees all but the first chunk and starts over.
    func reset() {
        while chunks.count > 1 { chunks.removeLast().deallocate() }
        offset = 0
    }

    /// A copy of the string's UTF-8 bytes.
    func bytes(_ string: String) -> amqp_bytes_t {
        var string = string
        return string.withUTF8 { bytes(UnsafeRawBufferPointer($0)) }
    }

    /// A copy of raw bytes.
    func bytes(_ source: UnsafeRawBufferPointer) -> amqp_bytes_t {
        guard source.count > 0 else { return amqp_bytes_t(len: 0, bytes: nil) }
        let destination = allocate(byteCount: source.count, alignment: 1)
        destination.copyMemory(from: source.baseAddress!, byteCount: source.count)
        return amqp_bytes_t(len: source.count, bytes: destination)
    }

    /// An AMQP field table with the given entries.
    func table(_ entries: [String: AMQPFieldValue]) -> amqp_table_t {
        guard !entries.isEmpty else { return amqp_empty_table }
        let storage = allocate(
            byteCount: MemoryLayout<amqp_table_entry_t>.stride * entries.count,
            alignment: MemoryLayout<amqp_table_entry_t>.alignment
        ).bindMemory(to: amqp_table_entry_t.self, capacity: entries.count)
        for (index, (key, value)) in entries.sorted(by: { $0.key < $1.key }).enumerated() {
            storage.advanced(by: index).initialize(to: amqp_table_entry_t(key: bytes(key), value: field(value)))
        }
        return amqp_table_t(num_entries: Int32(entries.count), entries: storage)
    }

    private func field(_ value: AMQPFieldValue) -> amqp_field_value_t {
        var field = amqp_field_value_t()
        func kind(_ kind: amqp_field_value_kind_t) -> UInt8 { UInt8(kind.rawValue) }
        switch value {
        case .bool(let v):
            field.kind = kind(AMQP_FIELD_KIND_BOOLEAN)
            field.value.boolean = v ? 1 : 0
        case .int8(let v):
            field.kind = kind(AMQP_FIELD_KIND_I8)
            field.value.i8 = v
        case .uint8(let v):
            field.kind = kind(AMQP_FIELD_KIND_U8)
            field.value.u8 = v
        case .int16(let v):
            field.kind = kind(AMQP_FIELD_KIND_I16)
            field.value.i16 = v
        case .uint16(let v):
            field.kind = kind(AMQP_FIELD_KIND_U16)
            field.value.u16 = v
        case .int32(let v):
            field.kind = kind(AMQP_FIELD_KIND_I32)
            field.value.i32 = v
        case .uint32(let v):
            field.kind = kind(AMQP_FIELD_KIND_U32)
            field.value.u32 = v
        case .int64(let v):
            field.kind = kind(AMQP_FIELD_KIND_I64)
            field.value.i64 = v
        case .uint64(let v):
            field.kind = kind(AMQP_FIELD_KIND_U64)
            field.value.u64 = v
        case .float(let v):
            field.kind = kind(AMQP_FIELD_KIND_F32)
            field.value.f32 = v
        case .double(let v):
            field.kind = kind(AMQP_FIELD_KIND_F64)
            field.value.f64 = v
        case .decimal(let scale, let v):
            field.kind = kind(AMQP_FIELD_KIND_DECIMAL)
            field.value.decimal = amqp_decimal_t(decimals: scale, value: v)
        case .string(let v):
            field.kind = kind(AMQP_FIELD_KIND_UTF8)
            field.value.bytes = bytes(v)
        case .bytes(let v):
            field.kind = kind(AMQP_FIELD_KIND_BYTES)
            field.value.bytes = v.withUnsafeBytes { bytes($0) }
        case .timestamp(let v):
            field.kind = kind(AMQP_FIELD_KIND_TIMESTAMP)
            field.value.u64 = v
        case .array(let elements):
            field.kind = kind(AMQP_FIELD_KIND_ARRAY)
            let storage = allocate(
                byteCount: MemoryLayout<amqp_field_value_t>.stride * max(elements.count, 1),
                alignment: MemoryLayout<amqp_field_value_t>.alignment
            ).bindMemory(to: amqp_field_value_t.self, capacity: max(elements.count, 1))
            for (index, element) in elements.enumerated() {
                storage.advanced(by: index).initialize(to: self.field(element))
            }
            field.value.array = amqp_array_t(num_entries: Int32(elements.count), entries: storage)
        case .table(let entries):
            field.kind = kind(AMQP_FIELD_KIND_TABLE)
            field.value.table = table(entries)
        case .void:
            field.kind = kind(AMQP_FIELD_KIND_VOID)
        }
        return field
    }

    /// The C form of message properties.
    func properties(_ properties: AMQPProperties) -> amqp_basic_properties_t {
        var c = amqp_basic_properties_t()
        var flags: UInt32 = 0
        func set(_ value: String?, _ flag: Int32, _ assign: (amqp_bytes_t) -> Void) {
            guard let value else { return }
            flags |= UInt32(flag)
            assign(bytes(value))
        }
        set(properties.contentType, AMQP_BASIC_CONTENT_TYPE_FLAG) { c.content_type = $0 }
        set(properties.contentEncoding, AMQP_BASIC_CONTENT_ENCODING_FLAG) { c.content_encoding = $0 }
        set(properties.correlationID, AMQP_BASIC_CORRELATION_ID_FLAG) { c.correlation_id = $0 }
        set(properties.replyTo, AMQP_BASIC_REPLY_TO_FLAG) { c.reply_to = $0 }
        set(properties.expiration, AMQP_BASIC_EXPIRATION_FLAG) { c.expiration = $0 }
        set(properties.messageID, AMQP_BASIC_MESSAGE_ID_FLAG) { c.message_id = $0 }
        set(properties.type, AMQP_BASIC_TYPE_FLAG) { c.type = $0 }
        set(properties.userID, AMQP_BASIC_USER_ID_FLAG) { c.user_id = $0 }
        set(properties.appID, AMQP_BASIC_APP_ID_FLAG) { c.app_id = $0 }
        if !properties.headers.isEmpty {
            flags |= UInt32(AMQP_BASIC_HEADERS_FLAG)
            c.headers = table(properties.headers)
        }
        flags |= UInt32(AMQP_BASIC_DELIVERY_MODE_FLAG)
        c.delivery_mode = properties.isPersistent ? 2 : 1
        if let priority = properties.priority {
            flags |= UInt32(AMQP_BASIC_PRIORITY_FLAG)
            c.priority = priority
        }
        if let timestamp = properties.timestamp {
            flags |= UInt32(AMQP_BASIC_TIMESTAMP_FLAG)
            c.timestamp = timestamp
        }
        c._flags = flags
        return c
    }
}

@available(*, unavailable)
extension ScratchArena: Sendable {}

// MARK: - Reading C structures

extension String {
    /// Copies the bytes of an `amqp_bytes_t` (UTF-8; invalid sequences are repaired).
    init(_ bytes: amqp_bytes_t) {
        guard let base = bytes.bytes, bytes.len > 0 else {
            self = ""
            return
        }
        self = String(decoding: UnsafeRawBufferPointer(start: base, count: bytes.len), as: UTF8.self)
    }
}

extension Array where Element == UInt8 {
    /// Copies the bytes of an `amqp_bytes_t`.
    init(_ bytes: amqp_bytes_t) {
        guard let base = bytes.bytes, bytes.len > 0 else {
            self = []
            return
        }
        self = Array(UnsafeRawBufferPointer(start: base, count: bytes.len))
    }
}

extension AMQPFieldValue {
    /// Copies a C field value, recursively.
    init(_ field: amqp_field_value_t) {
        switch amqp_field_value_kind_t(rawValue: UInt32(field.kind)) {
        case AMQP_FIELD_KIND_BOOLEAN: self = .bool(field.value.boolean != 0)
        case AMQP_FIELD_KIND_I8: self = .int8(field.value.i8)
        case AMQP_FIELD_KIND_U8: self = .uint8(field.value.u8)
        case AMQP_FIELD_KIND_I16: self = .int16(field.value.i16)
        case AMQP_FIELD_KIND_U16: self = .uint16(field.value.u16)
        case AMQP_FIELD_KIND_I32: self = .int32(field.value.i32)
        case AMQP_FIELD_KIND_U32: self = .uint32(field.value.u32)
        case AMQP_FIELD_KIND_I64: self = .int64(field.value.i64)
        case AMQP_FIELD_KIND_U64: self = .uint64(field.value.u64)
        case AMQP_FIELD_KIND_F32: self = .float(field.value.f32)
        case AMQP_FIELD_KIND_F64: self = .double(field.value.f64)
        case AMQP_FIELD_KIND_DECIMAL:
            self = .decimal(scale: field.value.decimal.decimals, value: field.value.decimal.value)
        case AMQP_FIELD_KIND_UTF8: self = .string(String(field.value.bytes))
        case AMQP_FIELD_KIND_BYTES: self = .bytes([UInt8](field.value.bytes))
        case AMQP_FIELD_KIND_TIMESTAMP: self = .timestamp(field.value.u64)
        case AMQP_FIELD_KIND_ARRAY:
            let array = field.value.array
            self = .array(
                (0..<Int(array.num_entries)).map { AMQPFieldValue(array.entries[$0]) }
            )
        case AMQP_FIELD_KIND_TABLE: self = .table(Self.dictionary(field.value.table))
        default: self = .void
        }
    }

    /// Copies a C table into a dictionary.
    static func dictionary(_ table: amqp_table_t) -> [String: AMQPFieldValue] {
        var result: [String: AMQPFieldValue] = [:]
        for index in 0..<Int(table.num_entries) {
            let entry = table.entries[index]
            result[String(entry.key)] = AMQPFieldValue(entry.value)
        }
        return result
    }
}

extension AMQPProperties {
    /// Copies C message properties.
    init(_ c: amqp_basic_properties_t) {
        let flags = c._flags
        func string(_ flag: Int32, _ value: amqp_bytes_t) -> String? {
            flags & UInt32(flag) != 0 ? String(value) : nil
        }
        self.init(
            contentType: string(AMQP_BASIC_CONTENT_TYPE_FLAG, c.content_type),
            contentEncoding: string(AMQP_BASIC_CONTENT_ENCODING_FLAG, c.content_encoding),
            headers: flags & UInt32(AMQP_BASIC_HEADERS_FLAG) != 0 ? AMQPFieldValue.dictionary(c.headers) : [:],
            isPersistent: flags & UInt32(AMQP_BASIC_DELIVERY_MODE_FLAG) != 0 && c.delivery_mode == 2,
            priority: flags & UInt32(AMQP_BASIC_PRIORITY_FLAG) != 0 ? c.priority : nil,
            correlationID: string(AMQP_BASIC_CORRELATION_ID_FLAG, c.correlation_id),
            replyTo: string(AMQP_BASIC_REPLY_TO_FLAG, c.reply_to),
            expiration: string(AMQP_BASIC_EXPIRATION_FLAG, c.expiration),
            messageID: string(AMQP_BASIC_MESSAGE_ID_FLAG, c.message_id),
            timestamp: flags & UInt32(AMQP_BASIC_TIMESTAMP_FLAG) != 0 ? c.timestamp : nil,
            type: string(AMQP_BASIC_TYPE_FLAG, c.type),
            userID: string(AMQP_BASIC_USER_ID_FLAG, c.user_id),
            appID: string(AMQP_BASIC_APP_ID_FLAG, c.app_id)
        )
    }
}

// MARK: - Errors: one translation per C convention

/// Whether a failure took down a channel or the whole connection.
enum FailureScope {
    case channel
    case connection
}

extension AMQPError {
    /// Translates a librabbitmq status code (`amqp_status_enum`).
    /// - Parameters:
    ///   - status: The negative status a call returned.
    ///   - context: What was being done, e.g. "connect to 127.0.0.1:5672".
    ///   - connecting: Whether the connection was still being set up (a socket error then means "could not
    ///     connect", not "lost").
    init(status: Int32, context: String, connecting: Bool = false) {
        let text = String(cString: amqp_error_string2(status))
        let code: Code
        var detail = text
        switch amqp_status_enum(rawValue: status) {
        case AMQP_STATUS_TIMEOUT:
            code = .timedOut
        case AMQP_STATUS_HEARTBEAT_TIMEOUT:
            code = .connectionLost
        case AMQP_STATUS_SOCKET_ERROR, AMQP_STATUS_TCP_ERROR:
            // librabbitmq does not keep the socket's own error (its non-blocking connect leaves errno at
            // EINPROGRESS), so say what it usually means instead of a misleading errno.
            code = connecting ? .connectFailed : .connectionLost
            if connecting { detail += " (connection refused or unreachable: is the broker running there?)" }
        case AMQP_STATUS_CONNECTION_CLOSED, AMQP_STATUS_SOCKET_CLOSED:
            code = connecting ? .connectFailed : .connectionLost
        case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED:
            code = .connectFailed
        case AMQP_STATUS_SSL_ERROR, AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED, AMQP_STATUS_SSL_PEER_VERIFY_FAILED,
            AMQP_STATUS_SSL_CONNECTION_FAILED, AMQP_STATUS_SSL_SET_ENGINE_FAILED:
            code = .tlsFailed
        default:
            code = .protocolError
        }
        self.init(code: code, message: "\(context): \(detail)")
    }

    /// Translates an `amqp_rpc_reply_t` that is not `AMQP_RESPONSE_NORMAL`.
    /// - Returns: The error and whether it closed the channel or the connection.
    static func translate(
        _ reply: amqp_rpc_reply_t,
        context: String,
        connecting: Bool = false
    ) -> (
        AMQPError, FailureScope
    ) {
        switch reply.reply_type {
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            switch reply.reply.id {
            case AMQPMethod.connectionClose:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                return (
                    AMQPError(
                        closeReplyCode: close.reply_code,
                        text: close.reply_text,
                        context: context,
                        onChannel: false
                    ), .connection
                )
            case AMQPMethod.channelClose:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                return (
                    AMQPError(
                        closeReplyCode: close.reply_code,
                        text: close.reply_text,
                        context: context,
                        onChannel: true
                    ), .channel
                )
            default:
                return (
                    AMQPError(code: .protocolError, message: "\(context): unexpected method \(reply.reply.id)"),
                    .connection
                )
            }
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            let error = AMQPError(status: reply.library_error, context: context, connecting: connecting)
            return (error, .connection)
        default:
            return (AMQPError(code: .protocolError, message: "\(context): no reply from librabbitmq"), .connection)
        }
    }

    /// An error from a `channel.close` or `connection.close` the broker sent.
    init(closeReplyCode: UInt16, text: amqp_bytes_t, context: String, onChannel: Bool) {
        self.init(
            code: AMQPError.code(forReplyCode: closeReplyCode, onChannel: onChannel),
            replyCode: closeReplyCode,
            message: "\(context): \(String(text))"
        )
    }
}

/// Method ids of the frames the connection thread handles (librabbitmq's macros, typed once).
enum AMQPMethod {
    static let connectionClose = amqp_method_number_t(AMQP_CONNECTION_CLOSE_METHOD)
    static let connectionCloseOK = amqp_method_number_t(AMQP_CONNECTION_CLOSE_OK_METHOD)
    static let connectionBlocked = amqp_method_number_t(AMQP_CONNECTION_BLOCKED_METHOD)
    static let connectionUnblocked = amqp_method_number_t(AMQP_CONNECTION_UNBLOCKED_METHOD)
    static let channelClose = amqp_method_number_t(AMQP_CHANNEL_CLOSE_METHOD)
    static let channelCloseOK = amqp_method_number_t(AMQP_CHANNEL_CLOSE_OK_METHOD)
    static let basicDeliver = amqp_method_number_t(AMQP_BASIC_DELIVER_METHOD)
    static let basicAck = amqp_method_number_t(AMQP_BASIC_ACK_METHOD)
    static let basicNack = amqp_method_number_t(AMQP_BASIC_NACK_METHOD)
    static let basicReturn = amqp_method_number_t(AMQP_BASIC_RETURN_METHOD)
    static let basicCancel = amqp_method_number_t(AMQP_BASIC_CANCEL_METHOD)
}
