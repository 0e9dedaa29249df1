//! Relay mode: drain database outbox tables into the job servers.
//!
//! Sources: the PostgreSQL table `gearman.outbox` (created by the gearman-pg
//! extension; it runs `pg_notify('gearman_outbox', function)` at commit)
//! and the MySQL/MariaDB table `gearman_outbox` (`sql/mysql/outbox.sql`).
//! Both have `id, function, workload, unique_key, priority, run_at,
//! created_at, attempts, last_error, failed_at`; a table without the last
//! three is refused at connect with the statement that adds them (for a
//! PostgreSQL table of the extension's 0.1.0, `ALTER EXTENSION gearman
//! UPDATE` is the way: it adds them too).
//!
//! One thread per source repeats, in one transaction:
//! 1. `SELECT ... WHERE failed_at IS NULL ORDER BY id LIMIT batch FOR UPDATE
//!    SKIP LOCKED`: rows
//!    another relay holds are skipped, so several relays share a table and
//!    no row is sent twice in normal operation;
//! 2. submit them as background jobs, pipelined
//!    ([`Client::submit_background_all`]), each with its `unique_key`, or
//!    `outbox-<source tag>-<id>` when that is NULL (the tag is 8 hex digits
//!    naming the database, so rows of two databases never coalesce); a row
//!    sent again after a relay crash therefore coalesces with the job still
//!    queued instead of making a second one;
//! 3. delete exactly the rows that got JOB_CREATED, then commit.
//!
//! MySQL/MariaDB differs in one step: InnoDB's SKIP LOCKED was seen handing
//! the same row to two relays (MariaDB 10.11, concurrent inserts), so the
//! relay claims the rows with a `DELETE` (under a savepoint) before sending;
//! if another relay took any of them, the batch is read again. Rows whose
//! submit failed are restored by `ROLLBACK TO SAVEPOINT`, still locked. The
//! session runs at READ COMMITTED (record locks only, no gap locks), which
//! keeps relays and producers from deadlocking.
//!
//! What becomes of a row that was not sent:
//! - a lost connection, a timeout (any failure of the job servers rather
//!   than of the row): the row stays as it is and is retried after the poll
//!   interval, with a fresh connection to the job servers, for as long as it
//!   takes;
//! - the job servers answered it with ERROR (e.g. `QUEUE_ERROR`, the
//!   function's queue is full): `attempts` is counted up and `last_error`
//!   set; after `--max-attempts` such answers (default 3) the row is set
//!   aside (`failed_at` set);
//! - a row that can never be sent (empty or invalid function name, unique
//!   key over 63 bytes, unknown priority) is set aside at once.
//!
//! The relay reads only rows with `failed_at IS NULL`, so set-aside rows
//! never hold up the rows behind them, and it keeps no per-row state in
//! memory. They stay in the table with their error for a human (`UPDATE ...
//! SET failed_at = NULL, attempts = 0` sends them again). Log lines that
//! repeat (the same error every poll interval) are written at most once per
//! 30 s per kind, with the count of those left out.
//!
//! A `run_at` in the future becomes a scheduled job (SUBMIT_JOB_EPOCH; for
//! MySQL `run_at` is read in the server's default time zone).
//!
//! Wake-up: PostgreSQL `LISTEN gearman_outbox` plus polling every
//! `--poll-interval-ms`; MySQL polling only. A full batch is followed by the
//! next one at once. Lost database connections are reopened after the poll
//! interval. SIGTERM/SIGINT: finish the current batch, exit 0; a second one
//! exits at once (uncommitted rows stay in the table).

use crate::cli::RelayArgs;
use gearman_core::{Client, ErrorKind, Job, Options, Priority, ServerList};
use postgres::fallible_iterator::FallibleIterator;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What adds the set-aside columns to a `gearman.outbox` made without the
/// extension, from an older `sql/outbox.sql` (run by the table's owner); a table
/// made by extension 0.1.0 gets them from `ALTER EXTENSION gearman UPDATE`.
pub const PG_UPGRADE: &str = "ALTER TABLE gearman.outbox ADD COLUMN attempts integer NOT NULL \
     DEFAULT 0, ADD COLUMN last_error text, ADD COLUMN failed_at timestamptz; CREATE INDEX \
     outbox_pending ON gearman.outbox (id) WHERE failed_at IS NULL";

/// The channel the PostgreSQL extension notifies at commit.
pub const PG_CHANNEL: &str = "gearman_outbox";
/// Longest `last_error` text stored, in bytes.
const MAX_ERROR_TEXT: usize = 1000;
/// Default of `--max-attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
const SLICE: Duration = Duration::from_millis(100);

/// Settings shared by every source.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Job servers.
    pub servers: ServerList,
    /// Client id sent to the job servers.
    pub client_id: Option<String>,
    /// Poll interval.
    pub poll_interval: Duration,
    /// Rows per transaction.
    pub batch_size: u32,
    /// ERROR answers after which a row is set aside (at least 1).
    pub max_attempts: u32,
}

impl RelaySettings {
    /// Settings from `relay` flags.
    pub fn from_args(args: &RelayArgs, servers: ServerList, client_id: Option<String>) -> Self {
        RelaySettings {
            servers,
            client_id,
            poll_interval: Duration::from_millis(args.poll_interval_ms.max(10)),
            batch_size: args.batch_size.clamp(1, 10_000),
            max_attempts: args.max_attempts.max(1),
        }
    }

    fn client(&self) -> Client {
        let opts = Options {
            client_id: self.client_id.clone(),
            ..crate::tls::client_options()
        };
        Client::new(self.servers.clone(), opts)
    }
}

/// One outbox row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// Function name.
    pub function: String,
    /// Workload.
    pub workload: Vec<u8>,
    /// Unique key, if any.
    pub unique_key: Option<Vec<u8>>,
    /// `high`, `normal` or `low`.
    pub priority: String,
    /// `run_at` as Unix seconds, if set.
    pub run_at: Option<i64>,
    /// Times the row was refused before.
    pub attempts: i64,
}

/// Short tag naming a database, used in generated unique keys: 32-bit
/// FNV-1a of the parts (stable across builds), as 8 hex digits.
pub fn source_tag(parts: &[&str]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    format!("{h:08x}")
}

/// The job for a row.
///
/// # Errors
/// A row that can never be submitted (bad function, unique key or priority).
pub fn row_to_job(row: &OutboxRow, tag: &str, now_unix: i64) -> Result<Job, String> {
    let priority = match row.priority.as_str() {
        "high" => Priority::High,
        "normal" | "" => Priority::Normal,
        "low" => Priority::Low,
        other => return Err(format!("unknown priority `{other}`")),
    };
    let unique = match &row.unique_key {
        Some(u) => u.clone(),
        None => format!("outbox-{tag}-{}", row.id).into_bytes(),
    };
    let mut job = Job::new(row.function.as_bytes().to_vec(), row.workload.clone())
        .with_unique(unique)
        .with_priority(priority);
    if let Some(t) = row.run_at {
        if t > now_unix {
            job = job.with_epoch(t);
        }
    }
    job.validate().map_err(|e| e.to_string())?;
    Ok(job)
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchResult {
    /// Rows read.
    pub fetched: usize,
    /// Rows submitted and deleted.
    pub sent: usize,
    /// Rows not sent for a reason that is not theirs (connection, timeout):
    /// left as they are.
    pub failed: usize,
    /// Rows refused (an ERROR answer, or a row that cannot be sent):
    /// `attempts` counted up, `last_error` set.
    pub refused: usize,
    /// Of the refused rows, those set aside now (`failed_at` set).
    pub set_aside: usize,
}

impl BatchResult {
    /// Rows that will be tried again: worth a pause before the next batch.
    pub fn to_retry(&self) -> usize {
        self.failed + self.refused - self.set_aside
    }
}

/// A refused row: what the table records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Row id.
    pub id: i64,
    /// The new `attempts`.
    pub attempts: i64,
    /// The new `last_error` (at most 1000 bytes, no NUL).
    pub error: String,
    /// Whether the row is set aside now (`failed_at` set).
    pub set_aside: bool,
}

impl Refusal {
    fn new(row: &OutboxRow, error: &str, permanent: bool, max_attempts: u32) -> Refusal {
        let attempts = row.attempts.saturating_add(1);
        Refusal {
            id: row.id,
            attempts,
            error: error_text(error),
            set_aside: permanent || attempts >= i64::from(max_attempts),
        }
    }
}

/// `e` fit for a text column: NUL bytes shown as `\0`, at most
/// [`MAX_ERROR_TEXT`] bytes (cut at a character boundary).
fn error_text(e: &str) -> String {
    let mut t = e.replace('\0', "\\0");
    if t.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
    }
    t
}

/// What became of a batch's rows.
#[derive(Debug, Default)]
struct Outcome {
    /// Ids that got JOB_CREATED.
    sent: Vec<i64>,
    /// Rows refused.
    refused: Vec<Refusal>,
    /// Rows not sent for a passing reason, and the first such error.
    transient: usize,
    first_transient: Option<String>,
}

impl Outcome {
    fn result(&self, fetched: usize) -> BatchResult {
        BatchResult {
            fetched,
            sent: self.sent.len(),
            failed: self.transient,
            refused: self.refused.len(),
            set_aside: self.refused.iter().filter(|r| r.set_aside).count(),
        }
    }
}

/// Submits the rows and sorts them by fate.
fn submit_rows(rows: &[OutboxRow], tag: &str, client: &mut Client, max_attempts: u32) -> Outcome {
    let now = now_unix();
    let mut out = Outcome::default();
    let mut jobs = Vec::new();
    let mut sent_rows = Vec::new();
    for row in rows {
        match row_to_job(row, tag, now) {
            Ok(j) => {
                jobs.push(j);
                sent_rows.push(row);
            }
            Err(e) => out.refused.push(Refusal::new(
                row,
                &format!("cannot be sent: {e}"),
                true,
                max_attempts,
            )),
        }
    }
    if jobs.is_empty() {
        return out;
    }
    let results = client.submit_background_all(&jobs);
    for (row, r) in sent_rows.into_iter().zip(results) {
        match r {
            Ok(_) => out.sent.push(row.id),
            Err(e) => match e.kind() {
                ErrorKind::InvalidArgument => out.refused.push(Refusal::new(
                    row,
                    &format!("cannot be sent: {e}"),
                    true,
                    max_attempts,
                )),
                ErrorKind::Server { .. } => out.refused.push(Refusal::new(
                    row,
                    &format!("refused by the job server: {e}"),
                    false,
                    max_attempts,
                )),
                _ => {
                    out.transient += 1;
                    out.first_transient.get_or_insert_with(|| e.to_string());
                }
            },
        }
    }
    out
}

/// Logs what a batch did not send: the passing failures and the rows set
/// aside, each kind of line at most once per [`REPEAT_WARNING_EVERY`].
fn log_outcome(kind: &str, out: &Outcome, log: &mut LogLimiter) {
    if let Some(e) = &out.first_transient {
        log.warn(
            &format!("{kind} transient {e}"),
            format_args!(
                "{kind}: {} outbox row(s) not sent, retrying later: {e}",
                out.transient
            ),
        );
    }
    let aside: Vec<&Refusal> = out.refused.iter().filter(|r| r.set_aside).collect();
    if let Some(first) = aside.first() {
        log.warn(
            &format!("{kind} set aside"),
            format_args!(
                "{kind}: set aside {} outbox row(s) (failed_at set; first id={}: {})",
                aside.len(),
                first.id,
                first.error
            ),
        );
    }
    let again = out.refused.len() - aside.len();
    if let Some(first) = out.refused.iter().find(|r| !r.set_aside) {
        log.warn(
            &format!("{kind} refused"),
            format_args!(
                "{kind}: {again} outbox row(s) refused, tried again later (first id={}, \
                 attempt {}: {})",
                first.id, first.attempts, first.error
            ),
        );
    }
}

/// Warnings of one kind at most once per period: the first is written, the
/// repeats within the period are counted, and the next one written after it
/// says how many were left out. Bounded: at most [`LogLimiter::MAX_KEYS`]
/// kinds are remembered.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    seen: HashMap<String, (Instant, u64)>,
}

impl LogLimiter {
    /// Kinds remembered at most; older ones are forgotten first.
    pub const MAX_KEYS: usize = 256;

    /// A limiter that writes each kind at most once per `every`.
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every,
            seen: HashMap::new(),
        }
    }

    /// Whether a line of kind `key` is written at `now`: `Some(n)` with the
    /// number of lines of that kind left out since the last one written, or
    /// `None` (left out, counted).
    pub fn check(&mut self, key: &str, now: Instant) -> Option<u64> {
        if let Some((last, left_out)) = self.seen.get_mut(key) {
            if now.saturating_duration_since(*last) < self.every {
                *left_out += 1;
                return None;
            }
            let n = *left_out;
            *last = now;
            *left_out = 0;
            return Some(n);
        }
        if self.seen.len() >= Self::MAX_KEYS {
            let every = self.every;
            self.seen
                .retain(|_, (last, _)| now.saturating_duration_since(*last) < every);
            if self.seen.len() >= Self::MAX_KEYS {
                if let Some(oldest) = self
                    .seen
                    .iter()
                    .min_by_key(|(_, (last, _))| *last)
                    .map(|(k, _)| k.clone())
                {
                    self.seen.remove(&oldest);
                }
            }
        }
        self.seen.insert(key.to_string(), (now, 0));
        Some(0)
    }

    /// Writes `msg` at warn level unless a line of kind `key` was written
    /// within the period (then nothing is written, at any level).
    pub fn warn(&mut self, key: &str, msg: std::fmt::Arguments<'_>) {
        match self.check(key, Instant::now()) {
            None => {}
            Some(0) => crate::warn!(
                "{msg} (repeats within {} s are not logged at warn)",
                self.every.as_secs()
            ),
            Some(n) => crate::warn!(
                "{msg} ({n} more like this in the last {} s were not logged at warn)",
                self.every.as_secs()
            ),
        }
    }
}

/// A PostgreSQL outbox source.
#[derive(Debug)]
pub struct PgSource {
    url: String,
    tag: String,
}

impl PgSource {
    /// A source for `url` (not connected yet).
    pub fn new(url: &str) -> PgSource {
        PgSource {
            url: url.to_string(),
            tag: String::new(),
        }
    }

    /// Connects, learns the source tag and starts listening.
    ///
    /// # Errors
    /// Connection or LISTEN failure, as text.
    pub fn connect(&mut self) -> Result<postgres::Client, String> {
        let cfg = crate::handlers::sql::pg_config(
            &self.url,
            "gearman-worker relay",
            Duration::from_secs(30),
        )?;
        let mut c = cfg
            .connect(postgres::NoTls)
            .map_err(|e| crate::handlers::sql::pg_error(&e))?;
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
            .map_err(|e| crate::handlers::sql::pg_error(&e))?;
        let db: String = c
            .query_one("SELECT current_database()::text", &[])
            .and_then(|row| row.try_get(0))
            .map_err(|e| crate::handlers::sql::pg_error(&e))?;
        self.tag = source_tag(&["pg", &ident, &db]);
        let have: i64 = c
            .query_one(
                "SELECT count(*) FROM information_schema.columns \
                 WHERE table_schema = 'gearman' AND table_name = 'outbox' \
                   AND column_name IN ('attempts', 'last_error', 'failed_at')",
                &[],
            )
            .and_then(|row| row.try_get(0))
            .map_err(|e| crate::handlers::sql::pg_error(&e))?;
        if have != 3 {
            return Err(format!(
                "database {db} has no table gearman.outbox with the columns attempts, \
                 last_error and failed_at (CREATE EXTENSION gearman makes it; a table made \
                 by extension 0.1.0 gets them from ALTER EXTENSION gearman UPDATE; a table \
                 made by hand, without the extension, from its owner with: {PG_UPGRADE})"
            ));
        }
        c.batch_execute(&format!("LISTEN {PG_CHANNEL}"))
            .map_err(|e| crate::handlers::sql::pg_error(&e))?;
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

/// A MySQL/MariaDB outbox source.
#[derive(Debug)]
pub struct MySource {
    url: String,
    tag: String,
}

impl MySource {
    /// A source for `url` (`mysql://` or `mariadb://`; not connected yet).
    pub fn new(url: &str) -> MySource {
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_string(),
        };
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
        let opts = mysql::Opts::from_url(&self.url).map_err(|e| e.to_string())?;
        let opts = mysql::OptsBuilder::from_opts(opts)
            .tcp_connect_timeout(Some(Duration::from_secs(10)))
            .read_timeout(Some(Duration::from_secs(60)))
            .write_timeout(Some(Duration::from_secs(60)));
        let mut c = mysql::Conn::new(opts).map_err(|e| e.to_string())?;
        // READ COMMITTED: the locking read takes record locks only, no gap
        // locks, so producers inserting into the outbox and other relays do
        // not deadlock with this one.
        c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .map_err(|e| e.to_string())?;
        let row: Option<(String, String, String)> = c
            .query_first("SELECT @@hostname, CAST(@@port AS CHAR), COALESCE(DATABASE(), '')")
            .map_err(|e| e.to_string())?;
        let (h, p, d) = row.unwrap_or_default();
        self.tag = source_tag(&["my", &h, &p, &d]);
        let have: Option<u64> = c
            .query_first(
                "SELECT COUNT(*) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'gearman_outbox' \
                   AND COLUMN_NAME IN ('attempts', 'last_error', 'failed_at')",
            )
            .map_err(|e| e.to_string())?;
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
        let err = |e: mysql::Error| e.to_string();
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
            crate::debug!(
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

/// Sleeps up to `d` in short slices; returns early when `stop` is set.
fn nap(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(SLICE));
    }
}

/// What the drain loop needs of an outbox source.
trait Source {
    type Conn;
    /// `postgres` or `mysql`, for log lines.
    const KIND: &'static str;
    /// The outbox table's name, for log lines.
    const TABLE: &'static str;
    fn connect(&mut self) -> Result<Self::Conn, String>;
    fn tag(&self) -> &str;
    fn batch(
        &mut self,
        db: &mut Self::Conn,
        client: &mut Client,
        settings: &RelaySettings,
        log: &mut LogLimiter,
    ) -> Result<BatchResult, String>;
    /// Waits up to `d` for new rows (or `stop`) once the table is drained.
    fn idle(&mut self, db: &mut Self::Conn, d: Duration, stop: &AtomicBool) -> Result<(), String>;
    /// Rows waiting (not set aside) and the age in seconds of the oldest
    /// (0 when none), for the metrics.
    fn backlog(&mut self, db: &mut Self::Conn) -> Result<(i64, f64), String>;
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
        PgSource::batch(self, db, client, settings, log)
            .map_err(|e| crate::handlers::sql::pg_error(&e))
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
                Err(e) => return Err(crate::handlers::sql::pg_error(&e)),
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
            .map_err(|e| crate::handlers::sql::pg_error(&e))?;
        Ok((r.get(0), r.get::<_, f64>(1).max(0.0)))
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
            .map_err(|e| e.to_string())?;
        let (n, us) = r.unwrap_or_default();
        Ok((n, (us as f64 / 1e6).max(0.0)))
    }
}

/// How often the relay writes the same kind of warning.
const REPEAT_WARNING_EVERY: Duration = Duration::from_secs(30);

/// Drains one source until `stop` is set; counts rows sent in `sent`.
/// Database errors reconnect after the poll interval; a batch with failed
/// submits makes a fresh client (forgetting server back-off) and waits.
fn drain<S: Source>(mut src: S, url: &str, s: &RelaySettings, stop: &AtomicBool, sent: &AtomicU64) {
    let redacted = crate::config::redact_url(url);
    let kind = S::KIND;
    let mut client = s.client();
    // A wrong password fails every poll interval, for ever; a job server
    // that is down fails every batch: each kind of line is written at most
    // once per REPEAT_WARNING_EVERY, with the count of those left out.
    let mut log = LogLimiter::new(REPEAT_WARNING_EVERY);
    let mut failures = 0u64;
    let metrics = crate::metrics::global();
    let series = metrics.map(|m| m.source(&redacted));
    'connect: while !stop.load(Ordering::SeqCst) {
        let mut db = match src.connect() {
            Ok(db) => db,
            Err(e) => {
                if let (Some(m), Some(x)) = (metrics, &series) {
                    x.errors.inc();
                    m.set_source_state(&redacted, Some(e.clone()));
                }
                failures += 1;
                log.warn(
                    &format!("connect {e}"),
                    format_args!(
                        "{kind} {redacted}: {e}; retrying every {} ms (attempt {failures})",
                        s.poll_interval.as_millis()
                    ),
                );
                nap(s.poll_interval, stop);
                continue;
            }
        };
        if let Some(m) = metrics {
            m.set_source_state(&redacted, None);
        }
        if failures > 0 {
            crate::info!("{kind} {redacted}: connected after {failures} failed attempt(s)");
            failures = 0;
        }
        crate::info!(
            "relaying {redacted} ({}, source tag {})",
            S::TABLE,
            src.tag()
        );
        while !stop.load(Ordering::SeqCst) {
            let step = src.batch(&mut db, &mut client, s, &mut log).and_then(|r| {
                sent.fetch_add(r.sent as u64, Ordering::Relaxed);
                if let Some(x) = &series {
                    x.rows.inc_by(r.sent as u64);
                    if r.failed > 0 || r.refused > 0 {
                        x.errors.inc();
                    }
                    let (n, age) = src.backlog(&mut db)?;
                    x.outbox_rows.set(n);
                    x.oldest_age.set(age);
                }
                if r.sent > 0 {
                    crate::debug!("{kind}: relayed {} row(s)", r.sent);
                }
                if r.failed > 0 {
                    // Forget the job servers' back-off: try them all again.
                    client = s.client();
                }
                if r.to_retry() > 0 {
                    nap(s.poll_interval, stop);
                } else if r.fetched < s.batch_size as usize {
                    src.idle(&mut db, s.poll_interval, stop)?;
                }
                Ok(())
            });
            if let Err(e) = step {
                if let (Some(m), Some(x)) = (metrics, &series) {
                    x.errors.inc();
                    m.set_source_state(&redacted, Some(e.clone()));
                }
                log.warn(
                    &format!("database {e}"),
                    format_args!("{kind} {redacted}: {e}; reconnecting"),
                );
                nap(s.poll_interval, stop);
                continue 'connect;
            }
        }
    }
}

/// Drains a PostgreSQL outbox until `stop` is set; counts rows sent in `sent`.
pub fn run_pg(url: &str, s: &RelaySettings, stop: &AtomicBool, sent: &AtomicU64) {
    drain(PgSource::new(url), url, s, stop, sent);
}

/// Drains a MySQL/MariaDB outbox until `stop` is set; counts rows sent in `sent`.
pub fn run_my(url: &str, s: &RelaySettings, stop: &AtomicBool, sent: &AtomicU64) {
    drain(MySource::new(url), url, s, stop, sent);
}

/// Runs the relay for every source until SIGTERM/SIGINT; returns rows sent per source.
///
/// # Errors
/// No source given, or the signal handlers could not be registered.
pub fn run(args: &RelayArgs, settings: RelaySettings) -> Result<HashMap<String, u64>, String> {
    if args.postgres.is_empty() && args.mysql.is_empty() {
        return Err("relay: give at least one --postgres URL or --mysql URL".into());
    }
    for u in &args.mysql {
        if !(u.starts_with("mysql://") || u.starts_with("mariadb://")) {
            return Err(format!(
                "--mysql: `{}` must start with mysql:// or mariadb://",
                crate::config::redact_url(u)
            ));
        }
        mysql::Opts::from_url(&u.replacen("mariadb://", "mysql://", 1))
            .map_err(|e| format!("--mysql: invalid URL: {e}"))?;
    }
    for u in &args.postgres {
        u.parse::<postgres::Config>()
            .map_err(|e| format!("--postgres: invalid URL: {e}"))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // Order matters: the conditional exit sees the flag set by an earlier signal.
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())
            .map_err(|e| e.to_string())?;
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| e.to_string())?;
    }
    let settings = Arc::new(settings);
    let mut threads = Vec::new();
    for (kind, url) in args
        .postgres
        .iter()
        .map(|u| ("postgres", u))
        .chain(args.mysql.iter().map(|u| ("mysql", u)))
    {
        let (stop, s, url) = (stop.clone(), settings.clone(), url.clone());
        let name = format!("{kind} {}", crate::config::redact_url(url.as_str()));
        let counter = Arc::new(AtomicU64::new(0));
        let c = counter.clone();
        let t = std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if kind == "postgres" {
                        run_pg(&url, &s, &stop, &c)
                    } else {
                        run_my(&url, &s, &stop, &c)
                    }
                }));
                if let Err(p) = r {
                    crate::error!(
                        "{kind} relay failed unexpectedly ({}); restarting it",
                        crate::handlers::panic_message(p.as_ref())
                    );
                    nap(s.poll_interval, &stop);
                }
            }
        });
        threads.push((name, counter, t));
    }
    let mut totals = HashMap::new();
    for (name, counter, t) in threads {
        let _ = t.join();
        let n = counter.load(Ordering::Relaxed);
        crate::info!("summary: relayed {n} row(s) from {name}");
        totals.insert(name, n);
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64) -> OutboxRow {
        OutboxRow {
            id,
            function: "f".into(),
            workload: b"w".to_vec(),
            unique_key: None,
            priority: "normal".into(),
            run_at: None,
            attempts: 0,
        }
    }

    #[test]
    fn null_unique_gets_tagged_id() {
        let j = row_to_job(&row(42), "abcd0123", 0).unwrap();
        assert_eq!(j.unique.as_deref(), Some(&b"outbox-abcd0123-42"[..]));
        assert_eq!(j.priority, Priority::Normal);
        assert_eq!(j.epoch, None);
    }

    #[test]
    fn priority_and_future_run_at() {
        let mut r = row(1);
        r.priority = "high".into();
        r.unique_key = Some(b"k".to_vec());
        r.run_at = Some(2_000);
        let j = row_to_job(&r, "t", 1_000).unwrap();
        assert_eq!(j.priority, Priority::High);
        assert_eq!(j.unique.as_deref(), Some(&b"k"[..]));
        assert_eq!(j.epoch, Some(2_000));
        // A run_at in the past is sent at once.
        assert_eq!(row_to_job(&r, "t", 3_000).unwrap().epoch, None);
    }

    #[test]
    fn unsendable_rows_are_errors() {
        let mut r = row(1);
        r.priority = "urgent".into();
        assert!(row_to_job(&r, "t", 0).unwrap_err().contains("urgent"));
        let mut r = row(1);
        r.unique_key = Some(vec![b'u'; 64]);
        assert!(row_to_job(&r, "t", 0).is_err());
        let mut r = row(1);
        r.function = String::new();
        assert!(row_to_job(&r, "t", 0).is_err());
    }

    #[test]
    fn a_refusal_sets_the_row_aside_after_max_attempts_or_at_once() {
        let mut r = row(7);
        let f = Refusal::new(&r, "QUEUE_ERROR", false, 3);
        assert_eq!((f.attempts, f.set_aside), (1, false));
        r.attempts = 2;
        let f = Refusal::new(&r, "QUEUE_ERROR", false, 3);
        assert_eq!((f.attempts, f.set_aside), (3, true));
        r.attempts = 0;
        assert!(Refusal::new(&r, "bad key", true, 3).set_aside);
        assert!(Refusal::new(&r, "x", false, 1).set_aside);
    }

    #[test]
    fn error_text_is_bounded_and_has_no_nul() {
        let e = error_text(&format!("a\0b{}", "é".repeat(2000)));
        assert!(e.len() <= MAX_ERROR_TEXT);
        assert!(e.starts_with("a\\0b"));
        assert!(!e.contains('\0'));
    }

    #[test]
    fn the_limiter_writes_a_kind_once_per_period_and_counts_the_rest() {
        let mut l = LogLimiter::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(l.check("a", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(l.check("a", t0 + Duration::from_secs(i)), None);
        }
        // Another kind is not held back by the first.
        assert_eq!(l.check("b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(l.check("a", t0 + Duration::from_secs(31)), Some(5));
        assert_eq!(l.check("a", t0 + Duration::from_secs(32)), None);
        // Bounded: many kinds never grow it past MAX_KEYS.
        for i in 0..(LogLimiter::MAX_KEYS * 3) {
            l.check(&format!("k{i}"), t0 + Duration::from_secs(40));
        }
        assert!(l.seen.len() <= LogLimiter::MAX_KEYS);
    }

    #[test]
    fn tags_differ_per_database() {
        assert_ne!(source_tag(&["pg", "1", "a"]), source_tag(&["pg", "1", "b"]));
        assert_eq!(source_tag(&["pg", "1", "a"]).len(), 8);
    }
}
