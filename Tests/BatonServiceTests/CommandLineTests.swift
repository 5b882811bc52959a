import ArgumentParser
import BatonNode
import Foundation
import Logging
import Synchronization
import Testing

@testable import BatonService

/// The service shell's own parsing, without a broker: the options every executable shares and the values of
/// the operator commands. (Whole command lines run against real services in BookstoreTests.)
@Suite struct CommandLineTests {
    @Test func anAgeIsACountAndAUnit() {
        #expect(Age(argument: "90s")?.seconds == 90)
        #expect(Age(argument: "30m")?.seconds == 1800)
        #expect(Age(argument: "2h")?.seconds == 7200)
        #expect(Age(argument: "7d")?.seconds == 604_800)
        #expect(Age(argument: "1.5h")?.seconds == 5400)
        for bad in ["soon", "", "d", "-1d", "0m", "10", "10w", "infd", "nand"] {
            #expect(Age(argument: bad) == nil, "'\(bad)'")
        }
    }

    @Test func aCutOffIsADateATimeOrAnAge() throws {
        #expect(Cutoff(argument: "2026-11-01")?.date == Date(timeIntervalSince1970: 1_793_491_200))
        #expect(Cutoff(argument: "2026-11-01T12:00:00Z")?.date == Date(timeIntervalSince1970: 1_793_534_400))
        let before = Date().addingTimeInterval(-86_400)
        let age = try #require(Cutoff(argument: "1d")?.date)
        #expect(abs(age.timeIntervalSince(before)) < 5)
        #expect(Cutoff(argument: "last tuesday") == nil)
        #expect(Cutoff(argument: "2026-13-01") == nil)
    }

    @Test func theSharedOptionsRefuseWhatCannotWork() throws {
        #expect(throws: (any Error).self) { try ServiceOptions.parse(["--amqp-url", "ftp://x"]) }
        #expect(throws: (any Error).self) { try ServiceOptions.parse(["--topology", "sideways"]) }
        let options = try ServiceOptions.parse(["--data-dir", "/srv/data", "--topology", "broker"])
        #expect(options.storePath(for: "orders") == "/srv/data/orders.sqlite")
        #expect(try options.topologyOwnership == .broker)
    }
}

@Suite struct HeldMessageListingTests {
    func held(nextAttemptAt: Date? = nil, deadLetter: Int64? = nil) -> ParkedMessage {
        ParkedMessage(
            orderingKey: "fulfillment/o-1",
            messageID: "m-1",
            exchange: "baton.events",
            routingKey: "orders.OrderCompleted",
            messageType: "orders.OrderCompleted.v1",
            contentType: "application/json",
            correlationID: nil,
            timestamp: nil,
            headers: [:],
            body: Data("{}".utf8),
            attempts: 2,
            nextAttemptAt: nextAttemptAt,
            deadLetterID: deadLetter,
            lastError: "boom"
        )
    }

    @Test func eachHeldMessageSaysWhatItWaitsFor() {
        #expect(HeldSummary(held(deadLetter: 7)).waitingFor == "dead letter 7")
        #expect(
            HeldSummary(held(nextAttemptAt: Date(timeIntervalSince1970: 1_793_491_200))).waitingFor
                == "retry at 2026-11-01T00:00:00.000Z"
        )
        #expect(HeldSummary(held()).waitingFor == "the message before it")
    }
}

@Suite struct JSONLogHandlerTests {
    @Test func eachEventIsOneJSONObjectOnOneLine() throws {
        let lines = Mutex<[String]>([])
        var handler = JSONLogHandler(label: "orders") { line in lines.withLock { $0.append(line) } }
        handler[metadataKey: "baton.node"] = "orders"
        let logger = Logger(label: "orders") { _ in handler }
        logger.warning(
            "a \"quoted\"\nline\twith \u{1}",
            metadata: ["baton.message_id": "m-1", "count": "3", "nested": ["a": "b"]]
        )
        let written = lines.withLock { $0 }
        #expect(written.count == 1 && written[0].hasSuffix("}\n") && written[0].dropLast().contains("\n") == false)
        let object = try #require(
            try JSONSerialization.jsonObject(with: Data(written[0].utf8)) as? [String: String]
        )
        #expect(object["message"] == "a \"quoted\"\nline\twith \u{1}")
        #expect(object["level"] == "warning" && object["logger"] == "orders")
        #expect(object["baton.message_id"] == "m-1" && object["baton.node"] == "orders" && object["count"] == "3")
        #expect(object["nested"]?.contains("a") == true, "a nested value as its description")
        #expect(try #require(object["time"]).hasSuffix("Z"))
    }
}
