#!/usr/bin/env bash
# TLS to the job servers (issue 13): the same dispatch through a private
# stunnel4 in front of a private gearmand and in plaintext to that gearmand,
# side by side in one run: core one-round-trip and pipelined submission, the
# MariaDB bulk statement and foreground gman_do. The TLS figures include the
# terminator's own hop. (The PostgreSQL figures need the extension built from
# this branch installed: the script installs it, as scripts/bench.d/pg.sh does.)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench -q -p gearman-mysql --bench tls
# PostgreSQL (needs root: installs the release build of the extension into
# the system PostgreSQL 15, as scripts/bench.d/pg.sh does).
(cd gearman-pg &&
  cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config >/dev/null &&
  cargo run -q --release --example bench_tls)
