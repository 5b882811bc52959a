import Baton
import BatonNode
import Foundation
import GRDB
import Testing

@testable import BatonSQLite

/// The instance listing's query plans on a store of a realistic shape (20,000 instances, almost all closed): each
/// lifecycle is one search of the `process_instances_listed` index read in order, never a scan of the table and
/// never a sort of the range — so the web console's pages cost the same at a million instances (the benchmark's scale part
/// measures it) as here.
@Suite struct InstanceListingPlanTests {
    @Test func everyListingSearchesTheIndexRangeOfEachLifecycle() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("listing-\(UUID().uuidString).sqlite")
        defer { try? FileManager.default.removeItem(at: path) }
        let store = try SQLiteStore(path: path.path)
        try await store.write { _ in }  // migrated
        let database = try DatabaseQueue(path: path.path)
        try await database.write { db in
            let insert = try db.makeStatement(
                sql: """
                    INSERT INTO process_instances (process_manager, instance_id, lifecycle, version, started_at, updated_at)
                    VALUES ('pm', ?, ?, 3, ?, ?)
                    """
            )
            for index in 0..<20_000 {
                let lifecycle = index % 2_000 == 0 ? "failed" : index % 50 == 0 ? "running" : "completed"
                try insert.execute(arguments: ["i-\(index)", lifecycle, Double(index), Double(index) + 0.5])
            }
            try db.execute(sql: "ANALYZE")
        }
        let middle = InstancePosition(updatedAt: Date(timeIntervalSince1970: 10_000.5), instanceID: "i-10000")
        for filter in [
            InstanceFilter(), InstanceFilter(lifecycles: [.failed]), InstanceFilter.open, InstanceFilter(after: middle),
            InstanceFilter(lifecycles: [.completed], changedBefore: Date(timeIntervalSince1970: 5_000), after: middle),
        ] {
            let (sql, arguments) = SQLiteUnitOfWork.instanceListing(of: "pm", matching: filter, limit: 50)
            let plan = try await database.read { db in
                try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + sql, arguments: arguments).map {
                    $0["detail"] as String
                }
            }
            let lifecycles = filter.lifecycles.isEmpty ? ProcessLifecycle.allCases.count : filter.lifecycles.count
            let searches = plan.filter { $0.hasPrefix("SEARCH process_instances USING INDEX process_instances_listed") }
            #expect(searches.count == lifecycles, "one index range per lifecycle: \(plan)")
            #expect(!plan.contains { $0.hasPrefix("SCAN process_instances") }, "no scan: \(plan)")
            // A range is read in the index's order, never sorted: the only sorts are of what each range gave (at
            // most `limit` rows) for the merge, after the range's co-routine.
            let sortedRanges = zip(plan, plan.dropFirst()).filter {
                $0.0.hasPrefix("SEARCH process_instances") && $0.1.contains("TEMP B-TREE")
            }
            #expect(sortedRanges.isEmpty, "\(plan)")
        }
        // And the pages are right: the 10 failed ones, newest first; the page after the middle starts below it.
        let failed = try await store.read {
            try $0.instances(of: "pm", matching: InstanceFilter(lifecycles: [.failed]), limit: 50)
        }
        #expect(failed.map(\.instanceID) == stride(from: 18_000, through: 0, by: -2_000).map { "i-\($0)" })
        let next = try await store.read {
            try $0.instances(of: "pm", matching: InstanceFilter(after: middle), limit: 2)
        }
        #expect(next.map(\.instanceID) == ["i-9999", "i-9998"])
    }
}
