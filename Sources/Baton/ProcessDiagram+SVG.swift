import Foundation

/// The way one instance went through its definition: which steps of the ``ProcessOutline`` its transitions
/// took (and at which versions), and which lifecycles it passed through — what ``ProcessDiagram/svg(_:path:)``
/// highlights.
public struct ProcessPath: Sendable, Hashable {
    /// The id of the synthetic step an operator's abort takes.
    public static let abortStep = "abort"

    /// The instance versions at which each step was taken, by ``ProcessOutline/Step/id`` (and ``abortStep``).
    public var visits: [String: [Int64]]
    /// The lifecycles the instance has been in, in the order it first entered them.
    public var lifecycles: [ProcessLifecycle]

    /// Follows an instance's transitions through its definition's outline.
    /// - Parameters:
    ///   - outline: The definition's outline.
    ///   - transitions: The instance's transitions, in order.
    public init(outline: ProcessOutline, transitions: [ProcessTransition]) {
        visits = [:]
        lifecycles = []
        var closed = false
        for transition in transitions {
            if let step = Self.step(of: transition.trigger, in: outline, closed: closed) {
                visits[step, default: []].append(transition.version)
            }
            if !lifecycles.contains(transition.lifecycle) { lifecycles.append(transition.lifecycle) }
            closed = transition.lifecycle.isClosed
        }
    }

    /// The lifecycle it is in now.
    public var current: ProcessLifecycle? { lifecycles.last }

    /// The step of the outline a trigger takes, given whether the instance was closed before it.
    static func step(of trigger: ProcessTrigger, in outline: ProcessOutline, closed: Bool) -> String? {
        let kinds: Set<ProcessOutline.Step.Kind>
        let name: String
        switch trigger {
        case .abort:
            return abortStep
        case .timer(let timer, _):
            kinds = [.timer]
            name = timer
        case .event(let envelope) where envelope.messageName == CommandFailed.messageName:
            guard let failure = try? JSONDecoder.baton.decode(CommandFailed.self, from: envelope.payload) else {
                return nil
            }
            kinds = [.failure]
            name = Envelope.messageName(of: failure.commandType)
        case .event(let envelope):
            kinds = closed ? [.afterClose] : [.start, .handle, .end, .command]
            name = envelope.messageName
        }
        return outline.steps.first { kinds.contains($0.kind) && Envelope.messageName(of: $0.trigger) == name }?.id
    }
}

extension ProcessOutline.Step {
    /// The step's id in a diagram and a path: `kind:trigger`.
    public var id: String { "\(kind.rawValue):\(trigger)" }
}

extension ProcessDiagram {
    /// The diagram as SVG, laid out in columns — the start events; the `open` lifecycles with what an open
    /// instance handles; the end events and an operator's abort; `completed` and `failed` with the late replies
    /// they take — with one instance's path highlighted when it is given: each step it took carries the
    /// versions at which it took it, and the lifecycles it went through are filled.
    ///
    /// Self-contained (presentation attributes, no stylesheet, no script), so it can be embedded in a page whose
    /// content security policy allows no inline style. Every text is escaped. Elements carry `data-step` (a
    /// step's id) or `data-state` (a lifecycle or `open`) and, on the path, `data-visited` (the versions).
    /// - Parameters:
    ///   - outline: The definition's outline.
    ///   - path: The instance to highlight, if any.
    public static func svg(_ outline: ProcessOutline, path: ProcessPath? = nil) -> String {
        var layout = SVGLayout(outline: outline, path: path)
        return layout.render()
    }
}

/// Lays a ``ProcessDiagram`` out on a grid of columns and draws it.
private struct SVGLayout {
    let outline: ProcessOutline
    let path: ProcessPath?
    var elements: [String] = []

    static let pillHeight = 24.0
    static let gap = 10.0
    static let columnGap = 56.0
    static let top = 44.0
    static let ink = "#334155"
    static let highlight = "#1d4ed8"
    static let visitedFill = "#dbeafe"

    init(outline: ProcessOutline, path: ProcessPath?) {
        self.outline = outline
        self.path = path
    }

    /// A pill's text: the step's label and, on the path, the versions at which it was taken.
    func label(_ step: ProcessOutline.Step) -> String {
        let name = Envelope.messageName(of: step.trigger)
        return switch step.kind {
        case .start, .handle, .end, .afterClose: name
        case .command: "command \(name)"
        case .failure: "failed \(name)"
        case .timer: "timer \(name)"
        }
    }

    func visits(_ id: String) -> [Int64]? { path?.visits[id] }

    static func width(of text: String) -> Double { Double(text.count) * 7.0 + 20 }

    func pillWidth(_ text: String, id: String) -> Double {
        Self.width(of: text) + (visits(id).map { Self.width(of: badge($0)) - 6 } ?? 0)
    }

    func badge(_ versions: [Int64]) -> String { versions.map(String.init).joined(separator: ",") }

    func widest(_ steps: [ProcessOutline.Step]) -> Double {
        steps.map { pillWidth(label($0), id: $0.id) }.max() ?? 0
    }

    func steps(_ kinds: Set<ProcessOutline.Step.Kind>) -> [ProcessOutline.Step] {
        outline.steps.filter { kinds.contains($0.kind) }
    }

    mutating func render() -> String {
        let starts = steps([.start])
        let inside = steps([.handle, .command, .failure, .timer])
        let ends = steps([.end])
        let late = steps([.afterClose])
        let abortLabel = "operator abort"
        // Columns.
        let startX = 20.0
        let startColumn = startX + 30
        let startWidth = max(widest(starts), 120)
        let openX = startColumn + startWidth + Self.columnGap
        let chips: [ProcessLifecycle] = [.started, .running, .compensating]
        let chipWidth = 104.0
        let openWidth = max(Double(chips.count) * (chipWidth + 6) + 18, widest(inside) + 28)
        let endColumn = openX + openWidth + Self.columnGap
        let endWidth = max(widest(ends), pillWidth(abortLabel, id: ProcessPath.abortStep), 120)
        let closedX = endColumn + endWidth + Self.columnGap
        let closedWidth = max(widest(late) + 28, 150)
        // Rows.
        let row = Self.pillHeight + Self.gap
        let openHeight = 34 + 34 + Double(inside.count) * row + 8
        let startsHeight = Double(starts.count) * row
        let endsHeight = Double(ends.count) * row
        let lateHeight = late.isEmpty ? 0 : 30 + Double(late.count) * row + 4
        let closedHeight =
            8 + max(40, endsHeight - row) + Self.gap + 30 + 40 + max(Self.gap + row, late.isEmpty ? 0 : 24 + lateHeight)
        let height = Self.top + max(openHeight, startsHeight, closedHeight) + 20
        let width = closedX + closedWidth + 20

        elements.append(
            text(outline.name + " (definition v\(outline.version))", x: 20, y: 24, size: 15, weight: "600")
        )

        // The open box, its lifecycle chips and what it handles.
        let openTop = Self.top
        let openVisited = path?.lifecycles.contains { !$0.isClosed } ?? false
        elements.append(
            rect(
                x: openX,
                y: openTop,
                width: openWidth,
                height: openHeight,
                radius: 10,
                visited: openVisited,
                data: "data-state=\"open\"",
                dashed: false
            )
        )
        elements.append(text("open", x: openX + 12, y: openTop + 22, size: 13, weight: "600"))
        for (index, lifecycle) in chips.enumerated() {
            let x = openX + 12 + Double(index) * (chipWidth + 6)
            let visited = path?.lifecycles.contains(lifecycle) ?? false
            let current = path?.current == lifecycle
            elements.append(
                rect(
                    x: x,
                    y: openTop + 32,
                    width: chipWidth,
                    height: 22,
                    radius: 11,
                    visited: visited,
                    data: "data-state=\"\(lifecycle.rawValue)\"\(current ? " data-current=\"true\"" : "")",
                    dashed: false,
                    strong: current
                )
            )
            elements.append(text(lifecycle.rawValue, x: x + chipWidth / 2, y: openTop + 47, anchor: "middle"))
        }
        for (index, step) in inside.enumerated() {
            pill(step, x: openX + 14, y: openTop + 68 + Double(index) * row, width: openWidth - 28)
        }
        let openMiddle = openTop + min(openHeight / 2, 60)

        // The start point and the start events.
        let startsTop = openTop + 8
        let startMiddle = startsTop + max(startsHeight - Self.gap, Self.pillHeight) / 2
        let started = starts.contains { visits($0.id) != nil }
        elements.append(
            "<circle cx=\"\(startX)\" cy=\"\(startMiddle)\" r=\"7\" fill=\"\(started ? Self.highlight : Self.ink)\"/>"
        )
        for (index, step) in starts.enumerated() {
            let y = startsTop + Double(index) * row
            let visited = visits(step.id) != nil
            arrow(from: (startX + 7, startMiddle), to: (startColumn, y + Self.pillHeight / 2), visited: visited)
            pill(step, x: startColumn, y: y, width: startWidth)
            arrow(from: (startColumn + startWidth, y + Self.pillHeight / 2), to: (openX, openMiddle), visited: visited)
        }

        // The closed states.
        let completedTop = openTop + 8
        let failedTop = completedTop + max(40, endsHeight - row) + Self.gap + 30
        for (lifecycle, top) in [(ProcessLifecycle.completed, completedTop), (.failed, failedTop)] {
            let visited = path?.lifecycles.contains(lifecycle) ?? false
            let current = path?.current == lifecycle
            elements.append(
                rect(
                    x: closedX,
                    y: top,
                    width: closedWidth,
                    height: 40,
                    radius: 20,
                    visited: visited,
                    data: "data-state=\"\(lifecycle.rawValue)\"\(current ? " data-current=\"true\"" : "")",
                    dashed: false,
                    strong: current
                )
            )
            elements.append(
                text(lifecycle.rawValue, x: closedX + closedWidth / 2, y: top + 25, size: 13, anchor: "middle")
            )
        }

        // The end events and the abort, toward the closed states.
        for (index, step) in ends.enumerated() {
            let y = completedTop + Double(index) * row
            let visited = visits(step.id) != nil
            arrow(from: (openX + openWidth, openMiddle), to: (endColumn, y + Self.pillHeight / 2), visited: visited)
            pill(step, x: endColumn, y: y, width: endWidth)
            arrow(
                from: (endColumn + endWidth, y + Self.pillHeight / 2),
                to: (closedX, completedTop + 20),
                visited: visited
            )
        }
        // A handler's decision to fail it goes straight across; an operator's abort below it.
        let aborted = visits(ProcessPath.abortStep) != nil
        let failedByHandler = (path?.lifecycles.contains(.failed) ?? false) && !aborted
        arrow(
            from: (openX + openWidth, openMiddle + 20),
            to: (closedX, failedTop + 20),
            visited: failedByHandler,
            data: "data-step=\"fail\""
        )
        elements.append(
            text("a handler fails it", x: endColumn + endWidth / 2, y: failedTop + 8, anchor: "middle")
        )
        let abortY = failedTop + 40 + Self.gap
        arrow(
            from: (openX + openWidth, openMiddle + 40),
            to: (endColumn, abortY + Self.pillHeight / 2),
            visited: aborted
        )
        pill(id: ProcessPath.abortStep, label: abortLabel, x: endColumn, y: abortY, width: endWidth)
        arrow(
            from: (endColumn + endWidth, abortY + Self.pillHeight / 2),
            to: (closedX + 24, failedTop + 40),
            visited: aborted
        )

        // The late replies a closed instance still takes.
        if !late.isEmpty {
            let lateTop = failedTop + 40 + 24
            elements.append(
                rect(
                    x: closedX,
                    y: lateTop,
                    width: closedWidth,
                    height: lateHeight,
                    radius: 8,
                    visited: false,
                    data: "data-state=\"closed\"",
                    dashed: true
                )
            )
            elements.append(text("after close", x: closedX + 10, y: lateTop + 19))
            for (index, step) in late.enumerated() {
                pill(step, x: closedX + 14, y: lateTop + 28 + Double(index) * row, width: closedWidth - 28)
            }
        }

        let arrowHead = { (id: String, color: String) in
            """
            <marker id="\(id)" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" \
            orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="\(color)"/></marker>
            """
        }
        return """
            <svg xmlns="http://www.w3.org/2000/svg" class="process-diagram" width="\(Int(width))" \
            height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" role="img" \
            aria-label="\(escaped(outline.name)) state diagram" font-family="sans-serif" font-size="12">
            <defs>\(arrowHead("arrow", "#94a3b8"))\(arrowHead("arrow-visited", Self.highlight))</defs>
            \(elements.joined(separator: "\n"))
            </svg>
            """
    }

    mutating func pill(_ step: ProcessOutline.Step, x: Double, y: Double, width: Double) {
        pill(id: step.id, label: label(step), x: x, y: y, width: width)
    }

    mutating func pill(id: String, label: String, x: Double, y: Double, width: Double) {
        let versions = visits(id)
        var data = "data-step=\"\(escaped(id))\""
        if let versions { data += " data-visited=\"\(badge(versions))\"" }
        elements.append(
            "<g \(data)>"
                + rect(
                    x: x,
                    y: y,
                    width: width,
                    height: Self.pillHeight,
                    radius: 12,
                    visited: versions != nil,
                    data: ""
                )
                + text(label, x: x + 10, y: y + 16, weight: versions != nil ? "600" : "400")
                + (versions.map {
                    text(badge($0), x: x + width - 10, y: y + 16, size: 11, anchor: "end", color: Self.highlight)
                } ?? "") + "</g>"
        )
    }

    func rect(
        x: Double,
        y: Double,
        width: Double,
        height: Double,
        radius: Double,
        visited: Bool,
        data: String,
        dashed: Bool = false,
        strong: Bool = false
    ) -> String {
        let stroke = visited ? Self.highlight : "#94a3b8"
        return """
            <rect \(data) x="\(x)" y="\(y)" width="\(width)" height="\(height)" rx="\(radius)" \
            fill="\(visited ? Self.visitedFill : "#ffffff")" stroke="\(stroke)" \
            stroke-width="\(strong ? 3 : visited ? 2 : 1)"\(dashed ? " stroke-dasharray=\"4 3\"" : "")/>
            """
    }

    func text(
        _ content: String,
        x: Double,
        y: Double,
        size: Double = 12,
        weight: String = "400",
        anchor: String = "start",
        color: String = ink
    ) -> String {
        """
        <text x="\(x)" y="\(y)" font-size="\(size)" font-weight="\(weight)" text-anchor="\(anchor)" \
        fill="\(color)">\(escaped(content))</text>
        """
    }

    mutating func arrow(
        from start: (Double, Double),
        to end: (Double, Double),
        visited: Bool,
        data: String = ""
    ) {
        let middle = (start.0 + end.0) / 2
        elements.append(
            """
            <path \(data)\(data.isEmpty ? "" : " ")d="M\(start.0),\(start.1) C\(middle),\(start.1) \(middle),\(end.1) \
            \(end.0),\(end.1)" fill="none" stroke="\(visited ? Self.highlight : "#94a3b8")" \
            stroke-width="\(visited ? 2 : 1)" marker-end="url(#\(visited ? "arrow-visited" : "arrow"))"\
            \(visited ? " data-visited=\"true\"" : "")/>
            """
        )
    }

    func escaped(_ text: String) -> String { ProcessDiagram.escapeMarkup(text) }
}

extension ProcessDiagram {
    /// Text made safe to place in HTML, XML or SVG, as content or as a quoted attribute value: `&`, `<`, `>`,
    /// `"` and `'` become entities.
    public static func escapeMarkup(_ text: String) -> String {
        var result = ""
        result.reserveCapacity(text.utf8.count)
        for character in text {
            switch character {
            case "&": result += "&amp;"
            case "<": result += "&lt;"
            case ">": result += "&gt;"
            case "\"": result += "&quot;"
            case "'": result += "&#39;"
            default: result.append(character)
            }
        }
        return result
    }
}
