#!/bin/sh
# Enable pg_llm on a fresh server: the postgres image runs this once, from
# /docker-entrypoint-initdb.d/, when it creates the cluster (with
# POSTGRES_USER and POSTGRES_DB set, the server on its Unix socket).
# template1 gets it too, so every database created later has it.  Each is
# made ready for a class (llm_classroom_init: the roles llm_learner and
# llm_instructor, row-level security), and with LEARNER_PASSWORD set (as
# compose.yaml sets it) the learner role `learner` the notebooks log in as.
# .ci/pg15 runs it against Debian's PostgreSQL 15 the same way.
set -eu

user=${POSTGRES_USER:-postgres}
for db in "${POSTGRES_DB:-$user}" template1; do
    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$user" --dbname "$db" \
        -c "CREATE EXTENSION IF NOT EXISTS pg_llm" -c "SELECT llm_classroom_init()" >/dev/null
    echo "pg_llm enabled in database $db, ready for a class"
done
if [ -n "${LEARNER_PASSWORD:-}" ]; then
    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$user" --dbname "${POSTGRES_DB:-$user}" \
        -v password="$LEARNER_PASSWORD" >/dev/null <<'SQL'
SELECT llm_classroom_add_learner('learner');
ALTER ROLE learner PASSWORD :'password';
SQL
    echo "learner role 'learner' made"
fi
