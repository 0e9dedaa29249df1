#!/usr/bin/env bash
# Worker throughput benchmark (issue 5): jobs per second served, one run, one
# private gearmand, for
#   - gearman-worker daemon mode, `echo` built-in, concurrency 1 and 4
#   - the core's raw worker loop (examples/raw_echo_worker.rs), 1 and 4
#   - Debian's `gearman -w -f NAME -- cat` (a process per job)
#   - gearman-worker quick mode `-- cat` (a process per job), for comparison
# Load: examples/bench_client.rs (foreground jobs, CLIENTS threads, WINDOW in
# flight each, every result checked).
#
# Usage: gearman-worker/bench/run.sh [JOBS] [EXEC_JOBS]   (defaults 20000, 2000)
# Env:   CARGO_TARGET_DIR (default target; relative to the workspace root), CLIENTS (4), WINDOW (16), PAYLOAD (64)
# Prints a Markdown table; also appends it to gearman-worker/bench/RESULTS.md.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
JOBS="${1:-20000}"
EXEC_JOBS="${2:-2000}"
CLIENTS="${CLIENTS:-4}"
WINDOW="${WINDOW:-16}"
PAYLOAD="${PAYLOAD:-64}"
target="$(bash "$root/scripts/target-dir")"

# The C job server by absolute path: Debian's gearman-server (the Perl job
# server) installs another gearmand as /usr/bin/gearmand.
GEARMAND=/usr/sbin/gearmand
[ -x "$GEARMAND" ] || {
  echo "bench: $GEARMAND missing: install gearman-job-server (scripts/setup)" >&2; exit 1; }
for b in gearman gearadmin; do
  command -v "$b" >/dev/null || {
    echo "bench: $b missing: install gearman-tools (scripts/setup)" >&2; exit 1; }
done

(cd "$root" && cargo build --release -q -p gearman-worker --bin gearman-worker \
   --example raw_echo_worker --example bench_client)
GW="$target/release/gearman-worker"
RAW="$target/release/examples/raw_echo_worker"
CLIENT="$target/release/examples/bench_client"

tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$GEARMAND" --listen=127.0.0.1 --port="$port" --log-file="$tmp/gearmand.log" --verbose=ERROR \
  >/dev/null 2>&1 &
gpid=$!; pids+=("$gpid")
for _ in $(seq 100); do
  gearadmin -h 127.0.0.1 -p "$port" --getpid >/dev/null 2>&1 && break; sleep 0.05
done
addr="127.0.0.1:$port"

registered() { # FUNCTION N: wait until N workers are registered
  for _ in $(seq 200); do
    n="$(gearadmin -h 127.0.0.1 -p "$port" --status | awk -v f="$1" '$1==f {print $4}')"
    [ "${n:-0}" -ge "$2" ] && return 0; sleep 0.05
  done
  echo "bench: workers for $1 did not register" >&2; return 1
}

results=()
measure() { # LABEL FUNCTION CONCURRENCY JOBS COMMAND...
  local label="$1" fn="$2" conc="$3" jobs="$4"; shift 4
  "$@" >"$tmp/$fn.log" 2>&1 &
  local wpid=$!; pids+=("$wpid")
  registered "$fn" "$conc"
  "$CLIENT" "$addr" "$fn" $(( jobs / 10 + 1 )) "$CLIENTS" "$WINDOW" "$PAYLOAD" >/dev/null  # warm-up
  local out; out="$("$CLIENT" "$addr" "$fn" "$jobs" "$CLIENTS" "$WINDOW" "$PAYLOAD")"
  kill "$wpid" 2>/dev/null || true; wait "$wpid" 2>/dev/null || true
  local jps="${out##*jobs_per_sec=}"
  results+=("$label|$conc|$jobs|$jps")
  printf 'bench: %-48s %8s jobs/s\n' "$label (concurrency $conc)" "$jps" >&2
}

cat >"$tmp/gw1.toml" <<TOML
servers = ["$addr"]
log_level = "warn"
[function.echo_gw1]
builtin = "echo"
concurrency = 1
TOML
sed -e 's/echo_gw1/echo_gw4/' -e 's/concurrency = 1/concurrency = 4/' "$tmp/gw1.toml" >"$tmp/gw4.toml"

measure "core raw worker loop (examples/raw_echo_worker)" echo_raw1 1 "$JOBS" "$RAW" "$addr" echo_raw1 1
measure "gearman-worker --config, builtin echo" echo_gw1 1 "$JOBS" "$GW" --config "$tmp/gw1.toml"
measure "core raw worker loop (examples/raw_echo_worker)" echo_raw4 4 "$JOBS" "$RAW" "$addr" echo_raw4 4
measure "gearman-worker --config, builtin echo" echo_gw4 4 "$JOBS" "$GW" --config "$tmp/gw4.toml"
measure "Debian gearman -w -f NAME -- cat" echo_deb 1 "$EXEC_JOBS" gearman -w -h 127.0.0.1 -p "$port" -f echo_deb -- cat
measure "gearman-worker quick mode -- cat" echo_gwcat 1 "$EXEC_JOBS" "$GW" -s "$addr" -f echo_gwcat --log-level warn -- cat

raw1="$(printf '%s\n' "${results[@]}" | awk -F'|' '$1 ~ /raw/ && $2==1 {print $4}')"
raw4="$(printf '%s\n' "${results[@]}" | awk -F'|' '$1 ~ /raw/ && $2==4 {print $4}')"
{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores, $(uname -r)"
  echo
  echo "Command: \`gearman-worker/bench/run.sh $JOBS $EXEC_JOBS\` (CLIENTS=$CLIENTS WINDOW=$WINDOW PAYLOAD=$PAYLOAD bytes; gearmand $("$GEARMAND" --version 2>/dev/null | awk "NF {print \$2; exit}"), release build)"
  echo
  echo "| worker | concurrency | jobs | jobs/s | vs raw loop |"
  echo "|---|---:|---:|---:|---:|"
  for r in "${results[@]}"; do
    IFS='|' read -r label conc jobs jps <<<"$r"
    base="$raw1"; [ "$conc" = 4 ] && base="$raw4"
    ratio="$(awk -v a="$jps" -v b="$base" 'BEGIN { if (b > 0) printf "%.0f%%", 100*a/b; else print "-" }')"
    echo "| $label | $conc | $jobs | $jps | $ratio |"
  done
} | tee -a "$here/RESULTS.md"
