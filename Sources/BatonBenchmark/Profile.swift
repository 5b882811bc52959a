import ChildProcesses
import Foundation

/// Where the machine's CPU went while a run went on: `perf record -a -g` samples every CPU (499 times a second)
/// with its call chain, and each sample counts for the process it interrupted — a service, the broker, this
/// driver — by library and function it was in (self time), and by the functions of the process's own executable
/// on its call chain (inclusive time: a batch's transaction, a handler).
struct MachineProfile: Codable, Sendable {
    /// A name and its share of the samples, in percent.
    struct Share: Codable, Sendable, Equatable {
        var name: String
        var percent: Double
    }

    /// One process's samples.
    struct Process: Codable, Sendable {
        var name: String
        /// Its share of all the machine's samples (idle included).
        var percent: Double
        /// Its samples by the library they were in (shares of its own samples).
        var libraries: [Share]
        /// Its samples by the function they were in (shares of its own samples).
        var functions: [Share]
        /// Its samples by the functions of its own executable on their call chains (shares of its own samples),
        /// without those on nearly every chain (entry points, run loops).
        var inclusive: [Share]
    }

    var samples: Int
    var processes: [Process]

    /// Samples per second and CPU.
    static let frequency = 499

    /// Checks that `perf` can record every CPU here, before a run that would end with it.
    /// - Throws: ``ProfileError`` saying what is missing.
    static func checkRecorder() async throws {
        let probe = try? await ChildProcess.run("perf", ["record", "-a", "-q", "-o", "/dev/null", "--", "true"])
        guard let probe, probe.termination.isSuccess else {
            throw ProfileError(
                description:
                    "--profile needs perf, allowed to sample every CPU (Debian: linux-perf; kernel.perf_event_paranoid ≤ 0 or root): \(probe?.output ?? "perf not found")"
            )
        }
    }

    /// Starts `perf record` over every CPU, writing to `path`; stop it with ``finish(_:path:names:)``.
    /// - Throws: `ChildProcessError` if `perf` cannot be started.
    static func start(writingTo path: String) throws -> ChildProcess {
        try ChildProcess("perf", ["record", "-a", "-g", "-F", String(frequency), "-o", path, "-q"], output: .capture)
    }

    /// Stops the recording and reads it: the processes in `names` (by pid), the others together as `other`
    /// and the idle CPUs as `idle`.
    static func finish(_ recording: ChildProcess, path: String, names: [pid_t: String]) async throws -> MachineProfile {
        recording.send(SIGINT)
        let stopped = await recording.wait()
        guard stopped.isSuccess || stopped.signal == SIGINT else {
            throw ProfileError(description: "perf record \(stopped): \(recording.output)")
        }
        let (termination, script) = try await ChildProcess.run("perf", ["script", "-i", path, "-F", "pid,ip,sym,dso"])
        guard termination.isSuccess else {
            throw ProfileError(description: "perf script \(termination): \(script.prefix(1_000))")
        }
        return parse(script, names: names, readable: await demangled(swiftSymbols(in: script)))
    }

    /// The profile of `perf script -F pid,ip,sym,dso` output: per sample a line with the pid, then its call
    /// chain, innermost first, a frame per tab-indented line (`ip symbol (library path)`).
    /// - Parameters:
    ///   - names: The processes to tell apart, by pid.
    ///   - readable: Symbols' readable names (Swift's demangled); the samples of the names that a symbol's
    ///     several parts share (an async function's partial functions) count together.
    ///   - top: How many libraries and functions per process (twice as many on the call chains).
    static func parse(
        _ script: String,
        names: [pid_t: String],
        readable: [String: String] = [:],
        top: Int = 8
    ) -> MachineProfile {
        struct Counts {
            var total = 0
            var libraries: [String: Int] = [:]
            var functions: [String: Int] = [:]
            var inclusive: [String: Int] = [:]
        }
        var counts: [String: Counts] = [:]
        var samples = 0
        var process: String?
        var chain: [(function: String, library: String)] = []
        func count() {
            guard let process, let (function, library) = chain.first else { return }
            samples += 1
            var entry = counts[process, default: Counts()]
            entry.total += 1
            entry.libraries[library, default: 0] += 1
            entry.functions[function == "[unknown]" ? "[unknown] in \(library)" : function, default: 0] += 1
            let own = chain.filter { !$0.library.contains(".so") && !$0.library.hasPrefix("[") }
            for function in Set(own.map(\.function)) where isNamed(function) {
                entry.inclusive[function, default: 0] += 1
            }
            counts[process] = entry
        }
        for line in script.split(separator: "\n") {
            guard line.first == "\t" else {
                count()
                chain = []
                process = line.split(separator: " ").first.flatMap { pid_t($0) }.map {
                    $0 == 0 ? "idle" : names[$0] ?? "other"
                }
                continue
            }
            var frame = symbolAndLibrary(of: line)
            if frame.hasSuffix(" (deleted))") { frame = frame.dropLast(" (deleted))".count) + ")" }
            var (function, library) = (String(frame), "[unknown]")
            if frame.hasSuffix(")"), let open = frame.lastIndex(of: "(") {
                let path = frame[frame.index(after: open)..<frame.index(before: frame.endIndex)]
                function = frame[..<open].trimmingCharacters(in: .whitespaces)
                library = String(path.split(separator: "/").last ?? path)
            }
            chain.append((readable[function] ?? function, library))
        }
        count()
        func shares(_ counts: [String: Int], of total: Int, below limit: Double = 101, top: Int = top) -> [Share] {
            counts.map { Share(name: $0.key, percent: 100 * Double($0.value) / Double(total)) }
                .filter { $0.percent < limit }
                .sorted { ($0.percent, $1.name) > ($1.percent, $0.name) }
                .prefix(top).map { $0 }
        }
        let processes = counts.map { name, entry in
            Process(
                name: name,
                percent: 100 * Double(entry.total) / Double(max(samples, 1)),
                libraries: shares(entry.libraries, of: entry.total),
                functions: shares(entry.functions, of: entry.total),
                inclusive: shares(entry.inclusive, of: entry.total, below: 90, top: top * 2)
            )
        }
        return MachineProfile(samples: samples, processes: processes.sorted { $0.percent > $1.percent })
    }

    /// Whether a function on a call chain says where the time goes: not an unknown address, a compiler's
    /// wrapper (a thunk, a partial application, a witness) nor an anonymous closure, which stand on the chain
    /// beside the function they wrap or are written in.
    static func isNamed(_ function: String) -> Bool {
        let wrappers = [
            "[unknown]", "partial apply for ", "thunk for ", "reabstraction thunk", "protocol witness for ",
            "closure #", "specialized closure #", "implicit closure #",
        ]
        return !wrappers.contains { function.hasPrefix($0) }
    }

    /// A frame line of `perf script` output (`\t<ip> <symbol> (<library>)`) without its indent and address.
    private static func symbolAndLibrary(of line: Substring) -> Substring {
        line.drop { $0 == "\t" || $0 == " " }.drop { $0 != " " }.dropFirst()
    }

    /// The Swift symbols (`$s…`) on the frames of `perf script` output.
    static func swiftSymbols(in script: String) -> Set<String> {
        var symbols: Set<String> = []
        for line in script.split(separator: "\n") where line.first == "\t" {
            let frame = symbolAndLibrary(of: line)
            if frame.hasPrefix("$s"), let end = frame.firstIndex(of: " ") { symbols.insert(String(frame[..<end])) }
        }
        return symbols
    }

    /// Swift symbols' readable names (`swift demangle --simplified`), or none without the toolchain.
    static func demangled(_ symbols: Set<String>) async -> [String: String] {
        let ordered = symbols.sorted()
        let list = FileManager.default.temporaryDirectory.appendingPathComponent("baton-symbols-\(getpid())").path
        guard !ordered.isEmpty,
            FileManager.default.createFile(atPath: list, contents: Data(ordered.joined(separator: "\n").utf8))
        else { return [:] }
        defer { try? FileManager.default.removeItem(atPath: list) }
        guard
            let (termination, output) = try? await ChildProcess.run(
                "sh",
                ["-c", "swift demangle --simplified --compact < \"$0\"", list]
            ),
            termination.isSuccess
        else { return [:] }
        let names = output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard names.count >= ordered.count else { return [:] }
        return Dictionary(uniqueKeysWithValues: zip(ordered, names))
    }

    /// The profile as lines of the summary.
    var lines: [String] {
        var lines = ["profile of the mesh at 50% (perf record -a -g, \(samples) samples; self time, then inclusive):"]
        for process in processes {
            lines.append(String(format: "  %@ %.1f%% of the machine", process.name, process.percent))
            lines.append(
                "    by library: "
                    + process.libraries.map { String(format: "%@ %.0f%%", $0.name, $0.percent) }.joined(separator: ", ")
            )
            guard process.name != "idle" else { continue }
            for function in process.functions {
                lines.append(String(format: "    %5.1f%% %@", function.percent, String(function.name.prefix(110))))
            }
            if !process.inclusive.isEmpty { lines.append("    on the call chain, in its own code:") }
            for function in process.inclusive {
                lines.append(String(format: "    %5.1f%% %@", function.percent, String(function.name.prefix(110))))
            }
        }
        return lines
    }
}

/// `perf` failed: what it said.
struct ProfileError: Error, CustomStringConvertible {
    var description: String
}
