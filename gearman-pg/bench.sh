#!/usr/bin/env bash
# Benchmark of the PostgreSQL extension (issue 4): installs the release build
# of the extension into the system PostgreSQL 15 (needs root; or into the
# installation whose bin directory GEARMAN_TEST_PG_BINDIR names), then runs
# examples/bench.rs against a private gearmand and PostgreSQL. Prints figures;
# asserts nothing. Extra arguments go to the benchmark, e.g.
#   gearman-pg/bench.sh --jobs 100000 --calls 1000000
set -euo pipefail
cd "$(dirname "$0")"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
PG_BINDIR=${GEARMAN_TEST_PG_BINDIR:-/usr/lib/postgresql/15/bin}
cargo pgrx install --release --pg-config "$PG_BINDIR/pg_config" >/dev/null
GEARMAN_TEST_PG_BINDIR=$PG_BINDIR cargo run -q --release --example bench -- "$@"
