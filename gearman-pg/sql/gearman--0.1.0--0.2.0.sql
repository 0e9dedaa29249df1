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
