#!/bin/bash
# What a savepoint around every write costs Postgres: a transfer-like
# transaction (two locking reads, two updates, an insert) with and without
# `SAVEPOINT sinew_op` / `RELEASE` around each write, run by pgbench at 16
# clients on a throwaway cluster; prints the transactions per second and
# the CPU of all Postgres processes per transaction (from /proc, sampled
# over the middle 6 s of each 9 s run). Needs PostgreSQL's server binaries
# and pgbench (Debian: postgresql, postgresql-contrib).
#   bash bench/pg_savepoints.sh [rounds]
set -euo pipefail
rounds=${1:-3}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 1; }
dir=$(mktemp -d)
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); chown postgres "$dir"; fi
"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -o "-k $dir -p 55439 -c listen_addresses=''" -l "$dir/log" start >/dev/null
trap '"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" stop -m fast >/dev/null; rm -rf "$dir"' EXIT
sleep 1
psql=(psql -h "$dir" -p 55439 -U postgres -qX)
"${psql[@]}" -c "CREATE TABLE acct (id int PRIMARY KEY, bal bigint, version int);
  INSERT INTO acct SELECT g, 1000000, 1 FROM generate_series(1, 1000) g;
  CREATE TABLE xfer (id bigserial PRIMARY KEY, a int, b int, amt bigint, note text);"
head='\set a random(1, 1000)
\set b random(1, 1000)
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT * FROM acct WHERE id = :a FOR UPDATE;
SELECT * FROM acct WHERE id = :b FOR UPDATE;'
writes=('UPDATE acct SET bal = bal - 1, version = version + 1 WHERE id = :a;'
  'UPDATE acct SET bal = bal + 1, version = version + 1 WHERE id = :b;'
  "INSERT INTO xfer (a, b, amt, note) VALUES (:a, :b, 1, 'x');")
{ echo "$head"; printf '%s\n' "${writes[@]}"; echo 'COMMIT;'; } >"$dir/plain.sql"
{ echo "$head"; for w in "${writes[@]}"; do printf 'SAVEPOINT sinew_op;\n%s\nRELEASE SAVEPOINT sinew_op;\n' "$w"; done; echo 'COMMIT;'; } >"$dir/savepoints.sql"
chmod a+r "$dir"/*.sql
# This cluster's processes: the postmaster and its children.
cpu() { local s=0 a b pm; pm=$(head -1 "$dir/data/postmaster.pid")
  for p in "$pm" $(pgrep -P "$pm" || true); do
  read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0"); s=$((s + a + b)); done; echo "$s"; }
hz=$(getconf CLK_TCK)
for _ in $(seq 1 "$rounds"); do
  for script in plain savepoints; do
    pgbench -h "$dir" -p 55439 -U postgres -n -M prepared -c 16 -j 2 -T 9 -P 1 -f "$dir/$script.sql" postgres >"$dir/out" 2>&1 &
    sleep 2; c0=$(cpu); sleep 6; c1=$(cpu); wait
    tps=$(awk '/^progress: [3-8]\.0 s/ {s += $4; n++} END {printf "%.0f", s / n}' "$dir/out")
    awk -v s="$script" -v t="$tps" -v c=$((c1 - c0)) -v hz="$hz" \
      'BEGIN {printf "%-10s %6d tx/s  %4.0f µs of Postgres CPU per transaction\n", s, t, c / hz / 6 / t * 1e6}'
  done
done
