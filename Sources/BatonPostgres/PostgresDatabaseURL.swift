import Foundation
import NIOCore
import NIOSSL
import PostgresNIO

/// A PostgreSQL database named by a URL, `postgres://user:password@host:port/database` (`postgresql://` too;
/// the password and the port may be left out), with libpq's `sslmode` and `sslrootcert` parameters for TLS.
/// Its description never shows the password.
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
    /// Whether and how the connection is encrypted (`sslmode`).
    public var tls: TLSMode
    /// The CA certificate (PEM) that signs the server's, for `verify-ca` and `verify-full` (`sslrootcert`); the
    /// system's trusted roots when `nil`.
    public var rootCertificate: String?

    /// `sslmode`, as libpq names its modes. `prefer` and `allow` (which fall back to plain text when the server
    /// offers no TLS) are not offered: a connection is either encrypted or known not to be.
    public enum TLSMode: String, Sendable, Hashable, CaseIterable {
        /// No TLS (the default).
        case disable
        /// TLS, without checking the server's certificate (encrypted, but open to an active attacker).
        case require
        /// TLS, the server's certificate signed by the CA (`sslrootcert`), whatever its name.
        case verifyCA = "verify-ca"
        /// TLS, the server's certificate signed by the CA and issued for the host the URL names.
        case verifyFull = "verify-full"
    }

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
        var tls = TLSMode.disable
        var rootCertificate: String?
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let mode = item.value.flatMap(TLSMode.init(rawValue:)) else {
                    let modes = TLSMode.allCases.map(\.rawValue).joined(separator: ", ")
                    throw PostgresStoreError(
                        .invalidURL,
                        "sslmode=\(item.value ?? "") is not supported: use one of \(modes) (prefer and allow, which may fall back to plain text, are not offered)"
                    )
                }
                tls = mode
            case "sslrootcert":
                guard let path = item.value, !path.isEmpty else { throw invalid("sslrootcert names no file") }
                rootCertificate = path
            default:
                throw invalid("the database URL has an unknown parameter '\(item.name)'")
            }
        }
        if rootCertificate != nil, tls != .verifyCA, tls != .verifyFull {
            throw invalid("sslrootcert is only read with sslmode=verify-ca or verify-full")
        }
        self.host = host
        self.port = components.port ?? 5432
        self.username = user
        self.password = components.password
        self.database = database
        self.tls = tls
        self.rootCertificate = rootCertificate
    }

    /// `postgres://user@host:port/database`, with `:***` for a password and the TLS mode when there is one.
    public var description: String {
        "postgres://\(username)\(password == nil ? "" : ":***")@\(host):\(port)/\(database)"
            + (tls == .disable ? "" : "?sslmode=\(tls.rawValue)")
    }

    /// The settings postgres-nio connects with: TLS as `sslmode` says, a connection attempt given up after
    /// `connectTimeout`.
    /// - Throws: ``PostgresStoreError`` if the CA certificate cannot be read or TLS cannot be set up.
    public func configuration(
        connectTimeout: Duration = .seconds(10)
    ) throws(PostgresStoreError) -> PostgresConnection.Configuration {
        var configuration = PostgresConnection.Configuration(
            host: host,
            port: port,
            username: username,
            password: password,
            database: database,
            tls: try connectionTLS()
        )
        configuration.options.connectTimeout = TimeAmount(connectTimeout)
        return configuration
    }

    private func connectionTLS() throws(PostgresStoreError) -> PostgresConnection.Configuration.TLS {
        guard tls != .disable else { return .disable }
        var settings = TLSConfiguration.makeClientConfiguration()
        switch tls {
        case .disable, .require: settings.certificateVerification = .none
        case .verifyCA: settings.certificateVerification = .noHostnameVerification
        case .verifyFull: settings.certificateVerification = .fullVerification
        }
        do {
            if let rootCertificate {
                settings.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(rootCertificate))
            }
            return .require(try NIOSSLContext(configuration: settings))
        } catch {
            throw PostgresStoreError(
                .invalidURL,
                "TLS for \(self) cannot be set up: \(rootCertificate.map { "sslrootcert \($0): " } ?? "")\(error)"
            )
        }
    }
}
