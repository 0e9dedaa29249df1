#!/usr/bin/env bash
# Background dispatch from PostgreSQL triggers (issue 15), side by side in
# one run: 8 concurrent sessions of single-row INSERTs into a plain table, a
# no-op PL/pgSQL trigger, the gman_do_background trigger in commit and
# immediate dispatch, and the commit trigger on a second cluster with
# shared_preload_libraries = gearman; gearmand's CPU per job and its
# connections; one session's overhead per INSERT; 50,000 jobs in one
# statement against the raw pipelined ceiling; gman_do and immediate
# dispatch with and without the preload (gearman-pg/examples/bench_dispatch.rs).
# Installs the release build of the extension first (root): into PostgreSQL
# 15 by default, or into the installation GEARMAN_TEST_PG_BINDIR names
# (e.g. /opt/postgresql-18/bin), which the benchmark then runs.
# Extra arguments go to the benchmark, e.g. --sessions 8 --rows 2000
# --single 5000 --bulk 50000 --calls 10000 --rounds 1.
set -euo pipefail
cd "$(dirname "$0")/../../gearman-pg"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
PG_BINDIR=${GEARMAN_TEST_PG_BINDIR:-/usr/lib/postgresql/15/bin}
cargo pgrx install --release --pg-config "$PG_BINDIR/pg_config" >/dev/null
GEARMAN_TEST_PG_BINDIR=$PG_BINDIR cargo run -q --release --example bench_dispatch -- "$@"
