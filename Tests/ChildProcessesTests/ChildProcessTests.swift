import ChildProcesses
import Foundation
import Testing

@Suite struct ChildProcessTests {
    @Test func runReportsTheExitCodeAndTheOutputOfBothStreams() async throws {
        let (termination, output) = try await ChildProcess.run("sh", ["-c", "echo out; echo err >&2; exit 3"])
        #expect(termination.exitCode == 3)
        #expect(!termination.isSuccess)
        #expect(termination.signal == nil)
        #expect(output == "out\nerr\n")
    }

    @Test func theEnvironmentIsTheParentsWithTheGivenVariablesOnTop() async throws {
        let (termination, output) = try await ChildProcess.run(
            "sh",
            ["-c", "echo \"$BATON_CHILD_TEST:${PATH:+has-path}\""],
            environment: ["BATON_CHILD_TEST": "given"]
        )
        #expect(termination.isSuccess)
        #expect(output == "given:has-path\n")
    }

    @Test func aCommandThatCannotBeStartedThrowsNamingIt() {
        #expect(throws: ChildProcessError.self) { try ChildProcess("baton-no-such-command") }
        #expect(throws: ChildProcessError.self) {
            try ChildProcess("true", output: .appending(to: "/nonexistent-directory/log"))
        }
    }

    @Test func killEndsItWithSIGKILLAndStopWithSIGTERM() async throws {
        let killed = try ChildProcess("sleep", ["60"])
        #expect(killed.isRunning)
        #expect(await killed.kill().signal == SIGKILL)
        #expect(!killed.isRunning)

        let stopped = try ChildProcess("sleep", ["60"])
        #expect(await stopped.stop().signal == SIGTERM)
    }

    @Test func aChildStartsWithSIGTERMDeliverableEvenWhenTheSpawningThreadBlocksIt() async throws {
        var blocked = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGTERM)
        var previous = sigset_t()
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        let child = try ChildProcess("sleep", ["60"])
        pthread_sigmask(SIG_SETMASK, &previous, nil)
        #expect(await child.stop().signal == SIGTERM)
    }

    @Test func waitingDoesNotWaitForABackgroundChildThatKeepsTheOutputOpen() async throws {
        let started = ContinuousClock.now
        let (termination, _) = try await ChildProcess.run("sh", ["-c", "sleep 30 & echo started"])
        #expect(termination.isSuccess)
        #expect(ContinuousClock.now - started < .seconds(20), "the wait ends with the child, not with its descendants")
    }

    @Test func manyWaitersOfOneChildAllSeeTheSameEnd() async throws {
        let child = try ChildProcess("sh", ["-c", "sleep 0.2; exit 7"])
        let ends = await withTaskGroup(of: Termination.self) { group in
            for _ in 0..<4 { group.addTask { await child.wait() } }
            group.addTask {
                while child.isRunning { try? await Task.sleep(for: .milliseconds(5)) }
                return await child.wait()
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(ends.count == 5)
        #expect(ends.allSatisfy { $0.exitCode == 7 })
    }

    @Test func outputAppendsToAFileAcrossRuns() async throws {
        let log = NSTemporaryDirectory() + "/baton-child-test-\(UUID().uuidString).log"
        defer { unlink(log) }
        for word in ["one", "two"] {
            let child = try ChildProcess("echo", [word], output: .appending(to: log))
            #expect(await child.wait().isSuccess)
        }
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "one\ntwo\n")
    }
}
