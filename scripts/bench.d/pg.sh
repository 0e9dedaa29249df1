#!/usr/bin/env bash
# The PostgreSQL extension (issues 4 and 7): installs the release build into
# the system PostgreSQL 15 (root), then the 100,000-row statement in immediate
# and commit modes, trigger INSERTs, gman_do and gman_do_many, next to the
# core client's rates.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash gearman-pg/bench.sh
