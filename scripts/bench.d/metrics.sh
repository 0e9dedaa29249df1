#!/usr/bin/env bash
# gearman-worker with --metrics-addr on vs off (issue 14): echo jobs/s.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash gearman-worker/bench/metrics.sh "${METRICS_JOBS:-20000}" "${METRICS_ROUNDS:-3}"
