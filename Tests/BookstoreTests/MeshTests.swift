import BatonTestSupport
import BookstoreContracts
import BookstoreOperations
import Foundation
import Shipping
import Testing

/// End to end: the four services as separate processes over the real broker, each with its own SQLite
/// store. After each scenario: every order terminal, stock conserved exactly, no live shipment for a
/// cancelled order (``MeshSnapshot/problems(stocked:)``), and every service stops gracefully.
@Suite(.serialized) struct MeshTests {
    private func withMesh(stepTimeout: Double = 30, _ body: (Mesh) async throws -> Void) async throws {
        let terminations = try await Mesh.run(stepTimeout: stepTimeout, body)
        #expect(
            terminations.values.allSatisfy { $0.isSuccess },
            "SIGTERM stops every service gracefully: \(terminations)"
        )
    }

    @Test func happyPath() async throws {
        try await withMesh { mesh in
            try await mesh.startAll()
            try await mesh.stock("book-0001", 10)
            try await mesh.stock("book-0002", 10)
            try await mesh.checkout("chk-happy", lines: [("book-0001", 2), ("book-0002", 1)])
            let (snapshot, problems) = try await mesh.settle(orders: 1)
            #expect(problems.isEmpty, "\(problems)")
            let order = try #require(snapshot.orders.first)
            #expect(order.status == "COMPLETED" && order.checkoutID == "chk-happy")
            #expect(snapshot.shipments.first?.status == .created)
            #expect(snapshot.processes.first?.lifecycle == .completed)

            // The operator's view: show by checkout id, JSON.
            let shown = try await mesh.cli("orders", "show", "chk-happy", "--json")
            #expect(shown.status == 0 && shown.output.contains(#""status" : "COMPLETED""#), "\(shown.output)")
            #expect(shown.output.contains(#""cancel_reason" : null"#), "every documented key is present")
            let shipment = try await mesh.cli("shipping", "show", order.orderID, "--json")
            #expect(shipment.output.contains(#""tracking_number" : "TRK-"#), "\(shipment.output)")
            let timeline = try await mesh.cli("fulfillment", "show", order.orderID)
            #expect(timeline.output.contains("issued command inventory.ReserveInventory"), "\(timeline.output)")
            #expect(timeline.output.contains("lifecycle:  completed"))

            // The replay check a deploy pipeline runs: this build decides the stored history as it was decided.
            let verify = try await mesh.cli("fulfillment", "processes", "verify", "--all")
            #expect(verify.status == 0, "\(verify.output)")
            #expect(verify.output.contains("1 instance(s) of fulfillment replayed: 0 would be decided differently"))
            let held = try await mesh.cli("fulfillment", "dlq", "held", "--json")
            let nothingHeld = (try? JSONSerialization.jsonObject(with: Data(held.output.utf8)) as? [Any])?.isEmpty
            #expect(held.status == 0 && nothingHeld == true, "\(held.output)")
            let unknown = try await mesh.cli("fulfillment", "processes", "verify", "ord-nobody")
            #expect(unknown.status != 0 && unknown.output.contains("MISSING ord-nobody"), "\(unknown.output)")
        }
    }

    @Test func blankAddressIsCompensated() async throws {
        try await withMesh { mesh in
            try await mesh.startAll()
            try await mesh.stock("book-0001", 5)
            try await mesh.checkout("chk-blank", address: "   ", lines: [("book-0001", 3)])
            let (snapshot, problems) = try await mesh.settle(orders: 1)
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.orders.first?.status == "CANCELLED")
            #expect(snapshot.orders.first?.cancelReason == "shipment failed: the shipping address is empty")
            #expect(
                snapshot.items.first?.available == 5 && snapshot.items.first?.reserved == 0,
                "the reservation was released"
            )
            #expect(snapshot.processes.first?.lifecycle == .failed)
        }
    }

    @Test func aReservationInventoryRefusesCancelsTheOrderLongBeforeTheStepTimeout() async throws {
        let stepTimeout = 30.0
        try await withMesh(stepTimeout: stepTimeout) { mesh in
            try await mesh.startAll()
            try await mesh.stock("book-0001", 5)
            let placed = ContinuousClock.now
            try await mesh.checkout("chk-unknown-sku", lines: [("book-0001", 1), ("no-such-book", 1)])
            let (snapshot, problems) = try await mesh.settle(orders: 1)
            let elapsed = ContinuousClock.now - placed
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.orders.first?.status == "CANCELLED")
            #expect(
                snapshot.orders.first?.cancelReason
                    == "inventory refused the reservation: unknown SKU no-such-book: not in the catalogue"
            )
            // The refusal reached the process as a failure reply: before it, the order waited out the step timeout.
            #expect(
                elapsed < .seconds(stepTimeout / 3),
                "cancelled \(elapsed) after the checkout; the step timeout it no longer waits for is \(stepTimeout) s"
            )
            #expect(
                snapshot.deadLetters["inventory"]?.map(\.reason) == ["unknown SKU no-such-book: not in the catalogue"]
            )
            let timeline = try await mesh.cli("fulfillment", "show", snapshot.orders[0].orderID)
            #expect(timeline.output.contains("baton.CommandFailed"), "\(timeline.output)")
        }
    }

    @Test func outOfStockCancelsTheOrder() async throws {
        try await withMesh { mesh in
            try await mesh.startAll()
            try await mesh.stock("book-0001", 5)
            try await mesh.stock("book-0002", 1)
            try await mesh.checkout("chk-greedy", lines: [("book-0001", 2), ("book-0002", 2)])
            let (snapshot, problems) = try await mesh.settle(orders: 1)
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.orders.first?.status == "CANCELLED")
            #expect(snapshot.orders.first?.cancelReason == "out of stock: book-0002 (wanted 2, available 1)")
            #expect(snapshot.items.allSatisfy { $0.reserved == 0 }, "all or nothing: nothing stays reserved")
            #expect(snapshot.shipments.isEmpty)
        }
    }

    @Test func aStepTimeoutCompensatesAndTheLateShipmentIsCancelled() async throws {
        try await withMesh(stepTimeout: 2) { mesh in
            try await mesh.startAll()
            #expect(await mesh.stop("shipping")?.isSuccess == true)  // shipping is down; its queue keeps the commands
            try await mesh.stock("book-0001", 5)
            try await mesh.checkout("chk-slow", lines: [("book-0001", 1)])
            let cancelled = try await eventually { try await mesh.snapshot().orders.first?.status == "CANCELLED" }
            #expect(cancelled, "the step timed out and the order was cancelled")
            #expect(try await mesh.snapshot().orders.first?.cancelReason == "step 'shipping' timed out")

            try await mesh.start("shipping")  // now it creates the shipment it was asked for…
            let lateShipmentCancelled = try await eventually {
                try await mesh.snapshot().shipments.first?.status == .cancelled
            }
            #expect(lateShipmentCancelled)
            let (snapshot, problems) = try await mesh.settle(orders: 1)
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.shipments.first?.status == .cancelled, "…and the late shipment is cancelled")
            #expect(snapshot.items.first?.reserved == 0)
        }
    }

    @Test func anOperatorFindsAStuckProcessAbortsItAndLaterPurgesIt() async throws {
        try await withMesh { mesh in
            try await mesh.startAll()
            #expect(await mesh.stop("shipping")?.isSuccess == true)  // the shipment step is stuck
            try await mesh.stock("book-0001", 5)
            try await mesh.checkout("chk-stuck", lines: [("book-0001", 2)])
            let order = orderID(forCheckout: "chk-stuck")
            let stuck = try await eventually {
                let listed = try await mesh.cli(
                    "fulfillment",
                    "processes",
                    "list",
                    "--lifecycle",
                    "running",
                    "--older-than",
                    "1s"
                )
                return listed.output.contains(order)
            }
            #expect(stuck, "found by lifecycle and age")

            // Customer service's command goes to the order's running process.
            let expedite = try await mesh.cli("fulfillment", "expedite", order, "--by", "agent-7")
            #expect(expedite.status == 0, "\(expedite.output)")
            let expedited = try await eventually {
                try await mesh.cli("fulfillment", "show", order).output.contains("expedited:  yes, by agent-7")
            }
            #expect(expedited, "the process took the command")

            let abort = try await mesh.cli("fulfillment", "processes", "abort", order, "--reason", "customer called")
            #expect(abort.status == 0, "\(abort.output)")
            let cancelled = try await eventually { try await mesh.snapshot().orders.first?.status == "CANCELLED" }
            #expect(cancelled, "the abort cancelled the order")
            #expect(try await mesh.snapshot().orders.first?.cancelReason == "customer called")
            #expect(try await mesh.snapshot().items.first?.reserved == 0, "and released its stock")
            try await mesh.start("shipping")  // the shipment it was asked for is created late, then cancelled
            let (snapshot, problems) = try await mesh.settle(orders: 1)
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.processes.first?.lifecycle == .failed)

            let unknown = try await mesh.cli("fulfillment", "processes", "abort", "ord-nobody", "--reason", "r")
            #expect(unknown.status != 0 && unknown.output.contains("no instance 'ord-nobody'"), "\(unknown.output)")
            try await Task.sleep(for: .seconds(1.5))  // closed more than a second ago
            let dryRun = try await mesh.cli("fulfillment", "processes", "purge", "--closed-before", "1s", "--dry-run")
            #expect(
                dryRun.output.contains("\(order)\tfailed") && dryRun.output.contains("1 closed instance"),
                "\(dryRun.output)"
            )
            #expect(try await mesh.snapshot().processes.count == 1, "a dry run deletes nothing")
            let purge = try await mesh.cli("fulfillment", "processes", "purge", "--closed-before", "1s")
            #expect(purge.status == 0, "\(purge.output)")
            let purged = try await eventually { try await mesh.snapshot().processes.first?.purgedAt != nil }
            #expect(purged, "the running service purged its timeline")
            let tombstone = try await mesh.cli("fulfillment", "processes", "list", "--lifecycle", "failed")
            #expect(tombstone.output.contains("\(order)  failed (purged)"), "\(tombstone.output)")
            let again = try await mesh.cli("fulfillment", "processes", "purge", "--closed-before", "1s", "--dry-run")
            #expect(again.output.contains("0 closed instance"), "a tombstone is not purged again: \(again.output)")
            let bad = try await mesh.cli("fulfillment", "processes", "purge", "--closed-before", "last tuesday")
            #expect(bad.status != 0 && bad.output.contains("closed-before"), "\(bad.output)")
        }
    }

    @Test func aCustomerCancelMidFlightUndoesWhatWasDone() async throws {
        try await withMesh { mesh in
            try await mesh.startAll()
            #expect(await mesh.stop("shipping")?.isSuccess == true)  // the shipment step waits
            try await mesh.stock("book-0001", 5)
            try await mesh.checkout("chk-change-of-mind", lines: [("book-0001", 2)])
            let reserved = try await eventually { try await mesh.snapshot().items.first?.reserved == 2 }
            #expect(reserved, "inventory was reserved; the shipment step is pending")

            let cancel = try await mesh.cli("orders", "cancel", "chk-change-of-mind")
            #expect(cancel.status == 0, "\(cancel.output)")
            try await mesh.start("shipping")
            let (snapshot, problems) = try await mesh.settle(orders: 1)
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.orders.first?.cancelReason == "cancelled by the customer")
            #expect(snapshot.items.first?.available == 5)
            #expect(snapshot.shipments.first.map { $0.status == .cancelled } ?? true)
        }
    }

    @Test func aDuplicateCheckoutMakesOneOrder() async throws {
        try await withMesh { mesh in
            try await mesh.startAll()
            try await mesh.stock("book-0001", 10)
            let body =
                #"{"checkout_id":"chk-twice","customer":"Ada","shipping_address":"1 Main St","lines":[{"sku":"book-0001","quantity":1}]}"#
            try await mesh.publishExternal(body, messageID: "same-message")
            try await mesh.publishExternal(body, messageID: "same-message")  // redelivered by the producer
            try await mesh.publishExternal(body, messageID: "another-message")  // the checkout sent twice
            let (snapshot, problems) = try await mesh.settle(orders: 1)
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.orders.count == 1 && snapshot.orders.first?.status == "COMPLETED")
            #expect(snapshot.items.first?.reserved == 1, "one order, reserved once")
        }
    }

    @Test func aMalformedMessageIsDeadLetteredWhileOtherOrdersComplete() async throws {
        try await withMesh { mesh in
            try await mesh.startAll()
            try await mesh.stock("book-0001", 10)
            try await mesh.publishExternal(
                #"{"checkout_id":"chk-bad","customer":"Ada","lines":[{"sku":"book-0001","quantity":0}]}"#
            )
            try await mesh.publishExternal("this is not json")
            try await mesh.checkout("chk-good", lines: [("book-0001", 1)])
            let (snapshot, problems) = try await mesh.settle(orders: 1)
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.orders.first?.status == "COMPLETED")
            let letters = try await eventually { try await mesh.snapshot().deadLetters["orders"]?.count == 2 }
            #expect(letters)
            let listed = try await mesh.cli("orders", "dlq", "list", "--json")
            #expect(listed.status == 0)
            #expect(listed.output.contains("shipping_address: required field is missing"), "\(listed.output)")
            #expect(listed.output.contains("undecodable"), "\(listed.output)")
        }
    }

    @Test func aServiceRestartedMidWorkflowStillFinishesIt() async throws {
        try await withMesh { mesh in
            try await mesh.startAll()
            for sku in ["book-0001", "book-0002", "book-0003"] { try await mesh.stock(sku, 100) }
            for index in 0..<40 { try await mesh.mixedCheckout(index) }
            try await Task.sleep(for: .milliseconds(300))
            await mesh.kill("inventory")  // kill -9, mid-load
            await mesh.kill("shipping")
            try await Task.sleep(for: .milliseconds(500))
            try await mesh.start("inventory")
            try await mesh.start("shipping")
            let (snapshot, problems) = try await mesh.settle(orders: 40, timeout: .seconds(90))
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.ordersByStatus["COMPLETED"] == 34 && snapshot.ordersByStatus["CANCELLED"] == 6)
        }
    }

    /// `repartition` on the real executables while checkouts keep coming: fulfillment goes from its single
    /// queue to 2 partitions, orders (fed by the storefront's external exchange too) to 3. Each change drains
    /// the running process's queue, keeps it while that process consumes it, and removes it once the service
    /// runs again with the new count; every order completes or is compensated, in order.
    @Test func servicesChangeTheirPartitionCountWhileOrdersFlow() async throws {
        try await withMesh { mesh in
            try await mesh.startAll()
            for sku in ["book-0001", "book-0002", "book-0003"] { try await mesh.stock(sku, 100) }
            var checkouts = 0
            for (service, count) in [("fulfillment", 2), ("orders", 3)] {
                for _ in 0..<15 {
                    try await mesh.mixedCheckout(checkouts)
                    checkouts += 1
                }
                // Checkouts keep coming while the count changes.
                let invocation = mesh.cliInvocation(service, ["repartition", "--to", String(count), "--wait", "60"])
                let changing = Task { try await invocation.run() }
                for _ in 0..<15 {
                    try await mesh.mixedCheckout(checkouts)
                    checkouts += 1
                    try await Task.sleep(for: .milliseconds(20))
                }
                let changed = try await changing.value
                #expect(changed.status == 0, "\(changed.output)")
                #expect(changed.output.contains("the store records \(count) partition(s)"), "\(changed.output)")
                #expect(changed.output.contains("kept \(service): 1 replica(s)"), "\(changed.output)")
                await mesh.stop(service)
                try await mesh.start(service, partitions: count)
                let finished = try await mesh.cli(service, "repartition", "--to", String(count))
                #expect(finished.status == 0, "\(finished.output)")
                #expect(
                    finished.output.contains("removed the queues and exchanges of 1 partition(s)"),
                    "\(finished.output)"
                )
            }
            let (snapshot, problems) = try await mesh.settle(orders: 60, timeout: .seconds(120))
            #expect(problems.isEmpty, "\(problems)")
            #expect(snapshot.ordersByStatus["COMPLETED"] == 51 && snapshot.ordersByStatus["CANCELLED"] == 9)
            let timelines = try await TimelineAudit.problems(mesh.readOptions, orders: snapshot.orders)
            #expect(timelines.isEmpty, "\(timelines)")
            let again = try await mesh.cli("orders", "repartition", "--to", "3")
            #expect(again.status == 0 && again.output.contains("runs with 3 partition(s) already"), "\(again.output)")
        }
    }

    @Test func aParcelReportedBeforeItsShipmentIsDeadLetteredThenReplayed() async throws {
        try await withMesh { mesh in
            try await mesh.startAll()
            try await mesh.stock("book-0001", 3)
            let tracking = ShippingService.trackingNumber(for: orderID(forCheckout: "chk-fast-carrier"))
            let report = #"{"tracking_number":"\#(tracking)","delivered_at":"2026-11-22T10:00:00Z"}"#
            try await mesh.publishExternal(
                report,
                exchange: ParcelDelivered.exchange,
                routingKey: ParcelDelivered.routingKey
            )
            let refused = try await eventually { try await mesh.snapshot().deadLetters["shipping"]?.count == 1 }
            #expect(refused, "a delivery for an unknown shipment is dead-lettered")
            let listed = try await mesh.cli("shipping", "dlq", "list", "--json")
            #expect(listed.output.contains("no shipment with tracking number \(tracking)"), "\(listed.output)")

            try await mesh.checkout("chk-fast-carrier", lines: [("book-0001", 1)])
            let (_, problems) = try await mesh.settle(orders: 1)
            #expect(problems.isEmpty, "\(problems)")
            let replay = try await mesh.cli("shipping", "dlq", "replay", "--all")
            #expect(replay.status == 0, "\(replay.output)")
            let delivered = try await eventually { try await mesh.snapshot().shipments.first?.status == .delivered }
            #expect(delivered, "the replayed report delivered the shipment")
            #expect(try await mesh.snapshot().deadLetters["shipping"]?.isEmpty == true)
            let invalid = #"{"tracking_number":"\#(tracking)","delivered_at":"yesterday"}"#
            try await mesh.publishExternal(
                invalid,
                exchange: ParcelDelivered.exchange,
                routingKey: ParcelDelivered.routingKey
            )
            let rejected = try await eventually {
                try await mesh.snapshot().deadLetters["shipping"]?.first?.reason.contains(
                    "delivered_at: must be an ISO 8601"
                ) == true
            }
            #expect(rejected)
        }
    }

    @Test func operatorCommandsSayWhatIsWrong() async throws {
        try await withMesh { mesh in
            // No service is running: a write says so at once instead of hanging.
            let place = try await mesh.cli(
                "orders",
                "place",
                "--customer",
                "Ada",
                "--address",
                "x",
                "--line",
                "book-0001:1"
            )
            #expect(place.status != 0 && place.output.contains("the orders service is not running"), "\(place.output)")
            let badLine = try await mesh.cli("orders", "place", "--customer", "Ada", "--line", "book-0001")
            #expect(badLine.status != 0 && badLine.output.contains("is not SKU:QTY"), "\(badLine.output)")
            let badStatus = try await mesh.cli("orders", "list", "--status", "SHIPPED")
            #expect(badStatus.status != 0 && badStatus.output.contains("--status must be"), "\(badStatus.output)")
            let badTimeout = try await mesh.cli("fulfillment", "serve", "--step-timeout", "-1")
            #expect(badTimeout.status != 0 && badTimeout.output.contains("--step-timeout"), "\(badTimeout.output)")
            let noData = try await mesh.cli("shipping", "list")
            #expect(noData.status != 0 && noData.output.contains("no shipping data"), "\(noData.output)")
            let badURL = try await mesh.cli("inventory", "list", "--amqp-url", "http://nope")
            #expect(badURL.status != 0 && badURL.output.contains("amqp:// or amqps://"), "\(badURL.output)")
            // A store file that is not a store: serve and reads refuse it in one line and leave it as it was.
            let file = mesh.dataDirectory.appendingPathComponent("shipping.sqlite")
            let noise = Data(repeating: 0x5A, count: 4096)
            try noise.write(to: file)
            for arguments in [["serve"], ["list"]] {
                let refused = try await mesh.cli("shipping", arguments)
                #expect(refused.status == 1, "\(arguments): \(refused.output)")
                #expect(refused.output.contains("\(file.path) is not a SQLite database"), "\(refused.output)")
                #expect(refused.output.split(separator: "\n").count == 1, "one line: \(refused.output)")
            }
            #expect(try Data(contentsOf: file) == noise)
        }
    }
}
