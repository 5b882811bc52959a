#!/usr/bin/env bash
# A private PostgreSQL server for local runs and tests: its own data directory, port and socket directory, so
# it never touches a system cluster.
#
#   Deploy/local/postgres.sh start   create the cluster if needed, start it, wait until it accepts connections
#   Deploy/local/postgres.sh stop    stop it
#   Deploy/local/postgres.sh url     print the URL of its superuser `baton` (database `postgres`)
#
# Settings (environment): BATON_POSTGRES_DIR (default /tmp/baton-postgres-PORT), BATON_POSTGRES_PORT (5691).
# As root, the server runs as the `postgres` user (PostgreSQL refuses to run as root).
set -euo pipefail

port=${BATON_POSTGRES_PORT:-5691}
dir=${BATON_POSTGRES_DIR:-/tmp/baton-postgres-$port}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
start)
    [ -n "$bin" ] || { echo "postgres.sh: PostgreSQL is not installed (apt-get install -y postgresql)" >&2; exit 1; }
    mkdir -p "$dir"
    [ "$(id -u)" -ne 0 ] || chown postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$dir/data" -U baton --auth=trust > "$dir/initdb.log"
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on" start > /dev/null
    echo "postgres.sh: serving postgres://baton@127.0.0.1:$port (data in $dir)"
    ;;
stop)
    [ -f "$dir/data/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop > /dev/null || true
    ;;
url)
    echo "postgres://baton@127.0.0.1:$port/postgres"
    ;;
*)
    echo "usage: postgres.sh start|stop|url" >&2
    exit 2
    ;;
esac
