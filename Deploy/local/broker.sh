#!/usr/bin/env bash
# A private RabbitMQ node for local runs and tests: its own node name, ports, data directory and HOME,
# so it never touches a system broker.
#
#   Deploy/local/broker.sh start      boot the node and wait until it serves AMQP
#   Deploy/local/broker.sh stop       stop it
#   Deploy/local/broker.sh kill       kill -9 it (its data kept; `start` boots it again)
#   Deploy/local/broker.sh ctl ARGS   rabbitmqctl against it (e.g. close_all_connections test)
#   Deploy/local/broker.sh url        print the AMQP URL of its application user
#
# Settings (environment): BATON_BROKER_DIR (default .build-broker), BATON_BROKER_PORT (5673),
# BATON_BROKER_NODE (baton-local@localhost), BATON_BROKER_USER / BATON_BROKER_PASSWORD, and
# BATON_BROKER_TLS_DIR: a folder with ca.pem, server.pem and server.key adds an amqps listener on PORT+1,
# BATON_BROKER_EXTRA_ADDRESS: one more address to listen on (the chaos run's network namespace link),
# BATON_BROKER_COOKIE: the Erlang cookie (nodes of one cluster share it; Deploy/local/cluster.sh sets it).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BATON_BROKER_DIR:-$repo/.build-broker}
port=${BATON_BROKER_PORT:-5673}
dist_port=$((port + 20000))
node=${BATON_BROKER_NODE:-baton-local@localhost}
user=${BATON_BROKER_USER:-baton}
password=${BATON_BROKER_PASSWORD:-baton-local-secret}
rabbit_bin=/usr/lib/rabbitmq/bin

broker_env() {
    export HOME="$dir/home"
    export RABBITMQ_NODENAME="$node"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$port"
    export RABBITMQ_DIST_PORT="$dist_port"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_PID_FILE="$dir/rabbit.pid"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export ERL_EPMD_ADDRESS=127.0.0.1
}

ctl() { broker_env; "$rabbit_bin/rabbitmqctl" -n "$node" "$@"; }

start() {
    [ -x "$rabbit_bin/rabbitmq-server" ] || { echo "broker.sh: rabbitmq-server is not installed (apt-get install -y rabbitmq-server)" >&2; exit 1; }
    mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
    if [ -f "$dir/rabbit.pid" ] && kill -0 "$(cat "$dir/rabbit.pid")" 2>/dev/null; then
        echo "broker.sh: node $node already running (pid $(cat "$dir/rabbit.pid"))"
        return 0
    fi
    # The consistent-hash exchange feeds a partitioned service's queues (serve --partitions).
    echo "[rabbitmq_consistent_hash_exchange]." > "$dir/enabled_plugins"
    if [ -n "${BATON_BROKER_COOKIE:-}" ]; then
        rm -f "$dir/home/.erlang.cookie"
        printf '%s' "$BATON_BROKER_COOKIE" > "$dir/home/.erlang.cookie"
        chmod 400 "$dir/home/.erlang.cookie"
    fi
    cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$port
loopback_users = none
max_message_size = 1048576
default_user = $user
default_pass = $password
default_vhost = /
heartbeat = 10
log.file.level = warning
log.console = false
CONF
    if [ -n "${BATON_BROKER_EXTRA_ADDRESS:-}" ]; then
        echo "listeners.tcp.extra = $BATON_BROKER_EXTRA_ADDRESS:$port" >> "$dir/rabbitmq.conf"
    fi
    if [ -n "${BATON_BROKER_TLS_DIR:-}" ]; then
        cat >> "$dir/rabbitmq.conf" <<CONF
listeners.ssl.default = 127.0.0.1:$((port + 1))
ssl_options.cacertfile = $BATON_BROKER_TLS_DIR/ca.pem
ssl_options.certfile = $BATON_BROKER_TLS_DIR/server.pem
ssl_options.keyfile = $BATON_BROKER_TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
    fi
    broker_env
    # The application user is created from default_user on first boot; guest never exists on this node.
    nohup "$rabbit_bin/rabbitmq-server" > "$dir/log/stdout.log" 2>&1 &
    echo $! > "$dir/launcher.pid"
    if ! "$rabbit_bin/rabbitmqctl" -n "$node" wait --timeout 60 "$dir/rabbit.pid" > /dev/null 2>&1 \
        || ! "$rabbit_bin/rabbitmqctl" -n "$node" await_startup --timeout 60 > /dev/null 2>&1; then
        echo "broker.sh: node $node did not start; last log lines:" >&2
        tail -n 30 "$dir/log/stdout.log" >&2 || true
        exit 1
    fi
    echo "broker.sh: node $node serving amqp://127.0.0.1:$port (data in $dir)"
}

stop() {
    broker_env
    if [ -f "$dir/rabbit.pid" ] && kill -0 "$(cat "$dir/rabbit.pid")" 2>/dev/null; then
        "$rabbit_bin/rabbitmqctl" -n "$node" stop "$dir/rabbit.pid" > /dev/null 2>&1 || kill "$(cat "$dir/rabbit.pid")" || true
    fi
    rm -f "$dir/rabbit.pid"
}

kill_node() {
    if [ -f "$dir/rabbit.pid" ]; then kill -9 "$(cat "$dir/rabbit.pid")" 2>/dev/null || true; fi
    rm -f "$dir/rabbit.pid"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    kill) kill_node ;;
    ctl) shift; ctl "$@" ;;
    url) echo "amqp://$user:$password@127.0.0.1:$port/%2F" ;;
    *) echo "usage: $0 start|stop|kill|ctl ARGS|url" >&2; exit 2 ;;
esac
