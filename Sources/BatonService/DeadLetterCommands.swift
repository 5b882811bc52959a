import ArgumentParser
import Baton
import BatonNode
import BatonSQLite
import Foundation

/// `dlq list`, `dlq show ID`, `dlq replay ID|--all`, `dlq held` for a service.
public struct DeadLetterCommands<Service: ServiceIdentity>: AsyncParsableCommand {
    public static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "dlq",
            abstract: "List, show and replay the \(Service.name) service's dead letters.",
            subcommands: [List.self, Show.self, Replay.self, Held.self]
        )
    }

    public init() {}

    /// `dlq list`
    public struct List: AsyncParsableCommand {
        public static var configuration: CommandConfiguration {
            CommandConfiguration(abstract: "List the dead letters not replayed yet.")
        }
        @OptionGroup var options: ServiceOptions
        @Flag(help: "Print JSON.") var json = false
        @Flag(help: "Include replayed ones.") var all = false
        public init() {}

        public func run() async throws {
            let all = self.all
            let letters = try await options.read(from: Service.name) {
                try $0.deadLetters(includeReplayed: all)
            }
            if json { return try printJSON(letters.map(DeadLetterSummary.init)) }
            printTable(
                ["ID", "MESSAGE ID", "ROUTING KEY", "ATTEMPTS", "REASON"],
                letters.map { [String($0.id), $0.messageID, $0.routingKey, String($0.attempts), $0.reason] }
            )
        }
    }

    /// `dlq held`
    public struct Held: AsyncParsableCommand {
        public static var configuration: CommandConfiguration {
            CommandConfiguration(
                abstract:
                    "List the messages the service holds instead of the queue: failed ones awaiting their next attempt, later ones of an instance waiting behind a failed one, and messages newer than it knows."
            )
        }
        @OptionGroup var options: ServiceOptions
        @Flag(help: "Print JSON.") var json = false
        public init() {}

        public func run() async throws {
            let held = try await options.read(from: Service.name) { try $0.parkedMessages() }.map(
                HeldSummary.init
            )
            if json { return try printJSON(held) }
            printTable(
                ["MESSAGE ID", "TYPE", "INSTANCE", "ATTEMPTS", "WAITING FOR", "LAST ERROR"],
                held.map {
                    [
                        $0.messageID, $0.messageType ?? "-", $0.orderingKey ?? "-", String($0.attempts), $0.waitingFor,
                        $0.lastError ?? "-",
                    ]
                }
            )
        }
    }

    /// `dlq show ID`
    public struct Show: AsyncParsableCommand {
        public static var configuration: CommandConfiguration {
            CommandConfiguration(abstract: "Show one dead letter with its headers and body.")
        }
        @OptionGroup var options: ServiceOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The dead letter's id (see `dlq list`).") var id: Int64
        public init() {}

        public func run() async throws {
            let id = self.id
            guard let letter = try await options.read(from: Service.name, { try $0.deadLetter(id: id) }) else {
                throw CommandFailure("no dead letter \(id) in the \(Service.name) service")
            }
            let summary = DeadLetterSummary(letter)
            if json { return try printJSON(summary) }
            print("id:           \(summary.id)")
            print("message id:   \(summary.messageID)")
            print("type:         \(summary.messageType)")
            print("exchange:     \(summary.exchange)")
            print("routing key:  \(summary.routingKey)")
            print("handler:      \(summary.handler)")
            print("attempts:     \(summary.attempts)")
            print("dead at:      \(summary.deadAt)")
            print("replayed at:  \(summary.replayedAt.map { "\($0)" } ?? "-")")
            print("reason:       \(summary.reason)")
            for (key, value) in summary.headers.sorted(by: { $0.key < $1.key }) {
                print("header:       \(key)=\(value)")
            }
            print("body:\n\(summary.body)")
        }
    }

    /// `dlq replay ID|--all`
    public struct Replay: AsyncParsableCommand {
        public static var configuration: CommandConfiguration {
            CommandConfiguration(
                abstract: "Send dead letters back to where they came from (the running service does it)."
            )
        }
        @OptionGroup var options: ServiceOptions
        @Flag(help: "Replay every dead letter not replayed yet.") var all = false
        @Argument(help: "Dead letter ids.") var ids: [Int64] = []
        public init() {}

        public func validate() throws {
            guard all != !ids.isEmpty else {
                throw ValidationError("give dead letter ids or --all, not both and not neither")
            }
        }

        public func run() async throws {
            try await ServiceClient.send(
                ReplayDeadLetters(ids: ids, all: all),
                to: Service.name,
                options: options,
                directly: true
            )
            print(
                all
                    ? "asked \(Service.name) to replay every open dead letter"
                    : "asked \(Service.name) to replay \(ids.map(String.init).joined(separator: ", "))"
            )
        }
    }
}

/// A held message as `dlq held` prints it.
struct HeldSummary: Codable {
    var messageID: String
    var messageType: String?
    var orderingKey: String?
    var attempts: Int
    /// `dead letter N` (its replay releases it), `retry at TIME`, or `the message before it`.
    var waitingFor: String
    var lastError: String?

    init(_ message: ParkedMessage) {
        messageID = message.messageID
        messageType = message.messageType
        orderingKey = message.orderingKey
        attempts = message.attempts
        lastError = message.lastError
        if let id = message.deadLetterID {
            waitingFor = "dead letter \(id)"
        } else if let next = message.nextAttemptAt {
            waitingFor = "retry at \(ISO8601Milliseconds.format(next))"
        } else {
            waitingFor = "the message before it"
        }
    }
}

/// A dead letter as the CLI prints it (body as text).
struct DeadLetterSummary: Codable {
    var id: Int64
    var messageID: String
    var messageType: String
    var exchange: String
    var routingKey: String
    var headers: [String: String]
    var body: String
    var reason: String
    var handler: String
    var attempts: Int
    var deadAt: Date
    var replayedAt: Date?

    init(_ letter: DeadLetter) {
        id = letter.id
        messageID = letter.messageID
        messageType = letter.messageType
        exchange = letter.exchange
        routingKey = letter.routingKey
        headers = letter.headers
        body = String(decoding: letter.body, as: UTF8.self)
        reason = letter.reason
        handler = letter.handler
        attempts = letter.attempts
        deadAt = letter.deadAt
        replayedAt = letter.replayedAt
    }
}
