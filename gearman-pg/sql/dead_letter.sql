-- gearman.dead_letter: background jobs that gearman-worker gave up on after
-- their last attempt (a function's `retries` plus one), written by a worker
-- whose function says `dead_letter = "postgres://..."` pointing at this
-- database. `gearman-worker dead-letter list|replay|purge --postgres URL`
-- reads, resubmits (deleting a row only after the job server confirmed it)
-- and deletes rows. The same table, for a database without this extension,
-- is created by sql/postgres/dead_letter.sql (run that file only where the
-- extension is not installed: CREATE EXTENSION refuses a gearman.dead_letter
-- it did not create).
--
-- Columns:
--   id               row id (replay and purge select by it)
--   function         Gearman function name
--   unique_key       the job's unique key, bytes as received (NULL: none)
--   workload         the original workload, byte for byte
--   last_error       the last attempt's failure message
--   attempts         attempts made (retries + 1)
--   first_failed_at  when the first attempt failed
--   last_failed_at   when the last attempt failed
--
-- Rights: PUBLIC gets none (failed workloads are application data). Grant the
-- worker's role INSERT and the sequence's USAGE, and the operators' role
-- SELECT and DELETE, e.g.
--   GRANT INSERT ON gearman.dead_letter TO gearman_worker;
--   GRANT USAGE ON SEQUENCE gearman.dead_letter_id_seq TO gearman_worker;
--   GRANT SELECT, DELETE ON gearman.dead_letter TO gearman_ops;
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
