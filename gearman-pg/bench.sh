#!/usr/bin/env bash
# Benchmark of the PostgreSQL extension (issue 4): installs the release build
# of the extension into the system PostgreSQL 15 (needs root), then runs
# examples/bench.rs against a private gearmand and PostgreSQL. Prints figures;
# asserts nothing. Extra arguments go to the benchmark, e.g.
#   gearman-pg/bench.sh --jobs 100000 --calls 1000000
set -euo pipefail
cd "$(dirname "$0")"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config >/dev/null
cargo run -q --release --example bench -- "$@"
