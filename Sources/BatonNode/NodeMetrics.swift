import Baton
import Foundation
import Metrics
import Tracing

/// What a node reports through swift-metrics, to whatever backend the process bootstrapped (Prometheus in a
/// service served with `--http`; nothing at all otherwise). Names are constants with the `baton_` prefix;
/// labels have few values — the node, a message type the node knows, an outcome, a process manager and a
/// lifecycle — and never an id.
public enum NodeMetric {
    /// Counter: messages consumed, by `node`, `type` (a type the node knows, else `unknown`) and `outcome`
    /// (``MessageOutcome``). Counted once their transaction committed.
    public static let messages = "baton_messages_total"
    /// Timer (histogram, seconds): one message's handlers, by `node` and `type`.
    public static let handlerDuration = "baton_handler_duration_seconds"
    /// Timer (histogram, seconds): one batch, from its first handler to its commit, by `node`.
    public static let batchDuration = "baton_batch_duration_seconds"
    /// Recorder (histogram): messages per committed batch, by `node`.
    public static let batchSize = "baton_batch_messages"
    /// Counter: batches run again, by `node` and `reason` (``BatchRetry``).
    public static let batchRetries = "baton_batch_retries_total"
    /// Counter: messages the relay published and the broker confirmed, by `node`.
    public static let published = "baton_published_total"
    /// Counter: publishes that failed or were refused (each is tried again later), by `node`.
    public static let publishFailures = "baton_publish_failures_total"
    /// Timer (histogram, seconds): a relay round, from publish to the broker's confirms, by `node`.
    public static let publishConfirmDuration = "baton_publish_confirm_duration_seconds"
    /// Counter: due timers acted on, by `node` and `outcome` (``TimerOutcome``).
    public static let timers = "baton_timers_total"
    /// Timer (histogram, seconds): how late a timer fired (fired − due), by `node`.
    public static let timerLag = "baton_timer_lag_seconds"
    /// Gauge: messages waiting in the outbox, by `node` (sampled from the store).
    public static let outboxPending = "baton_outbox_pending"
    /// Gauge: age in seconds of the oldest message waiting in the outbox (0 when none waits), by `node`.
    public static let outboxOldestAge = "baton_outbox_oldest_age_seconds"
    /// Gauge: dead letters not replayed, by `node`.
    public static let deadLettersOpen = "baton_dead_letters_open"
    /// Gauge: process instances, by `node`, `process_manager` and `lifecycle`.
    public static let instances = "baton_instances"
    /// Gauge: open instances with no transition for longer than ``Node/Configuration/stuckAfter``, by `node`
    /// and `process_manager`.
    public static let stuckInstances = "baton_instances_stuck"
}

/// What became of a consumed message (the `outcome` label of ``NodeMetric/messages``).
public enum MessageOutcome: String, Sendable, CaseIterable {
    /// Handled: its effects committed.
    case handled
    /// Seen before (a redelivery): dropped.
    case duplicate
    /// Its handler failed: held in the store for its next attempt.
    case retrying
    /// Waits in the store behind an earlier message of its instance.
    case waiting
    /// Dead-lettered (refused at the edge, failed permanently or for the last time).
    case deadLettered = "dead_lettered"
    /// Newer than this node: kept until a node that knows it runs.
    case postponed
}

/// What became of a due timer (the `outcome` label of ``NodeMetric/timers``).
public enum TimerOutcome: String, Sendable, CaseIterable {
    /// Its handlers ran and committed.
    case fired
    /// Its instance has a held message: it waits behind it.
    case waiting
    /// Its handler failed: tried again later.
    case retrying
    /// Its handler failed for the last time: dead-lettered and parked.
    case deadLettered = "dead_lettered"
    /// Its instance is newer than this node: left for a node that knows it.
    case postponed
}

/// Why a batch ran again (the `reason` label of ``NodeMetric/batchRetries``).
public enum BatchRetry: String, Sendable, CaseIterable {
    /// It lost a race with another transaction (a deadlock, a serialization failure between replicas): run
    /// again at once.
    case conflict
    /// The store refused it or could not be reached: run again after a backoff.
    case failure
    /// A message failed in the batch (a timer in the round) run without savepoints: run again at once, each
    /// in its own savepoint.
    case isolation
}

/// The node's instruments, labelled with its name, made by its factory.
struct NodeMetrics: Sendable {
    let node: String
    let factory: any MetricsFactory
    let batchDuration: Metrics.Timer
    let batchSize: Recorder
    let published: Counter
    let publishFailures: Counter
    let publishConfirmDuration: Metrics.Timer
    let timerLag: Metrics.Timer

    init(node: String, factory: any MetricsFactory) {
        self.node = node
        self.factory = factory
        let dimensions = [("node", node)]
        batchDuration = Metrics.Timer(label: NodeMetric.batchDuration, dimensions: dimensions, factory: factory)
        batchSize = Recorder(label: NodeMetric.batchSize, dimensions: dimensions, aggregate: true, factory: factory)
        published = Counter(label: NodeMetric.published, dimensions: dimensions, factory: factory)
        publishFailures = Counter(label: NodeMetric.publishFailures, dimensions: dimensions, factory: factory)
        publishConfirmDuration = Metrics.Timer(
            label: NodeMetric.publishConfirmDuration,
            dimensions: dimensions,
            factory: factory
        )
        timerLag = Metrics.Timer(label: NodeMetric.timerLag, dimensions: dimensions, factory: factory)
    }

    /// Counts the messages of a committed batch and their handlers' durations: one counter lookup per type and
    /// outcome in the batch, not per message (this runs on the consume path).
    func committed(_ results: [MessageResult], duration: Duration) {
        batchDuration.record(duration: duration)
        batchSize.record(results.count)
        var counts: [[String]: Int] = [:]
        for result in results { counts[[result.type, result.outcome.rawValue], default: 0] += 1 }
        for (key, count) in counts {
            Counter(
                label: NodeMetric.messages,
                dimensions: [("node", node), ("type", key[0]), ("outcome", key[1])],
                factory: factory
            ).increment(by: count)
        }
        for result in results {
            if let handled = result.duration {
                Metrics.Timer(
                    label: NodeMetric.handlerDuration,
                    dimensions: [("node", node), ("type", result.type)],
                    factory: factory
                ).record(duration: handled)
            }
        }
    }

    /// Counts a batch run again.
    func batchRetried(_ reason: BatchRetry) {
        Counter(
            label: NodeMetric.batchRetries,
            dimensions: [("node", node), ("reason", reason.rawValue)],
            factory: factory
        )
        .increment()
    }

    /// Counts the timers of a committed deadline round by outcome, and how late each fired.
    func fired(_ timers: [(outcome: TimerOutcome, lag: TimeInterval)]) {
        var counts: [TimerOutcome: Int] = [:]
        for timer in timers {
            counts[timer.outcome, default: 0] += 1
            timerLag.recordSeconds(max(0, timer.lag))
        }
        for (outcome, count) in counts {
            Counter(
                label: NodeMetric.timers,
                dimensions: [("node", node), ("outcome", outcome.rawValue)],
                factory: factory
            )
            .increment(by: count)
        }
    }

    /// Sets the gauges sampled from the store; a label set seen before and gone now is set to 0.
    /// - Returns: The label sets set, to pass back next time.
    func sampled(_ statistics: StoreStatistics, at now: Date, previously: Set<[String]>) -> Set<[String]> {
        let dimensions = [("node", node)]
        Gauge(label: NodeMetric.outboxPending, dimensions: dimensions, factory: factory).record(
            statistics.pendingOutbox
        )
        let age = statistics.oldestPendingOutbox.map { max(0, now.timeIntervalSince($0)) } ?? 0
        Gauge(label: NodeMetric.outboxOldestAge, dimensions: dimensions, factory: factory).record(age)
        Gauge(label: NodeMetric.deadLettersOpen, dimensions: dimensions, factory: factory)
            .record(statistics.openDeadLetters)
        var values: [[String]: Int] = [:]
        for (processManager, counts) in statistics.instances {
            for (lifecycle, count) in counts {
                values[[NodeMetric.instances, processManager, lifecycle.rawValue]] = count
            }
        }
        for (processManager, count) in statistics.idleInstances {
            values[[NodeMetric.stuckInstances, processManager]] = count
        }
        for gone in previously where values[gone] == nil { values[gone] = 0 }
        for (key, value) in values {
            var labels = [("node", node), ("process_manager", key[1])]
            if key[0] == NodeMetric.instances { labels.append(("lifecycle", key[2])) }
            Gauge(label: key[0], dimensions: labels, factory: factory).record(value)
        }
        return Set(values.keys)
    }
}

/// One consumed message's outcome, for ``NodeMetrics/committed(_:duration:)``.
struct MessageResult: Sendable {
    var type: String
    var outcome: MessageOutcome
    /// How long its handlers ran, when they ran.
    var duration: Duration?
    /// When its handlers started and ended, when they ran (for its `handle` span, made after the commit).
    var handling: (start: DefaultTracerClock.Instant, end: DefaultTracerClock.Instant)? = nil
}
