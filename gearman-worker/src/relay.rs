//! Relay mode: drain database outbox tables into the job servers.
//!
//! Sources: the PostgreSQL table `gearman.outbox` (created by the gearman-pg
//! extension; it runs `pg_notify('gearman_outbox', '')` at commit) and the
//! MySQL/MariaDB table `gearman_outbox` (`sql/mysql/outbox.sql`). Both have
//! `id, function, workload, unique_key, priority, run_at, created_at`.
//!
//! One thread per source repeats, in one transaction:
//! 1. `SELECT ... ORDER BY id LIMIT batch FOR UPDATE SKIP LOCKED`: rows
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
//! Rows whose submit failed stay (the batch is retried after the poll
//! interval, with a fresh connection to the job servers). Rows that can never
//! be submitted (empty function name, unique key over 63 bytes, unknown
//! priority) are logged at warn once and left in the table for a human.
//! A `run_at` in the future becomes a scheduled job (SUBMIT_JOB_EPOCH; for
//! MySQL `run_at` is read in the server's default time zone).
//!
//! Wake-up: PostgreSQL `LISTEN gearman_outbox` plus polling every
//! `--poll-interval-ms`; MySQL polling only. A full batch is followed by the
//! next one at once. Lost database connections are reopened after the poll
//! interval. SIGTERM/SIGINT: finish the current batch, exit 0; a second one
//! exits at once (uncommitted rows stay in the table).

use crate::cli::RelayArgs;
use gearman_core::{Client, Job, Options, Priority, ServerList};
use postgres::fallible_iterator::FallibleIterator;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The channel the PostgreSQL extension notifies at commit.
pub const PG_CHANNEL: &str = "gearman_outbox";
/// Largest number of known-bad row ids remembered per source.
const MAX_BAD_IDS: usize = 10_000;
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
}

impl RelaySettings {
    /// Settings from `relay` flags.
    pub fn from_args(args: &RelayArgs, servers: ServerList, client_id: Option<String>) -> Self {
        RelaySettings {
            servers,
            client_id,
            poll_interval: Duration::from_millis(args.poll_interval_ms.max(10)),
            batch_size: args.batch_size.clamp(1, 10_000),
        }
    }

    fn client(&self) -> Client {
        let opts = Options {
            client_id: self.client_id.clone(),
            ..Options::default()
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
    /// Rows whose submit failed (left in the table).
    pub failed: usize,
}

/// Submits the rows; returns ids that got JOB_CREATED, and the first error.
fn submit_rows(
    rows: &[OutboxRow],
    tag: &str,
    client: &mut Client,
    bad: &mut BTreeSet<i64>,
    source: &str,
) -> (Vec<i64>, usize, Option<String>) {
    let now = now_unix();
    let mut jobs = Vec::new();
    let mut ids = Vec::new();
    for row in rows {
        if bad.contains(&row.id) {
            continue;
        }
        match row_to_job(row, tag, now) {
            Ok(j) => {
                jobs.push(j);
                ids.push(row.id);
            }
            Err(e) => {
                crate::warn!(
                    "{source}: outbox row id={} cannot be sent and stays in the table: {e}",
                    row.id
                );
                if bad.len() < MAX_BAD_IDS {
                    bad.insert(row.id);
                }
            }
        }
    }
    if jobs.is_empty() {
        return (Vec::new(), 0, None);
    }
    let results = client.submit_background_all(&jobs);
    let mut ok = Vec::new();
    let mut failed = 0;
    let mut first_err = None;
    for (id, r) in ids.iter().zip(results) {
        match r {
            Ok(_) => ok.push(*id),
            Err(e) => {
                failed += 1;
                first_err.get_or_insert_with(|| e.to_string());
            }
        }
    }
    (ok, failed, first_err)
}

/// A PostgreSQL outbox source.
#[derive(Debug)]
pub struct PgSource {
    url: String,
    bad: BTreeSet<i64>,
    tag: String,
}

impl PgSource {
    /// A source for `url` (not connected yet).
    pub fn new(url: &str) -> PgSource {
        PgSource {
            url: url.to_string(),
            bad: BTreeSet::new(),
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
        batch_size: u32,
    ) -> Result<BatchResult, postgres::Error> {
        let mut tx = db.transaction()?;
        let limit = i64::from(batch_size) + self.bad.len() as i64;
        let rows = tx.query(
            "SELECT id, function, workload, unique_key, priority::text, \
                    extract(epoch FROM run_at)::int8 \
             FROM gearman.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[&limit],
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
                })
            })
            .collect::<Result<Vec<OutboxRow>, postgres::Error>>()?;
        let fetched = rows.iter().filter(|r| !self.bad.contains(&r.id)).count();
        let (ok, failed, err) = submit_rows(&rows, &self.tag, client, &mut self.bad, "postgres");
        if !ok.is_empty() {
            tx.execute("DELETE FROM gearman.outbox WHERE id = ANY($1)", &[&ok])?;
        }
        tx.commit()?;
        if let Some(e) = err {
            crate::warn!("postgres: {failed} outbox row(s) not sent, retrying later: {e}");
        }
        Ok(BatchResult {
            fetched,
            sent: ok.len(),
            failed,
        })
    }
}

/// A MySQL/MariaDB outbox source.
#[derive(Debug)]
pub struct MySource {
    url: String,
    bad: BTreeSet<i64>,
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
            bad: BTreeSet::new(),
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
        batch_size: u32,
    ) -> Result<BatchResult, String> {
        use mysql::prelude::Queryable;
        let err = |e: mysql::Error| e.to_string();
        let mut tx = db
            .start_transaction(mysql::TxOpts::default())
            .map_err(err)?;
        let limit = u64::from(batch_size) + self.bad.len() as u64;
        let raw: Vec<mysql::Row> = tx.exec(
            "SELECT CAST(id AS SIGNED), `function`, workload, unique_key, CAST(priority AS CHAR), \
                    CAST(UNIX_TIMESTAMP(run_at) AS SIGNED) \
             FROM gearman_outbox ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
            (limit,),
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
                })
            })
            .collect::<Result<Vec<OutboxRow>, String>>()?;
        let claim: Vec<i64> = rows
            .iter()
            .map(|r| r.id)
            .filter(|id| !self.bad.contains(id))
            .collect();
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
        let (ok, failed, send_err) = submit_rows(&rows, &self.tag, client, &mut self.bad, "mysql");
        if ok.len() != claim.len() {
            // Some rows were not sent: put every row back (the savepoint
            // keeps them locked) and delete just the sent ones.
            tx.query_drop("ROLLBACK TO SAVEPOINT gearman_claim")
                .map_err(err)?;
            if !ok.is_empty() {
                tx.query_drop(delete_sql(&ok)).map_err(err)?;
            }
        }
        tx.commit().map_err(|e| {
            format!(
                "{e}; {} sent row(s) may be sent again (their unique keys coalesce with jobs \
                 still queued)",
                ok.len()
            )
        })?;
        if let Some(e) = send_err {
            crate::warn!("mysql: {failed} outbox row(s) not sent, retrying later: {e}");
        }
        Ok(BatchResult {
            fetched,
            sent: ok.len(),
            failed,
        })
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
        batch_size: u32,
    ) -> Result<BatchResult, String>;
    /// Waits up to `d` for new rows (or `stop`) once the table is drained.
    fn idle(&mut self, db: &mut Self::Conn, d: Duration, stop: &AtomicBool) -> Result<(), String>;
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
        batch_size: u32,
    ) -> Result<BatchResult, String> {
        PgSource::batch(self, db, client, batch_size)
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
        batch_size: u32,
    ) -> Result<BatchResult, String> {
        MySource::batch(self, db, client, batch_size)
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
}

/// How often the relay repeats the same connect error at warn level.
const REPEAT_WARNING_EVERY: Duration = Duration::from_secs(30);

/// Drains one source until `stop` is set; counts rows sent in `sent`.
/// Database errors reconnect after the poll interval; a batch with failed
/// submits makes a fresh client (forgetting server back-off) and waits.
fn drain<S: Source>(mut src: S, url: &str, s: &RelaySettings, stop: &AtomicBool, sent: &AtomicU64) {
    let redacted = crate::config::redact_url(url);
    let kind = S::KIND;
    let mut client = s.client();
    // The same connect error again within REPEAT_WARNING_EVERY is logged
    // at debug only (a wrong password fails every poll interval, for ever).
    let mut last_failure: Option<(String, Instant)> = None;
    let mut failures = 0u64;
    'connect: while !stop.load(Ordering::SeqCst) {
        let mut db = match src.connect() {
            Ok(db) => db,
            Err(e) => {
                failures += 1;
                let repeat = last_failure
                    .as_ref()
                    .is_some_and(|(m, at)| *m == e && at.elapsed() < REPEAT_WARNING_EVERY);
                if repeat {
                    crate::debug!("{kind} {redacted}: {e} (attempt {failures})");
                } else {
                    crate::warn!(
                        "{kind} {redacted}: {e}; retrying every {} ms (attempt {failures}; \
                         the same error is logged again after {} s)",
                        s.poll_interval.as_millis(),
                        REPEAT_WARNING_EVERY.as_secs()
                    );
                    last_failure = Some((e, Instant::now()));
                }
                nap(s.poll_interval, stop);
                continue;
            }
        };
        if failures > 0 {
            crate::info!("{kind} {redacted}: connected after {failures} failed attempt(s)");
            failures = 0;
            last_failure = None;
        }
        crate::info!(
            "relaying {redacted} ({}, source tag {})",
            S::TABLE,
            src.tag()
        );
        while !stop.load(Ordering::SeqCst) {
            let step = src.batch(&mut db, &mut client, s.batch_size).and_then(|r| {
                sent.fetch_add(r.sent as u64, Ordering::Relaxed);
                if r.sent > 0 {
                    crate::debug!("{kind}: relayed {} row(s)", r.sent);
                }
                if r.failed > 0 {
                    client = s.client();
                    nap(s.poll_interval, stop);
                } else if r.fetched < s.batch_size as usize {
                    src.idle(&mut db, s.poll_interval, stop)?;
                }
                Ok(())
            });
            if let Err(e) = step {
                crate::warn!("{kind} {redacted}: {e}; reconnecting");
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
    fn tags_differ_per_database() {
        assert_ne!(source_tag(&["pg", "1", "a"]), source_tag(&["pg", "1", "b"]));
        assert_eq!(source_tag(&["pg", "1", "a"]).len(), 8);
    }
}
