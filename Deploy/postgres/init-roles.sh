#!/bin/sh
# Run once by the postgres image when it creates its cluster (/docker-entrypoint-initdb.d): one login role per
# service, owning a schema of its own name in the database and nothing else. A service cannot create schemas,
# nor read or write another's (each uses its own password: BATON_<SERVICE>_PASSWORD).
set -eu
for service in orders inventory shipping fulfillment; do
    variable=BATON_$(echo "$service" | tr '[:lower:]' '[:upper:]')_PASSWORD
    password=$(printenv "$variable") || { echo "init-roles.sh: $variable is not set" >&2; exit 1; }
    psql -v ON_ERROR_STOP=1 -q --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        -v role="$service" -v password="$password" -v database="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
GRANT CONNECT ON DATABASE :"database" TO :"role";
CREATE SCHEMA :"role" AUTHORIZATION :"role";
SQL
done
psql -v ON_ERROR_STOP=1 -q --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -v database="$POSTGRES_DB" <<'SQL'
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SQL
