import ArgumentParser
import BatonAMQP
import BatonNode
import BatonPostgres
import BatonSQLite
import Foundation
import Logging

/// Names one service: its queue, its store file, its CLI.
public protocol ServiceIdentity {
    /// The service's name (`orders`, `inventory`, …).
    static var name: String { get }
}

/// How a service or its CLI finds the broker and its data: by flag or by environment.
public struct ServiceOptions: ParsableArguments {
    @Option(
        name: .customLong("amqp-url"),
        help: ArgumentHelp(
            "Broker URL, amqp:// or amqps://; repeat it for each node of a cluster, tried in turn (default: $BATON_AMQP_URL, comma-separated for a cluster, else amqp://guest:guest@127.0.0.1:5672/%2F).",
            valueName: "url"
        )
    )
    var amqpURLFlags: [String] = []

    @Option(
        name: .customLong("data-dir"),
        help: "Directory of the service's SQLite store (default: $BATON_DATA_DIR, else ./data)."
    )
    var dataDirectoryFlag: String?

    @Option(
        name: .customLong("database-url"),
        help: ArgumentHelp(
            "PostgreSQL database of the service, shared by its replicas; its tables live in a schema named after the service (default: $BATON_DATABASE_URL, else the SQLite file in the data directory).",
            valueName: "postgres://user:password@host:port/database"
        )
    )
    var databaseURLFlag: String?

    @Option(
        name: .customLong("sqlite-page-cache"),
        help: ArgumentHelp(
            "The most memory SQLite's page cache of the service's store may take, in MiB: more keeps a larger store's hot pages (its indexes) in memory; it grows only as pages are used (default: $BATON_SQLITE_PAGE_CACHE, else \(SQLiteStore.defaultPageCacheMiB)).",
            valueName: "MiB"
        )
    )
    var pageCacheFlag: String?

    @Option(
        name: .customLong("topology"),
        help: ArgumentHelp(
            "Who declares the broker topology: node (the service, at start) or broker (pre-declared definitions; the service only checks them) (default: $BATON_TOPOLOGY, else node).",
            valueName: "node|broker"
        )
    )
    var topologyFlag: String?

    @Option(
        name: .customLong("partitions"),
        help: ArgumentHelp(
            "How many queues the service's input is split over, by each message's partition key, each consumed by one replica at a time: 1 to 64; every replica, and every command that checks the service runs, must say the same (default: $BATON_PARTITIONS, else 1: one queue).",
            valueName: "count"
        )
    )
    var partitionsFlag: String?

    @Option(
        name: .customLong("tls-ca"),
        help: "CA certificate (PEM) to verify an amqps:// broker (default: $BATON_TLS_CA)."
    )
    var tlsCAFlag: String?

    public init() {}

    private var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// The broker URLs in effect: one, or one per node of a cluster.
    public var amqpURLs: [String] {
        if !amqpURLFlags.isEmpty { return amqpURLFlags }
        if let urls = environment["BATON_AMQP_URL"] {
            return urls.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        }
        return ["amqp://guest:guest@127.0.0.1:5672/%2F"]
    }

    /// The data directory in effect.
    public var dataDirectory: String {
        dataDirectoryFlag ?? environment["BATON_DATA_DIR"] ?? "data"
    }

    /// The PostgreSQL database in effect, or `nil` for the SQLite file in ``dataDirectory``.
    /// - Throws: ``ValidationError`` naming the flag or variable whose URL is malformed.
    public var databaseURL: PostgresDatabaseURL? {
        get throws {
            guard let text = databaseURLFlag ?? environment["BATON_DATABASE_URL"] else { return nil }
            do {
                return try PostgresDatabaseURL(text)
            } catch {
                throw ValidationError("\(databaseURLFlag == nil ? "BATON_DATABASE_URL" : "--database-url"): \(error)")
            }
        }
    }

    /// Who declares the broker topology, in effect.
    public var topologyOwnership: TopologyOwnership {
        get throws {
            let text = topologyFlag ?? environment["BATON_TOPOLOGY"] ?? TopologyOwnership.node.rawValue
            guard let ownership = TopologyOwnership(rawValue: text) else {
                let source = topologyFlag == nil ? "BATON_TOPOLOGY" : "--topology"
                throw ValidationError("\(source) must be node or broker, not '\(text)'")
            }
            return ownership
        }
    }

    /// The most memory, in MiB, the SQLite store's page cache may take.
    /// - Throws: ``ValidationError`` naming the flag or variable if it is not a count of MiB from 1 to 65,536.
    public var pageCacheMiB: Int {
        get throws {
            guard let text = pageCacheFlag ?? environment["BATON_SQLITE_PAGE_CACHE"], !text.isEmpty else {
                return SQLiteStore.defaultPageCacheMiB
            }
            guard let mebibytes = Int(text), (1...65_536).contains(mebibytes) else {
                let source = pageCacheFlag == nil ? "BATON_SQLITE_PAGE_CACHE" : "--sqlite-page-cache"
                throw ValidationError("\(source) must be a size in MiB from 1 to 65536, not '\(text)'")
            }
            return mebibytes
        }
    }

    /// How many partitions the service's input is split over.
    /// - Throws: ``ValidationError`` naming the flag or variable if it is not a count from 1 to 64.
    public var partitions: Int {
        get throws {
            guard let text = partitionsFlag ?? environment["BATON_PARTITIONS"], !text.isEmpty else { return 1 }
            guard let count = Int(text), Node.partitionCounts.contains(count) else {
                let source = partitionsFlag == nil ? "BATON_PARTITIONS" : "--partitions"
                throw ValidationError("\(source) must be \(Node.partitionCountsText), not '\(text)'")
            }
            return count
        }
    }

    /// The queues a service consumes: its queue, or its partitions' queues.
    public func inputQueues(of service: String) throws -> [String] {
        var configuration = Node.Configuration(name: service)
        configuration.partitions = try partitions
        return Node.inputQueues(configuration)
    }

    public func validate() throws {
        _ = try topologyOwnership
        _ = try partitions
        _ = try pageCacheMiB
        _ = try databaseURL
        do {
            _ = try connectionConfiguration(name: "validate")
        } catch let error as AMQPError {
            throw ValidationError(error.message)
        }
    }

    /// The connection settings, named for the broker's connection list.
    public func connectionConfiguration(name: String) throws -> AMQPConnection.Configuration {
        let ca = tlsCAFlag ?? environment["BATON_TLS_CA"]
        return try AMQPConnection.Configuration(
            urls: amqpURLs,
            tls: ca.map { AMQPConnection.Configuration.TLS(caCertificatePath: $0) },
            connectionName: name
        )
    }

    /// Connects to the broker for an operator command (quietly: the command says what went wrong).
    /// - Throws: ``CommandFailure`` with a wrong URL's reason, or why the broker cannot be reached.
    public func connect(name: String) async throws -> AMQPConnection {
        var logger = Logger(label: name)
        logger.logLevel = .critical
        let configuration: AMQPConnection.Configuration
        do {
            configuration = try connectionConfiguration(name: name)
        } catch let error as AMQPError {
            throw CommandFailure(error.message)
        }
        do {
            return try await AMQPConnection.connect(configuration: configuration, logger: logger)
        } catch let error as AMQPError {
            throw CommandFailure("cannot reach the broker at \(configuration): \(error.message)")
        }
    }

    /// The path of a service's store file.
    public func storePath(for service: String) -> String {
        URL(fileURLWithPath: dataDirectory).appendingPathComponent("\(service).sqlite").path
    }

    /// Where a service's store is, in words for logs and errors (never with a password).
    public func storeLocation(for service: String) throws -> String {
        try databaseURL.map { "schema \(service) of \($0)" } ?? storePath(for: service)
    }

    /// Opens a service's store to serve it: its SQLite file (the directory created if missing), or its schema
    /// in the PostgreSQL database (created or brought up to date). Close it with ``ServiceStore/close()``.
    /// - Throws: ``CommandFailure`` saying why the database cannot be used.
    public func openStore(for service: String, logger: Logger) async throws -> ServiceStore {
        if let url = try databaseURL {
            do {
                let store = try await PostgresStore.connect(url: url, schema: service, logger: logger)
                return ServiceStore(store: store, close: store.close)
            } catch {
                throw CommandFailure(error.description)
            }
        }
        try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
        do {
            let store = try SQLiteStore(path: storePath(for: service), pageCacheMiB: try pageCacheMiB)
            return ServiceStore(store: store, close: {})
        } catch let error as SQLiteStoreError {
            throw CommandFailure("cannot serve from this store: \(error)")
        }
    }

    /// Reads a service's store, as operator commands do (the running service owns writes): opened read-only,
    /// read in one transaction, closed.
    /// - Throws: ``CommandFailure`` if there is no store there (the service never ran against it:
    ///   ``CommandFailure/isMissingStore``) or the database cannot be used; what `body` throws.
    public func read<T: Sendable>(
        from service: String,
        _ body: @escaping @Sendable (any UnitOfWork) throws -> T
    ) async throws -> T {
        let never = "start `\(service) serve` with this"
        if let url = try databaseURL {
            var logger = Logger(label: "\(service)-cli")
            logger.logLevel = .critical
            let store: PostgresStore
            do {
                store = try await PostgresStore.connect(
                    url: url,
                    schema: service,
                    access: .readOnly,
                    connections: 1,
                    logger: logger
                )
            } catch let error where error.kind == .missingSchema {
                throw CommandFailure(
                    "no \(service) data in \(url): \(never) --database-url (or BATON_DATABASE_URL) first",
                    isMissingStore: true
                )
            } catch {
                throw CommandFailure(error.description)
            }
            do {
                let value = try await store.read(body)
                await store.close()
                return value
            } catch {
                await store.close()
                throw error
            }
        }
        let path = storePath(for: service)
        guard FileManager.default.fileExists(atPath: path) else {
            throw CommandFailure(
                "no \(service) data in \(dataDirectory): \(never) --data-dir (or BATON_DATA_DIR) first",
                isMissingStore: true
            )
        }
        let store: SQLiteStore
        do {
            store = try SQLiteStore(path: path, readOnly: true, pageCacheMiB: try pageCacheMiB)
        } catch let error as SQLiteStoreError {
            throw CommandFailure(error.description)
        }
        return try await store.read(body)
    }
}

/// A service's open store and how to close it.
public struct ServiceStore: Sendable {
    /// The store.
    public var store: any Store
    /// Closes it (its connections; nothing for a SQLite file).
    public var close: @Sendable () async -> Void
}

extension ServiceOptions {
    /// Reads one read-model document of a service by id or alias, for a `show` command.
    /// - Throws: ``CommandFailure`` with `missing` if there is none (or no store).
    public func document<D: Decodable & Sendable>(
        _ type: D.Type,
        of service: String,
        in collection: String,
        key: String,
        missing: String
    ) async throws -> D {
        let found = try await read(from: service) { try $0.document(D.self, in: collection, idOrAlias: key) }
        guard let found else { throw CommandFailure(missing) }
        return found
    }
}

/// A CLI failure with a message for the operator; the command exits non-zero.
public struct CommandFailure: Error, CustomStringConvertible {
    /// What went wrong, in words for the operator.
    public var description: String
    /// The service has no store where the options point: it never ran against that directory or database.
    public var isMissingStore: Bool

    /// Creates a failure.
    public init(_ description: String, isMissingStore: Bool = false) {
        self.description = description
        self.isMissingStore = isMissingStore
    }
}

/// Prints a value as pretty JSON (for `--json`).
public func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.keyEncodingStrategy = .convertToSnakeCase
    encoder.dateEncodingStrategy = .iso8601
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Prints rows as an aligned text table.
public func printTable(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for row in rows {
        for (index, cell) in row.enumerated() where index < widths.count {
            widths[index] = max(widths[index], cell.count)
        }
    }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { index, cell in
            index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }
    print(line(header))
    for row in rows { print(line(row)) }
}

/// Runs a service's command line (for a thin executable's `main.swift`): parses, runs async subcommands,
/// and exits with a clear message and a non-zero status on any error.
public func runCommandLine<Root: ParsableCommand>(_ root: Root.Type) async {
    do {
        var command = try Root.parseAsRoot()
        if var asyncCommand = command as? any AsyncParsableCommand {
            try await asyncCommand.run()
        } else {
            try command.run()
        }
    } catch let failure as CommandFailure {
        FileHandle.standardError.write(Data("error: \(failure.description)\n".utf8))
        Foundation.exit(1)
    } catch {
        Root.exit(withError: error)
    }
}
