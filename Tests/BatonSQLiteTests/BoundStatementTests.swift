import Foundation
import GRDB
import Testing

@testable import BatonSQLite

/// The store's writes bound and stepped through SQLite's C API keep GRDB's promises: values stored as GRDB
/// stores them, errors as GRDB throws them, and never a write outside the transaction.
@Suite struct BoundStatementTests {
    private let queue: DatabaseQueue

    init() throws {
        queue = try DatabaseQueue()
        try queue.write { try $0.execute(sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, value ANY, UNIQUE (value))") }
    }

    private static let insert = "INSERT INTO t (id, value) VALUES (?, ?)"

    @Test func everyKindOfValueIsStoredAsGRDBStoresIt() throws {
        let values: [(any SQLiteArgument, DatabaseValue)] = [
            (Int64(-7), (-7 as Int64).databaseValue), (42, 42.databaseValue), (true, true.databaseValue),
            (2.5, 2.5.databaseValue), ("père", "père".databaseValue), ("", "".databaseValue),
            (Data([0, 1, 255]), Data([0, 1, 255]).databaseValue), (Data(), Data().databaseValue),
            (String?.none, .null), (String?.some("x"), "x".databaseValue),
        ]
        try queue.write { db in
            for (id, (value, _)) in values.enumerated() {
                try db.cachedStatement(sql: Self.insert).run(binding: [id, value], in: db)
            }
        }
        let stored = try queue.read { try Row.fetchAll($0, sql: "SELECT value FROM t ORDER BY id") }
        #expect(stored.map { $0[0] as DatabaseValue } == values.map(\.1))
        let kinds = try queue.read { try String.fetchAll($0, sql: "SELECT typeof(value) FROM t ORDER BY id") }
        #expect(kinds[5] == "text" && kinds[7] == "blob", "empty text and an empty blob are not NULL")
    }

    @Test func aFailingWriteThrowsAsGRDBDoesAndItsStatementServesTheNextOne() throws {
        try queue.write { db in
            let statement = try db.cachedStatement(sql: Self.insert)
            try statement.run(binding: [1, "taken"], in: db)
            let error = #expect(throws: DatabaseError.self) { try statement.run(binding: [2, "taken"], in: db) }
            #expect(error?.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE)
            #expect(error?.message?.contains("UNIQUE constraint failed") == true)
            try statement.run(binding: [2, "free"], in: db)
            #expect(throws: DatabaseError.self, "too few arguments") { try statement.run(binding: [3], in: db) }
        }
        #expect(try queue.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM t") } == 2)
    }

    @Test func rowsAreReadColumnByColumnFirstOrAllInOrder() throws {
        try queue.write { db in
            for (id, value) in [(1, "a"), (2, ""), (3, "ç")] as [(Int, String)] {
                try db.cachedStatement(sql: Self.insert).run(binding: [id, value], in: db)
            }
            try db.cachedStatement(sql: Self.insert).run(binding: [4, Data([7])], in: db)
            try db.cachedStatement(sql: Self.insert).run(binding: [5, String?.none], in: db)
        }
        try queue.read { db in
            let all = try db.cachedStatement(sql: "SELECT id, value FROM t WHERE id < ? ORDER BY id DESC")
            #expect(try all.allRows(binding: [4], in: db) { "\($0.int64(0)):\($0.text(1))" } == ["3:ç", "2:", "1:a"])
            #expect(try all.firstRow(binding: [4], in: db) { $0.int64(0) } == 3, "the first row only")
            #expect(try all.firstRow(binding: [1], in: db) { $0.int64(0) } == nil, "no row")
            let one = try db.cachedStatement(sql: "SELECT value, value IS NULL FROM t WHERE id = ?")
            #expect(try one.firstRow(binding: [4], in: db) { $0.data(0) } == Data([7]))
            #expect(try one.firstRow(binding: [2], in: db) { $0.isNull(0) } == false, "empty text is not NULL")
            #expect(try one.firstRow(binding: [5], in: db) { $0.isNull(0) && $0.optionalInt64(0) == nil } == true)
            #expect(try one.firstRow(binding: [1], in: db) { $0.optionalInt64(1) } == 0)
            #expect(throws: DatabaseError.self) {
                try db.cachedStatement(sql: "SELECT json_extract(?, '$')").firstRow(binding: ["{"], in: db) { _ in 0 }
            }
        }
    }

    @Test func aWriteOutsideATransactionIsRefused() throws {
        queue.writeWithoutTransaction { db in
            let error = #expect(throws: DatabaseError.self) {
                try db.cachedStatement(sql: Self.insert).run(binding: [1, "alone"], in: db)
            }
            #expect(error?.resultCode == .SQLITE_ABORT)
        }
        #expect(try queue.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM t") } == 0)
    }
}
