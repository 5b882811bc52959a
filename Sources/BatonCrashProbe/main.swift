// A node that kills itself (SIGKILL) at a chosen point of its consume path. The crash-injection tests run
// it as a child process against the real broker, then run it again without the fault and check that every
// effect happened once and every issued command was published once.
//
// Its effects are not idempotent by themselves, so that each guard is what keeps them single:
// - `probe.ProbeAdvanced` is handled by a non-start handler of the process manager: it counts the advances
//   in the instance's state and issues a command. Handled twice, it moves the instance twice.
// - `counter.BumpCounter` is handled by a command handler that appends to a counter aggregate's stream.
//   Handled twice, the counter counts two.
// - `probe.ProbeAdvanced` is at v2 and the tests publish v1: every advance goes through its upcaster.
// - `probe.RefusedStep` is a command the probe refuses: it is dead-lettered, and its failure reply, written in the
//   same transaction, reaches the probe process, whose failure handler issues a command. Refused twice, two
//   dead letters and two replies; the reply handled twice, two commands.
// - `probe.ProbeWobbled` fails on its first attempt (a marker file in DATA_DIR remembers it, as a flaky
//   dependency would): it is held in the store and retried off the consume path, then moves the instance and
//   issues a command. Held twice, or retried after it succeeded, the command goes out twice.
//
//   baton-crash-probe AMQP_URL DATA_DIR NODE_NAME FAULT_POINT|power-loss:N|none [PREFETCH]
//   baton-crash-probe shared-store DATA_DIR FAULT_POINT|none NODE WORKFLOWS   (SharedStoreProbe.swift)
//
// With PREFETCH (e.g. 1), the node takes one message per batch: several probes on one store and queue then
// take turns, which the replica tests use.
//
// With `power-loss:N`, the store's files go through a VFS that keeps what every write since the last sync
// overwrote (`CPowerLossVFS`, on a disk slowed to 5 ms per sync), each message is a transaction of its own
// with up to 64 unacknowledged, each bump takes 2 ms (so the relay keeps up with the commits), and while
// handling its N-th `counter.BumpCounter` the probe loses power: every write no sync covered is dropped, then
// it kills itself. It prints how many bytes were dropped. Each `counter.CounterBumped` names the process that
// recorded it, so that a copy published from a transaction the power loss took back differs from the one the
// store keeps.
import Baton
import BatonAMQP
import BatonAMQPTransport
import BatonNode
import BatonSQLite
import CPowerLossVFS
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

struct ProbeStarted: Event {
    static let messageName = "probe.ProbeStarted"
    var probeID: String
}
struct ProbeAdvanced: Event {
    static let messageName = "probe.ProbeAdvanced"
    static let messageVersion = 2
    static let upcasters = [Upcaster(from: 1) { json in json["by"] = "v1" }]
    var probeID: String
    var by: String
}
struct ProbeWobbled: Event {
    static let messageName = "probe.ProbeWobbled"
    var probeID: String
}
struct RefusedStep: Command {
    static let messageName = "probe.RefusedStep"
    var probeID: String
}
struct ProbeFinished: Event {
    static let messageName = "probe.ProbeFinished"
    var probeID: String
}
struct FirstStep: Command {
    static let messageName = "probe.FirstStep"
    var probeID: String
}
struct SecondStep: Command {
    static let messageName = "probe.SecondStep"
    var probeID: String
}
struct StepTaken: Command {
    static let messageName = "probe.StepTaken"
    var probeID: String
    var advance: Int
}
struct ProbeState: ProcessState {
    var probeID = ""
    var advances = 0
    var refusals = 0
}

struct BumpCounter: Command {
    static let messageName = "counter.BumpCounter"
    var counterID: String
}
struct CounterBumped: Event {
    static let messageName = "counter.CounterBumped"
    var counterID: String
    var value: Int
    var recordedBy: Int32
}
struct Counter: Aggregate {
    static let category = "counter"
    static let eventTypes: [any Event.Type] = [CounterBumped.self]
    var value = 0
    mutating func apply(_ event: any Event) {
        if let bumped = event as? CounterBumped { value = bumped.value }
    }
}

let probeProcess = ProcessManager<ProbeState>(name: "probe-process", listensTo: ["probe"]) { pm in
    pm.start(on: ProbeStarted.self, correlation: .field(\.probeID)) { event, process in
        process.state.probeID = event.probeID
        process.send(FirstStep(probeID: event.probeID))
        process.send(SecondStep(probeID: event.probeID))
    }
    pm.on(ProbeAdvanced.self, correlation: .field(\.probeID)) { event, process in
        process.state.advances += 1
        process.send(StepTaken(probeID: event.probeID, advance: process.state.advances))
    }
    pm.on(ProbeWobbled.self, correlation: .field(\.probeID)) { event, process in
        let marker = CommandLine.arguments[2] + "/wobbled-" + event.probeID
        if !FileManager.default.fileExists(atPath: marker) {
            _ = FileManager.default.createFile(atPath: marker, contents: nil)
            throw Flake()
        }
        process.state.advances += 1
        process.send(StepTaken(probeID: event.probeID, advance: process.state.advances))
    }
    pm.onFailure(of: RefusedStep.self) { _, process in
        process.state.refusals += 1
        process.send(StepTaken(probeID: process.state.probeID, advance: -process.state.refusals))
    }
    pm.end(on: ProbeFinished.self, correlation: .field(\.probeID))
}

struct Flake: Error, CustomStringConvertible {
    var description: String { "the first attempt wobbles" }
}

let refuseStep = MessageHandlerHost.command(RefusedStep.self, name: "refuse-step") { _, _ in
    throw Rejection("the probe refuses every step")
}

/// The `counter.BumpCounter` the power fails in (from `power-loss:N`).
let powerLossAt =
    CommandLine.arguments.count > 4 && CommandLine.arguments[4].hasPrefix("power-loss:")
    ? Int(CommandLine.arguments[4].dropFirst("power-loss:".count)) : nil
let bumpsHandled = Atomic(0)

let bumpCounter = MessageHandlerHost.command(BumpCounter.self, name: "bump-counter") { command, context in
    if let powerLossAt, bumpsHandled.add(1, ordering: .relaxed).newValue == powerLossAt {
        let dropped = baton_power_loss_cut()
        FileHandle.standardOutput.write(Data("power lost: \(dropped) bytes dropped\n".utf8))
        kill(getpid(), SIGKILL)
    }
    if powerLossAt != nil { usleep(2_000) }  // work that leaves the relay time to publish each commit's rows
    var counter = try context.load(Counter.self, id: command.counterID)
    let bumped = CounterBumped(counterID: command.counterID, value: counter.state.value + 1, recordedBy: getpid())
    try context.record([bumped], to: &counter)
}

let arguments = CommandLine.arguments
if arguments.count == 6, arguments[1] == "shared-store" {
    let fault = Node.FaultPoint(rawValue: arguments[3])
    guard fault != nil || arguments[3] == "none", let workflows = Int(arguments[5]), workflows > 0 else {
        FileHandle.standardError.write(
            Data("usage: baton-crash-probe shared-store DATA_DIR FAULT_POINT|none NODE WORKFLOWS\n".utf8)
        )
        exit(2)
    }
    try await SharedStoreProbe.run(
        dataDirectory: arguments[2],
        fault: fault,
        faultyNode: arguments[4],
        workflows: workflows
    )
    exit(0)
}
guard arguments.count == 5 || arguments.count == 6 else {
    FileHandle.standardError.write(
        Data("usage: baton-crash-probe AMQP_URL DATA_DIR NODE_NAME FAULT_POINT|none [PREFETCH]\n".utf8)
    )
    exit(2)
}
let fault = Node.FaultPoint(rawValue: arguments[4])
guard fault != nil || arguments[4] == "none" || (powerLossAt ?? 0) >= 1 else {
    FileHandle.standardError.write(Data("unknown fault point \(arguments[4])\n".utf8))
    exit(2)
}
let prefetch = arguments.count == 6 ? Int(arguments[5]) : nil
guard arguments.count == 5 || (prefetch ?? 0) >= 1 else {
    FileHandle.standardError.write(Data("PREFETCH must be a whole number from 1, got \(arguments[5])\n".utf8))
    exit(2)
}

var configuration = Node.Configuration(name: arguments[3])
if powerLossAt != nil {
    guard baton_power_loss_install(5_000) == 0 else {  // SQLITE_OK
        FileHandle.standardError.write(Data("cannot install the power-loss VFS\n".utf8))
        exit(1)
    }
    configuration.prefetch = 64
    configuration.batchSize = 1
}
if let prefetch {
    configuration.prefetch = prefetch
    configuration.batchSize = prefetch
}
if let fault {
    configuration.faultInjection = { point in
        if point == fault { kill(getpid(), SIGKILL) }
    }
}
let logger = Logger(label: "crash-probe")
let connection = try await AMQPConnection.connect(
    configuration: .init(url: arguments[1], connectionName: "crash-probe"),
    logger: logger
)
let node = Node(
    configuration: configuration,
    store: try SQLiteStore(path: arguments[2] + "/probe.sqlite"),
    transport: AMQPTransport(connection: connection),
    handlers: [try ProcessManagerHost(probeProcess), bumpCounter, refuseStep],
    logger: logger
)
let group = ServiceGroup(
    configuration: ServiceGroupConfiguration(
        services: [.init(service: node, successTerminationBehavior: .gracefullyShutdownGroup)],
        gracefulShutdownSignals: [.sigterm],
        logger: logger
    )
)
FileHandle.standardOutput.write(Data("ready\n".utf8))
try await group.run()
await connection.close()
