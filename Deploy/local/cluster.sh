#!/usr/bin/env bash
# A private three-node RabbitMQ cluster on loopback, for the scale-out tests and runs: three nodes started
# by broker.sh (names NAME-1..3@localhost, AMQP ports PORT, PORT+2, PORT+4, each its own data directory) that
# share one Erlang cookie, nodes 2 and 3 joined to node 1. A quorum queue declared on it has a member on each
# node, so it survives the loss of any one.
#
#   Deploy/local/cluster.sh start          boot the nodes that are down and form the cluster
#   Deploy/local/cluster.sh stop           stop every node
#   Deploy/local/cluster.sh kill N         kill -9 node N (its data kept)
#   Deploy/local/cluster.sh stop-node N    stop node N
#   Deploy/local/cluster.sh start-node N   boot node N again; it rejoins the cluster by itself
#   Deploy/local/cluster.sh ctl N ARGS     rabbitmqctl against node N
#   Deploy/local/cluster.sh urls           the three nodes' AMQP URLs, comma-separated (BATON_AMQP_URL)
#
# Settings (environment): BATON_CLUSTER_DIR (default .build-cluster), BATON_CLUSTER_PORT (5700),
# BATON_CLUSTER_NAME (baton-cluster), BATON_BROKER_USER / BATON_BROKER_PASSWORD and
# BATON_BROKER_EXTRA_ADDRESS (every node listens there too, on its port) as for broker.sh.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BATON_CLUSTER_DIR:-$repo/.build-cluster}
port=${BATON_CLUSTER_PORT:-5700}
name=${BATON_CLUSTER_NAME:-baton-cluster}
user=${BATON_BROKER_USER:-baton}
password=${BATON_BROKER_PASSWORD:-baton-local-secret}

node() {  # node N COMMAND...: broker.sh for node N
    local n=$1
    shift
    mkdir -p "$dir"
    [ -f "$dir/cookie" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/cookie"
    BATON_BROKER_DIR="$dir/node$n" BATON_BROKER_PORT=$((port + 2 * (n - 1))) \
        BATON_BROKER_NODE="$name-$n@localhost" BATON_BROKER_COOKIE="$(cat "$dir/cookie")" \
        "$here/broker.sh" "$@"
}

start() {
    for n in 1 2 3; do node "$n" start > /dev/null; done
    for n in 2 3; do
        [ -f "$dir/node$n/joined" ] && continue
        node "$n" ctl stop_app > /dev/null
        node "$n" ctl join_cluster "$name-1@localhost" > /dev/null
        node "$n" ctl start_app > /dev/null
        touch "$dir/node$n/joined"
    done
    node 1 ctl await_online_nodes 3 --timeout 60 > /dev/null
    echo "cluster.sh: nodes $name-1..3 serving amqp://127.0.0.1:$port,$((port + 2)),$((port + 4)) (data in $dir)"
}

case "${1:-}" in
    start) start ;;
    stop) for n in 3 2 1; do node "$n" stop; done ;;
    kill) node "${2:?node number}" kill ;;
    stop-node) node "${2:?node number}" stop ;;
    start-node) node "${2:?node number}" start ;;
    ctl) n=${2:?node number}; shift 2; node "$n" ctl "$@" ;;
    urls)
        echo "amqp://$user:$password@127.0.0.1:$port/%2F,amqp://$user:$password@127.0.0.1:$((port + 2))/%2F,amqp://$user:$password@127.0.0.1:$((port + 4))/%2F"
        ;;
    *) echo "usage: $0 start|stop|kill N|stop-node N|start-node N|ctl N ARGS|urls" >&2; exit 2 ;;
esac
