import Baton
import BatonSQLite
import BatonTestSupport
import BatonTesting
import Foundation
import Logging
import Synchronization
import Testing

@testable import BatonNode

/// The name of the thread this runs on (`Thread.name`: "" for an unnamed one).
private func currentThreadName() -> String {
    let name = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? ""
    return name.trimmingCharacters(in: .newlines)
}

/// How many jobs ran at once, at most.
private final class Overlap: Sendable {
    private let active = Atomic<Int>(0)
    let mostAtOnce = Atomic<Int>(0)

    func enter() {
        mostAtOnce.max(active.add(1, ordering: .relaxed).newValue, ordering: .relaxed)
    }

    func leave() {
        active.subtract(1, ordering: .relaxed)
    }
}

/// The node's own thread: its batches' transactions run there, not on the store's queue or the shared pool.
@Suite struct NodeExecutorTests {
    /// Tasks that prefer the executor run on its thread (named), one at a time; once it has shut down, a late one
    /// still runs (on the global executor). Without it, the 40 tasks run on the pool's threads, two at once.
    @Test func jobsRunOnItsThreadOneAtATime() async throws {
        let executor = NodeExecutor(name: "baton-node-test-of-a-long-name")
        let counts = Overlap()
        let names = await withTaskExecutorPreference(executor) {
            await withTaskGroup(of: String.self) { group in
                for _ in 0..<40 {
                    group.addTask {
                        counts.enter()
                        usleep(500)
                        counts.leave()
                        return currentThreadName()
                    }
                }
                return await group.reduce(into: Set<String>()) { $0.insert($1) }
            }
        }
        #expect(names == ["baton-node-test"], "its name's first 15 bytes, as Linux keeps them")
        #expect(counts.mostAtOnce.load(ordering: .relaxed) == 1)
        executor.shutdown()
        #expect(try await eventually { !executor.isRunning })
        let late = await withTaskExecutorPreference(executor) { currentThreadName() }
        #expect(late != "baton-node-test", "after the shutdown: the global executor")
    }

    /// A handler runs in the batch's transaction on the node's thread, SQLite store and all: the store writes
    /// on the calling thread. Without the node's executor it runs on a thread of the shared pool; with the
    /// store's asynchronous write, on the writer queue's thread.
    @Test func aBatchsTransactionRunsOnTheNodesThread() async throws {
        let harness = try NodeHarness()
        defer { harness.removeFiles() }
        let threads = Mutex<[String]>([])
        let node = Node(
            configuration: Node.Configuration(name: "orders"),
            store: try SQLiteStore(path: harness.directory.appendingPathComponent("orders.sqlite").path),
            transport: harness.transport,
            handlers: [
                MessageHandlerHost.command(PlaceOrder.self, name: "place-order") { _, _ in
                    threads.withLock { $0.append(currentThreadName()) }
                }
            ],
            timeSource: harness.clock,
            logger: Logger(label: "executor-test")
        )
        try await withRunningNode(node, transport: harness.transport) {
            for index in 0..<3 {
                try await harness.send(PlaceOrder(orderID: "o-\(index)", customer: "Ada"), id: "place-\(index)")
            }
            #expect(try await eventually { threads.withLock { $0.count } == 3 })
        }
        #expect(Set(threads.withLock { $0 }) == ["orders"], "the node's name")
    }
}
