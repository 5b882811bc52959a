import ChildProcesses
import Foundation

/// The private PostgreSQL server the README's test command starts (`Deploy/local/test.sh` →
/// `Deploy/local/postgres.sh`). There is no fallback: without it, every PostgreSQL test fails.
public enum TestDatabase {
    /// The server's URL (superuser `baton`, database `postgres`).
    public static let url =
        ProcessInfo.processInfo.environment["BATON_TEST_DATABASE_URL"]
        ?? "postgres://baton:baton-local-secret@127.0.0.1:5691/postgres"

    /// The URL of another database on the same server.
    public static func url(database: String) -> String {
        String(url[..<url.lastIndex(of: "/")!]) + "/" + database
    }

    /// The same server with other credentials.
    public static func url(user: String, password: String) -> String {
        var components = URLComponents(string: url)!
        components.user = user
        components.password = password
        return components.string!
    }

    /// Runs SQL as the superuser, through `psql` over the server's socket; returns what it printed
    /// (unaligned, without headers).
    @discardableResult
    public static func psql(_ sql: String, database: String = "postgres") async throws -> String {
        let (termination, output) = try await ChildProcess.run(
            "/bin/bash",
            [script.path, "psql", "-d", database, "-A", "-t", "-c", sql]
        )
        guard termination.isSuccess else { throw TestSupportError("psql \(sql) failed (\(termination)): \(output)") }
        return output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Creates an empty database of its own for a test; returns its name.
    public static func create() async throws -> String {
        let name = TestBroker.unique("test").replacingOccurrences(of: "-", with: "_")
        try await psql("CREATE DATABASE \(name)")
        return name
    }

    /// Drops a database, closing whatever is still connected to it.
    public static func drop(_ name: String) async {
        _ = try? await psql("DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
    }

    /// A PostgreSQL server of a test's own, on a port and in a directory of its own, which the test may stop
    /// and start again (the database going away); started by the same script as the shared one.
    public struct PrivateServer: Sendable {
        /// Its port on 127.0.0.1.
        public let port = Int.random(in: 20_000..<30_000)
        /// It accepts TLS too, with a certificate for `localhost` and 127.0.0.1 signed by ``certificateAuthority``.
        public let acceptsTLS: Bool
        /// Its data directory.
        public var directory: String { "/tmp/baton-postgres-private-\(port)" }
        /// Its URL (superuser `baton`, database `postgres`).
        public var url: String { "postgres://baton:baton-local-secret@127.0.0.1:\(port)/postgres" }
        /// The CA that signed its certificate (PEM), with ``acceptsTLS``; `other-ca.pem` beside it signed nothing.
        public var certificateAuthority: String { "\(directory)-tls/ca.pem" }

        public init(acceptsTLS: Bool = false) {
            self.acceptsTLS = acceptsTLS
        }

        /// Starts it (creating its cluster the first time).
        public func start() async throws {
            if acceptsTLS { try await makeCertificates() }
            try await run("start")
        }

        /// A CA, a server certificate it signed for localhost and 127.0.0.1, and an unrelated CA.
        private func makeCertificates() async throws {
            let tls = "\(directory)-tls"
            let script = """
                set -e; mkdir -p '\(tls)'; cd '\(tls)'
                openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=Baton test CA' -keyout ca.key -out ca.pem
                openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=Other CA' -keyout other-ca.key -out other-ca.pem
                openssl req -newkey rsa:2048 -nodes -subj '/CN=localhost' -keyout server.key -out server.csr
                printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > server.ext
                openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem
                """
            let (termination, output) = try await ChildProcess.run("/bin/bash", ["-c", script])
            guard termination.isSuccess else { throw TestSupportError("certificates: \(output)") }
        }

        /// Stops it (fast: open connections are closed).
        public func stop() async throws { try await run("stop") }

        /// Stops it and removes its data.
        public func remove() async {
            try? await stop()
            try? FileManager.default.removeItem(atPath: directory)
            try? FileManager.default.removeItem(atPath: "\(directory)-tls")
        }

        private func run(_ command: String) async throws {
            var environment = ["BATON_POSTGRES_PORT": String(port), "BATON_POSTGRES_DIR": directory]
            if acceptsTLS { environment["BATON_POSTGRES_TLS_DIR"] = "\(directory)-tls" }
            let (termination, output) = try await ChildProcess.run(
                "/bin/bash",
                [TestDatabase.script.path, command],
                environment: environment
            )
            guard termination.isSuccess else {
                throw TestSupportError("postgres.sh \(command) failed (\(termination)): \(output)")
            }
        }
    }

    fileprivate static let script = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Deploy/local/postgres.sh")
}
