/// What a process-manager definition reacts to, in the order it was defined: the facts a diagram is drawn
/// from (``ProcessManager/outline``). Which lifecycle a handler moves an instance to is decided by its code, so
/// an outline knows the open lifecycles only as one: `open`.
public struct ProcessOutline: Sendable, Hashable {
    /// One thing the definition reacts to.
    public struct Step: Sendable, Hashable {
        /// How a step moves an instance.
        public enum Kind: String, Sendable, Hashable {
            /// Starts an instance.
            case start
            /// Handled while the instance is open.
            case handle
            /// Handled, then the instance is completed.
            case end
            /// Handled only for a closed instance: a late reply that needs its own compensation.
            case afterClose = "after-close"
            /// A command addressed to the instance.
            case command
            /// The failure reply to a command the instance issued.
            case failure
            /// A timer of the instance came due.
            case timer
        }

        /// The message type (events, commands, failed commands) or the timer's name.
        public var trigger: String
        /// How it moves an instance.
        public var kind: Kind
    }

    /// The process manager's name.
    public var name: String
    /// Its definition's version.
    public var version: Int
    /// What it reacts to.
    public var steps: [Step]
    /// The names its instances may be found by besides their id (``ProcessManager/Builder/association(_:)``).
    public var associations: [String] = []
}

extension ProcessManager {
    /// What this definition reacts to, for a diagram (``ProcessDiagram``).
    public var outline: ProcessOutline {
        var steps: [ProcessOutline.Step] = handlers.compactMap { handler in
            guard handler.messageType != CommandFailed.messageType else { return nil }  // drawn per command below
            let kind: ProcessOutline.Step.Kind =
                switch handler.kind {
                case .start: .start
                case .end: .end
                case .afterClose: .afterClose
                case .ordinary: handler.isCommand ? .command : .handle
                }
            return ProcessOutline.Step(trigger: handler.messageType, kind: kind)
        }
        steps += failureCommandTypes.sorted().map { ProcessOutline.Step(trigger: $0, kind: .failure) }
        steps += timerHandlers.keys.sorted().map { ProcessOutline.Step(trigger: $0, kind: .timer) }
        return ProcessOutline(name: name, version: version, steps: steps, associations: associations.sorted())
    }
}

/// A process-manager definition drawn as a state diagram, in Mermaid or in Graphviz's DOT: an instance starts
/// on its start events, stays `open` (started, running or compensating, as its handlers decide) through its
/// events, commands, failure replies and timers, is completed by an end event or ends `failed` (a handler's
/// decision, or an operator's abort), and a closed instance still takes its late replies.
public enum ProcessDiagram {
    /// The diagram in Mermaid (`stateDiagram-v2`), for Markdown renderers.
    public static func mermaid(_ outline: ProcessOutline) -> String {
        var lines = [
            "---", "title: \(outline.name) (definition v\(outline.version))", "---", "stateDiagram-v2",
            "    state \"open: started, running, compensating\" as open",
        ]
        for (from, to, label) in edges(outline) {
            lines.append("    \(from == "*" ? "[*]" : from) --> \(to == "*" ? "[*]" : to): \(label)")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The diagram in Graphviz's DOT (`dot -Tsvg`).
    public static func dot(_ outline: ProcessOutline) -> String {
        var lines = [
            "digraph \(quoted(outline.name)) {",
            "    label=\(quoted("\(outline.name) (definition v\(outline.version))")); labelloc=t; rankdir=LR;",
            "    node [shape=box, style=rounded];",
            "    start [shape=point]; end [shape=doublecircle, label=\"\", width=0.2];",
            "    open [label=\"open\\nstarted, running, compensating\"];",
        ]
        for (from, to, label) in edges(outline) {
            let source = from == "*" ? "start" : from
            let target = to == "*" ? "end" : to
            lines.append("    \(source) -> \(target) [label=\(quoted(label))];")
        }
        return (lines + ["}"]).joined(separator: "\n") + "\n"
    }

    /// The diagram's edges: (from, to, label), `*` for the start and end points.
    static func edges(_ outline: ProcessOutline) -> [(String, String, String)] {
        var edges: [(String, String, String)] = []
        for step in outline.steps {
            switch step.kind {
            case .start: edges.append(("*", "open", step.trigger))
            case .handle: edges.append(("open", "open", step.trigger))
            case .command: edges.append(("open", "open", "command \(step.trigger)"))
            case .failure: edges.append(("open", "open", "failed \(step.trigger)"))
            case .timer: edges.append(("open", "open", "timer \(step.trigger)"))
            case .end: edges.append(("open", "completed", step.trigger))
            case .afterClose:
                edges.append(("completed", "completed", "late \(step.trigger)"))
                edges.append(("failed", "failed", "late \(step.trigger)"))
            }
        }
        edges.append(("open", "failed", "a handler fails it, or an operator aborts it"))
        edges.append(("completed", "*", "purged"))
        edges.append(("failed", "*", "purged"))
        return edges
    }

    private static func quoted(_ text: String) -> String {
        "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
}
