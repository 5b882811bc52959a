import ArgumentParser
import Baton
import BatonNode
import Foundation

/// `processes list|abort|purge` for a service that hosts process managers: find stuck instances, abort one,
/// and apply a retention policy to closed ones. Listings read the store (they never write); abort and purge
/// are done by the running service, in its own transactions.
public struct ProcessCommands<Service: ServiceDefinition>: AsyncParsableCommand {
    public static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "processes",
            abstract:
                "List, verify, abort, retry, resume and purge the \(Service.name) service's process instances; draw their definition.",
            subcommands: [List.self, Verify.self, Abort.self, Retry.self, Resume.self, Purge.self, Diagram.self]
        )
    }

    public init() {}

    /// The process managers the service hosts.
    static var processManagers: [String] { hosts.map(\.processManagerName) }

    static var hosts: [any ProcessManagerHosting] { Service.handlers.compactMap { $0 as? any ProcessManagerHosting } }

    /// Which process manager a command is about: `--process-manager`, or the only one.
    struct Target: ParsableArguments {
        @Option(help: "The process manager (needed only when the service hosts several).")
        var processManager: String?

        func name() throws -> String {
            let hosted = ProcessCommands.processManagers
            if let processManager {
                guard hosted.contains(processManager) else {
                    throw CommandFailure(
                        "\(Service.name) hosts no process manager '\(processManager)' (it hosts: \(hosted.joined(separator: ", ")))"
                    )
                }
                return processManager
            }
            guard hosted.count == 1 else {
                throw CommandFailure(
                    hosted.isEmpty
                        ? "\(Service.name) hosts no process manager"
                        : "\(Service.name) hosts several process managers: name one with --process-manager (\(hosted.joined(separator: ", ")))"
                )
            }
            return hosted[0]
        }
    }

    /// `processes diagram`: the definition as a state diagram, from the code (no store, no broker).
    public struct Diagram: ParsableCommand {
        /// The diagram's language.
        enum Format: String, ExpressibleByArgument, CaseIterable {
            case mermaid, dot, svg
        }

        public static var configuration: CommandConfiguration {
            CommandConfiguration(
                abstract:
                    "Print the process manager's definition as a state diagram (Mermaid, Graphviz DOT, or SVG as the web console draws it)."
            )
        }
        @OptionGroup var target: Target
        @Option(help: "mermaid (for Markdown), dot (Graphviz) or svg (drawn by Baton, as in the web console).")
        var format = Format.mermaid

        public init() {}

        public func run() throws {
            let name = try target.name()
            guard let host = ProcessCommands.hosts.first(where: { $0.processManagerName == name }) else { return }
            switch format {
            case .mermaid: print(ProcessDiagram.mermaid(host.outline), terminator: "")
            case .dot: print(ProcessDiagram.dot(host.outline), terminator: "")
            case .svg: print(ProcessDiagram.svg(host.outline))
            }
        }
    }

    /// `processes list`
    public struct List: AsyncParsableCommand {
        public static var configuration: CommandConfiguration {
            CommandConfiguration(
                abstract: "List instances, most recently changed first: by lifecycle, by age, by association."
            )
        }
        @OptionGroup var options: ServiceOptions
        @OptionGroup var target: Target
        @Flag(help: "Print JSON.") var json = false
        @Flag(help: "Only the ones still open (started, running, compensating).") var open = false
        @Option(help: "Only this lifecycle (repeatable): started, running, compensating, completed, failed.")
        var lifecycle: [ProcessLifecycle] = []
        @Option(help: "Only the ones whose last transition is older than this, e.g. 90s, 30m, 2h, 7d (stuck ones).")
        var olderThan: Age?
        @Option(help: "Only the instance associated with this value, as NAME=VALUE (e.g. tracking=TRK-1).")
        var association: String?
        @Option(help: "At most this many.") var limit = 1000

        public init() {}

        public func validate() throws {
            guard !(open && !lifecycle.isEmpty) else { throw ValidationError("give --open or --lifecycle, not both") }
            guard limit > 0 else { throw ValidationError("--limit must be positive, not \(limit)") }
            if let association, association.split(separator: "=", maxSplits: 1).count != 2 {
                throw ValidationError("--association must be NAME=VALUE, not '\(association)'")
            }
        }

        public func run() async throws {
            let processManager = try target.name()
            let filter = InstanceFilter(
                lifecycles: open ? InstanceFilter.open.lifecycles : Set(lifecycle),
                changedBefore: olderThan.map { Date().addingTimeInterval(-$0.seconds) }
            )
            let association = self.association?.split(separator: "=", maxSplits: 1).map(String.init)
            let limit = self.limit
            let instances = try await options.read(from: Service.name) { work in
                let all = try work.instances(of: processManager, matching: filter, limit: limit)
                guard let association else { return all }
                let id = try work.instance(
                    associatedWith: association[1],
                    as: association[0],
                    processManager: processManager
                )
                return all.filter { $0.instanceID == id }
            }
            if json { return try printJSON(instances) }
            printTable(
                ["INSTANCE", "LIFECYCLE", "VERSION", "STARTED", "UPDATED"],
                instances.map {
                    [
                        $0.instanceID, $0.lifecycle.rawValue + ($0.purgedAt == nil ? "" : " (purged)"),
                        String($0.version),
                        ISO8601Milliseconds.format($0.startedAt),
                        ISO8601Milliseconds.format($0.updatedAt),
                    ]
                }
            )
        }
    }

    /// `processes verify --all | ID…`
    public struct Verify: AsyncParsableCommand {
        public static var configuration: CommandConfiguration {
            CommandConfiguration(
                abstract:
                    "Replay stored histories with this build's code and report every instance it would decide differently (run it before a deploy)."
            )
        }
        @OptionGroup var options: ServiceOptions
        @OptionGroup var target: Target
        @Flag(help: "Every instance, open and closed.") var all = false
        @Argument(help: "Instance ids.") var instanceIDs: [String] = []

        public init() {}

        public func validate() throws {
            guard all != !instanceIDs.isEmpty else {
                throw ValidationError("give instance ids or --all, not both and not neither")
            }
        }

        public func run() async throws {
            let processManager = try target.name()
            guard let host = ProcessCommands.hosts.first(where: { $0.processManagerName == processManager }) else {
                throw CommandFailure("\(Service.name) hosts no process manager '\(processManager)'")
            }
            let (all, requested) = (self.all, instanceIDs)
            let (checked, differences, missing) = try await options.read(from: Service.name) { work in
                let ids =
                    all
                    ? try work.instances(of: processManager, matching: InstanceFilter(), limit: .max).map(\.instanceID)
                    : requested
                var differences: [ReplayDifference] = []
                var missing: [String] = []
                for id in ids {
                    guard try work.instanceVersion(id, processManager: processManager) != nil else {
                        missing.append(id)
                        continue
                    }
                    if let difference = try host.verify(id, in: work) { differences.append(difference) }
                }
                return (ids.count - missing.count, differences, missing)
            }
            for difference in differences { print("DIFFERS \(difference)") }
            for id in missing { print("MISSING \(id): no such instance") }
            print(
                "\(checked) instance(s) of \(processManager) replayed: \(differences.count) would be decided differently"
            )
            guard differences.isEmpty, missing.isEmpty else { throw ExitCode.failure }
        }
    }

    /// `processes abort ID --reason TEXT`
    public struct Abort: AsyncParsableCommand {
        public static var configuration: CommandConfiguration {
            CommandConfiguration(
                abstract:
                    "Abort an instance: issue its compensation and close it as failed (the running service does it)."
            )
        }
        @OptionGroup var options: ServiceOptions
        @OptionGroup var target: Target
        @Argument(help: "The instance id.") var instanceID: String
        @Option(help: "Why, recorded as the instance's reason.") var reason: String

        public init() {}

        public func validate() throws {
            guard !reason.trimmingCharacters(in: .whitespaces).isEmpty else {
                throw ValidationError("--reason must say why")
            }
        }

        public func run() async throws {
            let processManager = try target.name()
            try await ProcessCommands.askAbout(instanceID, options: options, processManager: processManager) {
                AbortProcess(processManager: processManager, instanceID: instanceID, reason: reason)
            }
            print("asked \(Service.name) to abort \(processManager) instance \(instanceID)")
        }
    }

    /// `processes retry ID`
    public struct Retry: AsyncParsableCommand {
        public static var configuration: CommandConfiguration {
            CommandConfiguration(
                abstract: "Try an instance's failed step again: the dead-lettered message or timer that holds it."
            )
        }
        @OptionGroup var options: ServiceOptions
        @OptionGroup var target: Target
        @Argument(help: "The instance id.") var instanceID: String

        public init() {}

        public func run() async throws {
            let processManager = try target.name()
            try await ProcessCommands.askAbout(instanceID, options: options, processManager: processManager) {
                RetryProcess(processManager: processManager, instanceID: instanceID)
            }
            print("asked \(Service.name) to retry the failed step of \(processManager) instance \(instanceID)")
        }
    }

    /// `processes resume ID`
    public struct Resume: AsyncParsableCommand {
        public static var configuration: CommandConfiguration {
            CommandConfiguration(
                abstract:
                    "Let an instance held by a dead-lettered message go on without it (the dead letter stays, to replay or not)."
            )
        }
        @OptionGroup var options: ServiceOptions
        @OptionGroup var target: Target
        @Argument(help: "The instance id.") var instanceID: String

        public init() {}

        public func run() async throws {
            let processManager = try target.name()
            try await ProcessCommands.askAbout(instanceID, options: options, processManager: processManager) {
                ResumeProcess(processManager: processManager, instanceID: instanceID)
            }
            print("asked \(Service.name) to resume \(processManager) instance \(instanceID)")
        }
    }

    /// Sends the running service a command about one instance, after checking that the instance exists: an
    /// operator's command directly to the service (on `baton.nodes`), or, with `directly: false`, a command
    /// of the contract routed by its name (as any other sender's).
    public static func askAbout<C: Command>(
        _ instanceID: String,
        options: ServiceOptions,
        processManager: String,
        directly: Bool = true,
        _ command: () -> C
    ) async throws {
        let stored = try await options.read(from: Service.name) {
            try $0.instanceVersion(instanceID, processManager: processManager)
        }
        guard stored != nil else {
            throw CommandFailure("no instance '\(instanceID)' of process manager '\(processManager)'")
        }
        try await ServiceClient.send(command(), to: Service.name, options: options, directly: directly)
    }

    /// `processes purge --closed-before DATE [--dry-run]`
    public struct Purge: AsyncParsableCommand {
        public static var configuration: CommandConfiguration {
            CommandConfiguration(
                abstract:
                    "Purge the timelines of closed instances last changed before a date (retention); each leaves a tombstone (its state, for late replies)."
            )
        }
        @OptionGroup var options: ServiceOptions
        @OptionGroup var target: Target
        @Option(help: "A date (2026-11-01) or time (2026-11-01T12:00:00Z), or an age such as 30d.")
        var closedBefore: Cutoff
        @Flag(help: "Only list what would be deleted.") var dryRun = false

        public init() {}

        public func run() async throws {
            let processManager = try target.name()
            let cutoff = closedBefore.date
            let filter = InstanceFilter(lifecycles: InstanceFilter.closed.lifecycles, changedBefore: cutoff)
            let doomed = try await options.read(from: Service.name) {
                try $0.instances(of: processManager, matching: filter, limit: 100_000).filter { $0.purgedAt == nil }
            }
            let when = ISO8601Milliseconds.format(cutoff)
            if dryRun {
                for instance in doomed { print("\(instance.instanceID)\t\(instance.lifecycle.rawValue)") }
                print("\(doomed.count) closed instance(s) of \(processManager) last changed before \(when) would go")
                return
            }
            try await ServiceClient.send(
                PurgeProcesses(processManager: processManager, closedBefore: cutoff),
                to: Service.name,
                options: options,
                directly: true
            )
            print(
                "asked \(Service.name) to purge \(doomed.count) closed instance(s) of \(processManager) before \(when)"
            )
        }
    }
}

extension ProcessLifecycle: ExpressibleByArgument {}

/// An age on the command line: `90s`, `30m`, `2h`, `7d`.
struct Age: ExpressibleByArgument {
    var seconds: TimeInterval

    init?(argument: String) {
        guard let seconds = InstanceFilter.seconds(inAge: argument) else { return nil }
        self.seconds = seconds
    }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// A cut-off on the command line: an ISO 8601 date or time, or an age before now.
struct Cutoff: ExpressibleByArgument {
    var date: Date

    init?(argument: String) {
        if let age = Age(argument: argument) {
            date = Date().addingTimeInterval(-age.seconds)
        } else if let time = ISO8601DateFormatter().date(from: argument) {
            date = time
        } else {
            let day = ISO8601DateFormatter()
            day.formatOptions = [.withFullDate]
            guard let date = day.date(from: argument) else { return nil }
            self.date = date
        }
    }
}
