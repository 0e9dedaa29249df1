//! The MySQL/MariaDB outbox source: `gearman_outbox`, polled (see the
//! [module doc](super)).

use super::{
    log_outcome, nap, source_tag, submit_rows, BatchResult, LogLimiter, OutboxRow, RelaySettings,
    Source,
};
use crate::db::{my_error, Bounds, DatabaseUrl};
use gearman_core::Client;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// A MySQL/MariaDB outbox source.
#[derive(Debug)]
pub struct MySource {
    url: DatabaseUrl,
    tag: String,
}

impl MySource {
    /// A source for `url` (not connected yet).
    pub fn new(url: DatabaseUrl) -> MySource {
        MySource {
            url,
            tag: String::new(),
        }
    }

    /// Connects and learns the source tag.
    ///
    /// # Errors
    /// Connection failure, as text.
    pub fn connect(&mut self) -> Result<mysql::Conn, String> {
        use mysql::prelude::Queryable;
        let mut c = self.url.connect_my(Bounds {
            app: "gearman-worker relay",
            io: Duration::from_secs(60),
        })?;
        // READ COMMITTED: the locking read takes record locks only, no gap
        // locks, so producers inserting into the outbox and other relays do
        // not deadlock with this one.
        c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .map_err(|e| my_error(&e))?;
        let row: Option<(String, String, String)> = c
            .query_first("SELECT @@hostname, CAST(@@port AS CHAR), COALESCE(DATABASE(), '')")
            .map_err(|e| my_error(&e))?;
        let (h, p, d) = row.unwrap_or_default();
        self.tag = source_tag(&["my", &h, &p, &d]);
        let have: Option<u64> = c
            .query_first(
                "SELECT COUNT(*) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'gearman_outbox' \
                   AND COLUMN_NAME IN ('attempts', 'last_error', 'failed_at')",
            )
            .map_err(|e| my_error(&e))?;
        if have != Some(3) {
            return Err(format!(
                "database `{d}` has no table gearman_outbox with the columns attempts, \
                 last_error and failed_at: run sql/mysql/outbox.sql in it (it makes the \
                 table, or adds those columns to one made by an older version)"
            ));
        }
        Ok(c)
    }

    /// Relays one batch in one transaction.
    ///
    /// # Errors
    /// A database error (the transaction is rolled back; nothing deleted).
    pub fn batch(
        &mut self,
        db: &mut mysql::Conn,
        client: &mut Client,
        settings: &RelaySettings,
        log: &mut LogLimiter,
    ) -> Result<BatchResult, String> {
        use mysql::prelude::Queryable;
        let err = |e: mysql::Error| my_error(&e);
        let mut tx = db
            .start_transaction(mysql::TxOpts::default())
            .map_err(err)?;
        let raw: Vec<mysql::Row> = tx
            .exec(
                "SELECT CAST(id AS SIGNED), `function`, workload, unique_key, \
                        CAST(priority AS CHAR), CAST(UNIX_TIMESTAMP(run_at) AS SIGNED), \
                        CAST(attempts AS SIGNED) \
                 FROM gearman_outbox WHERE failed_at IS NULL \
                 ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
                (u64::from(settings.batch_size),),
            )
            .map_err(err)?;
        let rows = raw
            .iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: my_get(r, 0)?,
                    function: String::from_utf8_lossy(&my_get::<Vec<u8>>(r, 1)?).into_owned(),
                    workload: my_get(r, 2)?,
                    unique_key: my_get(r, 3)?,
                    priority: my_get::<Option<String>>(r, 4)?.unwrap_or_default(),
                    run_at: my_get(r, 5)?,
                    attempts: my_get(r, 6)?,
                })
            })
            .collect::<Result<Vec<OutboxRow>, String>>()?;
        let claim: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let fetched = claim.len();
        if claim.is_empty() {
            tx.commit().map_err(err)?;
            return Ok(BatchResult::default());
        }
        // Claim the rows by deleting them before anything is sent. InnoDB's
        // SKIP LOCKED can hand a row to two relays at once (seen with
        // MariaDB 10.11 under concurrent inserts); the DELETE cannot: it
        // waits for the other relay's transaction and then counts only the
        // rows still there. If any row is gone, leave the whole batch.
        tx.query_drop("SAVEPOINT gearman_claim").map_err(err)?;
        tx.query_drop(delete_sql(&claim)).map_err(err)?;
        if tx.affected_rows() != claim.len() as u64 {
            log::debug!(
                "mysql: {} of {} outbox row(s) were taken by another relay; reading again",
                claim.len() as u64 - tx.affected_rows(),
                claim.len()
            );
            drop(tx); // rolls back
            return Ok(BatchResult::default());
        }
        let out = submit_rows(&rows, &self.tag, client, settings.max_attempts);
        if out.sent.len() != claim.len() {
            // Some rows were not sent: put every row back (the savepoint
            // keeps them locked), delete just the sent ones and record the
            // refused ones.
            tx.query_drop("ROLLBACK TO SAVEPOINT gearman_claim")
                .map_err(err)?;
            if !out.sent.is_empty() {
                tx.query_drop(delete_sql(&out.sent)).map_err(err)?;
            }
            if !out.refused.is_empty() {
                tx.exec_batch(
                    "UPDATE gearman_outbox SET attempts = ?, last_error = ?, \
                            failed_at = IF(?, NOW(), NULL) WHERE id = ?",
                    out.refused
                        .iter()
                        .map(|r| (r.attempts, r.error.as_str(), r.set_aside, r.id)),
                )
                .map_err(err)?;
            }
        }
        tx.commit().map_err(|e| {
            format!(
                "{e}; {} sent row(s) may be sent again (their unique keys coalesce with jobs \
                 still queued)",
                out.sent.len()
            )
        })?;
        log_outcome("mysql", &out, log);
        Ok(out.result(fetched))
    }
}

/// `DELETE` of the given outbox ids (integers only: safe in the SQL text).
fn delete_sql(ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!(
        "DELETE FROM gearman_outbox WHERE id IN ({})",
        list.join(",")
    )
}

/// Column `i` of a MySQL row, converted; a mismatch is an error, not a panic.
fn my_get<T: mysql::prelude::FromValue>(row: &mysql::Row, i: usize) -> Result<T, String> {
    match row.get_opt::<T, usize>(i) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(format!(
            "gearman_outbox column {i}: unexpected value {:?}",
            e.0
        )),
        None => Err(format!("gearman_outbox column {i} is missing")),
    }
}

impl Source for MySource {
    type Conn = mysql::Conn;
    const KIND: &'static str = "mysql";
    const TABLE: &'static str = "gearman_outbox";

    fn connect(&mut self) -> Result<mysql::Conn, String> {
        MySource::connect(self)
    }

    fn tag(&self) -> &str {
        &self.tag
    }

    fn batch(
        &mut self,
        db: &mut mysql::Conn,
        client: &mut Client,
        settings: &RelaySettings,
        log: &mut LogLimiter,
    ) -> Result<BatchResult, String> {
        MySource::batch(self, db, client, settings, log)
    }

    /// MySQL has no notifications: poll.
    fn idle(
        &mut self,
        _db: &mut mysql::Conn,
        d: Duration,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        nap(d, stop);
        Ok(())
    }

    fn backlog(&mut self, db: &mut mysql::Conn) -> Result<(i64, f64), String> {
        use mysql::prelude::Queryable;
        let r: Option<(i64, i64)> = db
            .query_first(
                "SELECT CAST(COUNT(*) AS SIGNED), \
                        CAST(COALESCE(TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(6)), 0) AS SIGNED) \
                 FROM gearman_outbox WHERE failed_at IS NULL",
            )
            .map_err(|e| my_error(&e))?;
        let (n, us) = r.unwrap_or_default();
        Ok((n, (us as f64 / 1e6).max(0.0)))
    }
}
