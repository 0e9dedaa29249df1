#!/usr/bin/env bash
# Relay drain rate (issue 7): `gearman-worker relay` emptying 100,000 committed
# outbox rows (PostgreSQL, then MariaDB) into a private gearmand, next to the
# core's pipelined submission of the same number of jobs.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p gearman-worker --bin gearman-worker --example relay_bench
"$(bash scripts/target-dir)/release/examples/relay_bench" "${RELAY_ROWS:-100000}" "${RELAY_BATCH:-1000}"
