import BatonNode
import BatonTestSupport
import Foundation
import Logging
import PostgresNIO
import Testing

@testable import BatonPostgres

/// The PostgreSQL spike against the private server the README's test command starts (`Deploy/local/postgres.sh`):
/// the store conformance suite's cases for what it implements — transactions, the inbox, the outbox and its
/// handover, documents, and their races on two connections — each in a schema of its own.
@Suite struct PostgresStoreTests {
    /// What the spike implements; the other cases wait for the scale-out work.
    static let implemented: [StoreConformance.Case] = [
        .aTransactionCommitsAllOrNothing, .aSavepointRollsBackOnlyItsOwnChanges, .theInboxRecordsEachMessageOnce,
        .theOutboxKeepsOneRowPerKeyInOrder, .failedPublishesWaitOutTheirBackoff,
        .aWriterHandsOverExactlyWhatItCommitted, .documentsAreFoundByIdAliasAndStatus, .concurrentWritersOfOneInboxID,
        .outboxRowsOfConcurrentTransactions,
    ]

    static var configuration: PostgresConnection.Configuration {
        get throws {
            let url =
                ProcessInfo.processInfo.environment["BATON_TEST_DATABASE_URL"]
                ?? "postgres://baton@127.0.0.1:5691/postgres"
            guard let components = URLComponents(string: url), let host = components.host else {
                throw TestSupportError("BATON_TEST_DATABASE_URL is not a URL: \(url)")
            }
            return PostgresConnection.Configuration(
                host: host,
                port: components.port ?? 5432,
                username: components.user ?? "baton",
                password: components.password,
                database: String(components.path.dropFirst()),
                tls: .disable
            )
        }
    }

    static func makeStore() async throws -> PostgresStore {
        try await PostgresStore.connect(
            configuration: try configuration,
            schema: "conformance_\(UInt32.random(in: 0...UInt32.max))",
            logger: Logger(label: "postgres-test")
        )
    }

    @Test(arguments: implemented)
    func conforms(_ check: StoreConformance.Case) async throws {
        let store = try await Self.makeStore()
        try await StoreConformance { store }.run(check)
        await store.close()
    }

    @Test func whatTheSpikeDoesNotDoYetItRefusesByName() async throws {
        let store = try await Self.makeStore()
        await #expect(throws: PostgresStoreError.notImplemented("streams")) {
            try await store.write { try $0.append([], to: "s", expectedVersion: 0) }
        }
        await store.close()
    }
}
