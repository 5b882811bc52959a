#!/usr/bin/env bash
# The deployment test: Deploy/compose.yaml on a real Docker engine, end to end.
#
#   config → build → up --wait → stock through the inventory CLI → a Python producer pushes checkouts while
#   inventory is restarted and shipping is kill -9'd (its restart policy brings it back) → every checkout has
#   its outcome → the CLIs inside the containers agree → the AsyncAPI examples are accepted and their broken
#   variants dead-lettered by the running services → Prometheus scrapes all four and its numbers agree with
#   the producer's, the example rules load → every broker user is refused outside its permissions,
#   guest too → down -v; then Deploy/compose.scaled.yaml, the scaled-out shape (same images): three broker nodes,
#   PostgreSQL, two replicas of each service → a producer's checkouts while the broker node every service is
#   connected to and one replica of each service are kill -9'd → every checkout has its outcome, the CLIs agree,
#   every quorum queue has a member on each node, each service role reaches only its own schema → down -v.
#
# Needs a Docker engine with Compose v2 (DOCKER_HOST may point at one; CI uses ../shared/tools/compose-lab)
# and Python 3 (the checks' packages are installed into .build-python from PyPI). Passwords are generated for
# the run; Deploy/.env is not read or changed. Only loopback and the project's own container network are used.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
checkouts=${BATON_COMPOSE_TEST_CHECKOUTS:-300}
run_started=$(date +%s)
phase_started=$run_started
timings=()
phase() {
    local now; now=$(date +%s)
    [ -n "${current_phase:-}" ] && timings+=("$(printf '%-28s %4d s' "$current_phase" $((now - phase_started)))")
    current_phase=$1; phase_started=$now
    echo "== compose test: $1"
}

docker info > /dev/null 2>&1 || {
    echo "compose-test.sh: no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); start one first" >&2
    exit 1
}
docker compose version > /dev/null 2>&1 || { echo "compose-test.sh: docker compose (v2) is missing" >&2; exit 1; }

phase "python packages"
python=$repo/.build-python/bin/python
[ -x "$python" ] || python3 -m venv "$repo/.build-python"
"$python" -m pip install -q --disable-pip-version-check -r Deploy/examples/python/requirements.txt
"$python" Tests/Deploy/checks.py document > /dev/null || "$python" Tests/Deploy/checks.py document

work=$(mktemp -d)
free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
amqp_port=$(free_port)
{
    for user in ADMIN ORDERS INVENTORY SHIPPING FULFILLMENT PRODUCER; do
        echo "BATON_${user}_PASSWORD=$(openssl rand -hex 16)"
    done
    echo "BATON_AMQP_PORT=$amqp_port"
    echo "BATON_AMQP_PORT_2=$(free_port)"
    echo "BATON_AMQP_PORT_3=$(free_port)"
    echo "BATON_ERLANG_COOKIE=$(openssl rand -hex 20)"
    echo "BATON_MANAGEMENT_PORT=$(free_port)"
    echo "BATON_PROMETHEUS_PORT=$(free_port)"
    echo "BATON_CONSOLE_PORT=$(free_port)"
    echo "BATON_CONSOLE_TOKEN=compose-test-console-$(openssl rand -hex 8)"
    echo "BATON_LOG_LEVEL=info"
} > "$work/test.env"
set -a; . "$work/test.env"; set +a
compose=(docker compose -p baton-compose-test -f Deploy/compose.yaml --env-file "$work/test.env")
compose_line="${compose[*]}"
scaled=(docker compose -p baton-scaled-test -f Deploy/compose.scaled.yaml --env-file "$work/test.env")
scaled_line="${scaled[*]}"
stock() {  # stock COMPOSE-COMMAND...: 1000 of each of three books through the inventory CLI, until it has them
    local sku attempt stocked=0
    for sku in book-0001 book-0002 book-0003; do
        "$@" exec -T inventory inventory add "$sku" --quantity 1000 --title "Book $sku"
    done
    for attempt in $(seq 1 60); do
        stocked=$("$@" exec -T inventory inventory list --json | "$python" -c \
            'import json,sys; print(sum(1 for i in json.load(sys.stdin) if i["available"] == 1000))')
        [ "$stocked" -eq 3 ] && return 0
        sleep 0.5
    done
    echo "the stock did not arrive" >&2
    exit 1
}
start_producer() {  # start_producer PORT CHECKOUTS FILE: the Python storefront in the background, outcomes to FILE
    "$python" Deploy/examples/python/producer.py --url "amqp://producer:$BATON_PRODUCER_PASSWORD@127.0.0.1:$1/baton" \
        --checkouts "$2" --rate 40 --blank-every 10 --timeout 240 --json > "$3" &
    producer=$!
}
await_producer() {  # await_producer FILE: every checkout has its outcome
    wait "$producer" || { echo "the producer did not see every outcome:" >&2; head -c 2000 "$1" >&2; exit 1; }
    "$python" -c 'import json,sys; s=json.load(open(sys.argv[1])); print("%(checkouts)d checkouts: %(completed)d completed, %(cancelled)d cancelled in %(total_seconds)s s" % s)' "$1"
}
kill_container() {  # kill -9 of a container's main process, from the host (its restart policy applies)
    local pid
    pid=$(docker inspect -f '{{.State.Pid}}' "$1")
    [ "$pid" -gt 0 ] || { echo "container $1 is not running" >&2; exit 1; }
    kill -9 "$pid"
}

finish() {
    status=$?
    if [ $status -ne 0 ]; then
        echo "== compose test FAILED; the last log lines of each container:" >&2
        for project in "$compose_line" "$scaled_line"; do
            $project ps -a >&2 || true
            $project logs --tail 30 >&2 || true
        done
    fi
    "${compose[@]}" down -v --remove-orphans > /dev/null 2>&1 || true
    "${scaled[@]}" down -v --remove-orphans > /dev/null 2>&1 || true
    rm -rf "$work"
    exit $status
}
trap finish EXIT

phase "docker compose config"
"${compose[@]}" config --quiet
phase "build (one Swift compile)"
"${compose[@]}" build orders    # the build stage, once; the other three images reuse it
"${compose[@]}" build
phase "up --wait"
"${compose[@]}" up -d --wait --wait-timeout 180

phase "stock (inventory CLI)"
stock "${compose[@]}"

phase "load with restarts"
start_producer "$amqp_port" "$checkouts" "$work/outcomes.json"
sleep 2
echo "restarting inventory (docker compose restart: SIGTERM, graceful stop, start)"
"${compose[@]}" restart inventory
sleep 1
echo "kill -9 of shipping; its restart policy must bring it back"
kill_container "$("${compose[@]}" ps -q shipping)"
await_producer "$work/outcomes.json"
restarts=$(docker inspect -f '{{.RestartCount}}' "$("${compose[@]}" ps -q shipping)")
[ "$restarts" -ge 1 ] || { echo "shipping was not restarted by its restart policy" >&2; exit 1; }
echo "shipping restarted by its policy ($restarts)"
"${compose[@]}" up -d --wait --wait-timeout 120 > /dev/null   # all healthy again

phase "CLIs agree"
"$python" Tests/Deploy/checks.py agree --compose "$compose_line" --outcomes "$work/outcomes.json" --stocked 3000
"$python" -c 'import json,sys; s=json.load(open(sys.argv[1])); want=int(sys.argv[2]); assert s["checkouts"] == want and s["cancelled"] == want // 10, s' \
    "$work/outcomes.json" "$checkouts"

phase "Prometheus"
"$python" Tests/Deploy/checks.py prometheus --port "$BATON_PROMETHEUS_PORT" --outcomes "$work/outcomes.json" \
    --targets 4 --checkouts-handled

phase "web console"
"$python" Tests/Deploy/checks.py console --port "$BATON_CONSOLE_PORT" --outcomes "$work/outcomes.json" \
    --token "$BATON_CONSOLE_TOKEN"

phase "contract against the services"
"$python" Tests/Deploy/checks.py contract --port "$amqp_port" --compose "$compose_line" > "$work/contract.log" \
    || { cat "$work/contract.log"; exit 1; }
echo "$(grep -c '^ok' "$work/contract.log") contract checks hold"

phase "least privilege"
"$python" Tests/Deploy/checks.py permissions --port "$amqp_port" > "$work/permissions.log" \
    || { cat "$work/permissions.log"; exit 1; }
echo "$(grep -c '^ok' "$work/permissions.log") permission checks hold"

phase "no password in any log"
"${compose[@]}" logs --no-color > "$work/all.log" 2>&1
for user in ADMIN ORDERS INVENTORY SHIPPING FULFILLMENT PRODUCER; do
    variable="BATON_${user}_PASSWORD"
    if grep -qF "${!variable}" "$work/all.log"; then echo "the $user password is in the logs" >&2; exit 1; fi
done
echo "searched $(wc -l < "$work/all.log") log lines: no password"

phase "images"
docker image ls --format '{{.Repository}} {{.Size}}' | grep -E '^baton-' | sort
phase "down -v"
"${compose[@]}" down -v --remove-orphans

# The scaled-out shape, on the same images.
phase "scaled: up --wait"
"${scaled[@]}" config --quiet
"${scaled[@]}" up -d --wait --wait-timeout 300
"${scaled[@]}" ps --format '{{.Service}} {{.State}} {{.Health}}' | sort | uniq -c

phase "scaled: stock"
stock "${scaled[@]}"

phase "scaled: load with kills"
# The producer uses node 2; every service connects to node 1 first (the first of its URLs).
scaled_checkouts=${BATON_COMPOSE_TEST_SCALED_CHECKOUTS:-200}
start_producer "$BATON_AMQP_PORT_2" "$scaled_checkouts" "$work/scaled-outcomes.json"
sleep 2
echo "kill -9 of broker node rabbit-1"
kill_container "$("${scaled[@]}" ps -q rabbit-1)"
for service in orders inventory shipping fulfillment; do
    replicas=($("${scaled[@]}" ps -q "$service"))   # (not `| head`: with pipefail its early exit fails the run)
    echo "kill -9 of one $service replica"
    kill_container "${replicas[0]}"
done
await_producer "$work/scaled-outcomes.json"
"${scaled[@]}" up -d --wait --wait-timeout 180 > /dev/null   # the killed containers are back, all healthy

phase "scaled: CLIs agree"
"$python" Tests/Deploy/checks.py agree --compose "$scaled_line" --outcomes "$work/scaled-outcomes.json" --stocked 3000
# Every blank address is cancelled; a step that outlived the 30 s step timeout during the failover may be
# cancelled too (and compensated: the agree check above finds the stock conserved), for no other reason.
"$python" -c 'import json,sys,collections
s=json.load(open(sys.argv[1])); want=int(sys.argv[2])
reasons=collections.Counter(o["reason"] for o in s["outcomes"].values() if o["event"] == "orders.OrderCancelled")
assert s["checkouts"] == want and reasons["shipment failed: the shipping address is empty"] == want // 10, reasons
assert all("timed out" in r for r in reasons if r != "shipment failed: the shipping address is empty"), reasons
print("cancelled:", dict(reasons))' "$work/scaled-outcomes.json" "$scaled_checkouts"

phase "scaled: Prometheus"
"$python" Tests/Deploy/checks.py prometheus --port "$BATON_PROMETHEUS_PORT" \
    --outcomes "$work/scaled-outcomes.json" --targets 8

phase "scaled: web console"
console_port=$("${scaled[@]}" port --index 1 fulfillment 9464)
"$python" Tests/Deploy/checks.py console --port "${console_port##*:}" --outcomes "$work/scaled-outcomes.json" \
    --token "$BATON_CONSOLE_TOKEN"

phase "scaled: replicated queues"
"${scaled[@]}" exec -T rabbit-2 rabbitmqctl -q list_queues -p baton name type members --formatter json \
    | "$python" -c 'import json,sys
queues=[q for q in json.load(sys.stdin) if q["type"] == "quorum"]
short=[q["name"] for q in queues if len(q["members"]) != 3]
assert queues and not short, ("quorum queues without a member on each node", short)
print(len(queues), "quorum queues, each with a member on each of the 3 nodes")'

phase "scaled: schemas"
for service in orders inventory shipping fulfillment; do
    other=$([ "$service" = orders ] && echo inventory || echo orders)
    if "${scaled[@]}" exec -T postgres psql -U "$service" -d baton -c "SELECT count(*) FROM $other.outbox" > /dev/null 2>&1; then
        echo "the $service role read the $other schema" >&2; exit 1
    fi
    if "${scaled[@]}" exec -T postgres psql -U "$service" -d baton -c "CREATE SCHEMA rogue_$service" > /dev/null 2>&1; then
        echo "the $service role created a schema" >&2; exit 1
    fi
    "${scaled[@]}" exec -T postgres psql -U "$service" -d baton -Atc "SELECT count(*) FROM $service.outbox" > /dev/null
done
echo "each service role reaches its own schema and nothing else"
"${scaled[@]}" logs --no-color > "$work/scaled.log" 2>&1
for user in ADMIN ORDERS INVENTORY SHIPPING FULFILLMENT PRODUCER; do
    variable="BATON_${user}_PASSWORD"
    if grep -qF "${!variable}" "$work/scaled.log"; then echo "the $user password is in the logs" >&2; exit 1; fi
done

phase "scaled: down -v"
"${scaled[@]}" down -v --remove-orphans
trap - EXIT
rm -rf "$work"
phase "done"
echo "== compose test passed in $(( $(date +%s) - run_started )) s"
printf '   %s\n' "${timings[@]}"
