#!/usr/bin/env bash
# The main job: installs what is missing, builds in release mode, starts a private RabbitMQ node and the four
# bookstore services as separate processes, stocks a catalogue, pushes a demo load of checkouts, prints the
# outcome table, and stops everything cleanly on Enter or Ctrl-C (at once when not run from a terminal).
# Extra arguments go to bookstore-demo (e.g. --checkouts 500).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

"$here/setup.sh"
echo "== building (release; the first build takes a few minutes)"
for product in orders inventory shipping fulfillment bookstore-demo; do
    swift build -c release --product "$product" 2>&1 | grep -E "error|warning: |Compiling|Build" | grep -v "^\[" || true
done
bin="$repo/.build/release"

export BATON_BROKER_DIR="$repo/.build-broker"
mesh="$repo/.build-mesh"
rm -rf "$mesh"
mkdir -p "$mesh/data" "$mesh/logs"
pids=()
stop_everything() {
    trap - EXIT INT TERM
    echo
    echo "== stopping the services (SIGTERM: they finish their work, flush their outboxes, exit 0)"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    "$here/broker.sh" stop
    echo "stopped; the data stays in $mesh/data, the logs in $mesh/logs"
}
trap stop_everything EXIT
trap 'exit 130' INT TERM

echo "== starting the broker (a fresh node: no queues or bindings left from earlier runs)"
"$here/broker.sh" stop
rm -rf "$BATON_BROKER_DIR"
"$here/broker.sh" start
export BATON_AMQP_URL=$("$here/broker.sh" url)
export BATON_DATA_DIR="$mesh/data"
export BATON_LOG_LEVEL=${BATON_LOG_LEVEL:-warning}

echo "== starting orders, inventory, shipping, fulfillment"
for service in orders inventory shipping; do
    "$bin/$service" serve > "$mesh/logs/$service.log" 2>&1 &
    pids+=($!)
done
"$bin/fulfillment" serve --step-timeout 30 > "$mesh/logs/fulfillment.log" 2>&1 &
pids+=($!)
for attempt in $(seq 1 100); do
    consuming=$("$here/broker.sh" ctl list_queues name consumers --no-table-headers --quiet 2>/dev/null \
        | awk '$1 ~ /^(orders|inventory|shipping|fulfillment)$/ && $2 > 0' | wc -l)
    [ "$consuming" -eq 4 ] && break
    sleep 0.2
done
[ "$consuming" -eq 4 ] || { echo "the services did not start; see $mesh/logs" >&2; tail -n 5 "$mesh"/logs/*.log >&2; exit 1; }

echo "== demo load"
"$bin/bookstore-demo" "$@"

echo
if [ -t 0 ]; then
    echo "The mesh is still running (data: $mesh/data). Try the commands above, or e.g.:"
    echo "  BATON_DATA_DIR=$mesh/data $bin/orders list --status CANCELLED"
    read -r -p "Press Enter (or Ctrl-C) to stop everything… " _ || true
fi
