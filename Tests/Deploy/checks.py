#!/usr/bin/env python3
"""Checks of a running Baton deployment, for Tests/Deploy/compose-test.sh (and by hand).

  checks.py document                     the AsyncAPI document: valid AsyncAPI 3, valid JSON Schemas, every
                                         example accepted and every broken variant rejected by its schema
  checks.py permissions --port P         each broker user is refused outside its permissions; guest refused
  checks.py contract --port P --compose CMD
                                         the document's examples are accepted by the running services and the
                                         broken variants dead-lettered by them, with the field in the reason
  checks.py agree --compose CMD --outcomes FILE
                                         the services' CLIs agree with the outcomes a producer saw
  checks.py prometheus --port P --outcomes FILE --targets N
                                         Prometheus scrapes every service, its rules load, its numbers agree

Passwords come from the environment (BATON_<USER>_PASSWORD, as in Deploy/.env). Exit status 0 when every
check holds; each failure is printed.
"""
import argparse
import copy
import html
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import jsonschema
import pika
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT202012

HERE = os.path.dirname(os.path.abspath(__file__))
DOCUMENT = os.path.join(HERE, "..", "..", "Deploy", "asyncapi.yaml")
SERVICES = ("orders", "inventory", "shipping", "fulfillment")
# Each service's input is split over this many partition queues (compose files: BATON_PARTITIONS).
PARTITIONS = 4


def partition(service, index=0):
    """The name of one of a service's partition queues; its consistent-hash exchange is the prefix."""
    return f"{service}.p{PARTITIONS}.{index}"
failures = []


def check(condition, what):
    print(("ok    " if condition else "FAIL  ") + what)
    if not condition:
        failures.append(what)


# MARK: the document

def load_document():
    with open(DOCUMENT) as file:
        return yaml.safe_load(file)


def schema_validator(document, name):
    """A validator for components.schemas[name], resolving its $refs inside the document."""
    registry = Registry().with_resource("urn:asyncapi", DRAFT202012.create_resource(document))
    schema = {"$ref": f"urn:asyncapi#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry, format_checker=jsonschema.FormatChecker())


def checkout_example(document):
    return document["components"]["messages"]["CheckoutCompleted"]["examples"][0]["payload"]


def broken_checkouts(valid):
    """Variants of a valid checkout that the contract rejects: (what, field named in the reason, body)."""
    def variant(mutate):
        body = copy.deepcopy(valid)
        mutate(body)
        return body
    line = valid["lines"][0]
    return [
        ("checkout_id missing", "checkout_id", variant(lambda b: b.pop("checkout_id"))),
        ("checkout_id empty", "checkout_id", variant(lambda b: b.update(checkout_id=""))),
        ("checkout_id 65 characters", "checkout_id", variant(lambda b: b.update(checkout_id="c" * 65))),
        ("customer missing", "customer", variant(lambda b: b.pop("customer"))),
        ("customer a number", "customer", variant(lambda b: b.update(customer=42))),
        ("customer 151 characters", "customer", variant(lambda b: b.update(customer="x" * 151))),
        ("shipping_address missing", "shipping_address", variant(lambda b: b.pop("shipping_address"))),
        ("shipping_address 501 characters", "shipping_address", variant(lambda b: b.update(shipping_address="a" * 501))),
        ("lines missing", "lines", variant(lambda b: b.pop("lines"))),
        ("lines empty", "lines", variant(lambda b: b.update(lines=[]))),
        ("lines an object", "lines", variant(lambda b: b.update(lines=line))),
        ("101 lines", "lines", variant(lambda b: b.update(lines=[line] * 101))),
        ("quantity 0", "quantity", variant(lambda b: b["lines"][0].update(quantity=0))),
        ("quantity 1001", "quantity", variant(lambda b: b["lines"][0].update(quantity=1001))),
        ("quantity a string", "quantity", variant(lambda b: b["lines"][0].update(quantity="2"))),
        ("sku empty", "sku", variant(lambda b: b["lines"][0].update(sku=""))),
        ("sku missing", "sku", variant(lambda b: b["lines"][0].pop("sku"))),
    ]


def broken_parcels(valid):
    def variant(mutate):
        body = copy.deepcopy(valid)
        mutate(body)
        return body
    return [
        ("tracking_number missing", "tracking_number", variant(lambda b: b.pop("tracking_number"))),
        ("tracking_number empty", "tracking_number", variant(lambda b: b.update(tracking_number=""))),
        ("tracking_number a number", "tracking_number", variant(lambda b: b.update(tracking_number=7))),
        ("delivered_at missing", "delivered_at", variant(lambda b: b.pop("delivered_at"))),
        ("delivered_at not a date", "delivered_at", variant(lambda b: b.update(delivered_at="yesterday"))),
    ]


def check_document(_args):
    from pydantic_asyncapi import AsyncAPIV3
    document = load_document()
    # pydantic-asyncapi names the AMQP channel binding of a routing key `is: exchange`; the bindings spec
    # (0.3.0) says `is: routingKey`. The document follows the spec; the copy given to the validator is renamed.
    validated = copy.deepcopy(document)
    for channel in validated["channels"].values():
        amqp = channel.get("bindings", {}).get("amqp", {})
        if amqp.get("is") == "routingKey":
            amqp["is"] = "exchange"
    try:
        AsyncAPIV3.model_validate(validated)
        check(True, "asyncapi.yaml is a valid AsyncAPI 3.0 document (pydantic-asyncapi)")
    except Exception as error:  # the validator's own error names the path
        check(False, f"asyncapi.yaml is a valid AsyncAPI 3.0 document: {error}")
    for name, schema in document["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
            ok = True
        except jsonschema.SchemaError as error:
            ok = False
            print(error)
        check(ok, f"schema {name} is a valid JSON Schema (2020-12)")
    for name, message in document["components"]["messages"].items():
        schema_name = message["payload"]["$ref"].rsplit("/", 1)[1]
        validator = schema_validator(document, schema_name)
        for example in message.get("examples", []):
            errors = [e.message for e in validator.iter_errors(example["payload"])]
            check(not errors, f"example {name}/{example.get('name', '-')} matches its schema {errors or ''}")
    checkouts = schema_validator(document, "CheckoutCompleted")
    for what, _, body in broken_checkouts(checkout_example(document)):
        check(not checkouts.is_valid(body), f"schema rejects a checkout with {what}")
    parcels = schema_validator(document, "ParcelDelivered")
    parcel = document["components"]["messages"]["ParcelDelivered"]["examples"][0]["payload"]
    for what, _, body in broken_parcels(parcel):
        check(not parcels.is_valid(body), f"schema rejects a parcel report with {what}")


# MARK: the broker

def connect(user, port, password=None):
    password = password if password is not None else os.environ[f"BATON_{user.upper()}_PASSWORD"]
    parameters = pika.ConnectionParameters(
        host="127.0.0.1", port=port, virtual_host="baton",
        credentials=pika.PlainCredentials(user, password), connection_attempts=1, blocked_connection_timeout=10,
    )
    return pika.BlockingConnection(parameters)


def refused(connection, action, reply_code=403):
    """Runs action(channel) on a fresh channel; True if the broker refused it with reply_code (403
    ACCESS_REFUSED by default)."""
    channel = connection.channel()
    channel.confirm_delivery()
    try:
        action(channel)
    except pika.exceptions.ChannelClosedByBroker as error:
        return error.reply_code == reply_code
    channel.close()
    return False


def publish(channel, exchange, routing_key, body, message_id=None, mandatory=False):
    channel.basic_publish(
        exchange, routing_key, json.dumps(body).encode() if not isinstance(body, bytes) else body,
        pika.BasicProperties(content_type="application/json", delivery_mode=2,
                             message_id=message_id or str(uuid.uuid4())),
        mandatory=mandatory,
    )


def check_permissions(args):
    for user, password in (("guest", "guest"), ("orders", "wrong-password")):
        try:
            connect(user, args.port, password).close()
            check(False, f"{user} with password {password!r} is refused")
        except pika.exceptions.AMQPConnectionError:
            check(True, f"{user} with password {password!r} is refused")
    for service in SERVICES:
        other = SERVICES[(SERVICES.index(service) + 1) % len(SERVICES)]
        connection = connect(service, args.port)
        check(connection.channel().queue_declare(partition(service, PARTITIONS - 1), passive=True) is not None,
              f"{service} may look up its own partitions' queues")
        for what, action in (
            (f"consuming {other}'s partition", lambda ch: ch.basic_consume(partition(other), lambda *a: None)),
            (f"consuming {other}'s delivery-limit queue",
             lambda ch: ch.basic_consume(f"{other}.delivery-limit", lambda *a: None)),
            ("declaring a queue", lambda ch: ch.queue_declare(f"{service}-rogue")),
            ("deleting its own partition", lambda ch: ch.queue_delete(partition(service))),
            (f"publishing into {other}'s partitions", lambda ch: publish(ch, f"{other}.p{PARTITIONS}", "x", {})),
            ("publishing into its own partitions past the shared exchanges",
             lambda ch: publish(ch, f"{service}.p{PARTITIONS}", "x", {})),
            ("re-binding its partitions", lambda ch: ch.exchange_bind(f"{service}.p{PARTITIONS}", "baton.events", "#")),
            ("declaring baton.events", lambda ch: ch.exchange_declare("baton.events", "topic", durable=True)),
            (f"publishing {other}'s event", lambda ch: publish(ch, "baton.events", f"{other}.Forged", {})),
            (f"dead-lettering as {other}", lambda ch: publish(ch, "baton.dead-letters", other, {})),
            (f"addressing {other} on baton.nodes", lambda ch: publish(ch, "baton.nodes", other, {})),
            ("publishing a checkout", lambda ch: publish(ch, "storefront", "checkout.completed", {})),
            ("publishing to the default exchange", lambda ch: publish(ch, "", other, {})),
        ):
            check(refused(connection, action), f"{service} is refused {what}")
        connection.close()
    connection = connect("producer", args.port)
    for what, action in (
        ("publishing a command", lambda ch: publish(ch, "baton.commands", "orders.CancelOrder", {})),
        ("binding a queue to baton.commands", lambda ch: ch.queue_bind(
            ch.queue_declare("", exclusive=True).method.queue, "baton.commands", "#")),
        ("consuming an orders partition", lambda ch: ch.basic_consume(partition("orders"), lambda *a: None)),
        ("publishing into the orders partitions directly",
         lambda ch: publish(ch, f"orders.p{PARTITIONS}.external", "checkout.completed", {})),
        ("publishing to storefront with another routing key", lambda ch: publish(ch, "storefront", "checkout.forged", {})),
        ("publishing an event", lambda ch: publish(ch, "baton.events", "orders.OrderCompleted", {})),
        ("declaring an exchange outside producer.*", lambda ch: ch.exchange_declare("rogue", "topic")),
        ("deleting the storefront exchange", lambda ch: ch.exchange_delete("storefront")),
        ("declaring a queue outside producer.*", lambda ch: ch.queue_declare("orders.rogue")),
    ):
        check(refused(connection, action), f"producer is refused {what}")
    too_large = lambda ch: publish(ch, "storefront", "checkout.completed", b"x" * (1024 * 1024 + 1))
    check(refused(connection, too_large, reply_code=406), "producer is refused a body over the broker's 1 MiB limit")
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, "baton.events", "orders.#")
    check(True, "producer may bind its own queue to baton.events")
    channel.queue_declare("producer.listener", durable=True)
    channel.queue_bind("producer.listener", "baton.events", "shipping.#")
    channel.queue_delete("producer.listener")
    check(True, "producer may keep a durable queue of its own (producer.*) on baton.events")
    connection.close()


# MARK: the running services

def compose_json(args, service, *command):
    """Runs a service's CLI inside its container and parses its JSON output."""
    out = subprocess.run(shlex.split(args.compose) + ["exec", "-T", service, service, *command, "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.5)
    check(False, f"{what} within {timeout} s")
    return None


def check_contract(args):
    document = load_document()
    connection = connect("producer", args.port)
    channel = connection.channel()
    channel.confirm_delivery()
    queue = channel.queue_declare("", exclusive=True).method.queue
    for key in ("orders.OrderCompleted", "orders.OrderCancelled", "shipping.ShipmentCreated",
                "shipping.ShipmentDelivered"):
        channel.queue_bind(queue, "baton.events", key)
    run = uuid.uuid4().hex[:6]
    accepted = {}
    for example in document["components"]["messages"]["CheckoutCompleted"]["examples"]:
        body = copy.deepcopy(example["payload"])
        body["checkout_id"] = f"{body['checkout_id']}-{run}"
        accepted[body["checkout_id"]] = example["name"]
        publish(channel, "storefront", "checkout.completed", body, mandatory=True)
    broken = {}
    for what, field, body in broken_checkouts(checkout_example(document)):
        message_id = f"broken-checkout-{run}-{len(broken)}"
        broken[message_id] = ("orders", what, field)
        publish(channel, "storefront", "checkout.completed", body, message_id=message_id, mandatory=True)
    events, tracking = {}, {}

    def drain():
        while True:
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return
            event = json.loads(body)
            events.setdefault(method.routing_key, []).append(event)
    def outcomes():
        drain()
        done = {e["checkout_id"]: key for key in ("orders.OrderCompleted", "orders.OrderCancelled")
                for e in events.get(key, []) if e.get("checkout_id") in accepted}
        return done if len(done) == len(accepted) else None
    done = wait_for(outcomes, 90, "every example checkout has an outcome") or {}
    for checkout_id, name in accepted.items():
        expected = "orders.OrderCancelled" if name == "no-address" else "orders.OrderCompleted"
        check(done.get(checkout_id) == expected, f"example checkout {name}: {done.get(checkout_id)} (want {expected})")
    # A delivery report for a shipment of ours, then broken variants of it.
    completed = [e["order_id"] for e in events.get("orders.OrderCompleted", []) if e["checkout_id"] in accepted]
    for event in events.get("shipping.ShipmentCreated", []):
        tracking[event["order_id"]] = event["tracking_number"]
    parcel = copy.deepcopy(document["components"]["messages"]["ParcelDelivered"]["examples"][0]["payload"])
    if completed and completed[0] in tracking:
        parcel["tracking_number"] = tracking[completed[0]]
        publish(channel, "carrier", "parcel.delivered", parcel, mandatory=True)
        def delivered():
            drain()
            return any(e["order_id"] == completed[0] for e in events.get("shipping.ShipmentDelivered", []))
        check(bool(wait_for(delivered, 60, "the example parcel report is accepted")),
              "example parcel report: shipping.ShipmentDelivered")
        shipment = compose_json(args, "shipping", "show", completed[0])
        check(shipment["status"] == "DELIVERED", f"shipping show says DELIVERED ({shipment['status']})")
    else:
        check(False, "a completed example order has a tracking number to report delivered")
    for what, field, body in broken_parcels(parcel):
        message_id = f"broken-parcel-{run}-{len(broken)}"
        broken[message_id] = ("shipping", what, field)
        publish(channel, "carrier", "parcel.delivered", body, message_id=message_id, mandatory=True)
    connection.close()

    def dead_letters():
        letters = {}
        for service in ("orders", "shipping"):
            for letter in compose_json(args, service, "dlq", "list"):
                letters[letter["message_id"]] = (service, letter["reason"])
        return letters if all(m in letters for m in broken) else None
    letters = wait_for(dead_letters, 60, "every broken variant is dead-lettered") or {}
    for message_id, (service, what, field) in broken.items():
        found = letters.get(message_id)
        check(found is not None and found[0] == service and field in found[1],
              f"{service} dead-letters a message with {what}: {found[1] if found else 'not dead-lettered'}")


def check_agree(args):
    with open(args.outcomes) as file:
        seen = json.load(file)["outcomes"]
    orders = {o["checkout_id"]: o for o in compose_json(args, "orders", "list")}
    shipments = {s["order_id"]: s for s in compose_json(args, "shipping", "list")}
    processes = {p["instance_id"]: p for p in compose_json(args, "fulfillment", "processes", "list")}
    for checkout_id, outcome in sorted(seen.items()):
        order = orders.get(checkout_id)
        want = "COMPLETED" if outcome["event"] == "orders.OrderCompleted" else "CANCELLED"
        ok = order is not None and order["status"] == want and order["order_id"] == outcome["order_id"]
        shipment = shipments.get(outcome["order_id"])
        process = processes.get(outcome["order_id"])
        if want == "COMPLETED":
            ok = ok and shipment is not None and shipment["status"] in ("CREATED", "DELIVERED")
        else:
            ok = ok and (shipment is None or shipment["status"] in ("FAILED", "CANCELLED"))
        ok = ok and process is not None and process["lifecycle"] in ("completed", "failed")
        if not ok:
            check(False, f"{checkout_id}: producer saw {want}; orders {order and order['status']}, "
                         f"shipping {shipment and shipment['status']}, fulfillment {process and process['lifecycle']}")
    check(True if not failures else False,
          f"orders, shipping and fulfillment CLIs agree with the producer on {len(seen)} checkouts")
    # producer.py buys one unit per checkout: a completed order holds one, a cancelled one none. A cancelled
    # order's release runs beside its cancellation (the producer may see the cancel first): wait for it.
    completed = sum(1 for o in seen.values() if o["event"] == "orders.OrderCompleted")
    stock = []

    def settled():
        stock[:] = compose_json(args, "inventory", "list")
        return sum(item["reserved"] for item in stock) == completed
    wait_for(settled, 60, "inventory settles")
    held = sum(item["reserved"] for item in stock)
    total = sum(item["available"] + item["reserved"] for item in stock)
    check(held == completed, f"inventory holds one unit per completed order ({held} reserved, {completed} completed)")
    check(total == args.stocked, f"stock is conserved ({total} of {args.stocked})")
    letters = compose_json(args, "inventory", "dlq", "list")
    check(not letters, f"inventory dead-lettered nothing ({[letter['reason'] for letter in letters][:3]})")


def check_prometheus(args):
    """Prometheus scrapes every service, loaded the example rules, and its numbers match the producer's."""
    with open(args.outcomes) as file:
        seen = json.load(file)["outcomes"]
    completed = sum(1 for o in seen.values() if o["event"] == "orders.OrderCompleted")

    def api(path, **query):
        url = f"http://127.0.0.1:{args.port}/api/v1/{path}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)["data"]

    def value(expression):
        result = api("query", query=expression)["result"]
        return float(result[0]["value"][1]) if result else None

    up = f"sum(up{{job=\"baton\"}}) == {args.targets}"
    wait_for(lambda: value(up) is not None, 90, f"Prometheus scrapes {args.targets} service endpoints, all up")
    # Store-sampled gauges: every replica of a service reports the same store, hence max, not sum.
    instances = 'max(baton_instances{node="fulfillment",lifecycle="completed"})'
    found = wait_for(lambda: value(instances) == completed, 60, "the completed instances reach Prometheus")
    check(found, f"Prometheus counts {completed} completed fulfillment instances ({value(instances)})")
    # A replica killed between a publish and its mark leaves rows leased to it for 15 s: then re-sent, dropped.
    drained = wait_for(lambda: value('max by (node) (baton_outbox_pending) > 0') is None, 60, "the outboxes drain")
    check(drained, "no service has messages waiting in its outbox")
    if args.checkouts_handled:
        handled_query = ('sum(baton_messages_total{node="orders",type="storefront.CheckoutCompleted.v1",'
                         'outcome="handled"})')
        # Each target is scraped on its own 5 s schedule: orders' last scrape may predate its last checkouts.
        wait_for(lambda: value(handled_query) == len(seen), 30, "orders' count of checkouts reaches Prometheus")
        handled = value(handled_query)
        check(handled == len(seen), f"orders handled each checkout once ({handled} for {len(seen)})")
    rules = [rule for group in api("rules")["groups"] for rule in group["rules"]]
    check(len(rules) >= 6 and all(rule["health"] == "ok" for rule in rules),
          f"the example rules are loaded and evaluate ({len(rules)}: {sorted(r['name'] for r in rules)})")


def check_console(args):
    """The fulfillment node's web console on the host's loopback: its counts match the producer's outcomes, a
    cancelled order's page shows it failed with its reason, and actions without the token are refused."""
    with open(args.outcomes) as file:
        seen = json.load(file)["outcomes"]
    base = f"http://127.0.0.1:{args.port}/console"

    def get(path):
        try:
            with urllib.request.urlopen(base + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def post(path, form, headers=None):
        request = urllib.request.Request(base + path, data=urllib.parse.urlencode(form).encode(),
                                         headers=headers or {}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def count(page, lifecycle):
        found = re.search(rf'data-lifecycle="{lifecycle}"><b>(\d+)</b>', page)
        return int(found.group(1)) if found else None

    completed = sum(1 for o in seen.values() if o["event"] == "orders.OrderCompleted")
    cancelled = [o for o in seen.values() if o["event"] == "orders.OrderCancelled"]
    page = ""

    def counted():  # the node samples its counts every 5 s
        nonlocal status, page
        status, page = get("/instances")
        return status == 200 and count(page, "completed") == completed and count(page, "failed") == len(cancelled)
    status = 0
    wait_for(counted, 30, "the console's counts")
    check(status == 200 and count(page, "completed") == completed and count(page, "failed") == len(cancelled),
          f"the console counts {completed} completed and {len(cancelled)} failed instances "
          f"({status}: {count(page, 'completed')}, {count(page, 'failed')})")
    order = cancelled[0]
    status, page = get(f"/instances/{order['order_id']}")
    reason = html.escape(order["reason"], quote=True).replace("&#x27;", "&#39;")
    check(status == 200 and 'data-state="failed" data-current="true"' in page and reason in page,
          f"a cancelled order's page shows it failed, with its reason ({status})")
    check(get("/instances/no-such-order")[0] == 404, "an unknown instance is a 404")
    check(get("/instances?lifecycle=sideways")[0] == 400, "a malformed filter is a 400")
    abort = f"/instances/{order['order_id']}/abort"
    check(post(abort, {"reason": "x"})[0] == 403, "an abort without the token is refused")
    check(post(abort, {"reason": "x", "token": "wrong-token-wrong-token"})[0] == 403, "a wrong token is refused")
    check(post(abort, {"reason": "x", "token": args.token}, {"Origin": "http://evil.example"})[0] == 403,
          "an action from another origin is refused")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("document")
    permissions = commands.add_parser("permissions")
    permissions.add_argument("--port", type=int, required=True)
    contract = commands.add_parser("contract")
    contract.add_argument("--port", type=int, required=True)
    contract.add_argument("--compose", required=True, help="the docker compose command line of the deployment")
    agree = commands.add_parser("agree")
    agree.add_argument("--compose", required=True)
    agree.add_argument("--outcomes", required=True, help="producer.py --json output")
    agree.add_argument("--stocked", type=int, required=True, help="units stocked in all")
    prometheus = commands.add_parser("prometheus")
    prometheus.add_argument("--port", type=int, required=True, help="Prometheus' port on loopback")
    prometheus.add_argument("--outcomes", required=True, help="producer.py --json output")
    prometheus.add_argument("--targets", type=int, required=True, help="service endpoints to be scraped")
    prometheus.add_argument("--checkouts-handled", action="store_true",
                            help="check orders' counter of handled checkouts (no orders process restarted)")
    console = commands.add_parser("console")
    console.add_argument("--port", type=int, required=True, help="the fulfillment node's HTTP port on loopback")
    console.add_argument("--outcomes", required=True, help="producer.py --json output")
    console.add_argument("--token", required=True, help="the console token the deployment was given")
    args = parser.parse_args()
    {"document": check_document, "permissions": check_permissions, "contract": check_contract,
     "agree": check_agree, "prometheus": check_prometheus, "console": check_console}[args.command](args)
    print(f"{len(failures)} failed" if failures else "all checks hold")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
