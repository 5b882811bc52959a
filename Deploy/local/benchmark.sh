#!/usr/bin/env bash
# The benchmark, in one run on a private RabbitMQ node: the broker's ceiling (bare C relays through the
# same hops and durability as a workflow), the four services at maximum and at 25/50/75% of it, the
# embedded mode, and the process-manager node from 10k to 1M stored instances. Prints the table and the
# performance targets, each met, missed or not measured by this run; the JSON
# goes to .build-bench/benchmark.json. Takes about 15 minutes on 2 cores. Deploy/BENCHMARKS.md has the last figures.
#
#   Deploy/local/benchmark.sh                      the full run (release build)
#   Deploy/local/benchmark.sh --smoke              seconds: tiny sizes, the debug build (CI runs it)
#   Deploy/local/benchmark.sh --profile            also where the CPU goes during the mesh's run at 50%, per
#                                                  process (perf record -a -g; needs perf: Debian's linux-perf)
#   Deploy/local/benchmark.sh --soak               the long haul: an hour at half the maximum rate, a service
#                                                  kill -9'd every 3 minutes, a short retention policy; samples
#                                                  in .build-bench/soak.csv, the plot in .build-bench/soak.png
#   Deploy/local/benchmark.sh --soak-smoke         the long haul for 45 s (debug build; CI runs it)
#   Deploy/local/benchmark.sh --scale-out          the scaled-out shape: a private three-node cluster and
#                                                  PostgreSQL, the services with 1, then 2 replicas each (4
#                                                  partitions), at their maximum; CPU per workflow of every
#                                                  service, broker node and PostgreSQL; JSON in .build-bench
#   Deploy/local/benchmark.sh --scale-out-smoke    the same, 100 workflows, debug build (CI runs it)
#
# Other arguments go to baton-benchmark (`baton-benchmark --help`, `baton-benchmark soak --help` list them),
# e.g. --workflows 5000, or with --soak: --duration 7200 --rate 150 --seed 42.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

configuration=release
mode=all
plot=no
arguments=()
for argument in "$@"; do
    case "$argument" in
    --smoke)
        configuration=debug
        arguments+=(--workflows 200 --rates 50 --embedded-workflows 300 --instances 2000,4000 --probes 50)
        ;;
    --soak)
        mode=soak
        plot=yes
        ;;
    --scale-out)
        mode=scale-out
        ;;
    --scale-out-smoke)
        mode=scale-out
        configuration=debug
        arguments+=(--workflows 100)
        ;;
    --soak-smoke)
        mode=soak
        configuration=debug
        arguments+=(--duration 45 --rate 20 --kill-every 10 --sample-every 5 --inbox-window 1m
            --keep-closed-instances 10s --keep-tombstones 10s)
        ;;
    *) arguments+=("$argument") ;;
    esac
done

"$here/setup.sh"
echo "== building ($configuration)"
"$here/build.sh" "$configuration" orders inventory shipping fulfillment amqp-c-baseline baton-benchmark

if [ "$mode" = scale-out ]; then
    export BATON_CLUSTER_DIR="$repo/.build-bench/cluster" BATON_CLUSTER_NAME="baton-bench-$$"
    export BATON_CLUSTER_PORT=${BATON_BENCH_CLUSTER_PORT:-5760}
    export BATON_POSTGRES_DIR="$repo/.build-bench/postgres" BATON_POSTGRES_PORT=${BATON_BENCH_POSTGRES_PORT:-5767}
    mkdir -p "$repo/.build-bench"
    rm -rf "$BATON_CLUSTER_DIR" "$BATON_POSTGRES_DIR"
    trap '"$here/cluster.sh" stop > /dev/null 2>&1 || true; "$here/postgres.sh" stop
        rm -rf "$BATON_CLUSTER_DIR" "$BATON_POSTGRES_DIR"' EXIT
    "$here/cluster.sh" start
    "$here/postgres.sh" start
    brokers=$(for n in 1 2 3; do echo "$(cat "$BATON_CLUSTER_DIR/node$n/rabbit.pid")"; done | paste -sd,)
    postmaster=$(head -n 1 "$BATON_POSTGRES_DIR/data/postmaster.pid")
    # Each run on a virtual host and a database of its own.
    for replicas in 1 2; do
        vhost=scale-out-$replicas
        "$here/cluster.sh" ctl 1 add_vhost "$vhost" > /dev/null
        "$here/cluster.sh" ctl 1 set_permissions -p "$vhost" "${BATON_BROKER_USER:-baton}" '.*' '.*' '.*' > /dev/null
        "$here/postgres.sh" psql -c "CREATE DATABASE scale_out_$replicas"
        urls=$("$here/cluster.sh" urls)
        database=$("$here/postgres.sh" url)
        "$repo/.build/$configuration/baton-benchmark" scale-out --replicas "$replicas" \
            --amqp-url "${urls//\/%2F//$vhost}" --database-url "${database%/postgres}/scale_out_$replicas" \
            --broker-pids "$brokers" --postgres-pid "$postmaster" \
            --json "$repo/.build-bench/scale-out-$replicas.json" ${arguments[@]+"${arguments[@]}"}
    done
    exit 0
fi

export BATON_BROKER_DIR="$repo/.build-bench/broker"
export BATON_BROKER_PORT=${BATON_BENCH_BROKER_PORT:-5703}
export BATON_BROKER_NODE="baton-bench-$$@localhost"
mkdir -p "$repo/.build-bench"
rm -rf "$BATON_BROKER_DIR"
trap '"$here/broker.sh" stop > /dev/null; rm -rf "$BATON_BROKER_DIR"' EXIT
"$here/broker.sh" start
export BATON_AMQP_URL=$("$here/broker.sh" url)
export BATON_BROKER_PID=$(cat "$BATON_BROKER_DIR/rabbit.pid")

if [ "$mode" = soak ]; then
    status=0
    "$repo/.build/$configuration/baton-benchmark" soak "${arguments[@]}" --csv "$repo/.build-bench/soak.csv" |
        tee "$repo/.build-bench/soak.txt" || status=$?
    if [ "$plot" = yes ]; then
        # The plot needs matplotlib (PyPI; PEP 668 systems need the override).
        python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib 2>/dev/null ||
            python3 -m pip install -q --break-system-packages matplotlib
        warm_up=$(sed -n 's/.*after \([0-9]*\) s;.*/\1/p' "$repo/.build-bench/soak.txt")
        python3 "$here/soak-plot.py" "$repo/.build-bench/soak.csv" "$repo/.build-bench/soak.png" \
            --warm-up "${warm_up:-0}"
    fi
    exit $status
fi
"$repo/.build/$configuration/baton-benchmark" "${arguments[@]}" --json "$repo/.build-bench/benchmark.json"
