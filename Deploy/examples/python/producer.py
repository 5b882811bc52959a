#!/usr/bin/env python3
"""A storefront written against Baton's published contract (Deploy/asyncapi.yaml), not its code.

Publishes checkouts to the `storefront` exchange (routing key `checkout.completed`) as persistent JSON with a
unique message_id and publisher confirms, then waits on `baton.events` until every checkout has its outcome:
`orders.OrderCompleted` or `orders.OrderCancelled`.

    pip install -r requirements.txt
    python3 producer.py --url amqp://producer:PASSWORD@127.0.0.1:5672/baton --checkouts 50

Exit status: 0 when every checkout has an outcome, 1 on timeout, 2 on bad arguments.
"""
import argparse
import json
import sys
import time
import uuid

import pika

EVENTS = "baton.events"
OUTCOMES = ("orders.OrderCompleted", "orders.OrderCancelled")


def checkout(checkout_id, index, args):
    """One checkout; every --blank-every'th has no address (shipping fails, the order is compensated)."""
    blank = args.blank_every and index % args.blank_every == args.blank_every - 1
    return {
        "checkout_id": checkout_id,
        "customer": f"Customer {index}",
        "shipping_address": "" if blank else f"{index} Example Street, London",
        "lines": [{"sku": args.skus[index % len(args.skus)], "quantity": 1}],
    }


def publish(channel, exchange, routing_key, body, message_id=None, timestamp=None):
    """Publishes persistent JSON and waits for the broker's confirm (raises if it is refused or unroutable).
    The timestamp is the message's, the same for every copy: Baton's inbox window counts from it."""
    channel.basic_publish(
        exchange=exchange,
        routing_key=routing_key,
        body=json.dumps(body).encode(),
        properties=pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=message_id or str(uuid.uuid4()),
            timestamp=timestamp or int(time.time()),
        ),
        mandatory=True,
    )


class Publisher:
    """Publishes until the broker confirms: a nacked message goes again, under the same id, on a new channel.
    (A broker node that went down can leave a channel nacking every publish to a quorum queue whose leader it
    held, even once a new leader is elected; a new channel finds that leader.)"""

    def __init__(self, connection, timeout=60.0):
        self.connection = connection
        self.timeout = timeout
        self.channel = self._open()

    def _open(self):
        channel = self.connection.channel()
        channel.confirm_delivery()
        return channel

    def publish(self, exchange, routing_key, body):
        message_id, timestamp = str(uuid.uuid4()), int(time.time())
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return publish(self.channel, exchange, routing_key, body, message_id=message_id, timestamp=timestamp)
            except pika.exceptions.NackError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                if self.channel.is_open:
                    self.channel.close()
                self.channel = self._open()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="amqp://producer:PASSWORD@HOST:PORT/baton")
    parser.add_argument("--checkouts", type=int, default=20, help="how many checkouts to push (default 20)")
    parser.add_argument("--prefix", default=f"py-{uuid.uuid4().hex[:8]}", help="checkout id prefix")
    parser.add_argument("--skus", default="book-0001,book-0002,book-0003", help="comma-separated SKUs to buy")
    parser.add_argument("--blank-every", type=int, default=0, help="every Nth checkout has a blank address")
    parser.add_argument("--rate", type=float, default=0, help="checkouts per second (default: as fast as confirmed)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for all outcomes")
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    args = parser.parse_args()
    if args.checkouts < 1 or args.timeout <= 0 or args.blank_every < 0 or args.rate < 0:
        parser.error("--checkouts and --timeout must be positive, --blank-every and --rate not negative")
    args.skus = [sku for sku in args.skus.split(",") if sku]

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    channel.confirm_delivery()
    # A private queue for the outcomes, bound before the first checkout so that none is missed.
    queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    for routing_key in OUTCOMES:
        channel.queue_bind(queue=queue, exchange=EVENTS, routing_key=routing_key)

    ids = [f"{args.prefix}-{index:05d}" for index in range(args.checkouts)]
    started = time.monotonic()
    publisher = Publisher(connection)
    for index, checkout_id in enumerate(ids):
        if args.rate:
            time.sleep(max(0.0, started + index / args.rate - time.monotonic()))
        publisher.publish("storefront", "checkout.completed", checkout(checkout_id, index, args))
    published = time.monotonic()

    outcomes = {}
    wanted = set(ids)
    deadline = started + args.timeout
    for method, properties, body in channel.consume(queue, inactivity_timeout=1.0):
        if method is not None:
            event = json.loads(body)
            if event.get("checkout_id") in wanted:
                outcomes[event["checkout_id"]] = {
                    "event": method.routing_key,
                    "order_id": event.get("order_id"),
                    "reason": event.get("reason"),
                }
            channel.basic_ack(method.delivery_tag)
        if len(outcomes) == len(wanted) or time.monotonic() > deadline:
            break
    channel.cancel()
    connection.close()
    finished = time.monotonic()

    completed = sum(1 for o in outcomes.values() if o["event"] == "orders.OrderCompleted")
    summary = {
        "checkouts": len(ids),
        "completed": completed,
        "cancelled": len(outcomes) - completed,
        "missing": sorted(wanted - outcomes.keys()),
        "publish_seconds": round(published - started, 3),
        "total_seconds": round(finished - started, 3),
        "outcomes": outcomes,
    }
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(f"{len(ids)} checkouts published in {summary['publish_seconds']} s; "
              f"{completed} completed, {summary['cancelled']} cancelled, {len(summary['missing'])} without outcome "
              f"after {summary['total_seconds']} s")
    return 0 if not summary["missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
