import ArgumentParser
import Baton
import BatonNode
import BatonSQLite
import BatonService
import BookstoreContracts
import Foundation

/// The `fulfillment` executable.
public struct FulfillmentCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "fulfillment",
        abstract: "The order-fulfillment process manager of the Baton bookstore.",
        subcommands: [
            Serve.self, TopologyCommand<FulfillmentService>.self, RepartitionCommand<FulfillmentService>.self,
            HealthCommand<FulfillmentService>.self, Show.self,
            Expedite.self,
            ProcessCommands<FulfillmentService>.self, DeadLetterCommands<FulfillmentService>.self,
        ]
    )

    public init() {}

    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run the fulfillment process manager.")
        @OptionGroup var options: ServiceOptions
        @OptionGroup var serving: ServeOptions
        @Option(help: "Seconds a step may take before the order is compensated.") var stepTimeout: Double = 30
        @Option(help: "Process instances kept in memory between events, least recently used evicted (0: none).")
        var instanceCache = FulfillmentService.defaultInstanceCache

        func validate() throws {
            guard stepTimeout > 0, stepTimeout <= 86_400 else {
                throw ValidationError("--step-timeout must be between 0 and 86400 seconds, not \(stepTimeout)")
            }
            guard instanceCache >= 0 else {
                throw ValidationError("--instance-cache must be 0 or more, not \(instanceCache)")
            }
        }

        func run() async throws {
            try ServiceRunner.bootstrapLogging()
            try await ServiceRunner.serve(
                FulfillmentService.name,
                options: options,
                serving: serving,
                handlers: FulfillmentService.handlers(
                    stepTimeout: .milliseconds(Int64(stepTimeout * 1000)),
                    instanceCache: instanceCache
                )
            )
        }
    }

    struct Expedite: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Ask an order's running fulfillment process to hurry (customer service's ExpediteOrder)."
        )
        @OptionGroup var options: ServiceOptions
        @Argument(help: "The order id.") var orderID: String
        @Option(help: "Who asks.") var by: String

        func validate() throws {
            guard !by.trimmingCharacters(in: .whitespaces).isEmpty else {
                throw ValidationError("--by must name who asks")
            }
        }

        func run() async throws {
            try await ProcessCommands<FulfillmentService>.askAbout(
                orderID,
                options: options,
                processManager: FulfillmentService.name,
                directly: false
            ) { ExpediteOrder(orderID: orderID, requestedBy: by) }
            print("asked fulfillment to expedite \(orderID)")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an order's process: state and timeline.")
        @OptionGroup var options: ServiceOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The order id.") var orderID: String

        func run() async throws {
            let orderID = self.orderID
            let engine = try ProcessEngine(
                FulfillmentService.processManager(stepTimeout: FulfillmentService.defaultStepTimeout)
            )
            let (instance, timeline) = try await options.read(from: FulfillmentService.name) { work in
                (
                    try work.loadInstance(orderID, of: engine),
                    try work.transitions(of: "fulfillment", instance: orderID)
                )
            }
            guard let instance else { throw CommandFailure("no fulfillment process for order '\(orderID)'") }
            let view = ProcessView(instance: instance, timeline: timeline)
            if json { return try printJSON(view) }
            print("order:      \(instance.id)")
            print("lifecycle:  \(instance.lifecycle.rawValue)\(instance.reason.map { " (\($0))" } ?? "")")
            print("step:       \(instance.state.step)")
            print("tracking:   \(instance.state.trackingNumber ?? "-")")
            print("expedited:  \(instance.state.expeditedBy.map { "yes, by \($0)" } ?? "no")")
            print("definition: v\(instance.definitionVersion)")
            print(
                "timers:     \(instance.timers.isEmpty ? "none" : instance.timers.map { "\($0.key) at \($0.value)" }.joined(separator: ", "))"
            )
            print("timeline:")
            for entry in view.timeline {
                print("  \(entry.version). \(entry.at)  \(entry.trigger)  → \(entry.lifecycle)")
                for command in entry.issued { print("       issued \(command)") }
                for timer in entry.timers { print("       timer  \(timer)") }
                if let reason = entry.reason { print("       reason \(reason)") }
            }
        }
    }
}

/// An instance and its timeline, readable by a person and as JSON.
struct ProcessView: Encodable {
    struct Entry: Encodable {
        var version: Int64
        var at: Date
        var trigger: String
        var lifecycle: String
        var issued: [String]
        var timers: [String]
        var reason: String?
    }

    var orderID: String
    var lifecycle: String
    var reason: String?
    var state: FulfillmentState
    var pendingTimers: [String: Date]
    var timeline: [Entry]

    init(instance: ProcessInstance<FulfillmentState>, timeline: [ProcessTransition]) {
        orderID = instance.id
        lifecycle = instance.lifecycle.rawValue
        reason = instance.reason
        state = instance.state
        pendingTimers = instance.timers
        self.timeline = timeline.map { transition in
            let trigger = transition.trigger.summary
            return Entry(
                version: transition.version,
                at: transition.at,
                trigger: trigger,
                lifecycle: transition.lifecycle.rawValue,
                issued: transition.issued.map {
                    "\($0.kind.rawValue) \($0.envelope.messageName) (\($0.envelope.messageID))"
                },
                timers: transition.timers.map {
                    switch $0 {
                    case .schedule(let name, let dueAt): return "schedule \(name) at \(dueAt)"
                    case .cancel(let name): return "cancel \(name)"
                    }
                },
                reason: transition.reason
            )
        }
    }
}
