#!/bin/sh
# One database per service (orders, invoices), each owned by its owner role (runs the migrations) and used
# by its app role (the service's processes: rows only): deploy/postgres/roles.sql, with the passwords from
# the environment. The bootstrap superuser ($POSTGRES_USER) is for operators only; no service connects as it.
# The postgres image runs this once, on first start with an empty data volume (mounted into
# /docker-entrypoint-initdb.d); re-running it by hand (docker compose exec postgres sh <this>) is harmless.
set -eu

roles_sql=${ROLES_SQL:-/usr/local/share/order-outbox/roles.sql}

roles() {  # roles <database> <owner password> <app password>
    echo "init-databases: database '$1', roles '$1_owner' (migrations) and '$1_app' (the service)"
    OWNER_PASSWORD=$2 APP_PASSWORD=$3 psql -v ON_ERROR_STOP=1 --quiet \
        --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
        -v db="$1" -v owner="$1_owner" -v app="$1_app" -f "$roles_sql"
}

roles orders "${ORDERS_OWNER_PASSWORD:?}" "${ORDERS_APP_PASSWORD:?}"
roles invoices "${INVOICES_OWNER_PASSWORD:?}" "${INVOICES_APP_PASSWORD:?}"

# The app roles connect to their own database only: not to the bootstrap one, nor to template1.
psql -v ON_ERROR_STOP=1 --quiet --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
    -v bootstrap="${POSTGRES_DB:-$POSTGRES_USER}" <<'SQL'
REVOKE CONNECT, TEMPORARY ON DATABASE :"bootstrap" FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC;
SQL
