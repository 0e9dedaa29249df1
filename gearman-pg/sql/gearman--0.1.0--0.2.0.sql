-- Upgrade of the gearman extension from 0.1.0 to 0.2.0
-- (ALTER EXTENSION gearman UPDATE, run by PostgreSQL inside one transaction;
-- gearman.so is already the 0.2.0 library when this runs).
--
-- Rule: after `CREATE EXTENSION gearman VERSION '0.1.0'` and this script,
-- the catalog must equal a fresh `CREATE EXTENSION gearman` of 0.2.0. The
-- test gearman-worker/tests/pg_upgrade.rs checks exactly that (functions
-- with argument and result types and properties, tables, columns in order,
-- constraints, grants, comments, the extension's member objects) and lists
-- every difference. Objects that users' objects may depend on (the
-- functions behind triggers and views, gearman.outbox with its rows) are
-- changed in place: CREATE OR REPLACE, ALTER TABLE ... ADD COLUMN (new
-- columns go last, also in sql/outbox.sql, so fresh installs have the same
-- column order). A function whose result type changes must be dropped and
-- created again (ALTER EXTENSION ... DROP FUNCTION is not needed: DROP
-- FUNCTION inside the script removes its membership).
--
-- 0.1.0 -> 0.2.0: the changes below, each with its reason.

-- gman_servers_set returns boolean (true), as pggearman's did, so that
-- `IF gman_servers_set(...) THEN` runs unchanged (issue 10 item 14): the
-- result type changes, so drop and create.
DROP FUNCTION gman_servers_set(text);
DROP FUNCTION gman_servers_set(text, text);
CREATE FUNCTION "gman_servers_set"(
	"servers" TEXT
) RETURNS bool
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'gman_servers_set_wrapper';
CREATE FUNCTION "gman_servers_set"(
	"servers" TEXT,
	"function" TEXT
) RETURNS bool
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'gman_servers_set_function_wrapper';

-- gman_trigger() first checks that it is called as a trigger (SQLSTATE
-- 39P01 with a hint otherwise, issue 10 item 7): same function, another C
-- symbol; replaced in place (triggers depend on it).
CREATE OR REPLACE FUNCTION "gman_trigger"()
	RETURNS TRIGGER
	LANGUAGE c VOLATILE PARALLEL UNSAFE
	AS 'MODULE_PATHNAME', 'gman_trigger_checked';

-- gearman.outbox (issue 10 item 12; the table's definition is in
-- sql/outbox.sql). Rows the relay cannot send are set aside with their error
-- instead of being retried for ever: three columns, added last (the fresh
-- table has them last too), and an index over the rows still to send. Who
-- may write the outbox is the owner's decision: PUBLIC loses INSERT and the
-- sequence's USAGE (the header of sql/outbox.sql documents the GRANT).
ALTER TABLE gearman.outbox
    ADD COLUMN attempts   integer     NOT NULL DEFAULT 0,
    ADD COLUMN last_error text,
    ADD COLUMN failed_at  timestamptz;
COMMENT ON TABLE gearman.outbox IS
    'Background jobs waiting for the relay (gearman.dispatch = outbox); run_at set = scheduled job (SUBMIT_JOB_EPOCH); failed_at set = set aside by the relay (last_error says why)';
CREATE INDEX outbox_pending ON gearman.outbox (id) WHERE failed_at IS NULL;
REVOKE INSERT ON gearman.outbox FROM PUBLIC;
REVOKE USAGE ON SEQUENCE gearman.outbox_id_seq FROM PUBLIC;

-- gearman.dead_letter (issue 14): the worker's dead-letter table, now part of
-- the extension (definition and rights in sql/dead_letter.sql).
CREATE TABLE gearman.dead_letter (
    id               bigserial   PRIMARY KEY,
    function         text        NOT NULL,
    unique_key       bytea,
    workload         bytea       NOT NULL,
    last_error       text        NOT NULL,
    attempts         integer     NOT NULL,
    first_failed_at  timestamptz NOT NULL,
    last_failed_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE gearman.dead_letter IS
    'Jobs that failed on their last attempt in gearman-worker; replay with gearman-worker dead-letter replay';
