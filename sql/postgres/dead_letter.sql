-- gearman-worker dead letters in PostgreSQL: jobs that failed on their last
-- attempt (issue 14). The gearman extension (0.2.0 and later) creates this
-- table itself; this file is for a database without the extension. Run once in
-- the database named by a function's `dead_letter = "postgres://..."`:
--   psql "postgres://..." -f sql/postgres/dead_letter.sql
-- Idempotent. The worker's role needs INSERT on the table and USAGE on its
-- sequence; `gearman-worker dead-letter list|replay|purge` needs SELECT and
-- DELETE.
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
CREATE SCHEMA IF NOT EXISTS gearman;
CREATE TABLE IF NOT EXISTS gearman.dead_letter (
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
