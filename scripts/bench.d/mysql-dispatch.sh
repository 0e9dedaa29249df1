#!/usr/bin/env bash
# Pipelined dispatch through the MariaDB library's one sender thread (issue
# 15): 8 sessions of trigger INSERTs vs the same trigger doing SET @ret =
# CONCAT(...) without dispatching, and gearmand's CPU per job.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench -q -p gearman-mysql --bench dispatch -- "$@"
