#!/usr/bin/env bash
# Cost of --metrics-addr (issue 14): jobs/s of the built-in echo (daemon
# mode, concurrency 4) with metrics off and on, in one run against one
# private gearmand, alternating off/on ROUNDS times; /metrics is scraped
# every second during the "on" runs, as Prometheus would.
#
# Usage: gearman-worker/bench/metrics.sh [JOBS] [ROUNDS]   (defaults 20000, 3)
# Env:   CLIENTS (4), WINDOW (16), PAYLOAD (64)
# Prints a Markdown table; also appends it to gearman-worker/bench/RESULTS.md.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
JOBS="${1:-20000}"
ROUNDS="${2:-3}"
CLIENTS="${CLIENTS:-4}"
WINDOW="${WINDOW:-16}"
PAYLOAD="${PAYLOAD:-64}"
target="$(bash "$root/scripts/target-dir")"
GEARMAND=/usr/sbin/gearmand
[ -x "$GEARMAND" ] || {
  echo "bench: $GEARMAND missing: install gearman-job-server (scripts/setup)" >&2; exit 1; }
command -v gearadmin >/dev/null || {
  echo "bench: gearadmin missing: install gearman-tools (scripts/setup)" >&2; exit 1; }

(cd "$root" && cargo build --release -q -p gearman-worker --bin gearman-worker --example bench_client)
GW="$target/release/gearman-worker"
CLIENT="$target/release/examples/bench_client"

tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

port="$(freeport)"
"$GEARMAND" --listen=127.0.0.1 --port="$port" --log-file="$tmp/gearmand.log" --verbose=ERROR \
  >/dev/null 2>&1 &
pids+=("$!")
for _ in $(seq 100); do
  gearadmin -h 127.0.0.1 -p "$port" --getpid >/dev/null 2>&1 && break; sleep 0.05
done
addr="127.0.0.1:$port"

registered() { # FUNCTION N
  for _ in $(seq 200); do
    n="$(gearadmin -h 127.0.0.1 -p "$port" --status | awk -v f="$1" '$1==f {print $4}')"
    [ "${n:-0}" -ge "$2" ] && return 0; sleep 0.05
  done
  echo "bench: workers for $1 did not register" >&2; return 1
}

measure() { # MODE(off|on) ROUND -> prints jobs/s
  local mode="$1" round="$2" fn="echo_m_$1_$2" extra=() scraper=""
  cat >"$tmp/$fn.toml" <<TOML
servers = ["$addr"]
log_level = "warn"
[function.$fn]
builtin = "echo"
concurrency = 4
TOML
  if [ "$mode" = on ]; then
    local mport; mport="$(freeport)"
    extra=(--metrics-addr "127.0.0.1:$mport")
  fi
  "$GW" --config "$tmp/$fn.toml" "${extra[@]}" >"$tmp/$fn.log" 2>&1 &
  local wpid=$!; pids+=("$wpid")
  registered "$fn" 4
  if [ "$mode" = on ]; then
    ( while sleep 1; do curl -s "http://127.0.0.1:$mport/metrics" >/dev/null || true; done ) &
    scraper=$!; pids+=("$scraper")
  fi
  "$CLIENT" "$addr" "$fn" $(( JOBS / 10 + 1 )) "$CLIENTS" "$WINDOW" "$PAYLOAD" >/dev/null  # warm-up
  local out; out="$("$CLIENT" "$addr" "$fn" "$JOBS" "$CLIENTS" "$WINDOW" "$PAYLOAD")"
  [ -n "$scraper" ] && { kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; }
  kill "$wpid" 2>/dev/null || true; wait "$wpid" 2>/dev/null || true
  echo "${out##*jobs_per_sec=}"
}

off=(); on=()
for r in $(seq "$ROUNDS"); do
  off+=("$(measure off "$r")"); echo "bench: round $r metrics off ${off[-1]} jobs/s" >&2
  on+=("$(measure on "$r")"); echo "bench: round $r metrics on  ${on[-1]} jobs/s" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
moff="$(median "${off[@]}")"; mon="$(median "${on[@]}")"
{
  echo
  echo "## metrics on/off, $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores, $(uname -r)"
  echo
  echo "Command: \`gearman-worker/bench/metrics.sh $JOBS $ROUNDS\` (builtin echo, concurrency 4, CLIENTS=$CLIENTS WINDOW=$WINDOW PAYLOAD=$PAYLOAD bytes, release build; /metrics scraped every second while on)"
  echo
  echo "| metrics | runs (jobs/s) | median jobs/s | vs off |"
  echo "|---|---|---:|---:|"
  echo "| off | ${off[*]} | $moff | 100% |"
  echo "| on (\`--metrics-addr\`) | ${on[*]} | $mon | $(awk -v a="$mon" -v b="$moff" 'BEGIN { printf "%.1f%%", 100*a/b }') |"
} | tee -a "$here/RESULTS.md"
