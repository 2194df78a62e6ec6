#!/bin/bash
# The cost table of docs/benchmarks.md: treaty bench at concurrency 10/100/1,000 x 1/3/10 branches
# (saga), every protocol at 64 clients, and one vs three coordinators on PostgreSQL, on SQLite and on
# a throw-away PostgreSQL 15 (started as the postgres user on a free loopback port, stopped at the
# end). Needs a Release build of the CLI: dotnet build -c Release src/Treaty.Cli
#   bench/cost-table.sh [OUT_DIR]; then python3 bench/cost-table.py [OUT_DIR] prints the tables.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/treaty-cost}; mkdir -p $OUT
CLI="dotnet src/Treaty.Cli/bin/Release/net10.0/treaty.dll"
D=$(mktemp -d); chown postgres "$D"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
su postgres -c "/usr/lib/postgresql/15/bin/initdb -D $D/data -A trust -U treaty >/dev/null"
su postgres -c "/usr/lib/postgresql/15/bin/pg_ctl -D $D/data -l $D/log -w start -o '-p $PORT -k $D -c listen_addresses=127.0.0.1 -c max_connections=400' >/dev/null"
# Stopped (and its directory removed) however the script ends.
trap 'su postgres -c "/usr/lib/postgresql/15/bin/pg_ctl -D $D/data -m fast stop >/dev/null"; rm -rf "$D"' EXIT

newdb() { local name="b$RANDOM$RANDOM"; psql -h 127.0.0.1 -p $PORT -U treaty -d postgres -qc "CREATE DATABASE $name" >&2; echo "Host=127.0.0.1;Port=$PORT;Username=treaty;Database=$name;Maximum Pool Size=200"; }
run() { # name args...
  local name=$1; shift
  echo "== $name: $*"
  $CLI bench --duration 5s --warmup 2s --json $OUT/$name.json "$@" > $OUT/$name.log 2>&1
  echo "rc $?"; tail -3 $OUT/$name.log | head -2
}
for c in 10 100 1000; do for b in 1 3 10; do
  run sqlite-saga-c$c-b$b --protocol saga --branches $b --concurrency $c
  run pg-saga-c$c-b$b --protocol saga --branches $b --concurrency $c --store postgres --connection-string "$(newdb)"
done; done
for p in tcc 2pc 3pc msg; do
  run sqlite-$p-c64-b3 --protocol $p --branches 3 --concurrency 64
  run pg-$p-c64-b3 --protocol $p --branches 3 --concurrency 64 --store postgres --connection-string "$(newdb)"
done
for r in 1 2; do
  run pg1-r$r --protocol saga --branches 3 --concurrency 64 --store postgres --connection-string "$(newdb)"
  run pg3-r$r --protocol saga --branches 3 --concurrency 64 --store postgres --connection-string "$(newdb)" --coordinators 3
  run sqlite-r$r --protocol saga --branches 3 --concurrency 64
done
echo done
