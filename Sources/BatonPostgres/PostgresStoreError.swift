import BatonNode
import PostgresNIO

/// Why the PostgreSQL store could not do something: one line for an operator, never a password.
public struct PostgresStoreError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure it is.
    public enum Kind: Sendable, Hashable {
        /// The database URL is malformed.
        case invalidURL
        /// The server could not be reached (refused, timed out, closed).
        case unreachable
        /// The server refused the connection (a wrong password, no such user or database).
        case refused
        /// A read found no tables of the service: it never ran against this database.
        case missingSchema
        /// A statement failed.
        case failed
    }

    /// What kind of failure it is.
    public var kind: Kind
    /// What went wrong.
    public var message: String
    /// The server's SQLSTATE code, when the server answered with an error.
    public var sqlState: String?

    /// Creates an error.
    public init(_ kind: Kind, _ message: String, sqlState: String? = nil) {
        self.kind = kind
        self.message = message
        self.sqlState = sqlState
    }

    public var description: String { message }

    /// Explains an error of postgres-nio in one line; `context` says what was being done (e.g. "cannot reach
    /// PostgreSQL at postgres://orders@db:5432/baton"). postgres-nio hides its errors' details from their
    /// descriptions (they may hold data); the server's message and SQLSTATE are what an operator needs.
    static func explaining(_ error: any Error, _ context: String) -> PostgresStoreError {
        if let error = error as? PostgresStoreError { return error }
        if case .server(let answer) = error as? PostgresError, let message = answer.fields[.message] {
            return answered(message, sqlState: answer.fields[.sqlState], context)  // the statements' older API
        }
        guard let error = error as? PSQLError else { return PostgresStoreError(.failed, "\(context): \(error)") }
        if let server = error.serverInfo, let message = server[.message] {
            return answered(message, sqlState: server[.sqlState], context)
        }
        switch error.code {
        case .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown:
            let cause = error.underlying.map { ": \($0)" } ?? ""
            return PostgresStoreError(.unreachable, "\(context): the connection failed (\(error.code))\(cause)")
        default:
            return PostgresStoreError(.failed, "\(context): \(error.code)")
        }
    }

    /// The server's answer to a statement or a connection attempt.
    private static func answered(_ message: String, sqlState state: String?, _ context: String) -> PostgresStoreError {
        // Class 28: invalid authorization; 3D000: no such database.
        let refused = state?.hasPrefix("28") == true || state == "3D000"
        return PostgresStoreError(
            refused ? .refused : .failed,
            "\(context): \(message)\(state.map { " (SQLSTATE \($0))" } ?? "")",
            sqlState: state
        )
    }
}

/// PostgreSQL refused a transaction because it lost a race with a concurrent one: a deadlock between replicas
/// that lock the same rows in different orders (SQLSTATE 40P01), a serialization failure (40001), or a key that
/// another transaction took first (23505 on a stream's or a process instance's next version, or on the inbox:
/// two replicas appending at one version, or recording one message; the insert waits for the other transaction,
/// then is refused). The node runs the transaction again, where it sees what the other one wrote, and counts no
/// failed attempt (``StoreConflict``). Other unique keys (an event id used twice) are errors of the handler.
public struct PostgresConflict: StoreConflict, Sendable, Hashable, CustomStringConvertible {
    /// The server's explanation, with its SQLSTATE.
    public var message: String

    /// The conflict the server reports in `error`, if it is one.
    init?(_ error: PostgresStoreError) {
        let raced =
            error.sqlState == "23505"
            && Self.versionKeys.contains { error.message.contains("unique constraint \"\($0)\"") }
        guard error.sqlState == "40P01" || error.sqlState == "40001" || raced else { return nil }
        message = error.message
    }

    public var description: String { message }

    /// The keys two replicas race for: a stream's position, a process instance's version, the inbox.
    static let versionKeys = ["streams_pkey", "process_transitions_pkey", "inbox_pkey"]
}
