import Baton
import Foundation
import HTTPTypes
import Hummingbird

/// Markup whose interpolated values are escaped unless they are markup themselves: `"<td>\(name)</td>"` shows
/// a name with `<script>` in it as text. Escaping is the default, so a page cannot forget it.
struct HTML: ExpressibleByStringInterpolation, Sendable {
    /// The markup.
    var markup: String

    init(stringLiteral literal: String) {
        markup = literal
    }

    init(stringInterpolation: StringInterpolation) {
        markup = stringInterpolation.markup
    }

    /// Markup made elsewhere and trusted as it is (a diagram that escapes its own text).
    init(trusted markup: String) {
        self.markup = markup
    }

    struct StringInterpolation: StringInterpolationProtocol {
        var markup = ""

        init(literalCapacity: Int, interpolationCount: Int) {
            markup.reserveCapacity(literalCapacity + interpolationCount * 16)
        }

        mutating func appendLiteral(_ literal: String) { markup += literal }
        mutating func appendInterpolation(_ html: HTML) { markup += html.markup }
        mutating func appendInterpolation(_ value: some CustomStringConvertible) {
            markup += ProcessDiagram.escapeMarkup(value.description)
        }
    }
}

extension Sequence {
    /// The markup of each element, joined.
    func html(_ render: (Element) throws -> HTML) rethrows -> HTML {
        HTML(trusted: try map { try render($0).markup }.joined())
    }
}

/// A query string or a form body (`application/x-www-form-urlencoded`): `+` is a space, `%XX` a byte.
struct FormFields: Sendable {
    var values: [String: String] = [:]

    init(_ encoded: String) {
        for pair in encoded.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decoded(_ text: Substring) -> String {
                text.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? ""
            }
            values[decoded(parts[0])] = parts.count > 1 ? decoded(parts[1]) : ""
        }
    }

    subscript(name: String) -> String? { values[name] }
}

/// A percent-encoded query component.
func queryEncoded(_ text: String) -> String {
    var allowed = CharacterSet.alphanumerics
    allowed.insert(charactersIn: "-._~:")
    return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
}

/// A console page, with the security headers every page carries: nothing from elsewhere (no CDN), no inline
/// script or style, no framing, forms posted to the console only.
func page(_ status: HTTPResponse.Status = .ok, title: String, node: String, _ body: HTML) -> Response {
    let document: HTML = """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>\(title) · \(node) · Baton console</title>
        <link rel="icon" href="/console/icon.svg"><link rel="stylesheet" href="/console/console.css"><script src="/console/console.js" defer></script>
        </head><body>
        <header><a class="brand" href="/console/instances">Baton console</a><span class="node">node \(node)</span>
        <nav><a href="/console/instances">Instances</a><a href="/console/dead-letters">Dead letters</a></nav></header>
        <main>\(body)</main>
        </body></html>
        """
    return Response(
        status: status,
        headers: consoleHeaders(contentType: "text/html; charset=utf-8"),
        body: ResponseBody(byteBuffer: ByteBuffer(string: document.markup))
    )
}

/// The headers of everything the console serves.
func consoleHeaders(contentType: String) -> HTTPFields {
    [
        .contentType: contentType,
        .contentSecurityPolicy:
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        HTTPField.Name("X-Content-Type-Options")!: "nosniff",
        HTTPField.Name("Referrer-Policy")!: "same-origin",
        .cacheControl: "no-store",
    ]
}
