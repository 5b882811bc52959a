import Baton
import BookstoreContracts
import Foundation
import Testing

/// The published contract as producers in other languages see it: the JSON keys, the names on the wire and
/// the limits. A rename here breaks every producer, so each test pins the shape, not the Swift code.
@Suite struct WireContractTests {
    @Test func aCheckoutEncodesWithTheDocumentedSnakeCaseKeysAndNothingElse() throws {
        let checkout = CheckoutCompleted(
            checkoutID: "chk-1",
            customer: "Ada",
            shippingAddress: "12 St James's Sq",
            lines: [OrderLine(sku: "book-1", quantity: 2)]
        )
        let json = String(decoding: MessageRegistry.encode(checkout), as: UTF8.self)
        #expect(
            json
                == #"{"checkout_id":"chk-1","customer":"Ada","lines":[{"quantity":2,"sku":"book-1"}],"shipping_address":"12 St James's Sq"}"#
        )
    }

    @Test func whatAPythonStorefrontSendsDecodes() throws {
        let registry = MessageRegistry(types: [CheckoutCompleted.self, ParcelDelivered.self])
        let body =
            #"{"checkout_id": "chk-2", "customer": "Grace", "shipping_address": "", "lines": [{"sku": "b", "quantity": 1}]}"#
        let decoded = try registry.decode(
            Envelope(
                messageID: "m-1",
                messageType: CheckoutCompleted.messageType,
                timestamp: .now,
                payload: Data(body.utf8)
            )
        )
        #expect(
            decoded as? CheckoutCompleted
                == CheckoutCompleted(
                    checkoutID: "chk-2",
                    customer: "Grace",
                    shippingAddress: "",
                    lines: [OrderLine(sku: "b", quantity: 1)]
                )
        )
    }

    @Test func theNamesOnTheWireArePinned() {
        #expect(CheckoutCompleted.messageType == "storefront.CheckoutCompleted.v1")
        #expect([CheckoutCompleted.exchange, CheckoutCompleted.routingKey] == ["storefront", "checkout.completed"])
        #expect(ParcelDelivered.messageType == "carrier.ParcelDelivered.v1")
        #expect([ParcelDelivered.exchange, ParcelDelivered.routingKey] == ["carrier", "parcel.delivered"])
        #expect(ReserveInventory.messageType == "inventory.ReserveInventory.v1")
        #expect(PlaceOrder.messageType == "orders.PlaceOrder.v1")
    }

    @Test func theLimitsAreEnforcedNamingTheField() {
        func reason(_ lines: [OrderLine], customer: String = "Ada") -> String? {
            do {
                try CheckoutCompleted(checkoutID: "c", customer: customer, shippingAddress: "", lines: lines).validate()
                return nil
            } catch {
                return error.reason
            }
        }
        #expect(reason([OrderLine(sku: "b", quantity: 1)]) == nil)
        #expect(reason([])?.contains("lines") == true)
        #expect(reason([OrderLine(sku: "b", quantity: 1001)])?.contains("lines[0].quantity") == true)
        #expect(reason([OrderLine(sku: "", quantity: 1)])?.contains("lines[0].sku") == true)
        #expect(reason([OrderLine(sku: "b", quantity: 1)], customer: "")?.contains("customer") == true)
        #expect(reason(Array(repeating: OrderLine(sku: "b", quantity: 1), count: 101))?.contains("lines") == true)
    }

    @Test func theOrderIDOfACheckoutIsStableAcrossReleases() {
        #expect(
            orderID(forCheckout: "chk-1") == "ord-94f8017febdb",
            "derived from the checkout id alone, by a fixed rule"
        )
        #expect(orderID(forCheckout: "chk-1") != orderID(forCheckout: "chk-2"))
    }
}

/// Every message about an order stays in order with the others of its order on a partitioned service.
@Suite struct PartitionKeyTests {
    @Test func everyMessageAboutAnOrderIsKeyedByIt() {
        let order = orderID(forCheckout: "checkout-1")
        #expect(
            PlaceOrder(checkoutID: "checkout-1", customer: "c", shippingAddress: "a", lines: []).partitionKey == order
        )
        let keyed: [any Message] = [
            OrderConfirmed(orderID: order, checkoutID: "checkout-1", shippingAddress: "a", lines: []),
            OrderCancelled(orderID: order, checkoutID: "checkout-1", reason: "r"),
            ReserveInventory(orderID: order, lines: []), ReleaseInventory(orderID: order, reason: "r"),
            InventoryReserved(orderID: order), CreateShipment(orderID: order, address: "a"),
            ShipmentFailed(orderID: order, reason: "r"), ExpediteOrder(orderID: order, requestedBy: "agent"),
        ]
        #expect(keyed.allSatisfy { $0.partitionKey == order })
    }
}
