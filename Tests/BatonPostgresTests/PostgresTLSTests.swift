import BatonNode
import BatonTestSupport
import Foundation
import Logging
import Testing

@testable import BatonPostgres

/// TLS to PostgreSQL (`sslmode`, `sslrootcert` in the database URL), against a private server that accepts it.
@Suite(.serialized) struct PostgresTLSTests {
    /// Whether the store's own connection is encrypted, as the server sees it.
    static func encrypted(_ store: PostgresStore) async throws -> Bool {
        try await store.read { work in
            let rows = try (work as! PostgresUnitOfWork).query(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            return try rows.first?.decode(Bool.self) ?? false
        }
    }

    @Test func eachModeEncryptsAndVerifiesAsLibpqsDoes() async throws {
        let server = TestDatabase.PrivateServer(acceptsTLS: true)
        try await server.start()
        defer { Task { await server.remove() } }
        let logger = Logger(label: "postgres-tls-test")
        let localhost = server.url.replacingOccurrences(of: "127.0.0.1", with: "localhost")
        let ca = server.certificateAuthority
        let otherCA = ca.replacingOccurrences(of: "ca.pem", with: "other-ca.pem")

        for (url, encrypts) in [
            (server.url, false),
            ("\(server.url)?sslmode=require", true),
            ("\(server.url)?sslmode=verify-ca&sslrootcert=\(ca)", true),
            ("\(localhost)?sslmode=verify-full&sslrootcert=\(ca)", true),
        ] {
            let store = try await PostgresStore.connect(
                url: try PostgresDatabaseURL(url),
                schema: "tls",
                logger: logger
            )
            #expect(try await Self.encrypted(store) == encrypts, "\(url)")
            await store.close()
        }
        for (url, reason) in [
            ("\(server.url)?sslmode=verify-ca&sslrootcert=\(otherCA)", "a certificate another CA signed"),
            ("\(server.url)?sslmode=verify-full", "the system's roots do not know the test CA"),
        ] {
            do {
                let store = try await PostgresStore.connect(url: try PostgresDatabaseURL(url), logger: logger)
                await store.close()
                Issue.record("connected although \(reason): \(url)")
            } catch {
                #expect(error.kind == .unreachable, "\(reason): \(error.message)")
                #expect(!error.message.contains("baton-local-secret") && !error.message.contains("\n"))
            }
        }
    }

    @Test func aBadTLSParameterIsOneClearLine() throws {
        let base = "postgres://baton:pw@db:5432/baton"
        for (url, expected) in [
            ("\(base)?sslmode=prefer", "prefer and allow"),
            ("\(base)?sslmode=sometimes", "use one of disable, require, verify-ca, verify-full"),
            ("\(base)?sslrootcert=/etc/ca.pem", "only read with sslmode=verify-ca or verify-full"),
            ("\(base)?sslmode=verify-full&sslrootcert=", "sslrootcert names no file"),
        ] {
            #expect {
                _ = try PostgresDatabaseURL(url)
            } throws: { error in
                let message = (error as? PostgresStoreError)?.message ?? ""
                return message.contains(expected) && !message.contains("pw")
            }
        }
        let missing = try PostgresDatabaseURL("\(base)?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
        #expect(missing.description == "postgres://baton:***@db:5432/baton?sslmode=verify-full")
        #expect {
            _ = try missing.configuration()
        } throws: { error in
            ((error as? PostgresStoreError)?.message ?? "").contains("sslrootcert /nonexistent/ca.pem")
        }
    }
}
