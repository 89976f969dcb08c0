#!/bin/bash
# The servers' own cost per request at one client: runs sinew-bench at one
# client and counts, for each bank server, its CPU (user + kernel), system
# calls, context switches and page faults with `perf stat`, divided by the
# requests it answered (warm-up included). Every sinew-bench run prints
# each server's CPU per answer (and Postgres's, and its write-ahead log)
# by itself (bench/src/cpu.rs); this script adds what only perf counts.
#   bash bench/host_cost.sh            (after cargo build --release -p sinew-bench)
# Needs perf with tracepoints (kernel.perf_event_paranoid <= 2 for your own
# processes). Prints one line per server.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sinew-bench
seconds=${SECONDS_MEASURED:-6}
warmup=1
out=$(mktemp -d)
"$bin" --concurrency 1 --rounds 1 --seconds "$seconds" --warmup "$warmup" --cold-runs 1 >"$out/bench" 2>&1 &
bench=$!
for _ in $(seq 1 600); do
  [ "$(pgrep -fc 'sinew-bench (serve|baseline) .*bank' || true)" -ge 3 ] && break
  sleep 0.2
done
sleep 0.5
declare -A name
for p in $(pgrep -f 'sinew-bench (serve|baseline) .*bank'); do
  cmd=$(tr '\0' ' ' </proc/"$p"/cmdline)
  case "$cmd" in
    *baseline*) name[$p]=C ;;
    *--native*) name[$p]=B ;;
    *) name[$p]=A ;;
  esac
  perf stat -x, -e task-clock,context-switches,page-faults,raw_syscalls:sys_enter -p "$p" -o "$out/perf.${name[$p]}" &
done
wait "$bench"
sleep 1
grep -E '^round .* (transfer|history) ' "$out/bench"
for e in A B C; do
  # requests answered: the measured rate times measured + warm-up seconds, both tools
  reqs=$(awk -v e="$e" -v t="$((seconds + warmup))" '$1=="round" && $3==e && ($5=="transfer" || $5=="history") {for(i=1;i<=NF;i++) if($(i)=="req/s") s+=$(i-1)*t} END{printf "%d", s}' "$out/bench")
  awk -F, -v e="$e" -v n="$reqs" '
    $3=="task-clock" {cpu=$1}
    $3=="context-switches" {cs=$1}
    $3=="page-faults" {pf=$1}
    $3=="raw_syscalls:sys_enter" {sc=$1}
    END {printf "%s: %d requests, %.3f ms CPU, %.1f syscalls, %.1f context switches, %.2f page faults per request\n", e, n, cpu/n, sc/n, cs/n, pf/n}' "$out/perf.$e"
done
rm -rf "$out"
