import Foundation
import Logging
import Synchronization

/// A log handler that writes one JSON object per line (`BATON_LOG_FORMAT=json`), for log shippers: `time`
/// (ISO 8601, milliseconds, UTC), `level`, `logger` (the service), `message`, `source` (the module), and every
/// metadata value as a string under its own key — `baton.message_id`, `baton.correlation_id`,
/// `baton.process_id` and `baton.trace_id` where the line is about a message or an instance.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    /// Metadata worked out when a line is logged (a node's message ids); the handler's own and the line's win.
    public var metadataProvider: Logger.MetadataProvider?
    public var logLevel: Logger.Level = .info
    private let label: String
    private let output: @Sendable (String) -> Void

    /// A handler writing to standard error.
    public static func standardError(label: String) -> JSONLogHandler {
        JSONLogHandler(label: label) { line in
            standardErrorLock.withLock { _ in FileHandle.standardError.write(Data(line.utf8)) }
        }
    }

    /// A handler giving each line, newline included, to `output`.
    public init(label: String, output: @escaping @Sendable (String) -> Void) {
        self.label = label
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [(String, String)] = [
            ("time", Self.timestamp(Date())), ("level", event.level.rawValue), ("logger", label),
            ("message", "\(event.message)"), ("source", event.source),
        ]
        let merged = (metadataProvider?.get() ?? [:]).merging(metadata) { $1 }.merging(event.metadata ?? [:]) { $1 }
        for key in merged.keys.sorted() where !["time", "level", "logger", "message", "source"].contains(key) {
            fields.append((key, "\(merged[key]!)"))
        }
        let object = fields.map { "\(Self.quoted($0.0)):\(Self.quoted($0.1))" }.joined(separator: ",")
        output("{\(object)}\n")
    }

    /// A JSON string literal: quotes, backslashes and control characters escaped, the rest as it is (UTF-8).
    static func quoted(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20:
                result +=
                    "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count)
                    + String(scalar.value, radix: 16)
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }

    private static func timestamp(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }
}

/// One writer at a time on standard error, so that lines of concurrent loggers never interleave.
private let standardErrorLock = Mutex(())
