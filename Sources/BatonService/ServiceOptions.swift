import ArgumentParser
import BatonAMQP
import BatonNode
import BatonSQLite
import Foundation

/// Names one service: its queue, its store file, its CLI.
public protocol ServiceIdentity {
    /// The service's name (`orders`, `inventory`, …).
    static var name: String { get }
}

/// How a service or its CLI finds the broker and its data: by flag or by environment.
public struct ServiceOptions: ParsableArguments {
    @Option(
        name: .customLong("amqp-url"),
        help: "Broker URL, amqp:// or amqps:// (default: $BATON_AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/%2F)."
    )
    var amqpURLFlag: String?

    @Option(
        name: .customLong("data-dir"),
        help: "Directory of the service's SQLite store (default: $BATON_DATA_DIR, else ./data)."
    )
    var dataDirectoryFlag: String?

    @Option(
        name: .customLong("topology"),
        help: ArgumentHelp(
            "Who declares the broker topology: node (the service, at start) or broker (pre-declared definitions; the service only checks them) (default: $BATON_TOPOLOGY, else node).",
            valueName: "node|broker"
        )
    )
    var topologyFlag: String?

    @Option(
        name: .customLong("tls-ca"),
        help: "CA certificate (PEM) to verify an amqps:// broker (default: $BATON_TLS_CA)."
    )
    var tlsCAFlag: String?

    public init() {}

    private var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// The broker URL in effect.
    public var amqpURL: String {
        amqpURLFlag ?? environment["BATON_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/%2F"
    }

    /// The data directory in effect.
    public var dataDirectory: String {
        dataDirectoryFlag ?? environment["BATON_DATA_DIR"] ?? "data"
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

    public func validate() throws {
        _ = try topologyOwnership
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
            url: amqpURL,
            tls: ca.map { AMQPConnection.Configuration.TLS(caCertificatePath: $0) },
            connectionName: name
        )
    }

    /// The path of a service's store file.
    public func storePath(for service: String) -> String {
        URL(fileURLWithPath: dataDirectory).appendingPathComponent("\(service).sqlite").path
    }

    /// Opens a service's store for reading, as operator commands do (the running service owns writes).
    /// - Throws: ``CommandFailure`` if there is no store there.
    public func readStore(for service: String) throws -> SQLiteStore {
        let path = storePath(for: service)
        guard FileManager.default.fileExists(atPath: path) else {
            throw CommandFailure(
                "no \(service) data in \(dataDirectory): start `\(service) serve` with this --data-dir (or BATON_DATA_DIR) first"
            )
        }
        return try SQLiteStore(path: path, readOnly: true)
    }
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
        let found = try await readStore(for: service).read { try $0.document(D.self, in: collection, idOrAlias: key) }
        guard let found else { throw CommandFailure(missing) }
        return found
    }
}

/// A CLI failure with a message for the operator; the command exits non-zero.
public struct CommandFailure: Error, CustomStringConvertible {
    /// What went wrong, in words for the operator.
    public var description: String

    /// Creates a failure.
    public init(_ description: String) {
        self.description = description
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
