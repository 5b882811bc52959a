/// Exchanges, queues and bindings in the shape of RabbitMQ's definitions file (`rabbitmqctl
/// import_definitions`, `load_definitions`), so that a topology declared in code can be pre-declared by the
/// broker and compared with what a deployment's definitions say.
public struct BrokerDefinitions: Codable, Sendable, Hashable {
    /// An exchange in a definitions file.
    public struct Exchange: Codable, Sendable, Hashable {
        /// The exchange name.
        public var name: String
        /// The virtual host.
        public var vhost: String
        /// `topic`, `direct`, `fanout` or `headers`.
        public var type: String
        /// Survives a broker restart.
        public var durable: Bool
        /// Deleted when its last binding goes.
        public var autoDelete: Bool
        /// Only reachable through exchange-to-exchange bindings.
        public var `internal`: Bool
        /// Extra arguments.
        public var arguments: [String: AMQPFieldValue]
    }

    /// A queue in a definitions file.
    public struct Queue: Codable, Sendable, Hashable {
        /// The queue name.
        public var name: String
        /// The virtual host.
        public var vhost: String
        /// Survives a broker restart.
        public var durable: Bool
        /// Deleted when its last consumer goes.
        public var autoDelete: Bool
        /// The `x-…` arguments (queue type, dead-letter exchange, TTL).
        public var arguments: [String: AMQPFieldValue]
    }

    /// A binding in a definitions file: to a queue, or to an exchange.
    public struct Binding: Codable, Sendable, Hashable {
        /// The exchange messages come from.
        public var source: String
        /// The virtual host.
        public var vhost: String
        /// The queue or exchange they go to.
        public var destination: String
        /// `queue` or `exchange`.
        public var destinationType: String
        /// The binding key (a pattern for topic exchanges).
        public var routingKey: String
        /// Extra arguments (for headers exchanges).
        public var arguments: [String: AMQPFieldValue]
    }

    /// The exchanges.
    public var exchanges: [Exchange]
    /// The queues.
    public var queues: [Queue]
    /// The bindings.
    public var bindings: [Binding]

    enum CodingKeys: String, CodingKey {
        case exchanges, queues, bindings
    }

    /// The definitions of a topology in one virtual host, each entity once, in a stable order.
    /// - Parameters:
    ///   - topology: What a service declares.
    ///   - vhost: The virtual host the definitions are for.
    public init(_ topology: AMQPTopology, vhost: String) {
        exchanges = Set(
            topology.exchanges.map {
                Exchange(
                    name: $0.name,
                    vhost: vhost,
                    type: $0.kind.rawValue,
                    durable: $0.isDurable,
                    autoDelete: false,
                    internal: false,
                    arguments: $0.arguments
                )
            }
        ).sorted { $0.name < $1.name }
        queues = Set(
            topology.queues.map {
                Queue(
                    name: $0.name,
                    vhost: vhost,
                    durable: $0.isDurable,
                    autoDelete: false,
                    arguments: $0.effectiveArguments
                )
            }
        ).sorted { $0.name < $1.name }
        let queueBindings = topology.bindings.map {
            Binding(
                source: $0.exchange,
                vhost: vhost,
                destination: $0.queue,
                destinationType: "queue",
                routingKey: $0.bindingKey,
                arguments: $0.arguments
            )
        }
        let exchangeBindings = topology.exchangeBindings.map {
            Binding(
                source: $0.source,
                vhost: vhost,
                destination: $0.destination,
                destinationType: "exchange",
                routingKey: $0.bindingKey,
                arguments: [:]
            )
        }
        bindings = Set(queueBindings + exchangeBindings).sorted {
            ($0.destination, $0.source, $0.routingKey) < ($1.destination, $1.source, $1.routingKey)
        }
    }
}

extension BrokerDefinitions.Exchange {
    enum CodingKeys: String, CodingKey {
        case name, vhost, type, durable
        case autoDelete = "auto_delete"
        case `internal`, arguments
    }
}

extension BrokerDefinitions.Queue {
    enum CodingKeys: String, CodingKey {
        case name, vhost, durable
        case autoDelete = "auto_delete"
        case arguments
    }
}

extension BrokerDefinitions.Binding {
    enum CodingKeys: String, CodingKey {
        case source, vhost, destination
        case destinationType = "destination_type"
        case routingKey = "routing_key"
        case arguments
    }
}

/// Field values as JSON, the way RabbitMQ writes arguments in definitions: numbers, strings, booleans,
/// arrays and objects.
extension AMQPFieldValue: Codable {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .void
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .int64(value)
        } else if let value = try? container.decode(Double.self) {
            self = .double(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([AMQPFieldValue].self) {
            self = .array(value)
        } else {
            self = .table(try container.decode([String: AMQPFieldValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .bool(let value): try container.encode(value)
        case .float(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .decimal(let scale, let value): try container.encode(Double(value) / pow10(scale))
        case .string(let value): try container.encode(value)
        case .bytes(let value): try container.encode(String(decoding: value, as: UTF8.self))
        case .timestamp(let value): try container.encode(value)
        case .uint64(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .table(let value): try container.encode(value)
        case .void: try container.encodeNil()
        case .int8, .uint8, .int16, .uint16, .int32, .uint32, .int64: try container.encode(int64Value!)
        }
    }
}

private func pow10(_ exponent: UInt8) -> Double {
    (0..<exponent).reduce(1.0) { result, _ in result * 10 }
}
