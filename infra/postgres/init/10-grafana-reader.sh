#!/bin/sh
# First start of the compose PostgreSQL only (docker-entrypoint-initdb.d): a read-only role for
# Grafana's PostgreSQL datasource, limited to the `targets` schema (coverage, divisions, targets).
# The schema is created here, owned by the services' role; the migration's CREATE SCHEMA IF NOT
# EXISTS then finds it, and every table it creates there is readable by grafana.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set owner="$POSTGRES_USER" --set reader_password="${GRAFANA_DB_PASSWORD:-grafana}" <<'SQL'
CREATE ROLE grafana LOGIN PASSWORD :'reader_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
ALTER ROLE grafana SET default_transaction_read_only = on;
ALTER ROLE grafana SET statement_timeout = '30s';
CREATE SCHEMA IF NOT EXISTS targets AUTHORIZATION :"owner";
GRANT USAGE ON SCHEMA targets TO grafana;
GRANT SELECT ON ALL TABLES IN SCHEMA targets TO grafana;
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA targets GRANT SELECT ON TABLES TO grafana;
SQL
