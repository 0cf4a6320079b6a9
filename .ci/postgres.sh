#!/usr/bin/env bash
# Makes sure a PostgreSQL answers on 127.0.0.1:5432 with what the tests need: role postgres
# connecting over TCP from loopback without a password, and a database named test. On a bare
# Debian machine it installs Debian's postgresql, starts the cluster and configures it. It is
# idempotent: a machine that already has all of this is left as it is.
#
# It ends with one line saying what it found, or fails with one line saying why not.
set -euo pipefail

PGHOST=127.0.0.1
PGPORT=${MANDATE_CI_PGPORT:-5432}

log() { printf 'postgres: %s\n' "$*" >&2; }
die() { printf 'FAIL: postgres: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "need root (or passwordless sudo) to run: $*"
  fi
}

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"
  else sudo -n -u postgres "$@"
  fi
}

answers() { pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null; }
can_login() { psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -w -tAc 'SELECT 1' >/dev/null 2>&1; }

if ! answers; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "not installed: apt-get install postgresql"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  for v in $(ls /etc/postgresql); do
    log "starting cluster $v/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
  done
  for _ in $(seq 1 30); do answers && break; sleep 1; done
fi
answers || die "nothing answers on $PGHOST:$PGPORT after installing and starting the cluster"

if ! can_login; then
  # Trust role postgres on loopback only: a throwaway test cluster, never a real one.
  hba=$(as_postgres psql -p "$PGPORT" -tAc 'SHOW hba_file' 2>/dev/null) || die "cannot reach the cluster over its socket to configure it"
  log "trusting role postgres on loopback in $hba"
  as_root sed -i '1i host all postgres 127.0.0.1/32 trust # added by .ci/postgres.sh\nhost all postgres ::1/128 trust # added by .ci/postgres.sh' "$hba"
  as_postgres psql -p "$PGPORT" -qtAc 'SELECT pg_reload_conf()' >/dev/null
  for _ in $(seq 1 10); do can_login && break; sleep 0.5; done
fi
can_login || die "role postgres cannot connect to $PGHOST:$PGPORT without a password"

if [ "$(psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -w -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'")" != 1 ]; then
  psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -w -qc 'CREATE DATABASE test' || die "cannot create database test"
fi
echo "postgres: ready on $PGHOST:$PGPORT ($(psql -h "$PGHOST" -p "$PGPORT" -U postgres -d test -w -tAc 'SHOW server_version'))"
