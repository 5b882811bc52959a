#!/usr/bin/env bash
# The main job. Installs what is missing, builds in release mode, starts a private RabbitMQ node and runs
# the transport benchmark against it (Swift next to plain C over the same librabbitmq), then stops the node.
# Until the service mesh lands, this transport run is the demo. Extra arguments go to the benchmark
# (see `.build/release/baton-transport-benchmark --help`).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

"$here/setup.sh"
echo "== building (release)"
swift build -c release --product baton-transport-benchmark
swift build -c release --product amqp-c-baseline

export BATON_BROKER_DIR="$repo/.build-broker"
trap '"$here/broker.sh" stop' EXIT
"$here/broker.sh" start

echo "== transport benchmark"
.build/release/baton-transport-benchmark --amqp-url "$("$here/broker.sh" url)" "$@"
