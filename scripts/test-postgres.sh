#!/usr/bin/env bash
# A throw-away PostgreSQL server for the test suite, installed when it is missing.
#
#   scripts/test-postgres.sh run -- CMD ARGS...  # start, run CMD with LIFECYCLE_TEST_POSTGRES_URL set,
#                                                # stop (whatever CMD's result), exit with CMD's status
#   scripts/test-postgres.sh start               # start and print `export LIFECYCLE_TEST_POSTGRES_URL=...`
#                                                # (eval "$(scripts/test-postgres.sh start)")
#   scripts/test-postgres.sh stop                # stop the server `start` left running, remove its files
#   scripts/test-postgres.sh install             # only make sure the server binaries are installed
#
# Binaries: $PG_BINDIR, else the newest /usr/lib/postgresql/*/bin (Debian), else initdb's folder on PATH.
# When none is found, Debian's `postgresql` package is installed with apt-get (as root, or through
# `sudo -n` otherwise); when that is impossible the script fails, loudly: the suite must not quietly
# skip the PostgreSQL tests.
#
# The cluster lives in a fresh temporary folder (initdb, fsync off), listens on a free loopback port only,
# trusts local connections (it holds nothing but test data) and has a superuser `lifecycle` and a
# database `lifecycle_test`:  postgresql+psycopg://lifecycle@127.0.0.1:PORT/lifecycle_test
# PostgreSQL refuses to run as root, so as root initdb / pg_ctl run as the `postgres` user (created by
# the Debian package), or `nobody` when there is no such user.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE_DIR="$ROOT/.pg"          # gitignored: where `start` remembers its cluster for `stop`
DB_USER=lifecycle
DB_NAME=lifecycle_test

say() { echo "test-postgres: $*" >&2; }
die() {
  echo "test-postgres: ERROR: $*" >&2
  exit 1
}

has_server() { [[ -x $1/initdb && -x $1/pg_ctl && -x $1/postgres && -x $1/createdb ]]; }

find_bindir() {
  if [[ -n ${PG_BINDIR:-} ]] && has_server "$PG_BINDIR"; then
    echo "$PG_BINDIR"
    return 0
  fi
  local dir best=""
  for dir in /usr/lib/postgresql/*/bin; do
    has_server "$dir" || continue
    # newest major version wins (sort -V on the version folder)
    if [[ -z $best ]] || [[ $(printf '%s\n%s\n' "$best" "$dir" | sort -V | tail -n1) == "$dir" ]]; then
      best=$dir
    fi
  done
  if [[ -z $best ]]; then
    local initdb
    # elsewhere (not Debian): initdb on PATH, followed through symlinks to its real folder
    if initdb=$(command -v initdb); then
      dir=$(dirname "$(readlink -f "$initdb")")
      has_server "$dir" && best=$dir
    fi
  fi
  [[ -n $best ]] && echo "$best"
}

install_postgres() {
  local as=()
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      as=(sudo -n)
    else
      die "PostgreSQL server binaries (initdb, pg_ctl) are not installed and this user ($(id -un)) cannot install them: run as root, give passwordless sudo, install Debian's 'postgresql' package, or point PG_BINDIR at a PostgreSQL bin folder."
    fi
  fi
  command -v apt-get >/dev/null || die "PostgreSQL is not installed and there is no apt-get to install it with: install PostgreSQL (initdb, pg_ctl) or set PG_BINDIR."
  say "PostgreSQL server not found: installing Debian's postgresql package (apt-get)"
  local started=$SECONDS log
  log=$(mktemp "${TMPDIR:-/tmp}/lifecycle-pg-install.XXXXXX")
  "${as[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; die "apt-get update failed: cannot install PostgreSQL for the tests"; }
  "${as[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql >>"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; die "apt-get install postgresql failed: cannot run the PostgreSQL tests"; }
  rm -f "$log"
  say "installed PostgreSQL in $((SECONDS - started)) s"
}

ensure_bindir() {
  BINDIR=$(find_bindir || true)
  if [[ -z $BINDIR ]]; then
    install_postgres
    BINDIR=$(find_bindir || true)
    [[ -n $BINDIR ]] || die "installed the postgresql package but found no initdb/pg_ctl (looked in PG_BINDIR, PATH, /usr/lib/postgresql/*/bin)"
  fi
}

# Run a server-side command as a user PostgreSQL accepts.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u "$PG_OS_USER" -- "$@"
  else
    "$@"
  fi
}

free_port() {
  local py
  py=$(command -v python3 || command -v python) || die "python3 is needed to pick a free port"
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_cluster() {
  ensure_bindir
  PG_OS_USER=$(id -un)
  if [[ $(id -u) -eq 0 ]]; then
    if id postgres >/dev/null 2>&1; then PG_OS_USER=postgres; else PG_OS_USER=nobody; fi
    command -v runuser >/dev/null || die "running as root needs runuser (util-linux) to start PostgreSQL as $PG_OS_USER"
  fi
  PGDATA_DIR=$(mktemp -d "${TMPDIR:-/tmp}/lifecycle-pg.XXXXXX")
  chmod 700 "$PGDATA_DIR"
  [[ $(id -u) -eq 0 ]] && chown "$PG_OS_USER" "$PGDATA_DIR"
  local log=$PGDATA_DIR/server.log
  as_pg "$BINDIR/initdb" -D "$PGDATA_DIR/data" -U "$DB_USER" -A trust -E UTF8 --locale=C --no-sync >"$PGDATA_DIR/initdb.log" 2>&1 \
    || { cat "$PGDATA_DIR/initdb.log" >&2; die "initdb failed (as $PG_OS_USER, $BINDIR)"; }
  local attempt
  for attempt in 1 2 3; do
    PORT=$(free_port)
    if as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR/data" -l "$log" -w -t 60 start -o \
      "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories='$PGDATA_DIR' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100" \
      >/dev/null 2>&1; then
      break
    fi
    [[ $attempt -eq 3 ]] && { cat "$log" >&2 2>/dev/null || true; rm -rf "$PGDATA_DIR"; die "pg_ctl start failed (see the log above)"; }
  done
  "$BINDIR/createdb" -h 127.0.0.1 -p "$PORT" -U "$DB_USER" "$DB_NAME" \
    || { stop_cluster; die "createdb $DB_NAME failed"; }
  URL="postgresql+psycopg://$DB_USER@127.0.0.1:$PORT/$DB_NAME"
  say "PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT (data in $PGDATA_DIR)"
}

stop_cluster() {
  [[ -n ${PGDATA_DIR:-} && -d $PGDATA_DIR ]] || return 0
  as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PGDATA_DIR"
}

cmd=${1:-}
case $cmd in
  run)
    shift
    [[ ${1:-} == -- ]] && shift
    (($#)) || die "usage: $0 run -- COMMAND [ARGS...]"
    start_cluster
    trap stop_cluster EXIT
    trap 'exit 130' INT TERM
    status=0
    LIFECYCLE_TEST_POSTGRES_URL=$URL "$@" || status=$?
    exit "$status"
    ;;
  start)
    [[ -f $STATE_DIR/env ]] && die "a test server is already running ($STATE_DIR/env): stop it first"
    start_cluster
    mkdir -p "$STATE_DIR"
    printf 'BINDIR=%q\nPGDATA_DIR=%q\nPG_OS_USER=%q\nURL=%q\n' "$BINDIR" "$PGDATA_DIR" "$PG_OS_USER" "$URL" >"$STATE_DIR/env"
    echo "export LIFECYCLE_TEST_POSTGRES_URL=$URL"
    ;;
  stop)
    [[ -f $STATE_DIR/env ]] || { say "no test server running"; exit 0; }
    # shellcheck disable=SC1091
    source "$STATE_DIR/env"
    stop_cluster
    rm -f "$STATE_DIR/env"
    say "stopped"
    ;;
  install)
    ensure_bindir
    say "server binaries in $BINDIR"
    ;;
  *)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
