import ArgumentParser
import BatonHTTP
import BatonNode
import Foundation

/// What `serve` takes beyond ``ServiceOptions``: the operations endpoint (with the web console of a
/// process-manager node, whose actions `BATON_CONSOLE_TOKEN` guards), the stuck-instance threshold and the
/// retention policy.
public struct ServeOptions: ParsableArguments {
    @Option(
        name: .customLong("http"),
        help: ArgumentHelp(
            "Serve /metrics (Prometheus), /health/live, /health/ready and, on a process-manager node, the web console (/console; actions need $BATON_CONSOLE_TOKEN) on this address; off when not given (default: $BATON_HTTP).",
            valueName: "host:port"
        )
    )
    var httpFlag: String?

    @Option(
        name: .customLong("stuck-after"),
        help: ArgumentHelp(
            "Seconds an open process instance may go without a transition before the metrics count it as stuck (default: $BATON_STUCK_AFTER, else 600).",
            valueName: "seconds"
        )
    )
    var stuckAfterFlag: Double?

    @Option(
        name: .customLong("inbox-window"),
        help: ArgumentHelp(
            "How long the inbox remembers a handled message, from the message's timestamp: an older message is dead-lettered, not handled blindly; at least 1m (default: $BATON_INBOX_WINDOW, else 7d).",
            valueName: "age"
        )
    )
    var inboxWindowFlag: String?

    @Option(
        name: .customLong("keep-closed-instances"),
        help: ArgumentHelp(
            "How long a closed process instance keeps its timeline before it is purged to a tombstone (default: $BATON_KEEP_CLOSED_INSTANCES, else kept).",
            valueName: "age"
        )
    )
    var keepClosedInstancesFlag: String?

    @Option(
        name: .customLong("keep-tombstones"),
        help: ArgumentHelp(
            "How long a purged instance's tombstone stays, for late replies (default: $BATON_KEEP_TOMBSTONES, else kept).",
            valueName: "age"
        )
    )
    var keepTombstonesFlag: String?

    public init() {}

    private var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// The operations endpoint's address, or `nil` when it is off.
    /// - Throws: ``ValidationError`` naming the flag or variable whose address is malformed.
    public var http: HTTPAddress? {
        get throws {
            guard let text = httpFlag ?? environment["BATON_HTTP"], !text.isEmpty else { return nil }
            do {
                return try HTTPAddress(text)
            } catch {
                throw ValidationError("\(httpFlag == nil ? "BATON_HTTP" : "--http"): \(error)")
            }
        }
    }

    /// How long an open instance may go without a transition before it counts as stuck.
    /// - Throws: ``ValidationError`` if the flag or variable is not a positive number of seconds.
    public var stuckAfter: Duration {
        get throws {
            let source = stuckAfterFlag == nil ? "BATON_STUCK_AFTER" : "--stuck-after"
            guard let text = stuckAfterFlag.map({ "\($0)" }) ?? environment["BATON_STUCK_AFTER"] else {
                return .seconds(600)
            }
            guard let seconds = Double(text), seconds > 0, seconds <= 31_536_000 else {
                throw ValidationError("\(source) must be seconds above 0 and at most 31536000 (a year), not '\(text)'")
            }
            return .milliseconds(Int64(seconds * 1000))
        }
    }

    /// The retention policy (ages as `90s`, `30m`, `2h`, `7d`).
    /// - Throws: ``ValidationError`` naming the flag or variable whose age is malformed or too short.
    public var retention: Retention {
        get throws {
            var retention = Retention()
            if let window = try age(inboxWindowFlag, "--inbox-window", "BATON_INBOX_WINDOW", atLeast: 60) {
                retention.inboxWindow = window
            }
            retention.closedInstances = try age(
                keepClosedInstancesFlag,
                "--keep-closed-instances",
                "BATON_KEEP_CLOSED_INSTANCES",
                atLeast: 1
            )
            retention.tombstones = try age(keepTombstonesFlag, "--keep-tombstones", "BATON_KEEP_TOMBSTONES", atLeast: 1)
            return retention
        }
    }

    /// An age from a flag or, without it, a variable; `nil` when neither is set.
    private func age(_ flag: String?, _ name: String, _ variable: String, atLeast minimum: Double) throws -> Duration? {
        guard let text = flag ?? environment[variable], !text.isEmpty else { return nil }
        guard let seconds = InstanceFilter.seconds(inAge: text), seconds >= minimum else {
            throw ValidationError(
                "\(flag == nil ? variable : name) must be an age of at least \(Int(minimum))s, as 90s, 30m, 2h or 7d, not '\(text)'"
            )
        }
        return .milliseconds(Int64(seconds * 1000))
    }

    /// What the web console's actions need (`BATON_CONSOLE_TOKEN`); `nil` when it is not set (actions off).
    /// - Throws: ``ValidationError`` if it is too short to guard anything.
    public var consoleToken: String? {
        get throws {
            do {
                return try ProcessConsole.token(from: environment)
            } catch {
                throw ValidationError(error.message)
            }
        }
    }

    public func validate() throws {
        _ = try http
        _ = try stuckAfter
        _ = try consoleToken
        _ = try retention
    }

    /// Sets what the node needs for the endpoint — store sampling (when it is on) and the stuck threshold — and
    /// the retention policy.
    func configure(_ configuration: inout Node.Configuration) throws {
        configuration.stuckAfter = try stuckAfter
        configuration.retention = try retention
        if try http != nil { configuration.storeSampling = .seconds(5) }
    }
}
