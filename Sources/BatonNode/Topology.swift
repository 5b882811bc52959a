/// The exchanges, queues and bindings a node needs, in Baton's own terms: what a ``Transport`` declares (the
/// AMQP adapter turns it into AMQP declarations; the in-process transport keeps it in memory).
public struct Topology: Sendable, Hashable {
    /// Where messages are published, and how it routes them to queues.
    public struct Exchange: Sendable, Hashable {
        /// How an exchange routes.
        public enum Kind: String, Sendable, Hashable {
            /// By exact routing key.
            case direct
            /// By routing-key pattern (`orders.#`, `*.OrderPlaced`).
            case topic
            /// To every bound queue.
            case fanout
            /// By header values.
            case headers
            /// By a hash of one value of the message onto the bound queues' ring (RabbitMQ's
            /// `rabbitmq_consistent_hash_exchange` plugin): the same value always reaches the same queue while the
            /// bindings stay, and a binding key is the queue's weight (`"1"`). See ``Exchange/hashedBy``.
            case consistentHash = "x-consistent-hash"
        }

        /// What a ``Kind/consistentHash`` exchange hashes.
        public enum HashSource: Sendable, Hashable {
            /// A header the publisher sets (a message without it is not routed).
            case header(String)
            /// The `message_id` property: for producers that set no header.
            case messageID
        }

        /// The exchange name.
        public var name: String
        /// How it routes.
        public var kind: Kind
        /// Survives a broker restart. On by default.
        public var isDurable: Bool
        /// What a ``Kind/consistentHash`` exchange hashes (`nil` for other kinds).
        public var hashedBy: HashSource?

        /// Creates an exchange.
        public init(_ name: String, kind: Kind, isDurable: Bool = true, hashedBy: HashSource? = nil) {
            precondition(
                (kind == .consistentHash) == (hashedBy != nil),
                "a consistent-hash exchange, and only one, says what it hashes"
            )
            self.name = name
            self.kind = kind
            self.isDurable = isDurable
            self.hashedBy = hashedBy
        }
    }

    /// A queue a node consumes.
    public struct Queue: Sendable, Hashable {
        /// How the broker keeps a queue.
        public enum Kind: String, Sendable, Hashable {
            /// On one broker node.
            case classic
            /// Replicated over the broker's nodes (Raft); always durable.
            case quorum
        }

        /// The queue name.
        public var name: String
        /// How the broker keeps it.
        public var kind: Kind
        /// Survives a broker restart. On by default; a quorum queue always does.
        public var isDurable: Bool
        /// One consumer at a time takes its messages, the others stand by (a partition's queue, consumed by
        /// every replica of a service, so that its messages are handled in order).
        public var hasSingleActiveConsumer: Bool
        /// How often the broker delivers a message before it gives up on it and dead-letters it to
        /// ``deadLetterExchange`` (a quorum queue's `x-delivery-limit`); `nil`: no limit (RabbitMQ 4.0 and later
        /// default to 20, so a quorum queue should say).
        public var deliveryLimit: Int?
        /// Where the broker sends a message it gives up on (``deliveryLimit``): an exchange, routed with
        /// ``deadLetterRoutingKey``. For a quorum queue, at least once: the message leaves the queue only once
        /// the dead-letter exchange's queue has it.
        public var deadLetterExchange: String?
        /// The routing key of what goes to ``deadLetterExchange``.
        public var deadLetterRoutingKey: String?

        /// Creates a queue.
        public init(
            _ name: String,
            kind: Kind = .classic,
            isDurable: Bool = true,
            hasSingleActiveConsumer: Bool = false,
            deliveryLimit: Int? = nil,
            deadLetterExchange: String? = nil,
            deadLetterRoutingKey: String? = nil
        ) {
            self.name = name
            self.kind = kind
            self.isDurable = isDurable || kind == .quorum
            self.hasSingleActiveConsumer = hasSingleActiveConsumer
            self.deliveryLimit = deliveryLimit
            self.deadLetterExchange = deadLetterExchange
            self.deadLetterRoutingKey = deadLetterRoutingKey
        }
    }

    /// A queue's subscription to an exchange.
    public struct Binding: Sendable, Hashable {
        /// The queue.
        public var queue: String
        /// The exchange.
        public var exchange: String
        /// The routing key, or a pattern for a topic exchange.
        public var bindingKey: String

        /// Creates a binding.
        public init(queue: String, exchange: String, bindingKey: String) {
            self.queue = queue
            self.exchange = exchange
            self.bindingKey = bindingKey
        }
    }

    /// An exchange's subscription to another exchange: what the source routes with the key goes on to the
    /// destination, which routes it again by its own kind.
    public struct ExchangeBinding: Sendable, Hashable {
        /// The exchange messages come from.
        public var source: String
        /// The exchange they go on to.
        public var destination: String
        /// The routing key, or a pattern for a topic source.
        public var bindingKey: String

        /// Creates an exchange-to-exchange binding.
        public init(source: String, destination: String, bindingKey: String) {
            self.source = source
            self.destination = destination
            self.bindingKey = bindingKey
        }
    }

    /// The exchanges, declared first.
    public var exchanges: [Exchange]
    /// The queues, declared second.
    public var queues: [Queue]
    /// The bindings, declared last.
    public var bindings: [Binding]
    /// The exchange-to-exchange bindings, declared with the bindings.
    public var exchangeBindings: [ExchangeBinding]

    /// Creates a topology.
    public init(
        exchanges: [Exchange] = [],
        queues: [Queue] = [],
        bindings: [Binding] = [],
        exchangeBindings: [ExchangeBinding] = []
    ) {
        self.exchanges = exchanges
        self.queues = queues
        self.bindings = bindings
        self.exchangeBindings = exchangeBindings
    }
}

/// What became of one published message, as its transport knows it.
public enum PublishOutcome: Sendable, Hashable {
    /// The transport took it for good (the broker confirmed it).
    case confirmed
    /// The transport refused this message itself (a permission, a missing exchange, a size limit): trying it
    /// again together with others costs them their outcome, so it goes alone from then on.
    case refused(String)
    /// It was not taken (no queue for a command, the connection down, a negative confirm): try it again later.
    case failed(String)
    /// It may or may not have been taken (the channel closed while it was in flight): try it again, alone,
    /// under the same id.
    case unknown(String)
}

/// A transport operation the transport cannot do.
public struct TransportError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        fileprivate let name: String
        /// An exchange or queue does not exist.
        public static let notFound = Code(name: "notFound")
        /// An exchange or queue exists with other properties.
        public static let conflict = Code(name: "conflict")
        public var description: String { name }
    }

    /// What kind of failure.
    public var code: Code
    /// What is wrong, naming the exchange or queue.
    public var message: String

    /// Creates an error.
    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "TransportError.\(code): \(message)" }
}

extension Topology {
    /// AMQP topic matching: `*` is one word, `#` zero or more (`orders.#` matches `orders.OrderPlaced`).
    public static func topicMatches(pattern: String, key: String) -> Bool {
        func match(_ p: ArraySlice<Substring>, _ k: ArraySlice<Substring>) -> Bool {
            guard let first = p.first else { return k.isEmpty }
            if first == "#" {
                return match(p.dropFirst(), k) || (!k.isEmpty && match(p, k.dropFirst()))
            }
            guard let word = k.first else { return false }
            return (first == "*" || first == word) && match(p.dropFirst(), k.dropFirst())
        }
        return match(
            ArraySlice(pattern.split(separator: ".", omittingEmptySubsequences: false)),
            ArraySlice(key.split(separator: ".", omittingEmptySubsequences: false))
        )
    }
}
