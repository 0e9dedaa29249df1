-- gearman-worker dead letters in MySQL/MariaDB: jobs that failed on their
-- last attempt (issue 14). Run once in the database named by a function's
-- `dead_letter = "mysql://..."`:
--   mysql DB < sql/mysql/dead_letter.sql
-- Idempotent. The worker's user needs INSERT on the table;
-- `gearman-worker dead-letter list|replay|purge` needs SELECT and DELETE.
--
-- Columns:
--   id               row id (replay and purge select by it)
--   function         Gearman function name
--   unique_key       the job's unique key, bytes as received (NULL: none)
--   workload         the original workload, byte for byte
--   last_error       the last attempt's failure message
--   attempts         attempts made (retries + 1)
--   first_failed_at  when the first attempt failed (server time zone)
--   last_failed_at   when the last attempt failed (server time zone)
CREATE TABLE IF NOT EXISTS gearman_dead_letter (
  id               BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  `function`       VARBINARY(512)  NOT NULL,
  unique_key       VARBINARY(64),
  workload         LONGBLOB        NOT NULL,
  last_error       TEXT            NOT NULL,
  attempts         INT             NOT NULL,
  first_failed_at  DATETIME(6)     NOT NULL,
  last_failed_at   DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
