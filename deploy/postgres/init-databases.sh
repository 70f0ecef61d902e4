#!/bin/sh
# Creates one database per service (orders, invoices), owned by $POSTGRES_USER.
# The postgres image runs this once, on first start with an empty data volume
# (mounted into /docker-entrypoint-initdb.d); re-running it is harmless.
set -eu

for db in ${APP_DATABASES:-orders invoices}; do
    echo "init-databases: ensuring database '$db'"
    psql -v ON_ERROR_STOP=1 -v db="$db" \
        --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', current_user)
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
done
