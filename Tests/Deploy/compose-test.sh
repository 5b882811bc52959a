#!/usr/bin/env bash
# The deployment test: Deploy/compose.yaml on a real Docker engine, end to end.
#
#   config → build → up --wait → stock through the inventory CLI → a Python producer pushes checkouts while
#   inventory is restarted and shipping is kill -9'd (its restart policy brings it back) → every checkout has
#   its outcome → the CLIs inside the containers agree → the AsyncAPI examples are accepted and their broken
#   variants dead-lettered by the running services → every broker user is refused outside its permissions,
#   guest too → down -v.
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
    echo "BATON_MANAGEMENT_PORT=$(free_port)"
    echo "BATON_LOG_LEVEL=info"
} > "$work/test.env"
set -a; . "$work/test.env"; set +a
compose=(docker compose -p baton-compose-test -f Deploy/compose.yaml --env-file "$work/test.env")
compose_line="${compose[*]}"

finish() {
    status=$?
    if [ $status -ne 0 ]; then
        echo "== compose test FAILED; the last log lines of each container:" >&2
        "${compose[@]}" ps -a >&2 || true
        "${compose[@]}" logs --tail 30 >&2 || true
    fi
    "${compose[@]}" down -v --remove-orphans > /dev/null 2>&1 || true
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
for sku in book-0001 book-0002 book-0003; do
    "${compose[@]}" exec -T inventory inventory add "$sku" --quantity 1000 --title "Book $sku"
done
for attempt in $(seq 1 60); do
    stocked=$("${compose[@]}" exec -T inventory inventory list --json | "$python" -c \
        'import json,sys; print(sum(1 for i in json.load(sys.stdin) if i["available"] == 1000))')
    [ "$stocked" -eq 3 ] && break
    sleep 0.5
done
[ "$stocked" -eq 3 ] || { echo "the stock did not arrive" >&2; exit 1; }

phase "load with restarts"
producer_url="amqp://producer:$BATON_PRODUCER_PASSWORD@127.0.0.1:$amqp_port/baton"
"$python" Deploy/examples/python/producer.py --url "$producer_url" --checkouts "$checkouts" --rate 40 \
    --blank-every 10 --timeout 240 --json > "$work/outcomes.json" &
producer=$!
sleep 2
echo "restarting inventory (docker compose restart: SIGTERM, graceful stop, start)"
"${compose[@]}" restart inventory
sleep 1
shipping_pid=$(docker inspect -f '{{.State.Pid}}' "$("${compose[@]}" ps -q shipping)")
echo "kill -9 of shipping (pid $shipping_pid on the host); its restart policy must bring it back"
kill -9 "$shipping_pid"
wait "$producer" || { echo "the producer did not see every outcome:" >&2; head -c 2000 "$work/outcomes.json" >&2; exit 1; }
"$python" -c 'import json,sys; s=json.load(open(sys.argv[1])); print("%(checkouts)d checkouts: %(completed)d completed, %(cancelled)d cancelled in %(total_seconds)s s" % s)' "$work/outcomes.json"
restarts=$(docker inspect -f '{{.RestartCount}}' "$("${compose[@]}" ps -q shipping)")
[ "$restarts" -ge 1 ] || { echo "shipping was not restarted by its restart policy" >&2; exit 1; }
echo "shipping restarted by its policy ($restarts)"
"${compose[@]}" up -d --wait --wait-timeout 120 > /dev/null   # all healthy again

phase "CLIs agree"
"$python" Tests/Deploy/checks.py agree --compose "$compose_line" --outcomes "$work/outcomes.json" --stocked 3000
"$python" -c 'import json,sys; s=json.load(open(sys.argv[1])); want=int(sys.argv[2]); assert s["checkouts"] == want and s["cancelled"] == want // 10, s' \
    "$work/outcomes.json" "$checkouts"

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
trap - EXIT
rm -rf "$work"
phase "done"
echo "== compose test passed in $(( $(date +%s) - run_started )) s"
printf '   %s\n' "${timings[@]}"
