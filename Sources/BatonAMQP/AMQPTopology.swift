/// Exchanges, queues and bindings that a service needs. Declared once per connection and declared again
/// after every reconnect, so a broker that lost non-durable entities gets them back.
public struct AMQPTopology: Sendable, Hashable {
    /// An exchange declaration.
    public struct Exchange: Sendable, Hashable {
        /// How an exchange routes.
        public enum Kind: String, Sendable, Hashable {
            case direct, topic, fanout, headers
            /// The `rabbitmq_consistent_hash_exchange` plugin's kind (arguments `hash-header` or
            /// `hash-property` say what it hashes).
            case consistentHash = "x-consistent-hash"
        }

        /// The exchange name.
        public var name: String
        /// The routing kind.
        public var kind: Kind
        /// Survives a broker restart. On by default.
        public var isDurable: Bool
        /// Extra arguments (e.g. `alternate-exchange`).
        public var arguments: [String: AMQPFieldValue]

        /// Creates an exchange declaration.
        public init(_ name: String, kind: Kind, isDurable: Bool = true, arguments: [String: AMQPFieldValue] = [:]) {
            self.name = name
            self.kind = kind
            self.isDurable = isDurable
            self.arguments = arguments
        }
    }

    /// A queue declaration.
    public struct Queue: Sendable, Hashable {
        /// The queue type.
        public enum Kind: String, Sendable, Hashable {
            /// A single-node queue.
            case classic
            /// A replicated Raft queue; always durable, supports delivery limits.
            case quorum
        }

        /// The queue name.
        public var name: String
        /// The queue type.
        public var kind: Kind
        /// Survives a broker restart. On by default.
        public var isDurable: Bool
        /// Where the broker sends messages this queue rejects or expires.
        public var deadLetterExchange: String?
        /// The routing key for dead-lettered messages (by default their own).
        public var deadLetterRoutingKey: String?
        /// Messages older than this many milliseconds expire.
        public var messageTTL: Int64?
        /// Extra arguments.
        public var arguments: [String: AMQPFieldValue]

        /// Creates a queue declaration.
        public init(
            _ name: String,
            kind: Kind = .classic,
            isDurable: Bool = true,
            deadLetterExchange: String? = nil,
            deadLetterRoutingKey: String? = nil,
            messageTTL: Int64? = nil,
            arguments: [String: AMQPFieldValue] = [:]
        ) {
            self.name = name
            self.kind = kind
            self.isDurable = isDurable || kind == .quorum
            self.deadLetterExchange = deadLetterExchange
            self.deadLetterRoutingKey = deadLetterRoutingKey
            self.messageTTL = messageTTL
            self.arguments = arguments
        }

        /// The `x-…` arguments the broker receives.
        var effectiveArguments: [String: AMQPFieldValue] {
            var result = arguments
            result["x-queue-type"] = .string(kind.rawValue)
            if let deadLetterExchange { result["x-dead-letter-exchange"] = .string(deadLetterExchange) }
            if let deadLetterRoutingKey { result["x-dead-letter-routing-key"] = .string(deadLetterRoutingKey) }
            if let messageTTL { result["x-message-ttl"] = .int64(messageTTL) }
            return result
        }
    }

    /// A binding of a queue to an exchange.
    public struct Binding: Sendable, Hashable {
        /// The queue.
        public var queue: String
        /// The exchange.
        public var exchange: String
        /// The binding key (a pattern for topic exchanges).
        public var bindingKey: String
        /// Extra arguments (for headers exchanges).
        public var arguments: [String: AMQPFieldValue]

        /// Creates a binding.
        public init(queue: String, exchange: String, bindingKey: String, arguments: [String: AMQPFieldValue] = [:]) {
            self.queue = queue
            self.exchange = exchange
            self.bindingKey = bindingKey
            self.arguments = arguments
        }
    }

    /// A binding of an exchange to another (RabbitMQ's exchange-to-exchange bindings).
    public struct ExchangeBinding: Sendable, Hashable {
        /// The exchange messages come from.
        public var source: String
        /// The exchange they go on to.
        public var destination: String
        /// The binding key (a pattern for a topic source).
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
    /// The exchange-to-exchange bindings, declared after the queue bindings.
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
