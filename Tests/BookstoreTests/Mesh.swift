import BatonAMQP
import BatonService
import BatonTestSupport
import BookstoreContracts
import BookstoreOperations
import ChildProcesses
import Foundation
import Logging

/// The four bookstore services as separate processes, in a virtual host and data directory of their own,
/// against the test broker or the three-node test cluster; on SQLite files, or on a PostgreSQL database of
/// their own (where a service may run as several replicas).
final class Mesh {
    let virtualHost: String
    /// The broker URL, or on the cluster every node's, comma-separated (as `BATON_AMQP_URL` takes them).
    let url: String
    /// The services run against the three-node cluster (`TestCluster`), not the test broker node.
    let onCluster: Bool
    let dataDirectory: URL
    private(set) var processes: [String: ChildProcess] = [:]
    /// The port of each running service's operations endpoint (`serve --http`), by process name.
    private(set) var httpPorts: [String: Int] = [:]
    private(set) var stocked: [String: Int] = [:]
    let stepTimeout: Double
    /// `BATON_TOPOLOGY` for the services: `node` declares, `broker` only checks pre-declared definitions.
    let topology: String
    /// The PostgreSQL database the services share, if they use one (else each its SQLite file).
    let database: String?
    /// Variables the services get on top of the mesh's own (`BATON_LOG_FORMAT`, …).
    let extraEnvironment: [String: String]

    private init(
        stepTimeout: Double,
        topology: String,
        onPostgreSQL: Bool,
        onCluster: Bool,
        environment: [String: String]
    ) async throws {
        extraEnvironment = environment
        database = onPostgreSQL ? try await TestDatabase.create() : nil
        let virtualHost = TestBroker.unique("mesh")
        self.virtualHost = virtualHost
        self.onCluster = onCluster
        if onCluster {
            try await TestCluster.start()
            try await TestCluster.ctl(node: 1, "add_vhost", virtualHost)
            try await TestCluster.ctl(node: 1, "set_permissions", "-p", virtualHost, "baton", ".*", ".*", ".*")
            url = try await TestCluster.urls.map { $0.replacingOccurrences(of: "/%2F", with: "/\(virtualHost)") }
                .joined(separator: ",")
        } else {
            try await TestBroker.makeVirtualHost(virtualHost)
            url = TestBroker.url(virtualHost: virtualHost)
        }
        dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent(virtualHost)
        try FileManager.default.createDirectory(at: dataDirectory, withIntermediateDirectories: true)
        self.stepTimeout = stepTimeout
        self.topology = topology
    }

    /// Runs `body` with a mesh of its own, then stops every service and removes the virtual host and the
    /// data, whether `body` returned or threw.
    /// - Returns: How each service ended (a graceful stop is exit code 0).
    @discardableResult
    static func run(
        stepTimeout: Double = 30,
        topology: String = "node",
        onPostgreSQL: Bool = false,
        onCluster: Bool = false,
        environment: [String: String] = [:],
        _ body: (Mesh) async throws -> Void
    ) async throws -> [String: Termination] {
        let mesh = try await Mesh(
            stepTimeout: stepTimeout,
            topology: topology,
            onPostgreSQL: onPostgreSQL,
            onCluster: onCluster,
            environment: environment
        )
        do {
            try await body(mesh)
        } catch {
            _ = await mesh.tearDown()
            throw error
        }
        return await mesh.tearDown()
    }

    /// The test broker's host and port (`127.0.0.1:5683`).
    var brokerAddress: String {
        let components = URLComponents(string: url.replacingOccurrences(of: "amqp://", with: "http://"))
        return "\(components?.host ?? "127.0.0.1"):\(components?.port ?? 5672)"
    }

    /// The built executables sit next to the test bundle.
    static func binary(_ name: String) -> URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name)
    }

    private var environment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment["BATON_AMQP_URL"] = url
        environment["BATON_DATA_DIR"] = dataDirectory.path
        environment["BATON_LOG_LEVEL"] = "warning"
        environment["BATON_TOPOLOGY"] = topology
        environment["BATON_DATABASE_URL"] = databaseURL
        return environment.merging(extraEnvironment) { $1 }
    }

    /// The URL of the services' PostgreSQL database, if they share one.
    var databaseURL: String? { database.map(TestDatabase.url(database:)) }

    /// Starts a service (or another replica of it, named `orders-2` and so on) and waits until it is ready
    /// (its operations endpoint answers, its node consumes) and, unpartitioned, the broker counts its consumer.
    /// `partitions` overrides the mesh's count (`serve --partitions`). A free port can be taken by another
    /// process before the service binds it: then (and only then) it is started again on another.
    func start(_ service: String, replica: Int = 1, partitions: Int? = nil) async throws {
        let name = replica == 1 ? service : "\(service)-\(replica)"
        precondition(processes[name]?.isRunning != true, "\(name) is running already")
        let log = dataDirectory.appendingPathComponent("\(name).log")
        for attempt in 1...3 {
            let port = try HTTPProbe.freePort()
            let process = try ChildProcess(
                Self.binary(service).path,
                ["serve", "--http", "127.0.0.1:\(port)"]
                    + (service == "fulfillment" ? ["--step-timeout", String(stepTimeout)] : [])
                    + (partitions.map { ["--partitions", String($0)] } ?? []),
                environment: environment,
                output: .appending(to: log.path)
            )
            processes[name] = process
            httpPorts[name] = port
            let partitioned = isPartitioned || (partitions ?? 1) > 1
            let settled = try await eventually(timeout: .seconds(30)) {
                guard process.isRunning else { return true }  // it ended: see below
                guard (try? await HTTPProbe.get(port: port, "/health/ready").status) == 200 else { return false }
                // A standby consumer of a single-active-consumer queue is not counted: readiness says it all.
                if partitioned { return true }
                return try await self.consumers(of: service) >= replica
            }
            if settled, process.isRunning { return }
            let output = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            if !process.isRunning, output.contains("Address already in use"), attempt < 3 { continue }
            break
        }
        throw TestSupportError("\(name) did not start; see \(log.path)")
    }

    /// Whether the services' input is split into partitions (`BATON_PARTITIONS`).
    var isPartitioned: Bool { (extraEnvironment["BATON_PARTITIONS"].flatMap(Int.init) ?? 1) > 1 }

    /// Starts all four.
    func startAll(replicas: Int = 1) async throws {
        for service in Self.services {
            for replica in 1...replicas { try await start(service, replica: replica) }
        }
    }

    /// The four services.
    static let services = ["orders", "inventory", "shipping", "fulfillment"]

    /// Stops a service with SIGTERM (graceful) and returns how it ended.
    @discardableResult
    func stop(_ service: String) async -> Termination? {
        await processes[service]?.stop()
    }

    /// Kills a service with SIGKILL.
    func kill(_ service: String) async {
        await processes[service]?.kill()
    }

    /// The services that are no longer running: how each ended, and the end of its log.
    func exited() async -> [String] {
        var exited: [String] = []
        for (name, process) in processes.sorted(by: { $0.key < $1.key }) where !process.isRunning {
            let log =
                (try? String(contentsOf: dataDirectory.appendingPathComponent("\(name).log"), encoding: .utf8)) ?? ""
            let tail = log.split(separator: "\n").suffix(8).joined(separator: "\n")
            exited.append("\(name) ended (\(await process.wait())); its log ends:\n\(tail)")
        }
        return exited
    }

    /// Stops everything and removes the virtual host; returns how each service ended.
    private func tearDown() async -> [String: Termination] {
        var terminations: [String: Termination] = [:]
        for (service, process) in processes { terminations[service] = await process.stop() }
        if onCluster {
            _ = try? await TestCluster.ctl(node: 1, "delete_vhost", virtualHost)
        } else {
            await TestBroker.deleteVirtualHost(virtualHost)
        }
        try? FileManager.default.removeItem(at: dataDirectory)
        if let database { await TestDatabase.drop(database) }
        return terminations
    }

    /// Runs one of the CLIs with the mesh's settings.
    @discardableResult
    func cli(_ service: String, _ arguments: String...) async throws -> (status: Int32, output: String) {
        try await cli(service, arguments)
    }

    /// Runs one of the CLIs with the mesh's settings: its exit code (-1 if a signal ended it) and its output.
    @discardableResult
    func cli(_ service: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
        try await cliInvocation(service, arguments).run()
    }

    /// One of the CLIs with the mesh's settings, to run beside the mesh's own work (in a task of its own).
    func cliInvocation(_ service: String, _ arguments: [String]) -> CLIInvocation {
        CLIInvocation(path: Self.binary(service).path, arguments: arguments, environment: environment)
    }

    /// A CLI's command line and environment.
    struct CLIInvocation: Sendable {
        let path: String
        let arguments: [String]
        let environment: [String: String]

        /// Runs it: its exit code (-1 if a signal ended it) and its output.
        func run() async throws -> (status: Int32, output: String) {
            let (termination, output) = try await ChildProcess.run(path, arguments, environment: environment)
            return (termination.exitCode ?? -1, output)
        }
    }

    /// Adds stock through the inventory CLI and waits until the service has it.
    func stock(_ sku: String, _ quantity: Int) async throws {
        let result = try await cli(
            "inventory",
            "add",
            sku,
            "--quantity",
            String(quantity),
            "--title",
            "Title of \(sku)"
        )
        guard result.status == 0 else { throw TestSupportError("inventory add failed: \(result.output)") }
        stocked[sku, default: 0] += quantity
        let expected = stocked[sku]!
        let arrived = try await eventually {
            try await self.snapshot().items.first { $0.sku == sku }.map { $0.available + $0.reserved } == expected
        }
        guard arrived else { throw TestSupportError("stock of \(sku) never arrived") }
    }

    /// Publishes raw JSON as an external storefront (or any producer) would.
    func publishExternal(
        _ json: String,
        exchange: String = CheckoutCompleted.exchange,
        routingKey: String = CheckoutCompleted.routingKey,
        messageID: String = UUID().uuidString.lowercased(),
        contentType: String = "application/json",
        headers: [String: AMQPFieldValue] = [:]
    ) async throws {
        var logger = Logger(label: "storefront")
        logger.logLevel = .critical
        try await AMQPConnection.withConnection(
            configuration: .init(urls: url.components(separatedBy: ","), connectionName: "test-storefront"),
            logger: logger
        ) { connection in
            try await connection.publish(
                AMQPOutgoingMessage(
                    exchange: exchange,
                    routingKey: routingKey,
                    body: Array(json.utf8),
                    properties: AMQPProperties(contentType: contentType, headers: headers, messageID: messageID)
                )
            )
        }
    }

    /// A checkout as the storefront sends it; with `traceparent`, as a traced storefront does (W3C header).
    func checkout(
        _ id: String,
        address: String = "12 St James's Sq, London",
        lines: [(String, Int)],
        messageID: String = UUID().uuidString.lowercased(),
        traceparent: String? = nil
    ) async throws {
        let lineJSON = lines.map { #"{"sku":"\#($0.0)","quantity":\#($0.1)}"# }.joined(separator: ",")
        try await publishExternal(
            #"{"checkout_id":"\#(id)","customer":"Ada Lovelace","shipping_address":"\#(address)","lines":[\#(lineJSON)]}"#,
            messageID: messageID,
            headers: traceparent.map { ["traceparent": .string($0)] } ?? [:]
        )
    }

    /// Checkout `chk-INDEX` of the tests' mixed load: every 7th with a blank address (cancelled), one or two
    /// copies of book-0001…3 in turn. Published until the broker confirms it (for a minute at most), as a real
    /// producer does while a broker node fails over.
    func mixedCheckout(_ index: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while true {
            do {
                return try await checkout(
                    "chk-\(index)",
                    address: index % 7 == 0 ? "" : "\(index) Baker St",
                    lines: [("book-000\(index % 3 + 1)", index % 2 + 1)]
                )
            } catch  where ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    func consumers(of queue: String) async throws -> Int {
        var logger = Logger(label: "probe")
        logger.logLevel = .critical
        return try await AMQPConnection.withConnection(
            configuration: .init(urls: url.components(separatedBy: ","), connectionName: "test-probe"),
            logger: logger
        ) { connection in
            do {
                return try await connection.inspectQueue(queue).consumers
            } catch let error as AMQPError where error.code == .notFound {
                return 0
            }
        }
    }

    func snapshot() async throws -> MeshSnapshot {
        try await MeshSnapshot.read(readOptions)
    }

    /// Where the operator tools read the services' stores.
    var readOptions: ServiceOptions {
        get throws {
            try ServiceOptions.parse(
                ["--data-dir", dataDirectory.path] + (databaseURL.map { ["--database-url", $0] } ?? [])
            )
        }
    }

    /// Waits until `count` orders exist, all settled, and every invariant holds; returns the last snapshot
    /// and the problems still found (empty on success).
    func settle(orders count: Int, timeout: Duration = .seconds(60)) async throws -> (MeshSnapshot, [String]) {
        var last = try await snapshot()
        _ = try await eventually(timeout: timeout) {
            last = try await self.snapshot()
            return last.orders.count >= count && last.isSettled && last.problems(stocked: self.stocked).isEmpty
        }
        var problems = last.problems(stocked: stocked)
        if last.orders.count != count { problems.append("\(last.orders.count) orders, expected \(count)") }
        return (last, problems)
    }
}
