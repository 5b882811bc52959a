#!/usr/bin/env bash
# A private PostgreSQL server for local runs and tests: its own data directory, port and socket directory, so
# it never touches a system cluster.
#
#   Deploy/local/postgres.sh start   create the cluster if needed, start it, wait until it accepts connections
#   Deploy/local/postgres.sh stop    stop it
#   Deploy/local/postgres.sh url     print the URL of its superuser `baton` (database `postgres`)
#   Deploy/local/postgres.sh psql …  run psql as `baton` over the server's socket (arguments passed on)
#
# Connections over TCP need the password (scram-sha-256, like a real deployment, so that a wrong one is
# refused); psql over the socket is trusted.
#
# Settings (environment): BATON_POSTGRES_DIR (default /tmp/baton-postgres-PORT), BATON_POSTGRES_PORT (5691);
# BATON_POSTGRES_TLS_DIR, a directory with server.pem and server.key: the server accepts TLS with them too;
# BATON_POSTGRES_EXTRA_ADDRESS: one more address to listen on, for clients on its subnet (the scale-out chaos
# run's network namespace).
# As root, the server runs as the `postgres` user (PostgreSQL refuses to run as root).
set -euo pipefail

port=${BATON_POSTGRES_PORT:-5691}
dir=${BATON_POSTGRES_DIR:-/tmp/baton-postgres-$port}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
password=baton-local-secret

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
start)
    [ -n "$bin" ] || { echo "postgres.sh: PostgreSQL is not installed (apt-get install -y postgresql)" >&2; exit 1; }
    mkdir -p "$dir"
    [ "$(id -u)" -ne 0 ] || chown postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        printf '%s\n' "$password" > "$dir/password"
        [ "$(id -u)" -ne 0 ] || chown postgres "$dir/password"
        as_owner "$bin/initdb" -D "$dir/data" -U baton --auth-local=trust --auth-host=scram-sha-256 \
            --pwfile="$dir/password" > "$dir/initdb.log"
        rm -f "$dir/password"
    fi
    listen=127.0.0.1
    if [ -n "${BATON_POSTGRES_EXTRA_ADDRESS:-}" ]; then
        listen="$listen,$BATON_POSTGRES_EXTRA_ADDRESS"
        grep -q '^host all all samenet ' "$dir/data/pg_hba.conf" \
            || echo 'host all all samenet scram-sha-256' >> "$dir/data/pg_hba.conf"
    fi
    options="-p $port -k $dir -c listen_addresses=$listen -c fsync=on"
    if [ -n "${BATON_POSTGRES_TLS_DIR:-}" ]; then
        # The server reads its key only if it owns it and nobody else may read it.
        install -m 600 "$BATON_POSTGRES_TLS_DIR/server.key" "$dir/server.key"
        install -m 644 "$BATON_POSTGRES_TLS_DIR/server.pem" "$dir/server.pem"
        [ "$(id -u)" -ne 0 ] || chown postgres "$dir/server.key" "$dir/server.pem"
        options="$options -c ssl=on -c ssl_cert_file=$dir/server.pem -c ssl_key_file=$dir/server.key"
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o "$options" start > /dev/null
    echo "postgres.sh: serving postgres://baton@127.0.0.1:$port (data in $dir)"
    ;;
stop)
    [ -f "$dir/data/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop > /dev/null || true
    ;;
url)
    echo "postgres://baton:$password@127.0.0.1:$port/postgres"
    ;;
psql)
    shift
    as_owner "$bin/psql" -h "$dir" -p "$port" -U baton -d postgres -v ON_ERROR_STOP=1 -X -q "$@"
    ;;
*)
    echo "usage: postgres.sh start|stop|url|psql" >&2
    exit 2
    ;;
esac
