#!/bin/bash
# What recording an outbox message costs Postgres, counted in instructions
# (callgrind, so the machine's noise does not count): a transfer-like
# transaction (two locking reads, two updates, the audit queue's insert,
# COMMIT) run N times by a procedure in a single-user backend, without a
# message, with the `sinew_outbox` row of sinew before `sinew_messages`
# (key, sequence, seven columns), and with the `sinew_messages` row. Prints
# the backend's instructions per transaction (the difference of a run of
# 900 and one of 300). Needs PostgreSQL's server binaries and valgrind.
#   bash bench/pg_outbox_row.sh
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); chown postgres "$dir"; fi
"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
msg='{"args":{"amount":1,"from":"0a1b2c3d-1111-4000-8000-00000000a001","to":"0a1b2c3d-1111-4000-8000-00000000b002"},"createdAt":"2026-12-06T16:00:00.123Z","execution":"5d8e3c1a-4b2f-4e8a-9c1d-0f2e3d4c5b6a","id":"7f3e2d1c-0b9a-4876-a543-210fedcba987","idempotencyKey":"7f3e2d1c-0b9a-4876-a543-210fedcba987","node":"note","operation":"send","service":"notify","tool":"transfer_notified"}'
proc() { # name, the message's statement
  cat <<SQL
CREATE PROCEDURE run_$1(n int) LANGUAGE plpgsql AS \$\$
DECLARE a int; b int; r record;
BEGIN
  FOR i IN 1..n LOOP
    a := 1 + (i * 7) % 1000; b := 1 + (i * 13 + 5) % 1000;
    SELECT * INTO r FROM acct WHERE id = a FOR UPDATE;
    SELECT * INTO r FROM acct WHERE id = b FOR UPDATE;
    UPDATE acct SET bal = bal - 1, version = version + 1 WHERE id = a;
    UPDATE acct SET bal = bal + 1, version = version + 1 WHERE id = b;
    $2
    INSERT INTO q (execution, kind, entry, digest) VALUES ('5d8e3c1a', 'final', repeat(md5(i::text), 40), 'abcdef0123456789');
    COMMIT;
  END LOOP;
END \$\$;
SQL
}
{ cat <<SQL
CREATE TABLE acct (id int PRIMARY KEY, bal bigint, version int);
INSERT INTO acct SELECT g, 1000000, 1 FROM generate_series(1, 1000) g;
CREATE TABLE q (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, execution text, kind text, entry text COMPRESSION lz4, digest text);
CREATE TABLE old_outbox (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id uuid NOT NULL, execution text NOT NULL, tool text NOT NULL, node text NOT NULL, service text NOT NULL, operation text NOT NULL, message text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), attempts integer NOT NULL DEFAULT 0, next_attempt_at timestamptz NOT NULL DEFAULT now(), claimed_until timestamptz, delivered_at timestamptz, failed_at timestamptz, last_error text);
CREATE INDEX ON old_outbox (next_attempt_at) WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE TABLE messages (message text NOT NULL, attempts integer NOT NULL DEFAULT 0, next_attempt_at timestamptz NOT NULL DEFAULT now(), failed_at timestamptz, last_error text);
CREATE INDEX ON messages (next_attempt_at) WHERE failed_at IS NULL;
SQL
  proc none ""
  proc sinew_outbox "INSERT INTO old_outbox (id, execution, tool, node, service, operation, message) VALUES ('7f3e2d1c-0b9a-4876-a543-210fedcba987'::text::uuid, '5d8e3c1a', 'transfer_notified', 'note', 'notify', 'send', '$msg');"
  proc sinew_messages "INSERT INTO messages (message) VALUES ('$msg');"
} >"$dir/setup.sql"
chmod a+r "$dir/setup.sql"
"${as_pg[@]}" "$bin/postgres" --single -D "$dir/data" -j postgres <"$dir/setup.sql" >"$dir/setup.log" 2>&1
base=0
for v in none sinew_outbox sinew_messages; do
  for k in 300 900; do
    echo "CALL run_$v($k);" >"$dir/in.sql"; chmod a+r "$dir/in.sql"
    "${as_pg[@]}" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin/postgres" --single -D "$dir/data" postgres <"$dir/in.sql" >"$dir/out.$k" 2>&1 || true
    grep -o "Collected : [0-9]*" "$dir/out.$k" | awk '{print $3}' >"$dir/c.$k"
  done
  per=$(( ($(cat "$dir/c.900") - $(cat "$dir/c.300")) / 600 ))
  [ "$v" = none ] && base=$per
  printf '%-16s %8d instructions per transaction (%+d for the message)\n' "$v" "$per" $((per - base))
done
