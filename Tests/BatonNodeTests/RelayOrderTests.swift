import Baton
import BatonNode
import BatonTestSupport
import BatonTesting
import Foundation
import Logging
import Synchronization
import Testing

private struct PostEntry: Command {
    static let messageName = "ledger.PostEntry"
    var account: String
    var number: Int
}
private struct EntryPosted: Event {
    static let messageName = "ledger.EntryPosted"
    var account: String
    var number: Int
    var partitionKey: String? { account }
}

/// The in-process broker, but the first publishes of chosen messages fail (a nack, a lost connection).
private final class FlakyTransport: Transport {
    let inner = InProcessTransport()
    private let failuresLeft: Mutex<[String: Int]>
    let failures = Atomic<Int>(0)

    init(failing messageID: String, times: Int) {
        failuresLeft = Mutex([messageID: times])
    }

    func declare(_ topology: Topology) async throws { try await inner.declare(topology) }
    func verify(_ topology: Topology) async throws { try await inner.verify(topology) }
    func subscribe(queues: [String], prefetch: Int) async throws -> any MessageSource {
        try await inner.subscribe(queues: queues, prefetch: prefetch)
    }

    func publish(_ messages: [OutgoingMessage]) async -> [PublishOutcome] {
        let failing = failuresLeft.withLock { left in
            messages.map { message in
                guard let count = left[message.envelope.messageID], count > 0 else { return false }
                left[message.envelope.messageID] = count - 1
                return true
            }
        }
        var passed = await inner.publish(zip(messages, failing).filter { !$0.1 }.map(\.0)).makeIterator()
        return failing.map { fails in
            if fails {
                failures.add(1, ordering: .relaxed)
                return .failed("the broker nacked it")
            }
            return passed.next()!
        }
    }
}

/// The relay keeps each partition key's order through failed publishes.
@Suite struct RelayOrderTests {
    /// An event that fails to go out holds back the later events of its key (and only of its key) until it is
    /// confirmed: a partitioned receiver sees account `a`'s entries in the order they were posted. Without the
    /// hold, entry 1 goes out while entry 0 waits out its retry delay.
    @Test func aFailedPublishHoldsBackTheLaterMessagesOfItsKeyOnly() async throws {
        let firstEventID = MessageID.derived(from: "post-entry", "post-a-0", "0")
        let transport = FlakyTransport(failing: firstEventID, times: 3)
        let node = Node(
            configuration: Node.Configuration(name: "ledger"),
            store: InMemoryStore(),
            transport: transport,
            handlers: [
                MessageHandlerHost.command(PostEntry.self, name: "post-entry") { entry, context in
                    context.publish(EntryPosted(account: entry.account, number: entry.number))
                }
            ],
            logger: Logger(label: "relay-order")
        )
        try await transport.declare(node.topology)
        try await transport.inner.declare(
            Topology(
                queues: [.init("observer")],
                bindings: [.init(queue: "observer", exchange: Routing.eventExchange, bindingKey: "ledger.#")]
            )
        )
        let running = Task { try await node.run() }
        func post(_ account: String, _ number: Int) async {
            let envelope = Envelope(
                messageID: "post-\(account)-\(number)",
                messageType: PostEntry.messageType,
                timestamp: Date(),
                payload: MessageRegistry.encode(PostEntry(account: account, number: number))
            )
            let message = OutgoingMessage(
                exchange: Routing.commandExchange,
                routingKey: PostEntry.messageName,
                envelope: envelope
            )
            #expect(await transport.inner.publish([message]) == [.confirmed])
        }

        await post("a", 0)
        #expect(try await eventually { transport.failures.load(ordering: .relaxed) >= 1 })
        await post("a", 1)
        await post("b", 0)
        #expect(try await eventually { transport.inner.readyCount("observer") == 3 })
        let observed = try transport.inner.readyMessages("observer").map {
            let entry = try JSONDecoder.baton.decode(EntryPosted.self, from: $0.envelope.payload)
            return "\(entry.account)\(entry.number)"
        }
        #expect(observed == ["b0", "a0", "a1"], "a's entries in order, b's not held back: \(observed)")
        #expect(transport.failures.load(ordering: .relaxed) == 3)
        node.stop()
        try await running.value
    }
}
