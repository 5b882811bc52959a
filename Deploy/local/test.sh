#!/usr/bin/env bash
# The test command: installs what is missing, starts a private RabbitMQ node, runs every test against it,
# and stops the node again, whatever the outcome. Extra arguments go to `swift test`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

"$here/setup.sh"

export BATON_BROKER_DIR="$repo/.build-broker-test"
export BATON_BROKER_PORT=${BATON_TEST_BROKER_PORT:-5683}
export BATON_BROKER_NODE="baton-test-$$@localhost"
rm -rf "$BATON_BROKER_DIR"
trap '"$here/broker.sh" stop; rm -rf "$BATON_BROKER_DIR"' EXIT
"$here/broker.sh" start
export BATON_TEST_AMQP_URL=$("$here/broker.sh" url)
export BATON_TEST_BROKER_DIR="$BATON_BROKER_DIR"

swift build --build-tests
swift test --skip-build "$@"
