import Baton
import BatonNode
import BatonSQLite
import BatonTestSupport
import ChildProcesses
import Foundation
import Testing

/// Kills a process of two nodes sharing one SQLite file (`BatonCrashProbe shared-store`: messages between the
/// nodes are rows of `SQLiteTransport`, with no inbox and no outbox) at each point of either node's consume path,
/// then runs it again: every workflow finishes, and every effect happens once.
///
/// | guard removed | what fails |
/// | --- | --- |
/// | taking a row in the handler's transaction (deleted at the acknowledgement instead, the inbox still skipped) | the counters, killed after the commit |
@Suite struct SharedStoreCrashTests {
    private static let workflows = 20

    @Test(arguments: Node.FaultPoint.allCases, ["tally", "counter"])
    func aCrashLosesNothingAndDoublesNothing(_ point: Node.FaultPoint, _ node: String) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("shared-crash-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }

        let crashed = try await Self.probe(directory, fault: point.rawValue, node: node)
        #expect(crashed.termination?.signal == SIGKILL, "\(node) must kill itself at \(point): \(crashed.output)")
        let finished = try await Self.probe(directory, fault: "none", node: node)
        #expect(finished.termination?.isSuccess == true, "the run after the crash finishes: \(finished.output)")

        let store = try SQLiteStore(path: directory.appendingPathComponent("shared.sqlite").path, readOnly: true)
        let counters = try await store.read { work in
            try (0..<Self.workflows).map { try work.readStream("counter-t-\($0)").count }
        }
        #expect(counters == Array(repeating: 3, count: Self.workflows), "each bump was recorded once")
        let finishedIDs = try await Self.finishedMessages(in: store)
        #expect(finishedIDs.count == Self.workflows && Set(finishedIDs).count == Self.workflows, "\(finishedIDs)")
        let recorded = try await store.read { work in
            try (0..<Self.workflows).map { try work.hasHandled("start-\($0)", consumer: "tally") }
        }
        #expect(recorded.allSatisfy { $0 }, "a message published from outside is recorded in the inbox")
    }

    /// Runs the probe until it ends (60 s at most).
    private static func probe(
        _ directory: URL,
        fault: String,
        node: String
    ) async throws -> (termination: Termination?, output: String) {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("BatonCrashProbe")
        let process = try ChildProcess(
            binary.path,
            ["shared-store", directory.path, fault, node, String(workflows)],
            output: .capture
        )
        guard try await eventually(timeout: .seconds(60), { !process.isRunning }) else {
            await process.kill()
            return (nil, process.output)
        }
        return (await process.wait(), process.output)
    }

    /// The ids of the `tally.TallyFinished` messages in their queue.
    private static func finishedMessages(in store: SQLiteStore) async throws -> [String] {
        let transport = try SQLiteTransport(store: store)
        let source = try await transport.subscribe(queue: "tally-finished", prefetch: workflows * 2)
        let batch = try await source.nextBatch(maxCount: workflows * 2) ?? []
        await source.cancel()
        return batch.compactMap(\.messageID)
    }
}
