//! Process-wide state inside mariadbd: configuration, routing table, the
//! client pool, the reports of pipelined jobs and the error-log writer
//! (the per-connection last error is in [`crate::session`]).

use crate::config::{BackgroundDispatch, Config};
use crate::session::{set_error_of, take_submitter, ConnId};
use gearman_core::{Client, DeferredReport, ErrorKind, Options, ServerAddr, ServerList};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Everything the functions share within one server process.
#[derive(Debug)]
pub struct Runtime {
    /// The configuration in force (file or defaults).
    pub config: Config,
    /// Where the configuration was looked for.
    pub config_path: PathBuf,
    opts: Options,
    routing: RwLock<Routing>,
    pool: Mutex<Vec<Idle>>,
}

/// An idle pooled client and when it was put back.
#[derive(Debug)]
struct Idle {
    client: Client,
    since: Instant,
}

#[derive(Debug, Clone)]
struct Routing {
    default: ServerList,
    per_function: HashMap<Vec<u8>, ServerList>,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The process runtime, created from the configuration file at first use.
/// `Err` carries the configuration error, which every call then reports.
pub fn runtime() -> Result<&'static Runtime, String> {
    RUNTIME
        .get_or_init(|| {
            let (path, required) = Config::location();
            let r = Config::load_from(&path, required).and_then(|(c, _)| Runtime::new(c, path));
            if let Err(e) = &r {
                log_error(&format!("not usable: {e}"));
            }
            r
        })
        .as_ref()
        .map_err(|e| e.clone())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Runtime {
    /// Builds the runtime from a parsed configuration.
    pub fn new(config: Config, config_path: PathBuf) -> Result<Runtime, String> {
        let default = match &config.servers {
            Some(s) => ServerList::parse(s).map_err(|e| {
                format!("configuration file {}: servers: {e}", config_path.display())
            })?,
            None => ServerList::default(),
        };
        let mut per_function = HashMap::new();
        for (f, s) in &config.function_servers {
            gearman_core::validate_function_name(f.as_bytes()).map_err(|e| {
                format!(
                    "configuration file {}: [function_servers]: {}",
                    config_path.display(),
                    e.message()
                )
            })?;
            let list = ServerList::parse(s).map_err(|e| {
                format!(
                    "configuration file {}: function_servers.{f}: {e}",
                    config_path.display()
                )
            })?;
            per_function.insert(f.as_bytes().to_vec(), list);
        }
        let tls = config
            .tls()
            .map_err(|e| format!("configuration file {}: {e}", config_path.display()))?;
        let opts = Options {
            tls,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            io_timeout: Duration::from_millis(config.io_timeout_ms),
            foreground_timeout: config.foreground_timeout(),
            client_id: Some("gearman-mysql-udf".into()),
            max_result: config.max_result_bytes as usize,
            ..Options::default()
        };
        Ok(Runtime {
            config,
            config_path,
            opts,
            routing: RwLock::new(Routing {
                default,
                per_function,
            }),
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The server list a job for `function` goes to right now.
    pub fn servers_for(&self, function: &[u8]) -> ServerList {
        let r = self.routing.read().unwrap_or_else(|e| e.into_inner());
        r.per_function.get(function).unwrap_or(&r.default).clone()
    }

    /// Sets the default list (`function` None) or one function's list;
    /// `list` None removes a function's own list.
    pub fn set_servers(&self, function: Option<&[u8]>, list: Option<ServerList>) {
        let mut r = self.routing.write().unwrap_or_else(|e| e.into_inner());
        match (function, list) {
            (None, Some(l)) => r.default = l,
            (Some(f), Some(l)) => {
                r.per_function.insert(f.to_vec(), l);
            }
            (Some(f), None) => {
                r.per_function.remove(f);
            }
            (None, None) => {}
        }
    }

    /// Every distinct server list of the routing table: the default list
    /// first, then the functions' own lists in function-name order.
    pub fn all_lists(&self) -> Vec<ServerList> {
        let r = self.routing.read().unwrap_or_else(|e| e.into_inner());
        let mut fl: Vec<(&Vec<u8>, &ServerList)> = r.per_function.iter().collect();
        fl.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = vec![r.default.clone()];
        for (_, l) in fl {
            if !out.contains(l) {
                out.push(l.clone());
            }
        }
        out
    }

    /// Every distinct server of the routing table, default list first.
    pub fn all_servers(&self) -> Vec<ServerAddr> {
        let r = self.routing.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<ServerAddr> = Vec::new();
        let mut lists: Vec<&ServerList> = vec![&r.default];
        let mut fl: Vec<(&Vec<u8>, &ServerList)> = r.per_function.iter().collect();
        fl.sort_by(|a, b| a.0.cmp(b.0));
        lists.extend(fl.into_iter().map(|(_, l)| l));
        for l in lists {
            for a in l.iter() {
                if !out.contains(a) {
                    out.push(a.clone());
                }
            }
        }
        out
    }

    /// The client options (timeouts) from the configuration.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Whether background calls are pipelined (`background_dispatch`).
    pub fn pipelined(&self) -> bool {
        self.config.background_dispatch == BackgroundDispatch::Pipelined
    }

    /// Runs `f` with a pooled client for `servers`, then puts the client
    /// back unless the error left its connection in an unknown state.
    ///
    /// The pool is shared by every server list: it holds at most
    /// `max_idle_connections` idle clients in all, each keeping one
    /// connection per server of the list it last served. A call takes the
    /// idle client that served the same list most recently, else the one
    /// whose list shares the most servers with `servers` (it is re-pointed
    /// with `Client::set_servers`, which keeps the connections to the
    /// shared servers and closes the others), else a new client; so a
    /// server named in many lists has one pooled connection per concurrent
    /// caller, not one per list. Putting a client back into a full pool
    /// closes the least recently used idle one; idle clients unused for
    /// `idle_timeout_ms` are closed at the next call (no background thread:
    /// it would outlive the library when `DROP FUNCTION` unloads it).
    ///
    /// Confirmations of pipelined background jobs that the client still owes
    /// (possibly submitted by another thread) are collected without waiting
    /// before and after `f`, and with waiting (bounded by the I/O timeout,
    /// or the call's deadline) before a client is closed; failures among
    /// them are reported (see [`note_deferred`]). Putting a client back into
    /// a full pool closes the least recently used idle client that owes no
    /// confirmation, if there is one.
    pub fn with_client<T>(
        &self,
        servers: &ServerList,
        f: impl FnOnce(&mut Client) -> gearman_core::Result<T>,
    ) -> gearman_core::Result<T> {
        self.with_client_until(servers, None, f)
    }

    /// [`Runtime::with_client`], with every wait of `f` (and of closing
    /// pooled clients on the way) bounded by `deadline` as well
    /// (`Options::deadline`): for SQL functions that make several calls
    /// within one bound.
    pub fn with_client_until<T>(
        &self,
        servers: &ServerList,
        deadline: Option<Instant>,
        f: impl FnOnce(&mut Client) -> gearman_core::Result<T>,
    ) -> gearman_core::Result<T> {
        // Closing clients on the way never waits past the call's bound.
        let close_by = deadline.unwrap_or_else(|| Instant::now() + self.opts.io_timeout);
        let (taken, expired) = {
            let mut pool = lock(&self.pool);
            let expired = self.take_expired(&mut pool);
            (take_best(&mut pool, servers), expired)
        };
        close_clients(expired, close_by);
        let mut client = match taken {
            Some(mut c) => {
                if c.servers() != servers {
                    c.set_servers(servers.clone());
                }
                c
            }
            None => Client::new(servers.clone(), self.opts.clone()),
        };
        client.options_mut().deadline = deadline;
        note_deferred(client.collect_deferred(false));
        let r = f(&mut client);
        let reusable = match &r {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                ErrorKind::Timeout | ErrorKind::Protocol | ErrorKind::Interrupted
            ),
        };
        note_deferred(client.collect_deferred(false));
        if !reusable || self.config.max_idle_connections == 0 {
            close_clients(vec![client], close_by);
            return r;
        }
        client.options_mut().deadline = None;
        let evicted = {
            let mut pool = lock(&self.pool);
            pool.push(Idle {
                client,
                since: Instant::now(),
            });
            let mut evicted = Vec::new();
            while pool.len() > self.config.max_idle_connections {
                // The least recently used one that owes no confirmation (the
                // pool is in return order), else the least recently used.
                let i = pool
                    .iter()
                    .position(|c| c.client.deferred_pending() == 0)
                    .unwrap_or(0);
                evicted.push(pool.remove(i).client);
            }
            evicted
        };
        close_clients(evicted, close_by);
        r
    }

    /// Removes the idle clients unused for longer than `idle_timeout_ms`.
    fn take_expired(&self, pool: &mut Vec<Idle>) -> Vec<Client> {
        let limit = Duration::from_millis(self.config.idle_timeout_ms);
        let now = Instant::now();
        let mut out = Vec::new();
        let mut i = 0;
        while i < pool.len() {
            if now.duration_since(pool[i].since) > limit {
                out.push(pool.remove(i).client);
            } else {
                i += 1;
            }
        }
        out
    }

    /// Collects, without waiting, the confirmations that idle pooled clients
    /// have received meanwhile (end of a statement with pipelined calls).
    pub fn collect_idle(&self) {
        let mut reports = Vec::new();
        {
            let mut pool = lock(&self.pool);
            for c in pool.iter_mut() {
                let r = c.client.collect_deferred(false);
                if !r.failed.is_empty() {
                    reports.push(r);
                }
            }
        }
        for r in reports {
            note_deferred(r);
        }
    }

    /// Number of idle pooled clients (all server lists).
    pub fn idle_clients(&self) -> usize {
        lock(&self.pool).len()
    }
}

/// Takes the idle client best suited to `servers` (see
/// [`Runtime::with_client`]): the most recent one with the same list, else
/// the most recent one sharing the most servers with it.
fn take_best(pool: &mut Vec<Idle>, servers: &ServerList) -> Option<Client> {
    let mut best: Option<(usize, usize)> = None; // (score, index)
    for (i, idle) in pool.iter().enumerate() {
        let theirs = idle.client.servers();
        let score = if theirs == servers {
            usize::MAX
        } else {
            servers
                .iter()
                .filter(|a| theirs.iter().any(|b| b == *a))
                .count()
        };
        // Later entries are more recent: `>=` prefers them on ties.
        if score > 0 && best.is_none_or(|(s, _)| score >= s) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| pool.remove(i).client)
}

/// Closes clients outside the pool lock: the confirmations they still owe
/// are read until `by` at the latest, the rest are reported as of unknown
/// fate (see [`note_deferred`]).
fn close_clients(clients: Vec<Client>, by: Instant) {
    for mut c in clients {
        c.options_mut().deadline = Some(by);
        c.disconnect();
        note_deferred(c.take_deferred_report());
    }
}

pub use crate::session::{clear_last_error, last_error, set_last_error};

/// Pipelined background jobs that failed after their call returned, as
/// collected by this thread since its last error-log line about them.
#[derive(Debug, Default)]
struct DeferredTally {
    refused: u64,
    unknown: u64,
    first_refused: Option<String>,
    first_unknown: Option<String>,
    since: Option<Instant>,
}

thread_local! {
    static DEFERRED: RefCell<DeferredTally> = RefCell::new(DeferredTally::default());
}

/// Pipelined background jobs not confirmed (refused or of unknown fate)
/// since the library was loaded.
static DEFERRED_FAILED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Collection reports held back per thread for at most this long before
/// their error-log line is written even mid-statement.
const DEFERRED_FLUSH_AFTER: Duration = Duration::from_secs(1);

impl DeferredTally {
    fn add(&mut self, f: &gearman_core::DeferredFailure) {
        if matches!(f.error.kind(), ErrorKind::Server { .. }) {
            self.refused += 1;
            if self.first_refused.is_none() {
                self.first_refused = Some(describe_failure(f));
            }
        } else {
            self.unknown += 1;
            if self.first_unknown.is_none() {
                self.first_unknown = Some(describe_failure(f));
            }
        }
    }

    fn message(&self, total: u64) -> String {
        let mut m = format!(
            "pipelined background dispatch: {} job{} not confirmed",
            self.refused + self.unknown,
            if self.refused + self.unknown == 1 {
                ""
            } else {
                "s"
            }
        );
        if self.refused > 0 {
            m.push_str(&format!(
                "; {} refused by the job server, not queued (first: {})",
                self.refused,
                self.first_refused.as_deref().unwrap_or("?")
            ));
        }
        if self.unknown > 0 {
            m.push_str(&format!(
                "; {} of unknown fate, no confirmation in time or connection lost: \
                 they may have been queued (first: {})",
                self.unknown,
                self.first_unknown.as_deref().unwrap_or("?")
            ));
        }
        m.push_str(&format!("; {total} since the library was loaded"));
        m
    }
}

fn describe_failure(f: &gearman_core::DeferredFailure) -> String {
    format!(
        "function '{}' unique '{}': {}",
        f.function,
        String::from_utf8_lossy(&f.unique),
        f.error
    )
}

/// Takes note of a collection report of pipelined background jobs: its
/// failures are added to this thread's tally, which becomes one error-log
/// line at the end of the statement (or after a second), and each failure
/// becomes the `gman_last_error()` of the connection that submitted the job
/// (never of the connection that merely collected the confirmation on a
/// shared pooled connection; see [`crate::session::note_submitter`]).
pub fn note_deferred(report: DeferredReport) {
    if report.failed.is_empty() {
        return;
    }
    let n = report.failed.len() as u64;
    let total = DEFERRED_FAILED_TOTAL.fetch_add(n, Ordering::Relaxed) + n;
    let mut per_conn: Vec<(ConnId, DeferredTally)> = Vec::new();
    for f in &report.failed {
        if let Some(c) = take_submitter(f.function.as_bytes(), &f.unique) {
            let i = match per_conn.iter().position(|(x, _)| *x == c) {
                Some(i) => i,
                None => {
                    per_conn.push((c, DeferredTally::default()));
                    per_conn.len() - 1
                }
            };
            per_conn[i].1.add(f);
        }
    }
    for (c, t) in per_conn {
        set_error_of(c, &t.message(total), true);
    }
    let r = DEFERRED.try_with(|t| {
        let mut t = t.borrow_mut();
        for f in &report.failed {
            t.add(f);
        }
        let since = *t.since.get_or_insert_with(Instant::now);
        since.elapsed() >= DEFERRED_FLUSH_AFTER
    });
    match r {
        Ok(flush_now) => {
            if flush_now {
                flush_deferred_failures();
            }
        }
        // Thread-local storage is gone (thread exit): log directly.
        Err(_) => log_error(&format!(
            "pipelined background dispatch: {n} jobs not confirmed; {}; {total} since the library was loaded",
            report.failed.first().map(describe_failure).unwrap_or_default()
        )),
    }
}

/// Writes this thread's tally of failed pipelined jobs, if any, as one
/// error-log line and resets it (end of statement).
pub fn flush_deferred_failures() {
    let msg = DEFERRED
        .try_with(|t| {
            let mut t = t.borrow_mut();
            if t.refused + t.unknown == 0 {
                return None;
            }
            let m = t.message(DEFERRED_FAILED_TOTAL.load(Ordering::Relaxed));
            *t = DeferredTally::default();
            Some(m)
        })
        .ok()
        .flatten();
    if let Some(m) = msg {
        log_error(&m);
    }
}

/// A new unique key for a pipelined job given none: 36 characters in the
/// shape of a version-4 UUID. 74 bits are random per process, the last 48
/// bits are a bijective scramble of a per-process counter, so keys never
/// repeat within one process (gearmand would coalesce two jobs with the
/// same key) and practically never across processes.
pub fn generate_unique() -> String {
    static SEED: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (a, b) = *SEED.get_or_init(random_seed);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    const MASK48: u64 = (1 << 48) - 1;
    // Odd multiplier and xor: a bijection on 48 bits.
    let node = (n.wrapping_mul(0x9E37_79B9_7F4B) ^ b) & MASK48;
    let time_low = (a >> 32) as u32;
    let time_mid = (a >> 16) as u16;
    let version = 0x4000 | ((a as u16) & 0x0FFF);
    let variant = 0x8000 | (((b >> 48) as u16) & 0x3FFF);
    format!("{time_low:08x}-{time_mid:04x}-{version:04x}-{variant:04x}-{node:012x}")
}

fn random_seed() -> (u64, u64) {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Read;
    let mut buf = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if from_os {
        let a = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(buf[8..].try_into().expect("8 bytes"));
        return (a, b);
    }
    // Fallback: std's per-process random hash keys, time and pid.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    (a, h.finish())
}

/// Identical error-log lines within this window are folded into one.
const LOG_FOLD_WINDOW: Duration = Duration::from_secs(1);

struct LogState {
    recent: HashMap<String, (Instant, u64)>,
}

static LOG: Mutex<Option<LogState>> = Mutex::new(None);

/// Writes one `[ERROR]` line to the server's error log (mariadbd's stderr).
///
/// The same message within one second is counted instead of written again;
/// the count is added to the next line written for it.
pub fn log_error(msg: &str) {
    let now = Instant::now();
    let suppressed = {
        let mut g = lock(&LOG);
        let st = g.get_or_insert_with(|| LogState {
            recent: HashMap::new(),
        });
        if st.recent.len() > 1000 {
            st.recent
                .retain(|_, (t, n)| now.duration_since(*t) < LOG_FOLD_WINDOW || *n > 0);
        }
        match st.recent.get_mut(msg) {
            Some((t, n)) if now.duration_since(*t) < LOG_FOLD_WINDOW => {
                *n += 1;
                return;
            }
            Some((t, n)) => {
                let s = *n;
                *t = now;
                *n = 0;
                s
            }
            None => {
                st.recent.insert(msg.to_owned(), (now, 0));
                0
            }
        }
    };
    let mut line = format!("{} 0 [ERROR] gearman-mysql-udf: {msg}", timestamp());
    if suppressed > 0 {
        line.push_str(&format!(" (and {suppressed} more like this before)"));
    }
    line = line.replace('\n', " ");
    line.push('\n');
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), the shape of mariadbd's own log lines.
fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_has_the_log_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 19, "{t}");
        assert_eq!(&t[4..5], "-");
        assert_eq!(&t[13..14], ":");
    }

    #[test]
    fn routing_prefers_the_function_list() {
        let rt = Runtime::new(Config::default(), PathBuf::from("/x")).unwrap();
        assert_eq!(rt.servers_for(b"f").to_string(), "127.0.0.1:4730");
        rt.set_servers(Some(b"f"), Some(ServerList::parse("h:1").unwrap()));
        assert_eq!(rt.servers_for(b"f").to_string(), "h:1");
        assert_eq!(rt.servers_for(b"g").to_string(), "127.0.0.1:4730");
        assert_eq!(rt.all_servers().len(), 2);
        rt.set_servers(Some(b"f"), None);
        assert_eq!(rt.servers_for(b"f").to_string(), "127.0.0.1:4730");
    }

    #[test]
    fn generated_unique_keys_are_uuid_shaped_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let k = generate_unique();
            assert_eq!(k.len(), 36, "{k}");
            assert_eq!(k.as_bytes()[14], b'4', "{k}");
            assert_eq!(k.matches('-').count(), 4, "{k}");
            assert!(seen.insert(k));
        }
    }

    #[test]
    fn deferred_failures_become_last_error_and_one_line() {
        let e = gearman_core::Error::new(
            ErrorKind::Server {
                code: "QUEUE_ERROR".into(),
                text: "Job queue is full".into(),
            },
            "refused",
        );
        let failed = (0..3)
            .map(|i| gearman_core::DeferredFailure {
                function: "f".into(),
                unique: format!("u{i}").into_bytes(),
                error: e.clone(),
            })
            .collect();
        std::thread::spawn(move || {
            for i in 0..3 {
                crate::session::note_submitter(b"f", format!("u{i}").as_bytes());
            }
            note_deferred(DeferredReport {
                confirmed: 5,
                failed,
                pending: 0,
            });
            let m = last_error().unwrap();
            assert!(m.contains("3 jobs not confirmed"), "{m}");
            assert!(m.contains("3 refused by the job server"), "{m}");
            assert!(m.contains("QUEUE_ERROR"), "{m}");
            assert!(m.contains("unique 'u0'"), "{m}");
            flush_deferred_failures();
            assert_eq!(DEFERRED.with(|t| t.borrow().refused), 0);
        })
        .join()
        .unwrap();
    }
}
