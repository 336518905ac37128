#!/usr/bin/env bash
# Make sure the PostgreSQL server the tests use is up and set up the way the
# tests expect: 127.0.0.1:5432, trust auth for local and loopback
# connections, a database `test`, superuser roles `postgres` and `root`.
# Starts the local Debian cluster when it is down (no systemd needed) and
# creates the cluster when the package was just installed. Idempotent.
set -euo pipefail

ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! ready; then
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "postgres: PostgreSQL is not installed; run scripts/setup.sh (installs Debian's postgresql)" >&2
    exit 1
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "postgres: no server at 127.0.0.1:5432 and not root; start PostgreSQL (database 'test', trust auth) and rerun" >&2
    exit 1
  fi
  version="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
  if [ ! -d "/etc/postgresql/$version/main" ]; then
    echo "postgres: creating cluster $version/main" >&2
    pg_createcluster "$version" main -p 5432 -- --auth-local=trust --auth-host=trust >/dev/null
  fi
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
    # Loopback only, as the project's machines have it; first match wins.
    sed -i '1i host all all 127.0.0.1/32 trust\nlocal all all trust' "$hba"
  fi
  echo "postgres: starting cluster $version/main" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do
    ready && break
    sleep 1
  done
  ready || { echo "postgres: the cluster did not come up; see /var/log/postgresql/" >&2; exit 1; }
fi

psql_su() { psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -qtAX "$@"; }
if [ "$(psql_su -c "SELECT 1 FROM pg_roles WHERE rolname = 'root'")" != 1 ]; then
  psql_su -c "CREATE ROLE root SUPERUSER LOGIN" >/dev/null
fi
if [ "$(psql_su -c "SELECT 1 FROM pg_database WHERE datname = 'test'")" != 1 ]; then
  psql_su -c "CREATE DATABASE test OWNER root" >/dev/null
fi
