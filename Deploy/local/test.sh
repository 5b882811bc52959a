#!/usr/bin/env bash
# The test command: installs what is missing, starts a private RabbitMQ node and a private PostgreSQL server,
# runs every Swift test against them and stops them again, whatever the outcome; then the benchmark's smoke
# run (Deploy/local/benchmark.sh --smoke: every part of it, tiny sizes), the short chaos runs
# (Deploy/local/chaos.sh, then with --scale-out) and the deployment test (Tests/Deploy/compose-test.sh:
# Deploy/compose.yaml on a Docker engine). Extra arguments go to `swift test` and run only that.
#
# The deployment test uses the Docker engine that answers (DOCKER_HOST); on the build machine without one it
# starts ../shared/tools/compose-lab, at the start, and builds the images there while the tests run. Without
# either it fails: a deployment nobody tested is not a pass.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

"$here/setup.sh"

# The deployment test, last, needs a Docker engine and the images of Deploy/Dockerfile, whose Swift compile
# takes about 8 minutes cold. On the build machine, where no engine answers, ../shared/tools/compose-lab is
# started now in the background with nice 19 and builds the images while the tests run: its engine then takes
# only the CPU that the tests leave idle (they mostly wait on brokers, timers and kills), and the compose test
# finds the images in the build cache. An engine that already answers (or a lab already up) is left alone: the
# compose test builds the images itself.
lab="$repo/../shared/tools/compose-lab"
images=""
images_log="$repo/.build-images/build.log"
if [ $# -eq 0 ] && ! docker info > /dev/null 2>&1 && [ -x "$lab" ] && ! "$lab" status > /dev/null 2>&1; then
    echo "== starting the build machine's compose-lab and building the images in the background ($images_log)"
    mkdir -p "$(dirname "$images_log")"
    set -m # the build in a process group of its own, which the exit trap can stop
    (
        nice -n 19 "$lab" up > /dev/null
        eval "$("$lab" env)"
        # compose.yaml requires the broker users' passwords to read it at all; a build uses none of them.
        for user in ADMIN ORDERS INVENTORY SHIPPING FULFILLMENT PRODUCER; do export "BATON_${user}_PASSWORD=unused"; done
        docker compose -f Deploy/compose.yaml build orders # the build stage, once; the other images reuse it
        docker compose -f Deploy/compose.yaml build
    ) > "$images_log" 2>&1 &
    images=$!
    set +m
fi

export BATON_BROKER_DIR="$repo/.build-broker-test"
export BATON_BROKER_PORT=${BATON_TEST_BROKER_PORT:-5683}
export BATON_BROKER_NODE="baton-test-$$@localhost"
rm -rf "$BATON_BROKER_DIR"
# A private PostgreSQL server too (the PostgreSQL store's tests).
export BATON_POSTGRES_PORT=${BATON_TEST_POSTGRES_PORT:-5691}
export BATON_POSTGRES_DIR="/tmp/baton-postgres-test-$$"
# A private three-node RabbitMQ cluster too, started by the cluster tests themselves (Deploy/local/cluster.sh).
export BATON_CLUSTER_DIR="$repo/.build-cluster-test"
export BATON_CLUSTER_PORT=${BATON_TEST_CLUSTER_PORT:-5710}
export BATON_CLUSTER_NAME="baton-cluster-test-$$"
rm -rf "$BATON_CLUSTER_DIR"
trap '[ -z "$images" ] || kill -- -"$images" 2> /dev/null; "$here/broker.sh" stop; rm -rf "$BATON_BROKER_DIR"; "$here/postgres.sh" stop; rm -rf "$BATON_POSTGRES_DIR"; "$here/cluster.sh" stop; rm -rf "$BATON_CLUSTER_DIR"' EXIT

# Certificates for the amqps tests: a CA that signed the broker's certificate for "localhost", and an
# unrelated CA that must be refused.
export BATON_BROKER_TLS_DIR="$BATON_BROKER_DIR/tls"
mkdir -p "$BATON_BROKER_TLS_DIR"
(
    cd "$BATON_BROKER_TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=Baton test CA" -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=Unrelated CA" -keyout wrong-ca.key -out wrong-ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem 2>/dev/null
    chmod 644 server.key
)

"$here/broker.sh" start
"$here/postgres.sh" start
export BATON_TEST_DATABASE_URL=$("$here/postgres.sh" url)
export BATON_TEST_AMQP_URL=$("$here/broker.sh" url)
export BATON_TEST_AMQPS_URL="amqps://${BATON_TEST_AMQP_URL#amqp://}"
export BATON_TEST_AMQPS_URL="${BATON_TEST_AMQPS_URL/127.0.0.1:$BATON_BROKER_PORT/localhost:$((BATON_BROKER_PORT + 1))}"
export BATON_TEST_TLS_CA="$BATON_BROKER_TLS_DIR/ca.pem"
export BATON_TEST_TLS_WRONG_CA="$BATON_BROKER_TLS_DIR/wrong-ca.pem"

# With the OpenTelemetry trait: the services export traces when told to (TraceTests checks one checkout's spans
# form one tree); the default build (run.sh, the images) does without swift-otel. The benchmark's and chaos
# runs below build with it too (build.sh), reusing this build.
export BATON_BUILD_TRAITS=OpenTelemetry
traits=(--traits "$BATON_BUILD_TRAITS")
# Strict: every target declares the modules it imports, and Baton's own code builds without a warning.
swift build "${traits[@]}" --build-tests --explicit-target-dependency-import-check error 2>&1 \
    | tee "$BATON_BROKER_DIR/build.log"
# (A dependency's own package warnings name it, `warning: 'swift-distributed-tracing': …`: not Baton's code.)
dependencies=$(ls .build/checkouts | tr '\n' '|')
if grep "warning:" "$BATON_BROKER_DIR/build.log" | grep -v "/.build/checkouts/" \
    | grep -viE "^warning: '(${dependencies%|})':"; then
    echo "test.sh: the build has warnings (above); Baton builds without any" >&2
    exit 1
fi
if [ $# -gt 0 ]; then
    swift test "${traits[@]}" --skip-build "$@"
    exit 0
fi
# Everything in parallel, then the suites that close, freeze, restart and kill brokers: the one test node's
# and the three-node cluster's (which they start), then the scaled-out mesh on that cluster, which kills a
# node of it too.
swift test "${traits[@]}" --skip-build --skip 'BrokerDisruptionTests|ClusterFailoverTests|ScaleOutTests'
swift test "${traits[@]}" --skip-build --filter 'BrokerDisruptionTests|ClusterFailoverTests'
swift test "${traits[@]}" --skip-build --filter ScaleOutTests
"$here/broker.sh" stop

# The benchmark, small: ceiling, mesh at max and 50%, embedded, scale — so that it keeps working.
"$here/benchmark.sh" --smoke
# The long haul, 45 s: a kill -9 every 10 s under a short retention policy, sampled; its invariants checked.
"$here/benchmark.sh" --soak-smoke
# The scaled-out shape, 100 workflows with 1, then 2 replicas per service: that it runs and measures.
"$here/benchmark.sh" --scale-out-smoke

# The chaos run, short: 300 workflows through kill -9s, a broker restart and a partition (a random seed,
# printed; a failure names it).
BATON_CHAOS_BUILD=debug "$here/chaos.sh" --workflows 300
# The scale-out chaos run, short: the same through a three-node cluster (node 1 restarted and killed),
# PostgreSQL, two replicas of every service with 4 partitions each (replicas killed, one partitioned off);
# per-instance order checked too.
BATON_CHAOS_BUILD=debug "$here/chaos.sh" --scale-out --workflows 300

# The deployment's Prometheus configuration and example alerting rules, as Prometheus itself reads them.
promtool check rules Deploy/prometheus/rules.yml
prometheus_config=$(mktemp --suffix=.yml)
sed "s|/etc/prometheus/rules.yml|$repo/Deploy/prometheus/rules.yml|" Deploy/prometheus/prometheus.yml \
    > "$prometheus_config"
promtool check config "$prometheus_config"
rm -f "$prometheus_config"

if [ -n "$images" ]; then
    echo "== waiting for the images' background build"
    if ! wait "$images"; then
        tail -n 40 "$images_log" >&2
        echo "test.sh: the images' build failed (the whole log: $images_log)" >&2
        exit 1
    fi
    images=""
fi
if ! docker info > /dev/null 2>&1 && [ -x "$lab" ]; then
    echo "== no Docker engine answers; starting the build machine's compose-lab"
    "$lab" up > /dev/null
    eval "$("$lab" env)"
fi
"$repo/Tests/Deploy/compose-test.sh"
