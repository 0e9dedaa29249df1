-- Upgrade of the gearman extension from 0.2.0 to 0.3.0
-- (ALTER EXTENSION gearman UPDATE, run by PostgreSQL inside one transaction;
-- gearman.so is already the 0.3.0 library when this runs). The rule and its
-- check are those of gearman--0.1.0--0.2.0.sql: the result must equal a
-- fresh CREATE EXTENSION gearman of 0.3.0 (gearman-worker/tests/pg_upgrade.rs).
--
-- 0.2.0 -> 0.3.0: the dispatcher background worker (issue 15).

-- gman_dispatch_status() also reports this backend's jobs handed to the
-- dispatcher and the dispatcher's cluster-wide counters: the result type
-- changes (columns added after the four of 0.2.0), so drop and create.
DROP FUNCTION gman_dispatch_status();
CREATE FUNCTION "gman_dispatch_status"() RETURNS TABLE (
	"sent" bigint,
	"confirmed" bigint,
	"failed" bigint,
	"pending" bigint,
	"handed_off" bigint,
	"dispatcher" TEXT,
	"dispatcher_pid" INT,
	"dispatcher_starts" bigint,
	"cluster_handed_off" bigint,
	"cluster_sent" bigint,
	"cluster_confirmed" bigint,
	"cluster_refused" bigint,
	"cluster_unknown" bigint,
	"cluster_unsent" bigint,
	"cluster_lost" bigint,
	"cluster_queued" bigint,
	"cluster_queued_bytes" bigint,
	"cluster_oldest_ms" bigint,
	"cluster_full_waits" bigint,
	"cluster_full_timeouts" bigint,
	"servers_down" TEXT
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'gman_dispatch_status_wrapper';
