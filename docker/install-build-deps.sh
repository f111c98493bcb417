#!/bin/sh
# The build tools and server headers pg_llm needs, on Debian: in the Dockerfile
# (postgres:18, whose apt already has PGDG's packages) and on the host by
# .ci/pg15 (Debian's PostgreSQL 15).  Needs root.
#
#   PG_MAJOR=18 docker/install-build-deps.sh [--clean] [EXTRA_PACKAGE ...]
#
# PG_MAJOR: the PostgreSQL major version (the postgres image sets it).
# --clean: remove apt's package lists afterwards (in an image layer).
set -eu

clean=
if [ "${1:-}" = --clean ]; then
    clean=1
    shift
fi
: "${PG_MAJOR:?set PG_MAJOR, the PostgreSQL major version, e.g. 18}"
packages="build-essential zlib1g-dev postgresql-server-dev-$PG_MAJOR $*"

export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086  # one word per package
if ! apt-get install -y -qq --no-install-recommends $packages >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $packages >/dev/null
fi
if [ -n "$clean" ]; then
    apt-get clean
    rm -rf /var/lib/apt/lists/*
fi
echo "installed: $packages"
