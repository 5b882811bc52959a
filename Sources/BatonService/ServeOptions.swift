import ArgumentParser
import BatonHTTP
import BatonNode
import Foundation

/// What `serve` takes beyond ``ServiceOptions``: the operations endpoint (with the web console of a
/// process-manager node, whose actions `BATON_CONSOLE_TOKEN` guards) and the stuck-instance threshold.
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
    }

    /// Sets what the node needs for the endpoint: store sampling (when it is on) and the stuck threshold.
    func configure(_ configuration: inout Node.Configuration) throws {
        configuration.stuckAfter = try stuckAfter
        if try http != nil { configuration.storeSampling = .seconds(5) }
    }
}
