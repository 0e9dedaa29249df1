-- Durable outbox for MySQL / MariaDB (MariaDB >= 10.6 or MySQL >= 8.0 for
-- SKIP LOCKED, which `gearman-worker relay` uses).
--
-- MySQL has no commit hook: a gman_do_background() UDF call inside a
-- transaction that later rolls back has already sent its job. Writing the
-- job into this table instead makes it part of the transaction: it exists
-- only if the transaction commits, and `gearman-worker relay --mysql URL`
-- submits it to gearmand later (also when gearmand was down at commit time),
-- deleting the row only after gearmand confirmed it (JOB_CREATED).
--
-- Install:   mariadb --database=app < sql/mysql/outbox.sql
-- Enqueue:   CALL gearman_outbox_enqueue('send_tweet', NEW.body, NULL, 'normal', NULL);
--            (or INSERT INTO gearman_outbox (`function`, workload) VALUES (...))
-- Relay:     gearman-worker relay --mysql mysql://user:pass@host:3306/app -s gearmand:4730
--
-- Columns (the same shape as PostgreSQL's gearman.outbox):
--   id          row id; rows are relayed in id order
--   function    Gearman function name (1..512 bytes, no control character
--               or whitespace: the relay sets such a row aside at once)
--   workload    job workload, bytes
--   unique_key  Gearman unique key (at most 63 bytes). NULL: the procedure
--               stores a UUID(); a row inserted directly with NULL is sent
--               with `outbox-<8 hex digits naming this database>-<id>`. A row
--               sent twice (relay crash between submit and commit) coalesces
--               with the job still queued.
--   priority    'high' | 'normal' | 'low'
--   run_at      NULL = now; a later time (server default time zone) makes a
--               scheduled job (SUBMIT_JOB_EPOCH)
--   created_at  when the row was written
--   attempts    times the job servers answered the row with ERROR (e.g.
--               QUEUE_ERROR: the function's queue is full); a lost
--               connection or a timeout is not counted and retried
--   last_error  why the row was last refused, or cannot be sent at all (a
--               unique key over 63 bytes, an invalid function name)
--   failed_at   set when the relay set the row aside: at once for a row that
--               cannot be sent, after `gearman-worker relay --max-attempts`
--               (default 3) ERROR answers otherwise. The relay skips such
--               rows; they never hold up the rows behind them. To send them
--               again: UPDATE gearman_outbox SET failed_at = NULL,
--               attempts = 0, last_error = NULL WHERE failed_at IS NOT NULL ...
--
-- Who may write the outbox is the owner's decision: grant it only to the
-- accounts that queue jobs. The procedure runs with its definer's rights
-- (SQL SECURITY DEFINER, the default) and checks its arguments, so
--   GRANT EXECUTE ON PROCEDURE app.gearman_outbox_enqueue TO 'app'@'%';
-- is enough for them, without any right on the table; or, for direct INSERTs,
--   GRANT INSERT (`function`, workload, unique_key, priority, run_at)
--     ON app.gearman_outbox TO 'app'@'%';
-- The relay's account needs SELECT, UPDATE and DELETE on gearman_outbox.
-- Running this file again keeps the rows and adds the columns above to a
-- table made by an older version.

CREATE TABLE IF NOT EXISTS gearman_outbox (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  `function`  VARCHAR(512) NOT NULL,
  workload    LONGBLOB NOT NULL,
  unique_key  VARBINARY(63) NULL,
  priority    ENUM('high', 'normal', 'low') NOT NULL DEFAULT 'normal',
  run_at      DATETIME NULL,
  created_at  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  attempts    INT UNSIGNED NOT NULL DEFAULT 0,
  last_error  TEXT NULL,
  failed_at   DATETIME NULL,
  -- The relay reads the rows still to send (failed_at IS NULL) in id order.
  KEY gearman_outbox_pending (failed_at, id)
) ENGINE = InnoDB;

-- A table made by an older version of this file: add the set-aside columns.
-- (MySQL 8 has no ADD COLUMN IF NOT EXISTS; a procedure checks first.)
DROP PROCEDURE IF EXISTS gearman_outbox_upgrade;
DELIMITER //
CREATE PROCEDURE gearman_outbox_upgrade()
MODIFIES SQL DATA
BEGIN
  IF NOT EXISTS (SELECT 1 FROM information_schema.COLUMNS
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'gearman_outbox'
                   AND COLUMN_NAME = 'failed_at') THEN
    ALTER TABLE gearman_outbox
      ADD COLUMN attempts INT UNSIGNED NOT NULL DEFAULT 0,
      ADD COLUMN last_error TEXT NULL,
      ADD COLUMN failed_at DATETIME NULL,
      ADD KEY gearman_outbox_pending (failed_at, id);
  END IF;
END //
DELIMITER ;
CALL gearman_outbox_upgrade();
DROP PROCEDURE gearman_outbox_upgrade;

DROP PROCEDURE IF EXISTS gearman_outbox_enqueue;

DELIMITER //
-- Writes one job into the outbox, inside the caller's transaction.
-- Errors (SQLSTATE 45000): empty function name, unique key over 63 bytes,
-- priority other than high/normal/low. A NULL workload is an empty one;
-- a NULL unique key gets a UUID(); a NULL priority is 'normal'.
CREATE PROCEDURE gearman_outbox_enqueue(
  IN p_function   VARCHAR(512),
  IN p_workload   LONGBLOB,
  IN p_unique_key VARBINARY(255),
  IN p_priority   VARCHAR(16),
  IN p_run_at     DATETIME
)
MODIFIES SQL DATA
SQL SECURITY DEFINER
BEGIN
  DECLARE v_unique VARBINARY(255) DEFAULT p_unique_key;
  IF p_function IS NULL OR p_function = '' THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'gearman_outbox_enqueue: function name is empty';
  END IF;
  IF p_unique_key IS NOT NULL AND LENGTH(p_unique_key) > 63 THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'gearman_outbox_enqueue: unique key is longer than 63 bytes';
  END IF;
  IF p_priority IS NOT NULL AND LOWER(p_priority) NOT IN ('high', 'normal', 'low') THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'gearman_outbox_enqueue: priority must be high, normal or low';
  END IF;
  IF v_unique IS NULL THEN
    -- CAST: MariaDB >= 10.10 types UUID() as UUID, which would not mix with bytes.
    SET v_unique = CAST(UUID() AS CHAR(36));
  END IF;
  INSERT INTO gearman_outbox (`function`, workload, unique_key, priority, run_at)
  VALUES (p_function,
          COALESCE(p_workload, ''),
          v_unique,
          COALESCE(LOWER(p_priority), 'normal'),
          p_run_at);
END //
DELIMITER ;
