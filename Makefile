# Every target runs scripts/setup first: on a fresh Debian 12 machine with
# Rust, `make test` installs what it needs (as root, idempotent) and runs
# every test tier.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: setup demo test package fmt-check clippy bench

setup:
	bash scripts/setup

# The main job: the cookbook recipes end to end from SQL (release build).
demo: setup
	bash scripts/demo

# All tiers: (1) unit, (2) core and tools against a private gearmand,
# (3) database faces inside private PostgreSQL 15 and MariaDB, (4) the
# PostgreSQL tier again on 18, (5) the Debian packages on the system servers.
test: setup
	bash scripts/test

# Debian packages (release) into target/debian/: postgresql-15-gearman,
# postgresql-18-gearman, gearman-mysql-udf, gearman-worker.
package: setup
	bash scripts/package

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: setup
	bash scripts/bench
