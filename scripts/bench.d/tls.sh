#!/usr/bin/env bash
# TLS to the job servers (issue 13): the same dispatch through a private
# stunnel4 in front of a private gearmand and in plaintext to that gearmand,
# side by side in one run: core one-round-trip and pipelined submission, the
# MariaDB bulk statement and foreground gman_do. The TLS figures include the
# terminator's own hop. (The PostgreSQL figures need the extension built from
# this branch installed: the script installs it, as scripts/bench.d/pg.sh does.)
# PostgreSQL 15 by default; GEARMAN_TEST_PG_BINDIR=/opt/postgresql-18/bin
# installs into and runs that installation instead (the testkit honours it).
# TLS_BENCH=pg (or mysql) runs only that part.
set -euo pipefail
cd "$(dirname "$0")/../.."
PG_BINDIR=${GEARMAN_TEST_PG_BINDIR:-/usr/lib/postgresql/15/bin}
if [ "${TLS_BENCH:-all}" != pg ]; then
  cargo bench -q -p gearman-mysql --bench tls
fi
# PostgreSQL (needs root: installs the release build of the extension into
# that PostgreSQL's directories, as scripts/bench.d/pg.sh does).
if [ "${TLS_BENCH:-all}" != mysql ]; then
  (cd gearman-pg &&
    cargo pgrx install --release --pg-config "$PG_BINDIR/pg_config" >/dev/null &&
    GEARMAN_TEST_PG_BINDIR=$PG_BINDIR cargo run -q --release --example bench_tls -- "$@")
fi
