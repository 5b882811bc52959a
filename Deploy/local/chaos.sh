#!/usr/bin/env bash
# The chaos run: workflows through the four services (separate processes, a private broker node) while a
# seeded schedule kill -9's a random service every few seconds (a supervisor restarts it), restarts the broker
# once, kill -9's it twice in a row (the second time while the services reconnect; --broker-kills N for more),
# and disrupts one service's link: 5% of its packets dropped each way for 10 s, then cut off for 20 s, then a
# one-way cut (the broker's packets to it dropped, its own arriving) for 15 s; then every invariant is checked
# and printed. (The kernel here has no netem: delay, duplication and reordering are not injected.) A failure
# prints the seed: `Deploy/local/chaos.sh --seed N` runs the same schedule again.
#
#   Deploy/local/chaos.sh                         the short run (300 workflows, CI runs it)
#   Deploy/local/chaos.sh --workflows 10000 --rate 100     the full run
#   Deploy/local/chaos.sh --scale-out [...]       the scale-out run: a three-node RabbitMQ cluster
#                                                 (cluster.sh) and PostgreSQL (postgres.sh), 2 replicas of
#                                                 every service (--replicas N for more), 4 partitions each; the
#                                                 broker disruptions hit node 1 (the one every service is
#                                                 connected to first), the kill -9s and the partition hit
#                                                 replicas; per-instance order is checked too
#
# The partitioned service runs in a network namespace of its own, joined to the root namespace by a veth
# pair in 10.77.0.0/30; a blackhole route for 10.77.0.0/24 is added first, so nothing can leave the machine.
# Needs root (ip netns). BATON_CHAOS_BUILD=debug uses the debug build (the tests' own, with BATON_BUILD_TRAITS);
# default release.
# Extra arguments go to bookstore-chaos (--help lists them).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
[ "$(id -u)" -eq 0 ] || exec sudo -E "$0" "$@"
scale_out=false
arguments=()
for argument in "$@"; do
    if [ "$argument" = --scale-out ]; then scale_out=true; else arguments+=("$argument"); fi
done

"$here/setup.sh"
configuration=${BATON_CHAOS_BUILD:-release}
echo "== building ($configuration)"
"$here/build.sh" "$configuration" orders inventory shipping fulfillment bookstore-chaos
bin="$repo/.build/$configuration"

namespace=baton-chaos
link=bchaos0
root_address=10.77.0.1
export BATON_BROKER_DIR="$repo/.build-broker-chaos"
export BATON_BROKER_PORT=${BATON_CHAOS_BROKER_PORT:-5677}
export BATON_BROKER_NODE="baton-chaos-$$@localhost"
export BATON_BROKER_EXTRA_ADDRESS=$root_address
data="$repo/.build-chaos"

cleanup() {
    pkill -KILL -f "^$bin/(bookstore-chaos|orders|inventory|shipping|fulfillment) " 2>/dev/null || true
    "$here/broker.sh" stop || true
    if $scale_out; then "$here/cluster.sh" stop > /dev/null 2>&1 || true; "$here/postgres.sh" stop || true; fi
    ip netns del "$namespace" 2>/dev/null || true
    # The lossy-link and one-way rules a stopped run left behind.
    iptables -S 2>/dev/null | { grep -e "-[io] $link " || true; } | sed 's/^-A /-D /' | while read -r rule; do
        iptables $rule || true
    done
    ip route del blackhole 10.77.0.0/24 2>/dev/null || true
}
trap cleanup EXIT
cleanup
if $scale_out; then
    export BATON_CLUSTER_DIR="$repo/.build-cluster-chaos" BATON_CLUSTER_NAME="baton-chaos-$$"
    export BATON_CLUSTER_PORT=${BATON_CHAOS_CLUSTER_PORT:-5750}
    export BATON_POSTGRES_DIR="$repo/.build-postgres-chaos" BATON_POSTGRES_PORT=${BATON_CHAOS_POSTGRES_PORT:-5757}
    export BATON_POSTGRES_EXTRA_ADDRESS=$root_address
    rm -rf "$BATON_CLUSTER_DIR" "$BATON_POSTGRES_DIR"
fi
rm -rf "$data" "$BATON_BROKER_DIR"
mkdir -p "$data"

echo "== network namespace $namespace (blackhole route first)"
ip route add blackhole 10.77.0.0/24
ip netns add "$namespace"
ip link add "$link" type veth peer name bchaos1 netns "$namespace"
ip addr add "$root_address/30" dev "$link"
ip link set "$link" up
ip -n "$namespace" addr add 10.77.0.2/30 dev bchaos1
ip -n "$namespace" link set bchaos1 up
ip -n "$namespace" link set lo up

if $scale_out; then
    "$here/cluster.sh" start
    "$here/postgres.sh" start
    url=$("$here/cluster.sh" urls)
    database=$("$here/postgres.sh" url)
    # Node 1's stop, kill -9 and start, for the run's broker disruptions.
    broker_script="$data/broker-node-1.sh"
    printf '#!/bin/sh\ncase "$1" in stop) exec "%s" stop-node 1 ;; kill) exec "%s" kill 1 ;; start) exec "%s" start-node 1 ;; esac\nexit 2\n' \
        "$here/cluster.sh" "$here/cluster.sh" "$here/cluster.sh" > "$broker_script"
    chmod +x "$broker_script"
    export BATON_DATABASE_URL=$database BATON_PARTITIONS=${BATON_PARTITIONS:-4}
    extra=(--replicas 2 --namespace-database-url "${database/127.0.0.1/$root_address}")
else
    "$here/broker.sh" start
    url=$("$here/broker.sh" url)
    broker_script="$here/broker.sh"
    extra=()
fi
export BATON_AMQP_URL=$url BATON_DATA_DIR=$data BATON_LOG_LEVEL=${BATON_LOG_LEVEL:-notice}
"$bin/bookstore-chaos" --binaries "$bin" --namespace "$namespace" --link "$link" \
    --namespace-url "${url//127.0.0.1/$root_address}" --broker-script "$broker_script" "${extra[@]}" \
    ${arguments[@]+"${arguments[@]}"}
password=${url%%,*}; password=${password#amqp://*:}; password=${password%%@*}
if grep -rqF "$password" "$data/logs"; then
    echo "chaos run FAILED: the broker password is in the service logs ($data/logs)" >&2
    exit 1
fi
echo "no password in $(cat "$data"/logs/*.log | wc -l) lines of service logs"
