#!/usr/bin/env bash
# gearman-worker throughput (issue 5): the echo built-in at concurrency 1 and
# 4, next to the core's raw worker loop and Debian's `gearman -w -- cat`.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash gearman-worker/bench/run.sh "${WORKER_JOBS:-20000}" "${WORKER_EXEC_JOBS:-2000}"
