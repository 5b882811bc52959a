import Baton
import Tracing

/// A node's spans, through swift-distributed-tracing (`InstrumentationSystem`): one `consume` span per message
/// handled — a child of the span that published it, found in the W3C `traceparent` header its envelope carries —
/// with a `handle` span inside it for its handlers' run, and one `publish` span per message the relay sends, a
/// child of the span that issued it. What a handler issues carries its consume span's `traceparent`, so one
/// checkout is one trace through every service it reaches.
///
/// With no tracer bootstrapped (the default) the node makes no span at all and the headers pass through as they
/// came.
enum NodeTracing {
    /// The `traceparent` (and `tracestate`) headers as a carrier.
    struct Headers: Extractor, Injector {
        func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
        func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
    }

    /// The process's tracer, or `nil` while it is the no-op one (looked up once per batch or relay round).
    static var tracer: (any Tracer)? {
        let tracer = InstrumentationSystem.tracer
        return tracer is NoOpTracer ? nil : tracer
    }

    /// Starts the span of one message, `operation` (`consume`, `publish`) of it, as a child of the span its
    /// headers name, with the attributes every messaging span has.
    private static func start(
        _ operation: String,
        _ envelope: Envelope,
        kind: SpanKind,
        destination: String,
        node: String,
        tracer: any Tracer
    ) -> any Span {
        var context = ServiceContext.topLevel
        tracer.extract(envelope.headers, into: &context, using: Headers())
        let span = tracer.startAnySpan("\(operation) \(envelope.messageName)", context: context, ofKind: kind)
        span.attributes["messaging.system"] = "rabbitmq"
        span.attributes["messaging.operation.type"] = kind == .consumer ? "process" : "send"
        span.attributes["messaging.destination.name"] = destination
        span.attributes["messaging.message.id"] = envelope.messageID
        span.attributes["baton.node"] = node
        return span
    }

    /// Starts the span of a message about to be handled, and returns it with the envelope its handlers see: its
    /// `traceparent` now the span's, so what they issue is the span's child.
    static func consume(
        _ envelope: Envelope,
        node: String,
        queue: String,
        tracer: any Tracer
    ) -> (span: any Span, envelope: Envelope) {
        let span = start("consume", envelope, kind: .consumer, destination: queue, node: node, tracer: tracer)
        span.attributes["baton.message_type"] = envelope.messageType
        if let correlationID = envelope.correlationID {
            span.attributes["messaging.message.conversation_id"] = correlationID
        }
        var traced = envelope
        tracer.inject(span.context, into: &traced.headers, using: Headers())
        return (span, traced)
    }

    /// Ends a message's span with what became of it, after the commit; when its handlers ran, a `handle` span
    /// inside it covers their run (made now, from the instants recorded in the transaction, so that the
    /// transaction does not wait on the tracer).
    static func end(_ span: any Span, _ result: MessageResult, tracer: any Tracer) {
        if let (start, end) = result.handling {
            let handle: any Span = tracer.startSpan(
                "handle \(span.operationName.dropFirst("consume ".count))",
                context: span.context,
                ofKind: .internal,
                at: start
            )
            if result.outcome == .retrying || result.outcome == .deadLettered {
                handle.setStatus(SpanStatus(code: .error, message: "a handler failed"))
            }
            handle.end(at: end)
        }
        span.attributes["baton.outcome"] = result.outcome.rawValue
        if result.outcome == .deadLettered { span.setStatus(SpanStatus(code: .error, message: "dead-lettered")) }
        span.end()
    }

    /// Starts the span of an outbox row the relay publishes, a child of the span that issued it.
    static func publish(_ row: OutboxMessage, node: String, tracer: any Tracer) -> any Span {
        let span = start(
            "publish",
            row.envelope,
            kind: .producer,
            destination: row.exchange,
            node: node,
            tracer: tracer
        )
        span.attributes["messaging.rabbitmq.destination.routing_key"] = row.routingKey
        return span
    }

    /// Ends a publish span with the broker's answer.
    static func end(_ span: any Span, published outcome: PublishOutcome) {
        switch outcome {
        case .confirmed: break
        case .refused(let reason), .failed(let reason), .unknown(let reason):
            span.setStatus(SpanStatus(code: .error, message: reason))
        }
        span.end()
    }
}
