import BatonTestSupport
import ChildProcesses
import Foundation
import Testing

/// A full disk under a running service: inventory's store lives on a small tmpfs the test fills up mid-load.
/// Its transactions fail, its deliveries stay unacknowledged and are tried again with a backoff (a few log
/// lines, not a storm), its readiness says why, and once space comes back it carries on by itself: every order
/// settles, every invariant holds. (Root: the test mounts the tmpfs, and unmounts it.)
@Suite(.serialized) struct DiskFullTests {
    @Test func aServiceWhoseDiskFillsUpWaitsAndCarriesOnByItself() async throws {
        let disk = FileManager.default.temporaryDirectory.appendingPathComponent(TestBroker.unique("disk"))
        try FileManager.default.createDirectory(at: disk, withIntermediateDirectories: true)
        try await run("/usr/bin/mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", disk.path)
        do {
            try await fillsUpAndRecovers(disk)
        } catch {
            await unmount(disk)
            throw error
        }
        await unmount(disk)
    }

    private func fillsUpAndRecovers(_ disk: URL) async throws {
        let filler = disk.appendingPathComponent("filler")
        try await Mesh.run { mesh in
            // SQLite follows the link (to a file: it opens no dangling one): the store, its WAL and its shared
            // memory live on the tmpfs.
            guard
                FileManager.default.createFile(
                    atPath: disk.appendingPathComponent("inventory.sqlite").path,
                    contents: nil
                )
            else { throw TestSupportError("cannot create the store file on the tmpfs") }
            try FileManager.default.createSymbolicLink(
                at: mesh.dataDirectory.appendingPathComponent("inventory.sqlite"),
                withDestinationURL: disk.appendingPathComponent("inventory.sqlite")
            )
            try await mesh.startAll()
            try await mesh.stock("book-0001", 100)
            let inventory = mesh.httpPorts["inventory"]!
            #expect(try await HTTPProbe.get(port: inventory, "health/ready").status == 200)

            try fill(filler)
            for index in 1...20 { try await mesh.checkout("chk-\(index)", lines: [("book-0001", 1)]) }
            let refused = try await eventually(timeout: .seconds(20)) {
                try await HTTPProbe.get(port: inventory, "health/ready").status == 503
            }
            #expect(refused, "not ready while its disk is full")
            let reason = try await HTTPProbe.get(port: inventory, "health/ready").body
            #expect(reason.contains("store: a batch could not commit") && reason.contains("full"), "\(reason)")
            try await Task.sleep(for: .seconds(5))  // a spell of a few seconds at least
            let log = mesh.dataDirectory.appendingPathComponent("inventory.log")
            let lines = try String(contentsOf: log, encoding: .utf8).split(separator: "\n")
            let attempts = lines.filter { $0.contains("batch not committed") }.count
            #expect((1...12).contains(attempts), "one line per backoff step, not a storm: \(attempts)")
            #expect(lines.filter { $0.contains("full") }.count <= 40, "no storm from the other loops either")

            try FileManager.default.removeItem(at: filler)
            let (snapshot, problems) = try await mesh.settle(orders: 20, timeout: .seconds(90))
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.orders.allSatisfy { $0.status == "COMPLETED" }, "every order completed")
            #expect(try await HTTPProbe.get(port: inventory, "health/ready").status == 200, "ready again")
        }
    }

    /// Writes zeros to `file` until the file system has no room left.
    private func fill(_ file: URL) throws {
        guard FileManager.default.createFile(atPath: file.path, contents: nil) else {
            throw TestSupportError("cannot create \(file.path)")
        }
        let handle = try FileHandle(forWritingTo: file)
        defer { try? handle.close() }
        let chunk = Data(count: 64 * 1024)
        while (try? handle.write(contentsOf: chunk)) != nil {}
    }

    private func unmount(_ disk: URL) async {
        _ = try? await ChildProcess.run("/usr/bin/umount", [disk.path])
        try? FileManager.default.removeItem(at: disk)
    }

    private func run(_ command: String, _ arguments: String...) async throws {
        let (termination, output) = try await ChildProcess.run(command, arguments)
        guard termination.isSuccess else { throw TestSupportError("\(command) failed: \(output)") }
    }
}
