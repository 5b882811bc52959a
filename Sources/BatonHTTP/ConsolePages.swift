import Baton
import BatonNode
import Foundation

/// A time as the console shows it: ISO 8601 with milliseconds, UTC.
private func time(_ date: Date) -> String { ISO8601Milliseconds.format(date) }

/// A message body as the console shows it: JSON indented with sorted keys, other text as it is, bytes by size.
private func body(_ data: Data) -> String {
    if let object = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]),
        let pretty = try? JSONSerialization.data(
            withJSONObject: object,
            options: [.prettyPrinted, .sortedKeys, .fragmentsAllowed, .withoutEscapingSlashes]
        )
    {
        return String(decoding: pretty, as: UTF8.self)
    }
    return String(data: data, encoding: .utf8) ?? "(\(data.count) bytes, not text)"
}

/// What the action before said (the redirect's `notice=`), shown as text.
private func noticeParagraph(_ text: String?) -> HTML {
    guard let text, !text.isEmpty else { return "" }
    return "<p class=\"notice\" id=\"notice\" role=\"status\">\(text)</p>"
}

private func tokenField() -> HTML {
    """
    <label>Console token <input type="password" name="token" autocomplete="current-password" required></label>
    """
}

/// The instance list: counts per lifecycle, the filter form, one page of instances and the link to the next.
struct InstanceListView {
    var processManager: String
    var processManagers: [String]
    var query: FormFields
    var key: String
    var counts: [ProcessLifecycle: Int]
    var stuck: Int
    var stuckAfter: Duration
    var countedAt: Date
    var instances: [InstanceSummary]
    var next: InstanceSummary?

    func link(_ changes: [String: String]) -> String {
        var fields = query.values
        fields["after"] = nil
        for (name, value) in changes { fields[name] = value }
        if fields["pm"] == nil, processManagers.count > 1 { fields["pm"] = processManager }
        let encoded = fields.filter { !$0.value.isEmpty }.sorted { $0.key < $1.key }
            .map { "\(queryEncoded($0.key))=\(queryEncoded($0.value))" }
        return "/console/instances" + (encoded.isEmpty ? "" : "?" + encoded.joined(separator: "&"))
    }

    func render() -> HTML {
        let lifecycle = query["lifecycle"] ?? ""
        let options = ["", "open", "closed"] + ProcessLifecycle.allCases.map(\.rawValue)
        let stuckSeconds = stuckAfter.components.seconds
        let total = counts.values.reduce(0, +)
        let pmField: HTML =
            processManagers.count > 1
            ? """
            <label>Process manager <select name="pm">\(processManagers.html { name in
                "<option\(HTML(trusted: name == processManager ? " selected" : ""))>\(name)</option>"
            })</select></label>
            """ : ""
        return """
            <h1>\(processManager) instances</h1>
            <section id="counts" data-live class="counts" aria-label="instances by lifecycle">
            <a href="\(link(["lifecycle": "", "older": "", "key": ""]))" class="count"><b>\(total)</b> all</a>
            \(ProcessLifecycle.allCases.html { lifecycle in
                """
                <a href="\(link(["lifecycle": lifecycle.rawValue, "older": "", "key": ""]))" class="count \(lifecycle.rawValue)" \
                data-lifecycle="\(lifecycle.rawValue)"><b>\(counts[lifecycle] ?? 0)</b> \(lifecycle.rawValue)</a>
                """
            })
            <a href="\(link(["lifecycle": "open", "older": "\(stuckSeconds)s", "key": ""]))" class="count stuck" \
            title="open, with no transition for more than \(stuckSeconds) s"><b>\(stuck)</b> stuck</a>
            <small class="as-of">counted \(time(countedAt))</small>
            </section>
            <form class="filter" method="get" action="/console/instances">
            \(pmField)
            <label>Lifecycle <select name="lifecycle">\(options.html { option in
                "<option value=\"\(option)\"\(HTML(trusted: option == lifecycle ? " selected" : ""))>\(option.isEmpty ? "any" : option)</option>"
            })</select></label>
            <label>Unchanged for <input name="older" value="\(query["older"] ?? "")" placeholder="30m, 2h, 7d" size="8"></label>
            <label>Key <input name="key" id="key" value="\(key)" placeholder="instance id or association" size="28"></label>
            <button type="submit">Filter</button>
            </form>
            <section id="list" data-live>
            \(instances.isEmpty ? "<p class=\"empty\">No instance matches.</p>" : table())
            \(next.map { last in
                HTML("<p><a rel=\"next\" id=\"next-page\" href=\"\(link(["after": InstancePosition(last).description]))\">Next page →</a></p>")
            } ?? "")
            </section>
            """
    }

    func table() -> HTML {
        """
        <table class="instances"><thead><tr><th>Instance</th><th>Lifecycle</th><th>Version</th><th>Started</th>\
        <th>Updated</th></tr></thead><tbody>
        \(instances.html { instance in
            """
            <tr data-instance="\(instance.instanceID)"><td><a href="/console/instances/\(queryEncoded(instance.instanceID))\
            ?pm=\(queryEncoded(processManager))">\(instance.instanceID)</a></td>\
            <td><span class="lifecycle \(instance.lifecycle.rawValue)">\(instance.lifecycle.rawValue)</span></td>\
            <td>\(instance.version)</td><td>\(time(instance.startedAt))</td><td>\(time(instance.updatedAt))</td></tr>
            """
        })
        </tbody></table>
        """
    }
}

/// One instance: where it stands, its actions, its definition's diagram with its path, its timeline, its state.
struct InstanceView {
    /// What the store holds of it.
    struct Stored: Sendable {
        var transitions: [ProcessTransition]
        /// The instance's stored state as JSON (``StoredRecord/instanceJSON(_:)``).
        var state: Data?
        var heldBy: [DeadLetter]

        /// Where the instance stands as its stored state says: what a tombstone (its timeline purged) still has.
        var standing: (lifecycle: ProcessLifecycle, version: Int64)? {
            struct Standing: Decodable {
                var lifecycle: ProcessLifecycle
                var version: Int64
            }
            return state.flatMap { try? JSONDecoder.baton.decode(Standing.self, from: $0) }.map {
                ($0.lifecycle, $0.version)
            }
        }
    }

    var id: String
    var outline: ProcessOutline
    var stored: Stored
    var notice: String?
    var actionsOn: Bool

    var base: String { "/console/instances/\(queryEncoded(id))" }
    var pmQuery: String { "?pm=\(queryEncoded(outline.name))" }

    func render() -> HTML {
        let lifecycle = stored.transitions.last?.lifecycle ?? stored.standing?.lifecycle
        let path = ProcessPath(outline: outline, transitions: stored.transitions)
        return """
            <p class="crumbs"><a href="/console/instances?pm=\(queryEncoded(outline.name))">\(outline.name)</a> /</p>
            <h1>Instance <code>\(id)</code></h1>
            \(noticeParagraph(notice))
            <section id="summary" data-live class="summary">
            <p>Lifecycle <span class="lifecycle \(lifecycle?.rawValue ?? "")" id="lifecycle">\(lifecycle?.rawValue ?? "unknown")</span>
            · version <span id="version">\(stored.transitions.last?.version ?? stored.standing?.version ?? 0)</span>\
            \(stored.transitions.first.map { HTML(" · started \(time($0.at))") } ?? "")\
            \(stored.transitions.last.map { HTML(" · last moved \(time($0.at))") } ?? "")\
            \(stored.transitions.last?.reason.map { HTML(" · reason: <span id=\"reason\">\($0)</span>") } ?? "")</p>
            \(heldBy())
            </section>
            \(actions(lifecycle))
            <section id="diagram" data-live class="diagram" aria-label="definition">
            <h2>Definition and path</h2>
            \(HTML(trusted: ProcessDiagram.svg(outline, path: path)))
            </section>
            <section id="timeline" data-live>
            <h2>Timeline</h2>
            \(stored.transitions.isEmpty ? "<p class=\"muted\" id=\"purged\">Purged (retention): a tombstone keeps the instance's state for late replies.</p>" : timeline())
            </section>
            <section id="state" data-live>
            <h2>State now</h2>
            <pre class="json">\(stored.state.map(body) ?? "(not stored)")</pre>
            </section>
            """
    }

    func heldBy() -> HTML {
        guard !stored.heldBy.isEmpty else { return "" }
        return """
            <div class="problem" id="held-by"><p>Held by a failed step:</p><ul>\(stored.heldBy.html { letter in
                """
                <li><a href="/console/dead-letters/\(letter.id)">dead letter \(letter.id)</a> \
                <code>\(letter.messageType)</code>: \(letter.reason)</li>
                """
            })</ul></div>
            """
    }

    func actions(_ lifecycle: ProcessLifecycle?) -> HTML {
        guard actionsOn else {
            return
                "<p class=\"muted\" id=\"actions-off\">Actions are off: the service was started without BATON_CONSOLE_TOKEN.</p>"
        }
        let open = lifecycle.map { !$0.isClosed } ?? false
        guard open || !stored.heldBy.isEmpty else {
            return "<p class=\"muted\" id=\"actions-none\">No action applies: the instance is closed.</p>"
        }
        return """
            <section class="actions" aria-label="actions">
            <h2>Actions</h2>
            \(open ? """
                <form method="post" action="\(base)/abort\(pmQuery)" id="abort-form">
                <label>Reason <input name="reason" required size="32" placeholder="why it is aborted"></label>
                \(tokenField())
                <button type="submit" class="danger">Abort (compensate and fail)</button>
                </form>
                """ as HTML : "")
            \(stored.heldBy.isEmpty ? "" : """
                <form method="post" action="\(base)/retry\(pmQuery)" id="retry-form">\(tokenField())
                <button type="submit">Retry the failed step</button></form>
                <form method="post" action="\(base)/resume\(pmQuery)" id="resume-form">\(tokenField())
                <button type="submit">Resume without it</button></form>
                """ as HTML)
            </section>
            """
    }

    func timeline() -> HTML {
        """
        <table class="timeline"><thead><tr><th>#</th><th>Time</th><th>Trigger</th><th>Lifecycle after</th>\
        <th>Issued</th><th>Timers</th><th>Reason</th></tr></thead><tbody>
        \(stored.transitions.html { transition in
            """
            <tr data-version="\(transition.version)"><td>\(transition.version)</td><td>\(time(transition.at))</td>\
            <td class="trigger">\(trigger(transition.trigger))</td>\
            <td><span class="lifecycle \(transition.lifecycle.rawValue)">\(transition.lifecycle.rawValue)</span></td>\
            <td><ul class="issued">\(transition.issued.html { issued in
                """
                <li data-issued="\(issued.envelope.messageName)">\(issued.kind.rawValue) \
                <code>\(issued.envelope.messageName)</code> <small>\(issued.envelope.messageID)</small></li>
                """
            })\(transition.associations.sorted { $0.key < $1.key }.html { name, value in
                "<li>associated \(name) = <code>\(value)</code></li>"
            })</ul></td>\
            <td><ul class="timers">\(transition.timers.html { operation in
                switch operation {
                case .schedule(let name, let dueAt): "<li>\(name) due \(time(dueAt))</li>"
                case .cancel(let name): "<li>\(name) cancelled</li>"
                }
            })</ul></td><td>\(transition.reason ?? "")</td></tr>
            """
        })
        </tbody></table>
        """
    }

    func trigger(_ trigger: ProcessTrigger) -> HTML {
        switch trigger {
        case .event(let envelope):
            return """
                <span class="trigger-type" data-trigger="\(envelope.messageName)">\(envelope.messageName)</span> \
                <small>\(envelope.messageID)</small>
                <details><summary>body</summary><pre class="json">\(body(envelope.payload))</pre></details>
                """
        case .timer(let name, let dueAt):
            return
                "<span class=\"trigger-type\" data-trigger=\"timer \(name)\">timer \(name)</span> <small>due \(time(dueAt))</small>"
        case .abort(let messageID, let reason):
            return """
                <span class="trigger-type" data-trigger="abort">operator abort</span> <small>\(messageID)</small>: \(reason)
                """
        }
    }
}

/// The node's dead letters, with a replay form each while actions are on.
struct DeadLetterListView {
    var letters: [DeadLetter]
    var all: Bool
    var notice: String?
    var actionsOn: Bool

    func render() -> HTML {
        """
        <h1>Dead letters</h1>
        \(noticeParagraph(notice))
        <p>\(all ? HTML("<a href=\"/console/dead-letters\">Only those waiting</a>") : HTML("<a href=\"/console/dead-letters?all=1\">Replayed ones too</a>"))</p>
        <section id="dead-letters" data-live>
        \(letters.isEmpty ? "<p class=\"empty\">No dead letter waits for a replay.</p>" : table())
        </section>
        """
    }

    func table() -> HTML {
        """
        <table class="dead-letters"><thead><tr><th>Id</th><th>Dead at</th><th>Type</th><th>Handler</th>\
        <th>Attempts</th><th>Reason</th><th></th></tr></thead><tbody>
        \(letters.html { letter in
            """
            <tr data-dead-letter="\(letter.id)"><td><a href="/console/dead-letters/\(letter.id)">\(letter.id)</a></td>\
            <td>\(time(letter.deadAt))</td><td><code>\(letter.messageType.isEmpty ? "(none)" : letter.messageType)</code></td>\
            <td>\(letter.handler)</td><td>\(letter.attempts)</td><td>\(letter.reason)</td><td>\(replay(letter))</td></tr>
            """
        })
        </tbody></table>
        """
    }

    func replay(_ letter: DeadLetter) -> HTML {
        if let replayedAt = letter.replayedAt { return "replayed \(time(replayedAt))" }
        guard actionsOn else { return "" }
        return """
            <form method="post" action="/console/dead-letters/\(letter.id)/replay" class="inline">\(tokenField())
            <button type="submit">Replay</button></form>
            """
    }

    func renderOne(_ letter: DeadLetter) -> HTML {
        """
        <p class="crumbs"><a href="/console/dead-letters">Dead letters</a> /</p>
        <h1>Dead letter \(letter.id)</h1>
        <dl class="letter">
        <dt>Message id</dt><dd><code>\(letter.messageID)</code></dd>
        <dt>Type</dt><dd><code>\(letter.messageType)</code></dd>
        <dt>Published to</dt><dd><code>\(letter.exchange)</code> / <code>\(letter.routingKey)</code></dd>
        <dt>Handler</dt><dd>\(letter.handler)</dd><dt>Attempts</dt><dd>\(letter.attempts)</dd>
        <dt>Reason</dt><dd id="reason">\(letter.reason)</dd><dt>Dead at</dt><dd>\(time(letter.deadAt))</dd>
        <dt>Replay</dt><dd>\(replay(letter))</dd>
        </dl>
        <h2>Headers</h2>
        <table><tbody>\(letter.headers.sorted { $0.key < $1.key }.html { name, value in
            "<tr><th>\(name)</th><td><code>\(value)</code></td></tr>"
        })</tbody></table>
        <h2>Body</h2>
        <pre class="json">\(body(letter.body))</pre>
        """
    }
}
