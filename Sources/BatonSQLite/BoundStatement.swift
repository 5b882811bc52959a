import Foundation
import GRDB
import GRDBSQLite

/// A value bound to a statement's parameter through SQLite's C API: the integer, real, text and blob types the
/// store writes, and `nil` (SQL `NULL`) for an optional one.
protocol SQLiteArgument {
    /// Binds the value to parameter `index` (1-based) of `statement`; SQLite's result code.
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32
}

/// SQLite copies the bytes before the bind call returns (`SQLITE_TRANSIENT`).
private let copiedBySQLite = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

extension Int64: SQLiteArgument {
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32 { sqlite3_bind_int64(statement, index, self) }
}

extension Int: SQLiteArgument {
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32 {
        sqlite3_bind_int64(statement, index, Int64(self))
    }
}

extension Bool: SQLiteArgument {
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32 {
        sqlite3_bind_int64(statement, index, self ? 1 : 0)
    }
}

extension Double: SQLiteArgument {
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32 { sqlite3_bind_double(statement, index, self) }
}

extension String: SQLiteArgument {
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32 {
        var text = self
        return text.withUTF8 { bytes in
            // An empty buffer may have no address, which SQLite would take for NULL.
            bytes.isEmpty
                ? sqlite3_bind_text(statement, index, "", 0, copiedBySQLite)
                : bytes.withMemoryRebound(to: CChar.self) {
                    sqlite3_bind_text(statement, index, $0.baseAddress, Int32($0.count), copiedBySQLite)
                }
        }
    }
}

extension Data: SQLiteArgument {
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32 {
        // An empty blob, not NULL.
        guard !isEmpty else { return sqlite3_bind_zeroblob(statement, index, 0) }
        return withUnsafeBytes { sqlite3_bind_blob(statement, index, $0.baseAddress, Int32($0.count), copiedBySQLite) }
    }
}

extension Optional: SQLiteArgument where Wrapped: SQLiteArgument {
    func bind(to statement: OpaquePointer, at index: Int32) -> Int32 {
        switch self {
        case .some(let value): value.bind(to: statement, at: index)
        case .none: sqlite3_bind_null(statement, index)
        }
    }
}

/// The columns of the row a query stands on, read by index (0-based) through SQLite's C API.
struct ColumnReader {
    fileprivate let statement: OpaquePointer

    /// Whether the column is `NULL`.
    func isNull(_ column: Int32) -> Bool { sqlite3_column_type(statement, column) == SQLITE_NULL }

    /// An integer column (0 for `NULL`).
    func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(statement, column) }

    /// An integer column that may be `NULL`.
    func optionalInt64(_ column: Int32) -> Int64? { isNull(column) ? nil : int64(column) }

    /// A text column (empty for `NULL`).
    func text(_ column: Int32) -> String {
        guard let bytes = sqlite3_column_text(statement, column) else { return "" }
        let count = Int(sqlite3_column_bytes(statement, column))
        return String(decoding: UnsafeBufferPointer(start: bytes, count: count), as: UTF8.self)
    }

    /// A blob column, or a text one's bytes (empty for `NULL`).
    func data(_ column: Int32) -> Data {
        guard let bytes = sqlite3_column_blob(statement, column) else { return Data() }
        return Data(bytes: bytes, count: Int(sqlite3_column_bytes(statement, column)))
    }
}

extension Statement {
    /// Runs this statement (one that returns no rows) with `arguments`, binding and stepping it through SQLite's
    /// C API: for the one-row writes of every message, GRDB's `execute(arguments:)` — its arguments' boxing,
    /// bookkeeping for database observation this store never uses — cost about as much as SQLite's own work.
    /// - Throws: A `DatabaseError` as GRDB throws it for a failing statement (a broken constraint, a full disk),
    ///   or `SQLITE_ABORT` if no transaction is open: SQLite rolled one back after an error, and a write now
    ///   would commit on its own.
    func run(binding arguments: [any SQLiteArgument], in db: Database) throws {
        guard sqlite3_get_autocommit(db.sqliteConnection) == 0 else {
            throw DatabaseError(resultCode: .SQLITE_ABORT, message: "no transaction is open", sql: sql)
        }
        try forEachRow(binding: arguments, in: db) { _ in true }
    }

    /// Runs this query with `arguments` through SQLite's C API (as ``run(binding:in:)``) and reads its first row
    /// with `read`; `nil` if it has none.
    func firstRow<T>(
        binding arguments: [any SQLiteArgument],
        in db: Database,
        _ read: (ColumnReader) throws -> T
    ) throws -> T? {
        var first: T?
        try forEachRow(binding: arguments, in: db) { row in
            first = try read(row)
            return false
        }
        return first
    }

    /// Runs this query with `arguments` through SQLite's C API and reads each of its rows with `read`, in order.
    func allRows<T>(
        binding arguments: [any SQLiteArgument],
        in db: Database,
        _ read: (ColumnReader) throws -> T
    ) throws -> [T] {
        var rows: [T] = []
        try forEachRow(binding: arguments, in: db) { row in
            rows.append(try read(row))
            return true
        }
        return rows
    }

    /// Binds `arguments`, steps through the rows while `body` asks for the next one, and leaves the statement
    /// reset and unbound for its next use.
    private func forEachRow(
        binding arguments: [any SQLiteArgument],
        in db: Database,
        _ body: (ColumnReader) throws -> Bool
    ) throws {
        let connection = db.sqliteConnection
        let handle = sqliteStatement
        sqlite3_reset(handle)
        defer {
            sqlite3_reset(handle)
            sqlite3_clear_bindings(handle)
        }
        guard arguments.count == Int(sqlite3_bind_parameter_count(handle)) else {
            throw DatabaseError(
                resultCode: .SQLITE_MISUSE,
                message: "\(arguments.count) arguments for \(sqlite3_bind_parameter_count(handle)) parameters",
                sql: sql
            )
        }
        for (offset, argument) in arguments.enumerated() {
            let code = argument.bind(to: handle, at: Int32(offset + 1))
            guard code == SQLITE_OK else { throw failure(code, connection) }
        }
        while true {
            switch sqlite3_step(handle) {
            case SQLITE_ROW:
                guard try body(ColumnReader(statement: handle)) else { return }
            case SQLITE_DONE:
                return
            case let code:
                throw failure(code, connection)
            }
        }
    }

    /// The error SQLite reported with `code` (an extended result code: GRDB turns them on).
    private func failure(_ code: Int32, _ connection: OpaquePointer?) -> DatabaseError {
        DatabaseError(
            resultCode: ResultCode(rawValue: code),
            message: String(cString: sqlite3_errmsg(connection)),
            sql: sql
        )
    }
}
