import Baton
import BatonNode
import Foundation
import HTTPTypes
import Hummingbird
import Logging

/// The web console of a process-manager node, served under `/console` by its ``OperationsEndpoint``: where
/// each instance stands (counts, a filtered list paged by keyset), one instance's timeline beside its
/// definition's diagram with its path highlighted, the node's dead letters, and the operator's actions — abort,
/// retry, resume, replay — which need the console token.
///
/// It reads the node's own store and never writes it: an action is an operator's command the node sends itself
/// (``Node/submit(_:)``), handled as the same command from the CLI is. Pages are plain HTML that reads without
/// JavaScript; a small script of its own (no CDN, nothing from outside) keeps the parts marked live current.
public struct ProcessConsole: Sendable {
    /// The shortest token the console accepts: one an attacker cannot guess.
    public static let minimumTokenLength = 16

    let node: Node
    let hosts: [any ProcessManagerHosting]
    let token: String?
    let logger: Logger

    /// Creates the console of a node.
    /// - Parameters:
    ///   - node: The node whose store it reads and to which it sends the operator's commands.
    ///   - hosts: The node's process managers (at least one: a node without any has no console).
    ///   - token: What an action must carry (`BATON_CONSOLE_TOKEN`); `nil` turns the actions off.
    ///   - logger: Where actions and refusals are logged.
    public init(node: Node, hosts: [any ProcessManagerHosting], token: String?, logger: Logger) {
        precondition(!hosts.isEmpty, "a console shows process managers: give it the node's")
        self.node = node
        self.hosts = hosts
        self.token = token
        self.logger = logger
    }

    /// The console token from `BATON_CONSOLE_TOKEN`: `nil` when it is not set (actions off).
    /// - Throws: ``ConsoleTokenError`` if it is set but shorter than ``minimumTokenLength``.
    public static func token(from environment: [String: String]) throws(ConsoleTokenError) -> String? {
        guard let token = environment["BATON_CONSOLE_TOKEN"], !token.isEmpty else { return nil }
        guard token.count >= minimumTokenLength else {
            throw ConsoleTokenError(
                "BATON_CONSOLE_TOKEN must be at least \(minimumTokenLength) characters (it has \(token.count)): it guards abort, retry, resume and replay"
            )
        }
        return token
    }

    var nodeName: String { node.configuration.name }

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.get("console") { _, _ in Response.redirect(to: "/console/instances", type: .found) }
        router.get("console/console.css") { _, _ in Self.asset(ConsoleAssets.stylesheet, type: "text/css") }
        router.get("console/console.js") { _, _ in Self.asset(ConsoleAssets.script, type: "text/javascript") }
        router.get("console/icon.svg") { _, _ in Self.asset(ConsoleAssets.icon, type: "image/svg+xml") }
        router.get("console/instances") { request, _ in await respond { try await instances(request) } }
        router.get("console/instances/:id") { request, context in
            await respond { try await instance(context.parameters.get("id") ?? "", request) }
        }
        router.post("console/instances/:id/:action") { request, context in
            await respond {
                try await act(
                    on: context.parameters.get("id") ?? "",
                    action: context.parameters.get("action") ?? "",
                    request
                )
            }
        }
        router.get("console/dead-letters") { request, _ in await respond { try await deadLetters(request) } }
        router.get("console/dead-letters/:id") { _, context in
            await respond { try await deadLetter(context.parameters.get("id") ?? "") }
        }
        router.post("console/dead-letters/:id/replay") { request, context in
            await respond { try await replay(context.parameters.get("id") ?? "", request) }
        }
    }

    static func asset(_ text: String, type: String) -> Response {
        Response(
            status: .ok,
            headers: consoleHeaders(contentType: "\(type); charset=utf-8"),
            body: ResponseBody(byteBuffer: ByteBuffer(string: text))
        )
    }

    /// Runs a page, turning what it refuses into a page that says why (400, 403, 404), and a store that cannot
    /// be read into a 503.
    func respond(_ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch let refusal as ConsoleRefusal {
            return page(refusal.status, title: refusal.title, node: nodeName, refusal.page)
        } catch {
            logger.warning("console: the store cannot be read", metadata: ["error": "\(error)"])
            return page(
                .serviceUnavailable,
                title: "Store unavailable",
                node: nodeName,
                "<h1>Store unavailable</h1><p class=\"problem\">The store cannot be read: \(String(describing: error))</p>"
            )
        }
    }

    // MARK: Which process manager, which filter

    /// The process manager a request is about: `pm=`, or the first the node hosts.
    func host(_ query: FormFields) throws(ConsoleRefusal) -> any ProcessManagerHosting {
        guard let name = query["pm"], !name.isEmpty else { return hosts[0] }
        guard let host = hosts.first(where: { $0.processManagerName == name }) else {
            throw .badRequest(
                "no process manager '\(name)' on this node (it hosts: \(hosts.map(\.processManagerName).joined(separator: ", ")))"
            )
        }
        return host
    }

    /// The instance list's filter from its query: `lifecycle` (a lifecycle, `open` or `closed`), `older` (an
    /// age: `90s`, `30m`, `2h`, `7d`), `after` (the page's keyset position), `limit` (1–500).
    static func filter(_ query: FormFields, now: Date) throws(ConsoleRefusal) -> (InstanceFilter, limit: Int) {
        var filter = InstanceFilter()
        switch query["lifecycle"] ?? "" {
        case "": break
        case "open": filter.lifecycles = InstanceFilter.open.lifecycles
        case "closed": filter.lifecycles = InstanceFilter.closed.lifecycles
        case let text:
            guard let lifecycle = ProcessLifecycle(rawValue: text) else {
                throw .badRequest(
                    "lifecycle must be open, closed, \(ProcessLifecycle.allCases.map(\.rawValue).joined(separator: ", ")) — not '\(text)'"
                )
            }
            filter.lifecycles = [lifecycle]
        }
        if let older = query["older"], !older.isEmpty {
            guard let seconds = InstanceFilter.seconds(inAge: older) else {
                throw .badRequest("older must be an age such as 90s, 30m, 2h or 7d — not '\(older)'")
            }
            filter.changedBefore = now.addingTimeInterval(-seconds).roundedToMilliseconds
        }
        if let after = query["after"], !after.isEmpty {
            guard let position = InstancePosition(after) else {
                throw .badRequest("after must be a page position (MILLISECONDS:ID) — not '\(after)'")
            }
            filter.after = position
        }
        var limit = 50
        if let text = query["limit"], !text.isEmpty {
            guard let number = Int(text), (1...500).contains(number) else {
                throw .badRequest("limit must be a number from 1 to 500 — not '\(text)'")
            }
            limit = number
        }
        return (filter, limit)
    }

    // MARK: Pages

    func instances(_ request: Request) async throws -> Response {
        let query = FormFields(request.uri.query ?? "")
        let host = try host(query)
        let now = Date()
        let (filter, limit) = try Self.filter(query, now: now)
        let key = (query["key"] ?? "").trimmingCharacters(in: .whitespaces)
        let processManager = host.processManagerName
        let associations = host.outline.associations
        let stuckAfter = node.configuration.stuckAfter
        let idleSince = now.addingTimeInterval(-Double(stuckAfter.components.seconds))
        // The counts as the node sampled them (every 5 s when it serves metrics): counting anew would read every
        // instance's index entry at each refresh.
        let sample = node.storeSample.flatMap { now.timeIntervalSince($0.sampledAt) < 30 ? $0 : nil }
        let (statistics, listed) = try await node.store.read { work in
            let statistics = try sample?.statistics ?? work.statistics(idleSince: idleSince)
            guard !key.isEmpty else {
                return (statistics, try work.instances(of: processManager, matching: filter, limit: limit + 1))
            }
            // A key is an instance id or the value of one of its associations.
            var ids = try work.instanceVersion(key, processManager: processManager) == nil ? [] : [key]
            for name in associations {
                if let id = try work.instance(associatedWith: key, as: name, processManager: processManager),
                    !ids.contains(id)
                {
                    ids.append(id)
                }
            }
            let found = try ids.compactMap { id -> InstanceSummary? in
                let transitions = try work.transitions(of: processManager, instance: id)
                guard let first = transitions.first, let last = transitions.last,
                    filter.matches(last.lifecycle, updatedAt: last.at, instanceID: id)
                else { return nil }
                return InstanceSummary(
                    instanceID: id,
                    lifecycle: last.lifecycle,
                    version: last.version,
                    startedAt: first.at,
                    updatedAt: last.at
                )
            }
            return (statistics, found)
        }
        let view = InstanceListView(
            processManager: processManager,
            processManagers: hosts.map(\.processManagerName),
            query: query,
            key: key,
            counts: statistics.instances[processManager] ?? [:],
            stuck: statistics.idleInstances[processManager] ?? 0,
            stuckAfter: stuckAfter,
            countedAt: sample?.sampledAt ?? now,
            instances: Array(listed.prefix(limit)),
            next: listed.count > limit ? listed[limit - 1] : nil
        )
        return page(title: "Instances", node: nodeName, view.render())
    }

    func instance(_ id: String, _ request: Request) async throws -> Response {
        let query = FormFields(request.uri.query ?? "")
        let host = try host(query)
        let processManager = host.processManagerName
        let found = try await node.store.read { work -> InstanceView.Stored? in
            guard try work.instanceVersion(id, processManager: processManager) != nil else { return nil }
            let held = try host.failedSteps(of: id, in: work).compactMap { try work.deadLetter(id: $0) }
            return InstanceView.Stored(
                transitions: try work.transitions(of: processManager, instance: id),
                state: try work.storedInstance(id, processManager: processManager)?.state.map(
                    StoredRecord.instanceJSON
                ),
                heldBy: held
            )
        }
        guard let found else {
            throw ConsoleRefusal.notFound("no instance '\(id)' of process manager '\(processManager)'")
        }
        let view = InstanceView(
            id: id,
            outline: host.outline,
            stored: found,
            notice: query["notice"],
            actionsOn: token != nil
        )
        return page(title: "Instance \(id)", node: nodeName, view.render())
    }

    func deadLetters(_ request: Request) async throws -> Response {
        let query = FormFields(request.uri.query ?? "")
        let all = query["all"] == "1"
        let letters = try await node.store.read { try $0.deadLetters(includeReplayed: all, limit: 500) }
        let view = DeadLetterListView(letters: letters, all: all, notice: query["notice"], actionsOn: token != nil)
        return page(title: "Dead letters", node: nodeName, view.render())
    }

    func deadLetter(_ text: String) async throws -> Response {
        guard let id = Int64(text) else { throw ConsoleRefusal.notFound("no dead letter '\(text)'") }
        guard let letter = try await node.store.read({ try $0.deadLetter(id: id) }) else {
            throw ConsoleRefusal.notFound("no dead letter \(id)")
        }
        let view = DeadLetterListView(letters: [letter], all: true, notice: nil, actionsOn: token != nil)
        return page(title: "Dead letter \(id)", node: nodeName, view.renderOne(letter))
    }

    // MARK: Actions

    /// Why an action is refused: actions off, a request from another site, a wrong or missing token.
    func refusal(of request: Request, form: FormFields) -> String? {
        guard let token else {
            return "actions are off: this service was started without BATON_CONSOLE_TOKEN"
        }
        if let site = request.headers[HTTPField.Name("Sec-Fetch-Site")!], !["same-origin", "none"].contains(site) {
            return "a request from another site (\(site)) cannot act"
        }
        if let origin = request.headers[.origin], let authority = request.head.authority,
            origin != "http://\(authority)", origin != "https://\(authority)"
        {
            return "a request from another origin (\(origin)) cannot act"
        }
        guard let given = form["token"], Self.constantTimeEquals(Array(given.utf8), Array(token.utf8)) else {
            return "the console token is wrong or missing"
        }
        return nil
    }

    /// Compares without an early exit, so the time taken says nothing about how much of a guess was right.
    static func constantTimeEquals(_ given: [UInt8], _ expected: [UInt8]) -> Bool {
        var difference = UInt8(given.count == expected.count ? 0 : 1)
        for index in expected.indices {
            difference |= expected[index] ^ (index < given.count ? given[index] : 0)
        }
        return difference == 0
    }

    func form(of request: Request) async throws -> FormFields {
        let body = try await request.body.collect(upTo: 64 * 1024)
        return FormFields(String(buffer: body))
    }

    func checked(_ request: Request, doing action: String, on subject: String) async throws -> FormFields {
        let form = try await form(of: request)
        if let refusal = refusal(of: request, form: form) {
            logger.warning(
                "console: action refused",
                metadata: ["action": "\(action)", "subject": "\(subject)", "reason": "\(refusal)"]
            )
            throw ConsoleRefusal.forbidden(refusal)
        }
        return form
    }

    func act(on id: String, action: String, _ request: Request) async throws -> Response {
        let query = FormFields(request.uri.query ?? "")
        let host = try host(query)
        let processManager = host.processManagerName
        guard ["abort", "retry", "resume"].contains(action) else {
            throw ConsoleRefusal.notFound("no action '\(action)' (abort, retry, resume)")
        }
        let form = try await checked(request, doing: action, on: id)
        let exists = try await node.store.read { try $0.instanceVersion(id, processManager: processManager) != nil }
        guard exists else {
            throw ConsoleRefusal.notFound("no instance '\(id)' of process manager '\(processManager)'")
        }
        let notice: String
        switch action {
        case "abort":
            let reason = (form["reason"] ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            guard !reason.isEmpty else { throw ConsoleRefusal.badRequest("an abort must say why (reason)") }
            try await node.submit(AbortProcess(processManager: processManager, instanceID: id, reason: reason))
            notice = "abort requested: the instance compensates and closes as failed"
        case "retry":
            try await node.submit(RetryProcess(processManager: processManager, instanceID: id))
            notice = "retry requested: its failed step is tried again"
        default:
            try await node.submit(ResumeProcess(processManager: processManager, instanceID: id))
            notice = "resume requested: it goes on without its dead-lettered message"
        }
        logger.notice("console: \(action) requested", metadata: ["baton.process_id": "\(id)"])
        return Response.redirect(
            to:
                "/console/instances/\(queryEncoded(id))?pm=\(queryEncoded(processManager))&notice=\(queryEncoded(notice))",
            type: .normal
        )
    }

    func replay(_ text: String, _ request: Request) async throws -> Response {
        guard let id = Int64(text) else { throw ConsoleRefusal.notFound("no dead letter '\(text)'") }
        _ = try await checked(request, doing: "replay", on: text)
        do {
            try await node.replayDeadLetter(id: id)
        } catch let error as NodeError {
            throw ConsoleRefusal.notFound(error.message)
        }
        logger.notice("console: dead letter replayed", metadata: ["dead_letter": "\(id)"])
        return Response.redirect(
            to: "/console/dead-letters?notice=\(queryEncoded("dead letter \(id) replayed"))",
            type: .normal
        )
    }
}

/// A console token that cannot guard anything.
public struct ConsoleTokenError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong.
    public var message: String

    init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}

/// A request the console answers with a page that says why it will not: 400, 403 or 404.
struct ConsoleRefusal: Error {
    var status: HTTPResponse.Status
    var title: String
    var reason: String

    static func badRequest(_ reason: String) -> ConsoleRefusal {
        ConsoleRefusal(status: .badRequest, title: "Bad request", reason: reason)
    }

    static func forbidden(_ reason: String) -> ConsoleRefusal {
        ConsoleRefusal(status: .forbidden, title: "Refused", reason: reason)
    }

    static func notFound(_ reason: String) -> ConsoleRefusal {
        ConsoleRefusal(status: .notFound, title: "Not found", reason: reason)
    }

    var page: HTML {
        "<h1>\(title)</h1><p class=\"problem\" id=\"problem\">\(reason)</p><p><a href=\"/console/instances\">Back to the instances</a></p>"
    }
}
