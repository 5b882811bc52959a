import Foundation
import NIOCore
import PostgresNIO

/// A PostgreSQL database named by a URL, `postgres://user:password@host:port/database` (`postgresql://` too;
/// the password and the port may be left out). Its description never shows the password.
public struct PostgresDatabaseURL: Sendable, Hashable, CustomStringConvertible {
    /// The server's host name or address.
    public var host: String
    /// The server's port (5432 unless the URL says otherwise).
    public var port: Int
    /// Who connects.
    public var username: String
    /// The user's password, if the server asks for one.
    public var password: String?
    /// The database.
    public var database: String

    /// Parses a URL.
    /// - Throws: ``PostgresStoreError`` saying what is wrong with it (the password left out of the message).
    public init(_ text: String) throws(PostgresStoreError) {
        func invalid(_ reason: String) -> PostgresStoreError {
            PostgresStoreError(.invalidURL, "\(reason) (expected postgres://user:password@host:port/database)")
        }
        guard let components = URLComponents(string: text), let scheme = components.scheme else {
            throw invalid("the database URL is not a URL")
        }
        guard scheme == "postgres" || scheme == "postgresql" else {
            throw invalid("the database URL's scheme is \(scheme)://, not postgres://")
        }
        guard let host = components.host, !host.isEmpty else { throw invalid("the database URL names no host") }
        guard let user = components.user, !user.isEmpty else { throw invalid("the database URL names no user") }
        let database = String(components.path.drop { $0 == "/" })
        guard !database.isEmpty, !database.contains("/") else {
            throw invalid("the database URL names no database")
        }
        for item in components.queryItems ?? [] {
            switch (item.name, item.value) {
            case ("sslmode", "disable"): continue
            case ("sslmode", let mode):
                throw PostgresStoreError(
                    .invalidURL,
                    "sslmode=\(mode ?? "") is not supported yet: Baton connects to PostgreSQL without TLS (sslmode=disable); keep the database on a private network"
                )
            default:
                throw invalid("the database URL has an unknown parameter '\(item.name)'")
            }
        }
        self.host = host
        self.port = components.port ?? 5432
        self.username = user
        self.password = components.password
        self.database = database
    }

    /// `postgres://user@host:port/database`, with `:***` for a password.
    public var description: String {
        "postgres://\(username)\(password == nil ? "" : ":***")@\(host):\(port)/\(database)"
    }

    /// The settings postgres-nio connects with: no TLS, a connection attempt given up after `connectTimeout`.
    public func configuration(connectTimeout: Duration = .seconds(10)) -> PostgresConnection.Configuration {
        var configuration = PostgresConnection.Configuration(
            host: host,
            port: port,
            username: username,
            password: password,
            database: database,
            tls: .disable
        )
        configuration.options.connectTimeout = TimeAmount(connectTimeout)
        return configuration
    }
}
