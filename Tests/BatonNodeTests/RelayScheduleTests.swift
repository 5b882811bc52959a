import Baton
import Foundation
import Testing

@testable import BatonNode

/// The outbox relay's scheduling, as a value: when it reads the table, publishes, waits and finishes.
@Suite struct RelayScheduleTests {
    let start = ContinuousClock.now
    let date = Date(timeIntervalSince1970: 1_767_225_600)

    func rows(_ sequences: ClosedRange<Int64>) -> [OutboxMessage] {
        sequences.map {
            OutboxMessage(
                sequence: $0,
                exchange: "x",
                routingKey: "k",
                envelope: Envelope(messageID: "m-\($0)", messageType: "t.T.v1", timestamp: date, payload: Data()),
                wasRefused: false
            )
        }
    }

    @Test func itReadsTheTableFirstThenPublishesWhatItFound() {
        var schedule = RelaySchedule(limit: 10, now: start)
        #expect(schedule.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date) == .readTable)
        let found = rows(1...3)
        let action = schedule.tableRead(found, nextAttempt: nil, stopping: false, now: start, date: date)
        #expect(action == .publish(found))
        #expect(schedule.readThrough == 3)
    }

    @Test func aFullPageIsFollowedByAnotherRead() {
        var schedule = RelaySchedule(limit: 3, now: start)
        _ = schedule.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date)
        _ = schedule.tableRead(rows(1...3), nextAttempt: nil, stopping: false, now: start, date: date)
        #expect(schedule.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date) == .readTable)
    }

    @Test func handedOverRowsArePublishedWithoutAReadExceptCopiesOfReadRows() {
        var schedule = RelaySchedule(limit: 10, now: start)
        _ = schedule.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date)
        _ = schedule.tableRead(rows(1...3), nextAttempt: nil, stopping: false, now: start, date: date)
        let action = schedule.next(handedOver: rows(2...5), overflowed: false, stopping: false, now: start, date: date)
        #expect(action == .publish(rows(4...5)), "rows 2 and 3 came with the read")
    }

    @Test func withNothingToDoItWaitsAtMostASecond() {
        var schedule = RelaySchedule(limit: 10, now: start)
        _ = schedule.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date)
        let retry = date.addingTimeInterval(0.25)
        #expect(
            schedule.tableRead([], nextAttempt: retry, stopping: false, now: start, date: date) == .wait(until: retry)
        )
        var later = RelaySchedule(limit: 10, now: start)
        _ = later.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date)
        #expect(
            later.tableRead([], nextAttempt: nil, stopping: false, now: start, date: date)
                == .wait(until: date.addingTimeInterval(1))
        )
    }

    @Test func itReadsWhenARetryIsDueAfterASecondAndAfterAnOverflow() {
        var schedule = RelaySchedule(limit: 10, now: start)
        _ = schedule.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date)
        _ = schedule.tableRead([], nextAttempt: date.addingTimeInterval(5), stopping: false, now: start, date: date)
        let quiet = schedule.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date)
        #expect(quiet == .wait(until: date.addingTimeInterval(1)))
        #expect(
            schedule.next(
                handedOver: [],
                overflowed: false,
                stopping: false,
                now: start,
                date: date.addingTimeInterval(5)
            )
                == .readTable,
            "the retry is due"
        )
        var periodic = RelaySchedule(limit: 10, now: start)
        _ = periodic.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date)
        _ = periodic.tableRead([], nextAttempt: nil, stopping: false, now: start, date: date)
        #expect(
            periodic.next(
                handedOver: [],
                overflowed: false,
                stopping: false,
                now: start + .milliseconds(1001),
                date: date
            )
                == .readTable,
            "rows another process queued are found within a second"
        )
        var overflowing = RelaySchedule(limit: 10, now: start)
        _ = overflowing.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date)
        _ = overflowing.tableRead([], nextAttempt: nil, stopping: false, now: start, date: date)
        #expect(
            overflowing.next(handedOver: rows(7...8), overflowed: true, stopping: false, now: start, date: date)
                == .readTable,
            "rows were dropped from the handover: the table has them"
        )
    }

    @Test func aFailedRoundReadsTheTableAgain() {
        var schedule = RelaySchedule(limit: 10, now: start)
        _ = schedule.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date)
        _ = schedule.tableRead(rows(1...2), nextAttempt: nil, stopping: false, now: start, date: date)
        schedule.roundFailed()
        #expect(
            schedule.next(handedOver: rows(3...3), overflowed: false, stopping: false, now: start, date: date)
                == .readTable
        )
    }

    @Test func stoppingItReadsOnceMoreThenFinishes() {
        var schedule = RelaySchedule(limit: 10, now: start)
        _ = schedule.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date)
        _ = schedule.tableRead([], nextAttempt: nil, stopping: false, now: start, date: date)
        #expect(schedule.next(handedOver: [], overflowed: false, stopping: true, now: start, date: date) == .readTable)
        let left = rows(1...1)
        #expect(schedule.tableRead(left, nextAttempt: nil, stopping: true, now: start, date: date) == .publish(left))
        #expect(schedule.next(handedOver: [], overflowed: false, stopping: true, now: start, date: date) == .readTable)
        #expect(schedule.tableRead([], nextAttempt: nil, stopping: true, now: start, date: date) == .finish)
    }

    /// The read of every second waits for the publish rounds in flight to end, letting handed-over rows go
    /// meanwhile, for a few seconds at most; a read for another reason (here a retry that is due) does not.
    @Test func theReadOfEverySecondLetsHandedOverRowsGoWhileRoundsAreInFlightForAWhile() {
        var schedule = RelaySchedule(limit: 10, now: start)
        _ = schedule.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date)
        _ = schedule.tableRead(rows(1...1), nextAttempt: nil, stopping: false, now: start, date: date)
        let due = start + .milliseconds(1_500)
        #expect(
            schedule.next(
                handedOver: rows(2...2),
                overflowed: false,
                stopping: false,
                roundsInFlight: true,
                now: due,
                date: date
            )
                == .publish(rows(2...2))
        )
        #expect(
            schedule.next(handedOver: rows(3...3), overflowed: false, stopping: false, now: due, date: date)
                == .readTable,
            "no round in flight: the read"
        )
        var overdue = RelaySchedule(limit: 10, now: start)
        _ = overdue.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date)
        _ = overdue.tableRead(rows(1...1), nextAttempt: nil, stopping: false, now: start, date: date)
        let late = start + .seconds(1) + RelaySchedule.readDeferral + .milliseconds(1)
        #expect(
            overdue.next(
                handedOver: rows(2...2),
                overflowed: false,
                stopping: false,
                roundsInFlight: true,
                now: late,
                date: date
            )
                == .readTable
        )
        var retrying = RelaySchedule(limit: 10, now: start)
        _ = retrying.next(handedOver: [], overflowed: false, stopping: false, now: start, date: date)
        _ = retrying.tableRead([], nextAttempt: date.addingTimeInterval(0.1), stopping: false, now: start, date: date)
        let retryDue = date.addingTimeInterval(0.2)
        #expect(
            retrying.next(
                handedOver: rows(2...2),
                overflowed: false,
                stopping: false,
                roundsInFlight: true,
                now: start,
                date: retryDue
            )
                == .readTable
        )
    }
}
