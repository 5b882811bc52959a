/// The parts of an `amqp://` or `amqps://` URL.
struct AMQPURL: Hashable {
    var isSecure: Bool
    var host: String
    var port: Int
    var user: String
    var password: String
    var virtualHost: String

    /// Parses `scheme://[user[:password]@]host[:port][/vhost]`; missing parts take RabbitMQ's defaults.
    init(parsing text: String) throws {
        func invalid(_ why: String) -> AMQPError {
            AMQPError(code: .invalidConfiguration, message: "invalid AMQP URL: \(why)")
        }
        let rest: Substring
        if text.hasPrefix("amqp://") {
            isSecure = false
            rest = text.dropFirst("amqp://".count)
        } else if text.hasPrefix("amqps://") {
            isSecure = true
            rest = text.dropFirst("amqps://".count)
        } else {
            throw invalid("the scheme must be amqp:// or amqps://")
        }
        let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        var authority = rest[..<authorityEnd]
        var path = rest[authorityEnd...]
        if let query = path.firstIndex(of: "?") { path = path[..<query] }

        user = "guest"
        password = "guest"
        if let at = authority.lastIndex(of: "@") {
            let credentials = authority[..<at]
            authority = authority[authority.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                user = try Self.percentDecode(credentials[..<colon], what: "user")
                password = try Self.percentDecode(credentials[credentials.index(after: colon)...], what: "password")
            } else {
                user = try Self.percentDecode(credentials, what: "user")
            }
        }

        var hostPart = authority
        var portPart: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw invalid("unterminated IPv6 address") }
            hostPart = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") {
                portPart = after.dropFirst()
            } else if !after.isEmpty {
                throw invalid("unexpected text after the IPv6 address")
            }
        } else if let colon = authority.lastIndex(of: ":") {
            hostPart = authority[..<colon]
            portPart = authority[authority.index(after: colon)...]
        }
        guard !hostPart.isEmpty else { throw invalid("the host is missing") }
        host = String(hostPart)
        if let portPart {
            guard let port = Int(portPart), (1...65535).contains(port) else {
                throw invalid("the port must be a number from 1 to 65535")
            }
            self.port = port
        } else {
            port = isSecure ? 5671 : 5672
        }
        virtualHost = path.count <= 1 ? "/" : try Self.percentDecode(path.dropFirst(), what: "virtual host")
    }

    static func percentDecode(_ text: Substring, what: String) throws -> String {
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                throw AMQPError(
                    code: .invalidConfiguration,
                    message: "invalid AMQP URL: bad percent-escape in the \(what)"
                )
            }
            bytes.append(high << 4 | low)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func percentEncode(_ text: String) -> String {
        var result = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."),
                UInt8(ascii: "~"):
                result.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = Array("0123456789ABCDEF".utf8)
                result += "%"
                result.unicodeScalars.append(Unicode.Scalar(hex[Int(byte >> 4)]))
                result.unicodeScalars.append(Unicode.Scalar(hex[Int(byte & 0xF)]))
            }
        }
        return result
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
