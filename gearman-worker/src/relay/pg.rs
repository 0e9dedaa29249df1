//! The PostgreSQL outbox source: `gearman.outbox`, woken by `LISTEN
//! gearman_outbox` (see the [module doc](super)).

use super::{
    log_outcome, source_tag, submit_rows, BatchResult, LogLimiter, OutboxRow, RelaySettings,
    Source, PG_CHANNEL, PG_UPGRADE, SLICE,
};
use crate::db::{pg_error, Bounds, DatabaseUrl};
use gearman_core::Client;
use postgres::fallible_iterator::FallibleIterator;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A PostgreSQL outbox source.
#[derive(Debug)]
pub struct PgSource {
    url: DatabaseUrl,
    tag: String,
}

impl PgSource {
    /// A source for `url` (not connected yet).
    pub fn new(url: DatabaseUrl) -> PgSource {
        PgSource {
            url,
            tag: String::new(),
        }
    }

    /// Connects, learns the source tag and starts listening.
    ///
    /// # Errors
    /// Connection or LISTEN failure, as text.
    pub fn connect(&mut self) -> Result<postgres::Client, String> {
        let mut c = self.url.connect_pg(Bounds {
            app: "gearman-worker relay",
            io: Duration::from_secs(30),
        })?;
        // The cluster's system identifier names it best, but only roles with
        // pg_monitor may read it; otherwise use the server address and port.
        let ident = c
            .query_one(
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .or_else(|_| {
                c.query_one(
                    "SELECT coalesce(inet_server_addr()::text, 'local') || ':' || \
                            coalesce(inet_server_port()::text, current_setting('port'))",
                    &[],
                )
            })
            .and_then(|row| row.try_get::<_, String>(0))
            .map_err(|e| pg_error(&e))?;
        let db: String = c
            .query_one("SELECT current_database()::text", &[])
            .and_then(|row| row.try_get(0))
            .map_err(|e| pg_error(&e))?;
        self.tag = source_tag(&["pg", &ident, &db]);
        let have: i64 = c
            .query_one(
                "SELECT count(*) FROM information_schema.columns \
                 WHERE table_schema = 'gearman' AND table_name = 'outbox' \
                   AND column_name IN ('attempts', 'last_error', 'failed_at')",
                &[],
            )
            .and_then(|row| row.try_get(0))
            .map_err(|e| pg_error(&e))?;
        if have != 3 {
            return Err(format!(
                "database {db} has no table gearman.outbox with the columns attempts, \
                 last_error and failed_at (CREATE EXTENSION gearman makes it; a table made \
                 by extension 0.1.0 gets them from ALTER EXTENSION gearman UPDATE; a table \
                 made by hand, without the extension, from its owner with: {PG_UPGRADE})"
            ));
        }
        c.batch_execute(&format!("LISTEN {PG_CHANNEL}"))
            .map_err(|e| pg_error(&e))?;
        Ok(c)
    }

    /// Relays one batch in one transaction.
    ///
    /// # Errors
    /// A database error (the transaction is rolled back; nothing deleted).
    pub fn batch(
        &mut self,
        db: &mut postgres::Client,
        client: &mut Client,
        settings: &RelaySettings,
        log: &mut LogLimiter,
    ) -> Result<BatchResult, postgres::Error> {
        let mut tx = db.transaction()?;
        let rows = tx.query(
            "SELECT id, function, workload, unique_key, priority::text, \
                    extract(epoch FROM run_at)::int8, attempts::int8 \
             FROM gearman.outbox WHERE failed_at IS NULL \
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[&i64::from(settings.batch_size)],
        )?;
        let rows = rows
            .iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.try_get(0)?,
                    function: r.try_get(1)?,
                    workload: r.try_get(2)?,
                    unique_key: r.try_get::<_, Option<String>>(3)?.map(String::into_bytes),
                    priority: r.try_get::<_, Option<String>>(4)?.unwrap_or_default(),
                    run_at: r.try_get(5)?,
                    attempts: r.try_get(6)?,
                })
            })
            .collect::<Result<Vec<OutboxRow>, postgres::Error>>()?;
        let out = submit_rows(&rows, &self.tag, client, settings.max_attempts);
        if !out.sent.is_empty() {
            tx.execute(
                "DELETE FROM gearman.outbox WHERE id = ANY($1)",
                &[&out.sent],
            )?;
        }
        if !out.refused.is_empty() {
            let ids: Vec<i64> = out.refused.iter().map(|r| r.id).collect();
            let attempts: Vec<i32> = out
                .refused
                .iter()
                .map(|r| i32::try_from(r.attempts).unwrap_or(i32::MAX))
                .collect();
            let errors: Vec<&str> = out.refused.iter().map(|r| r.error.as_str()).collect();
            let aside: Vec<bool> = out.refused.iter().map(|r| r.set_aside).collect();
            tx.execute(
                "UPDATE gearman.outbox o SET attempts = u.attempts, last_error = u.err, \
                        failed_at = CASE WHEN u.aside THEN now() END \
                 FROM unnest($1::int8[], $2::int4[], $3::text[], $4::bool[]) \
                      AS u(id, attempts, err, aside) \
                 WHERE o.id = u.id",
                &[&ids, &attempts, &errors, &aside],
            )?;
        }
        tx.commit()?;
        log_outcome("postgres", &out, log);
        Ok(out.result(rows.len()))
    }
}

impl Source for PgSource {
    type Conn = postgres::Client;
    const KIND: &'static str = "postgres";
    const TABLE: &'static str = "gearman.outbox";

    fn connect(&mut self) -> Result<postgres::Client, String> {
        PgSource::connect(self)
    }

    fn tag(&self) -> &str {
        &self.tag
    }

    fn batch(
        &mut self,
        db: &mut postgres::Client,
        client: &mut Client,
        settings: &RelaySettings,
        log: &mut LogLimiter,
    ) -> Result<BatchResult, String> {
        PgSource::batch(self, db, client, settings, log).map_err(|e| pg_error(&e))
    }

    /// Waits for a notification on [`PG_CHANNEL`] or the poll interval,
    /// then swallows the rest of the burst.
    fn idle(
        &mut self,
        db: &mut postgres::Client,
        d: Duration,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        let until = Instant::now() + d;
        while !stop.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut n = db.notifications();
            let mut it = n.timeout_iter(left.min(SLICE));
            match it.next() {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(e) => return Err(pg_error(&e)),
            }
        }
        let mut n = db.notifications();
        let mut it = n.iter();
        while let Ok(Some(_)) = it.next() {}
        Ok(())
    }

    fn backlog(&mut self, db: &mut postgres::Client) -> Result<(i64, f64), String> {
        let r = db
            .query_one(
                "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 \
                 FROM gearman.outbox WHERE failed_at IS NULL",
                &[],
            )
            .map_err(|e| pg_error(&e))?;
        Ok((r.get(0), r.get::<_, f64>(1).max(0.0)))
    }
}
