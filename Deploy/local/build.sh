#!/usr/bin/env bash
# Builds products of the package for the scripts that run them:
#
#   Deploy/local/build.sh CONFIGURATION PRODUCT...     e.g. build.sh release orders inventory
#
# with the package traits in BATON_BUILD_TRAITS (test.sh sets the tests' own, OpenTelemetry, so that the
# benchmark's and chaos runs after the tests reuse their build instead of rebuilding it with other traits).
# Prints the build's errors and warnings only; exits non-zero when a build fails.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: build.sh debug|release PRODUCT..." >&2; exit 64; }
configuration=$1
shift
traits=()
[ -n "${BATON_BUILD_TRAITS:-}" ] && traits=(--traits "$BATON_BUILD_TRAITS")
for product in "$@"; do
    swift build -c "$configuration" "${traits[@]}" --product "$product" 2>&1 | { grep -E "error|warning: " || true; }
done
