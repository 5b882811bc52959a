/// An error from the AMQP transport: what went wrong, and the broker's own reply where it gave one.
///
/// The description never contains a password, a URL with credentials or a message body.
public struct AMQPError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure this is. Extensible: match the codes you care about and treat the rest alike.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        fileprivate enum Base: String, Sendable, Hashable {
            case invalidConfiguration
            case connectFailed
            case timedOut
            case accessRefused
            case notAllowed
            case notFound
            case preconditionFailed
            case resourceLocked
            case brokerClosedChannel
            case brokerClosedConnection
            case connectionLost
            case notConnected
            case nacked
            case outcomeUnknown
            case unroutable
            case tlsFailed
            case protocolError
            case closed
        }

        fileprivate let base: Base

        /// The configuration (URL, TLS files, limits) is unusable.
        public static let invalidConfiguration = Code(base: .invalidConfiguration)
        /// The TCP connection could not be made (refused, unreachable, name not resolved).
        public static let connectFailed = Code(base: .connectFailed)
        /// Connecting, the handshake or a broker round trip took longer than configured.
        public static let timedOut = Code(base: .timedOut)
        /// The broker refused the credentials or a permission (reply 403).
        public static let accessRefused = Code(base: .accessRefused)
        /// The broker refused the virtual host or the operation in it (reply 530).
        public static let notAllowed = Code(base: .notAllowed)
        /// An exchange or queue does not exist (reply 404).
        public static let notFound = Code(base: .notFound)
        /// A redeclaration with other arguments, or another precondition the broker checks (reply 406).
        public static let preconditionFailed = Code(base: .preconditionFailed)
        /// An exclusive queue held by another connection (reply 405).
        public static let resourceLocked = Code(base: .resourceLocked)
        /// The broker closed a channel with another reply code.
        public static let brokerClosedChannel = Code(base: .brokerClosedChannel)
        /// The broker closed the connection (for example `CONNECTION_FORCED` on shutdown).
        public static let brokerClosedConnection = Code(base: .brokerClosedConnection)
        /// The connection broke while the operation was under way; its outcome is unknown.
        public static let connectionLost = Code(base: .connectionLost)
        /// The connection is re-establishing itself; try again shortly.
        public static let notConnected = Code(base: .notConnected)
        /// The broker answered a publish with `basic.nack`: it did not take responsibility for the message.
        public static let nacked = Code(base: .nacked)
        /// The broker closed the publish channel over one of several messages in flight (its reply code and
        /// text say why: a missing exchange, a permission, a size limit), and which one is unknown: this message
        /// may or may not have been taken. Publish it again on its own to learn whether it was the one refused.
        public static let outcomeUnknown = Code(base: .outcomeUnknown)
        /// A mandatory publish matched no queue: the broker returned it (reply 312 NO_ROUTE).
        public static let unroutable = Code(base: .unroutable)
        /// The TLS handshake or certificate verification failed.
        public static let tlsFailed = Code(base: .tlsFailed)
        /// librabbitmq reported a protocol or library failure.
        public static let protocolError = Code(base: .protocolError)
        /// The connection was closed by this process.
        public static let closed = Code(base: .closed)

        public var description: String { base.rawValue }
    }

    /// What kind of failure this is.
    public var code: Code
    /// The AMQP reply code the broker sent (403, 404, 406, 320, …), when the broker sent one.
    public var replyCode: UInt16?
    /// A human-readable explanation: the broker's reply text, or librabbitmq's message for the status.
    public var message: String

    /// Creates an error.
    /// - Parameters:
    ///   - code: What kind of failure this is.
    ///   - replyCode: The broker's reply code, if it sent one.
    ///   - message: The explanation; must not contain secrets.
    public init(code: Code, replyCode: UInt16? = nil, message: String) {
        self.code = code
        self.replyCode = replyCode
        self.message = message
    }

    public var description: String {
        if let replyCode {
            return "AMQPError.\(code) (\(replyCode)): \(message)"
        }
        return "AMQPError.\(code): \(message)"
    }

    /// The code that matches an AMQP reply code from `channel.close` or `connection.close`.
    static func code(forReplyCode replyCode: UInt16, onChannel: Bool) -> Code {
        switch replyCode {
        case 403: return .accessRefused
        case 404: return .notFound
        case 405: return .resourceLocked
        case 406: return .preconditionFailed
        case 530: return .notAllowed
        default: return onChannel ? .brokerClosedChannel : .brokerClosedConnection
        }
    }
}
