#!/bin/sh
# Enable pg_llm on a fresh server: the postgres image runs this once, from
# /docker-entrypoint-initdb.d/, when it creates the cluster (with
# POSTGRES_USER and POSTGRES_DB set, the server on its Unix socket).
# template1 gets it too, so every database created later has it.
# .ci/pg15 runs it against Debian's PostgreSQL 15 the same way.
set -eu

user=${POSTGRES_USER:-postgres}
for db in "${POSTGRES_DB:-$user}" template1; do
    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$user" --dbname "$db" \
        -c "CREATE EXTENSION IF NOT EXISTS pg_llm"
    echo "pg_llm enabled in database $db"
done
