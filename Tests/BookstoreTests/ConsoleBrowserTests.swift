import Baton
import BatonNode
import BatonTestSupport
import ChildProcesses
import Foundation
import Fulfillment
import Testing

/// The fulfillment node's web console in a real browser: Playwright drives Debian's Chromium, headless, against a
/// running mesh (Tests/Browser/console_browser.py), and what the browser saw is checked against the store.
@Suite(.serialized) struct ConsoleBrowserTests {
    static let token = "browser-test-console-token"
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Browser/console_browser.py")

    /// What the browser showed of a timeline row.
    struct Row: Decodable, Equatable {
        var version: Int64
        var trigger: String
        var lifecycle: String
        var issued: [String]
    }

    /// What the browser saw (the script's JSON).
    struct Seen: Decodable {
        struct Timeline: Decodable {
            var timeline: [Row]
            var lifecycle: String
            var diagram: Diagram?
        }
        struct Diagram: Decodable {
            var visited: [String: [Int64]]
            var current: String?
        }
        struct Page: Decodable {
            var status: Int
            var problem: String
        }
        struct Place: Decodable {
            var lifecycle: String
            var version: String
        }
        struct Scripted: Decodable {
            var shown: String
            var scripts: Int
        }
        struct Aborted: Decodable {
            var lifecycle: String
            var reason: String
            var same_page: Bool
        }
        var errors: [String]
        var dialogs: [String]
        var counts: [String: Int]
        var found: [String]
        var completed: Timeline
        var compensated: Timeline
        var scripted: Scripted
        var open_before: Place
        var refused: Page
        var open_after_refusal: Place
        var notice: String
        var aborted: Aborted
        var unknown: Page
        var malformed: Page
    }

    /// The rows the console must show for an instance's stored transitions.
    static func rows(_ transitions: [ProcessTransition]) -> [Row] {
        transitions.map { transition in
            let trigger =
                switch transition.trigger {
                case .event(let envelope): envelope.messageName
                case .timer(let name, _): "timer \(name)"
                case .abort: "abort"
                }
            return Row(
                version: transition.version,
                trigger: trigger,
                lifecycle: transition.lifecycle.rawValue,
                issued: transition.issued.map(\.envelope.messageName)
            )
        }
    }

    @Test func anOperatorFindsFollowsAndAbortsOrdersInTheBrowser() async throws {
        try await Mesh.run(stepTimeout: 300, environment: ["BATON_CONSOLE_TOKEN": Self.token]) { mesh in
            try await mesh.startAll()
            try await mesh.stock("book-0001", 20)
            try await mesh.checkout("chk-done", lines: [("book-0001", 1)])
            try await mesh.checkout("chk-blank", address: "", lines: [("book-0001", 1)])  // shipping refuses it
            try await mesh.checkout(
                "chk-script",
                address: "<script>alert('owned')</script> 1 Baker St",
                lines: [("book-0001", 1)]
            )
            let (settled, problems) = try await mesh.settle(orders: 3)
            #expect(problems.isEmpty, "\(problems)")
            // An order left open: shipping is down, so it waits for its shipment (the step timeout is long).
            _ = await mesh.stop("shipping")
            try await mesh.checkout("chk-open", lines: [("book-0001", 1)])
            let orderID = { (checkout: String) async throws -> String in
                let snapshot = try await mesh.snapshot()
                return try #require(snapshot.orders.first { $0.checkoutID == checkout }?.orderID)
            }
            let (done, blank, scripted) = try await (orderID("chk-done"), orderID("chk-blank"), orderID("chk-script"))
            #expect(settled.orders.count == 3)
            var open = ""
            let running = try await eventually {
                guard let id = try? await orderID("chk-open") else { return false }
                open = id
                let transitions = try await mesh.readOptions.read(from: "fulfillment") {
                    try $0.transitions(of: "fulfillment", instance: id)
                }
                return transitions.last?.lifecycle == .running
            }
            #expect(running, "the open order waits for its shipment")

            let output = mesh.dataDirectory.appendingPathComponent("browser.json")
            let (termination, log) = try await ChildProcess.run(
                "/usr/bin/env",
                [
                    "python3", Self.script.path, "--url", "http://127.0.0.1:\(mesh.httpPorts["fulfillment"]!)/console",
                    "--token", Self.token, "--completed", done, "--compensated", blank, "--scripted", scripted,
                    "--open", open, "--out", output.path,
                ],
                environment: ProcessInfo.processInfo.environment
            )
            try #require(
                termination.exitCode == 0,
                "the browser run failed (Deploy/local/setup.sh installs chromium and playwright): \(log)"
            )
            let seen = try JSONDecoder().decode(Seen.self, from: Data(contentsOf: output))
            let stored = { (id: String) async throws -> [ProcessTransition] in
                try await mesh.readOptions.read(from: "fulfillment") {
                    try $0.transitions(of: "fulfillment", instance: id)
                }
            }

            #expect(seen.errors.isEmpty, "no JavaScript error, no failed load: \(seen.errors)")
            #expect(seen.counts["completed"] == 2 && seen.counts["failed"] == 1 && seen.counts["running"] == 1)
            #expect(seen.found == [done], "the key finds the order")
            // Every step shown is the stored one: trigger, lifecycle after it, what it issued.
            #expect(seen.completed.timeline == Self.rows(try await stored(done)))
            #expect(seen.completed.lifecycle == "completed")
            let compensated = try await stored(blank)
            #expect(seen.compensated.timeline == Self.rows(compensated))
            #expect(seen.compensated.lifecycle == "failed")
            // The diagram highlights the compensated order's path, each step at the versions it was taken.
            let outline = FulfillmentService.processManager(stepTimeout: .seconds(30)).outline
            let path = ProcessPath(outline: outline, transitions: compensated)
            #expect(seen.compensated.diagram?.visited == path.visits)
            #expect(seen.compensated.diagram?.visited["handle:shipping.ShipmentFailed.v1"] != nil)
            #expect(seen.compensated.diagram?.current == "failed")
            // A <script> in an address is shown as text and runs nothing.
            #expect(seen.scripted.shown.contains("<script>alert('owned')</script> 1 Baker St"))
            #expect(seen.scripted.scripts == 0 && seen.dialogs.isEmpty)
            // A wrong token changes nothing; the right one aborts, and the page shows it without a reload.
            #expect(seen.refused.status == 403 && seen.refused.problem.contains("token is wrong or missing"))
            #expect(
                seen.open_before.lifecycle == "running" && seen.open_after_refusal.version == seen.open_before.version
            )
            #expect(seen.notice.contains("abort requested"))
            #expect(seen.aborted.lifecycle == "failed" && seen.aborted.same_page)
            #expect(seen.aborted.reason == "aborted in the browser test")
            let aborted = try await stored(open)
            #expect(aborted.last?.trigger == .abort(messageID: abortID(aborted), reason: "aborted in the browser test"))
            #expect(aborted.last?.lifecycle == .failed)
            #expect(aborted.last?.issued.map(\.envelope.messageName).contains("orders.CancelOrder") == true)
            #expect(seen.unknown.status == 404 && seen.unknown.problem.contains("no instance 'no-such-order'"))
            #expect(seen.malformed.status == 400 && seen.malformed.problem.contains("not 'sideways'"))
        }
    }

    private func abortID(_ transitions: [ProcessTransition]) -> String {
        if case .abort(let id, _) = transitions.last?.trigger { return id }
        return ""
    }
}
