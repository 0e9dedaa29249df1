#!/usr/bin/env bash
# TLS to the job servers (issue 13): the same dispatch through a private
# stunnel4 in front of a private gearmand and in plaintext to that gearmand,
# side by side in one run: core one-round-trip and pipelined submission, the
# MariaDB bulk statement and foreground gman_do. The TLS figures include the
# terminator's own hop. (The PostgreSQL figures need the extension built from
# this branch installed: gearman-pg/bench.sh, not part of this script.)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench -q -p gearman-mysql --bench tls
