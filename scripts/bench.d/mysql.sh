#!/usr/bin/env bash
# The MariaDB UDFs (issues 3 and 7): the 100,000-row SELECT, 10,000 trigger
# INSERTs and foreground calls, next to the core client's rates.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench -q -p gearman-mysql --bench mysql
