import Foundation
import Testing

/// The README's code is compiled: every Swift block that follows a `<!-- compiled: PATH -->` line stands, line
/// for line (indentation aside), in that file of the repository, which the package builds and tests.
@Suite struct ReadmeExampleTests {
    static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    struct Block: CustomTestStringConvertible {
        var path: String
        var lines: [String]
        var testDescription: String { path }
    }

    static var blocks: [Block] {
        get throws {
            let readme = try String(contentsOf: repository.appendingPathComponent("README.md"), encoding: .utf8)
            var blocks: [Block] = []
            var lines = readme.split(separator: "\n", omittingEmptySubsequences: false).makeIterator()
            while let line = lines.next() {
                guard line.hasPrefix("<!-- compiled: "), line.hasSuffix(" -->") else { continue }
                let path = String(line.dropFirst("<!-- compiled: ".count).dropLast(" -->".count))
                guard lines.next() == "```swift" else { break }
                var code: [String] = []
                while let line = lines.next(), line != "```" { code.append(String(line)) }
                blocks.append(Block(path: path, lines: code))
            }
            return blocks
        }
    }

    @Test func theReadmeShowsItsCompiledExamples() throws {
        #expect(try Self.blocks.count >= 4, "the process manager, its messages, its test and its service")
    }

    @Test(arguments: try blocks)
    func aReadmeBlockStandsInItsFile(_ block: Block) throws {
        let file = try String(contentsOf: Self.repository.appendingPathComponent(block.path), encoding: .utf8)
        let wanted = Self.significant(block.lines)
        let have = Self.significant(file.split(separator: "\n", omittingEmptySubsequences: false).map(String.init))
        let found =
            !wanted.isEmpty
            && have.indices.contains { start in
                have[start...].starts(with: wanted)
            }
        #expect(found, "the README's block for \(block.path) is not in that file: update one of them")
    }

    /// The lines that carry code, without indentation.
    private static func significant(_ lines: [String]) -> [String] {
        lines.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
}
