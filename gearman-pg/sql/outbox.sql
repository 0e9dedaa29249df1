-- gearman.dispatch = 'outbox': one row per background job, written inside the
-- caller's transaction. The companion worker's relay (gearman-worker relay)
-- sends each row with its unique key and deletes it after JOB_CREATED, so a
-- row sent twice after a relay crash coalesces with the queued job.
-- pg_notify('gearman_outbox', function) announces new rows at commit.
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
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE gearman.outbox IS
    'Background jobs waiting for the relay (gearman.dispatch = outbox); run_at set = scheduled job (SUBMIT_JOB_EPOCH)';

-- Callers of gman_do_background in outbox mode insert with their own rights.
GRANT USAGE ON SCHEMA gearman TO PUBLIC;
GRANT INSERT ON gearman.outbox TO PUBLIC;
GRANT USAGE ON SEQUENCE gearman.outbox_id_seq TO PUBLIC;

-- Keep queued rows in pg_dump output.
SELECT pg_catalog.pg_extension_config_dump('gearman.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('gearman.outbox_id_seq', '');
