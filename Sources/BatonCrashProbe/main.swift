// A node that kills itself (SIGKILL) at a chosen point of its consume path. The crash-injection tests run
// it as a child process against the real broker, then run it again without the fault and check that every
// effect happened once and every issued command was published once.
//
//   baton-crash-probe AMQP_URL DATA_DIR NODE_NAME FAULT_POINT|none
import Baton
import BatonAMQP
import BatonNode
import BatonSQLite
import Dispatch
import Foundation
import Logging

struct ProbeStarted: Event {
    static let messageName = "probe.ProbeStarted"
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
struct ProbeState: ProcessState {
    var probeID = ""
}

let probeProcess = ProcessManager<ProbeState>(name: "probe-process", listensTo: ["probe"]) { pm in
    pm.start(on: ProbeStarted.self, correlation: .field(\.probeID)) { event, process in
        process.state.probeID = event.probeID
        process.send(FirstStep(probeID: event.probeID))
        process.send(SecondStep(probeID: event.probeID))
    }
    pm.end(on: ProbeFinished.self, correlation: .field(\.probeID))
}

let arguments = CommandLine.arguments
guard arguments.count == 5 else {
    FileHandle.standardError.write(Data("usage: baton-crash-probe AMQP_URL DATA_DIR NODE_NAME FAULT_POINT|none\n".utf8))
    exit(2)
}
let fault = Node.FaultPoint(rawValue: arguments[4])
guard fault != nil || arguments[4] == "none" else {
    FileHandle.standardError.write(Data("unknown fault point \(arguments[4])\n".utf8))
    exit(2)
}

var registry = MessageRegistry()
registry.register(ProbeStarted.self)
registry.register(ProbeFinished.self)
var configuration = Node.Configuration(name: arguments[3])
configuration.faultInjection = { point in
    if point == fault { kill(getpid(), SIGKILL) }
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
    registry: registry,
    handlers: [try ProcessManagerHost(probeProcess, registry: registry)],
    logger: logger
)
signal(SIGTERM, SIG_IGN)
let termination = DispatchSource.makeSignalSource(signal: SIGTERM, queue: .main)
termination.setEventHandler { node.stop() }
termination.resume()
FileHandle.standardOutput.write(Data("ready\n".utf8))
try await node.run()
await connection.close()
