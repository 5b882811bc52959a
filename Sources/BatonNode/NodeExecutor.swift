import DequeModule
import Dispatch
import Foundation
import Synchronization

/// The thread a node handles its messages on: its consumer's batches (the edge checks, the handlers, the
/// transaction, the acks) and its deadline rounds run there, one job at a time.
///
/// A store may then run a transaction on the calling thread, blocking it until the commit, instead of handing
/// it to a queue of its own and resuming the caller afterwards: two thread hops per batch fewer, and no
/// cooperative thread of the process blocked (the SQLite store does so: the embedded benchmark ran about a
/// quarter faster). The relay, the transport's connections and everything else stay on the shared pool, so a
/// node publishes while it handles.
///
/// Tasks run on it with `withTaskExecutorPreference(_:operation:)`; child tasks inherit it. After
/// ``shutdown()``, once its queue is empty, the thread ends; a job that comes later runs on the global
/// executor.
final class NodeExecutor: TaskExecutor {
    private struct State {
        var jobs = Deque<UnownedJob>()
        var shutDown = false
        /// The thread ended: jobs go to the global executor.
        var ended = false
    }

    private let state = Mutex(State())
    private let wake = DispatchSemaphore(value: 0)

    /// Starts the thread, named `name` (``nameThisThread(_:)``).
    init(name: String) {
        Thread { [self] in
            nameThisThread(name)
            run()
        }.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let queued = state.withLock { state in
            guard !state.ended else { return false }
            state.jobs.append(job)
            return true
        }
        if queued {
            wake.signal()
        } else {
            globalConcurrentExecutor.enqueue(ExecutorJob(job))
        }
    }

    /// Whether its thread still runs jobs.
    var isRunning: Bool { state.withLock { !$0.ended } }

    /// Ends the thread once the jobs queued so far have run.
    func shutdown() {
        state.withLock { $0.shutDown = true }
        wake.signal()
    }

    private func run() {
        while true {
            wake.wait()
            let next = state.withLock { state -> UnownedJob?? in
                if let job = state.jobs.popFirst() { return .some(job) }
                guard state.shutDown else { return .some(nil) }  // a wake-up for a job run already
                state.ended = true
                return nil
            }
            guard let next else { return }
            next?.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}

/// Names the calling thread as `top -H`, `perf` and debuggers show it: the system's name, set directly (a thread
/// otherwise keeps the name of the one that started it, a pool thread's), and Foundation's. Linux keeps 15 bytes:
/// the name is cut to its first 15 bytes' characters (a longer one would not be set at all).
package func nameThisThread(_ name: String) {
    var short = Substring(name)
    while short.utf8.count > 15 { short.removeLast() }
    #if os(Linux)
    // The calling thread's own entry, which `pthread_setname_np` writes (Swift's Glibc does not export it).
    let file = open("/proc/thread-self/comm", O_WRONLY)
    if file >= 0 {
        _ = Array(short.utf8).withUnsafeBytes { write(file, $0.baseAddress, $0.count) }
        close(file)
    }
    #endif
    Thread.current.name = String(short)
}
