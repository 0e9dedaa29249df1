-- gearman.dispatch = 'outbox': one row per background job, written inside the
-- caller's transaction. The companion worker's relay (gearman-worker relay)
-- sends each row with its unique key and deletes it after JOB_CREATED, so a
-- row sent twice after a relay crash coalesces with the queued job.
-- pg_notify('gearman_outbox', function) announces new rows at commit.
--
-- Who may write the outbox is the owner's decision: PUBLIC gets no INSERT.
-- gman_do_background under gearman.dispatch = 'outbox' inserts with the
-- caller's rights, so grant the roles that queue jobs that way (or insert
-- directly) the columns they write, e.g. through a group role:
--   CREATE ROLE gearman_writer NOLOGIN;
--   GRANT INSERT (function, workload, unique_key, priority, run_at)
--     ON gearman.outbox TO gearman_writer;
--   GRANT USAGE ON SEQUENCE gearman.outbox_id_seq TO gearman_writer;
--   GRANT gearman_writer TO app;
-- Without it the call fails with "permission denied for table outbox". The
-- relay's role needs SELECT, UPDATE and DELETE on gearman.outbox.
--
-- Rows the relay cannot send are set aside, never retried for ever:
--   attempts    times the job servers answered the row with ERROR (e.g.
--               QUEUE_ERROR: the function's queue is full); a lost
--               connection or a timeout is not counted and retried
--   last_error  why the row was last refused, or cannot be sent at all (a
--               unique key over 63 bytes, an invalid function name)
--   failed_at   set when the row was set aside: at once for a row that
--               cannot be sent, after `gearman-worker relay --max-attempts`
--               (default 3) ERROR answers otherwise. The relay skips such
--               rows; they never hold up the rows behind them.
-- To send set-aside rows again:
--   UPDATE gearman.outbox SET failed_at = NULL, attempts = 0, last_error = NULL
--    WHERE failed_at IS NOT NULL AND ...;
CREATE SCHEMA gearman;
COMMENT ON SCHEMA gearman IS 'Objects of the gearman extension (the outbox table)';

CREATE TABLE gearman.outbox (
    id          bigserial PRIMARY KEY,
    function    text        NOT NULL,
    workload    bytea       NOT NULL,
    unique_key  text,
    priority    text        NOT NULL DEFAULT 'normal'
                CHECK (priority IN ('high', 'normal', 'low')),
    run_at      timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    attempts    integer     NOT NULL DEFAULT 0,
    last_error  text,
    failed_at   timestamptz
);
COMMENT ON TABLE gearman.outbox IS
    'Background jobs waiting for the relay (gearman.dispatch = outbox); run_at set = scheduled job (SUBMIT_JOB_EPOCH); failed_at set = set aside by the relay (last_error says why)';
-- The relay reads the rows still to send in id order.
CREATE INDEX outbox_pending ON gearman.outbox (id) WHERE failed_at IS NULL;

-- Lets roles see the schema; writing the table needs a GRANT (see above).
GRANT USAGE ON SCHEMA gearman TO PUBLIC;

-- Keep queued rows in pg_dump output.
SELECT pg_catalog.pg_extension_config_dump('gearman.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('gearman.outbox_id_seq', '');
