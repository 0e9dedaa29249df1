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
use crate::db::DatabaseUrl;
pub use crate::logging::LogLimiter;
use gearman_core::{Client, ErrorKind, Job, Options, Priority, ServerList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let now = crate::logging::unix_now();
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

mod mysql;
mod pg;
pub use self::mysql::MySource;
pub use self::pg::PgSource;

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
pub(crate) trait Source {
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

/// How often the relay writes the same kind of warning.
const REPEAT_WARNING_EVERY: Duration = Duration::from_secs(30);

/// Drains one source until `stop` is set; counts rows sent in `sent`.
/// Database errors reconnect after the poll interval; a batch with failed
/// submits makes a fresh client (forgetting server back-off) and waits.
fn drain<S: Source>(
    mut src: S,
    url: &DatabaseUrl,
    s: &RelaySettings,
    stop: &AtomicBool,
    sent: &AtomicU64,
) {
    let redacted = url.redacted();
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
            log::info!("{kind} {redacted}: connected after {failures} failed attempt(s)");
            failures = 0;
        }
        log::info!(
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
                    log::debug!("{kind}: relayed {} row(s)", r.sent);
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
pub fn run_pg(url: &DatabaseUrl, s: &RelaySettings, stop: &AtomicBool, sent: &AtomicU64) {
    drain(PgSource::new(url.clone()), url, s, stop, sent);
}

/// Drains a MySQL/MariaDB outbox until `stop` is set; counts rows sent in `sent`.
pub fn run_my(url: &DatabaseUrl, s: &RelaySettings, stop: &AtomicBool, sent: &AtomicU64) {
    drain(MySource::new(url.clone()), url, s, stop, sent);
}

/// Runs the relay for every source until SIGTERM/SIGINT; returns rows sent per source.
///
/// # Errors
/// No source given, or the signal handlers could not be registered.
pub fn run(args: &RelayArgs, settings: RelaySettings) -> Result<HashMap<String, u64>, String> {
    if args.postgres.is_empty() && args.mysql.is_empty() {
        return Err("relay: give at least one --postgres URL or --mysql URL".into());
    }
    let mut urls = Vec::new();
    for u in &args.postgres {
        urls.push(DatabaseUrl::postgres(u).map_err(|e| format!("--postgres: {e}"))?);
    }
    for u in &args.mysql {
        urls.push(
            DatabaseUrl::mysql(u)
                .map_err(|e| format!("--mysql: `{}`: {e}", crate::db::redact_url(u)))?,
        );
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
    for url in urls {
        let kind = url.kind();
        let (stop, s) = (stop.clone(), settings.clone());
        let name = format!("{kind} {}", url.redacted());
        let counter = Arc::new(AtomicU64::new(0));
        let c = counter.clone();
        let t = std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &url {
                    DatabaseUrl::Postgres(_) => run_pg(&url, &s, &stop, &c),
                    DatabaseUrl::Mysql(_) => run_my(&url, &s, &stop, &c),
                }));
                if let Err(p) = r {
                    log::error!(
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
        log::info!("summary: relayed {n} row(s) from {name}");
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
    fn tags_differ_per_database() {
        assert_ne!(source_tag(&["pg", "1", "a"]), source_tag(&["pg", "1", "b"]));
        assert_eq!(source_tag(&["pg", "1", "a"]).len(), 8);
    }
}
