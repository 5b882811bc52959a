#!/usr/bin/env bash
# The benchmark, in one run on a private RabbitMQ node: the broker's ceiling (bare C relays through the
# same hops and durability as a workflow), the four services at maximum and at 25/50/75% of it, the
# embedded mode, and the process-manager node from 10k to 1M stored instances. Prints the table; the JSON
# goes to .build-bench/benchmark.json. Takes about 15 minutes on 2 cores. Deploy/BENCHMARKS.md has the last figures.
#
#   Deploy/local/benchmark.sh                      the full run (release build)
#   Deploy/local/benchmark.sh --smoke              seconds: tiny sizes, the debug build (CI runs it)
#
# Other arguments go to baton-benchmark (`baton-benchmark --help` lists them), e.g. --workflows 5000.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

configuration=release
arguments=()
for argument in "$@"; do
    if [ "$argument" = "--smoke" ]; then
        configuration=debug
        arguments+=(--workflows 200 --rates 50 --embedded-workflows 300 --instances 2000,4000 --probes 50)
    else
        arguments+=("$argument")
    fi
done

"$here/setup.sh"
echo "== building ($configuration)"
for product in orders inventory shipping fulfillment amqp-c-baseline baton-benchmark; do
    swift build -c "$configuration" --product "$product" 2>&1 | grep -E "error|warning: " || true
done

export BATON_BROKER_DIR="$repo/.build-bench/broker"
export BATON_BROKER_PORT=${BATON_BENCH_BROKER_PORT:-5703}
export BATON_BROKER_NODE="baton-bench-$$@localhost"
mkdir -p "$repo/.build-bench"
rm -rf "$BATON_BROKER_DIR"
trap '"$here/broker.sh" stop > /dev/null; rm -rf "$BATON_BROKER_DIR"' EXIT
"$here/broker.sh" start
export BATON_AMQP_URL=$("$here/broker.sh" url)
export BATON_BROKER_PID=$(cat "$BATON_BROKER_DIR/rabbit.pid")

"$repo/.build/$configuration/baton-benchmark" "${arguments[@]}" --json "$repo/.build-bench/benchmark.json"
