//! Logging: one line per event on stderr, through the `log` facade.
//!
//! Every line, the worker's own and those of its libraries (gearman-core,
//! the database drivers), is a record of the `log` crate: the worker logs
//! with `log::error!` ... `log::debug!`, and lines about one job carry the
//! job's fields as `log` key-values ([`write_job`]). [`Logger`] is the one
//! `log::Log` of the process; it writes each record as one line in one write
//! call (lines of different threads never mix), in the process-wide
//! [`LogFormat`]:
//!
//! - `text`: `2026-11-29T08:47:06.123Z WARN  message` (RFC 3339 UTC time
//!   with milliseconds, by the `time` crate; the level padded to 5);
//! - `json`: one object per line, always with the same keys:
//!
//! ```json
//! {"attempt":1,"duration_ms":2001.3,"function":"resize","handle":"H:host:7",
//!  "level":"warn","message":"job failed function=resize ...: `convert` timed out after 2000 ms and was killed",
//!  "outcome":"timeout","time":"2026-11-29T08:47:06.123Z","unique":"u-1"}
//! ```
//!
//! `function`, `handle`, `unique`, `attempt`, `duration_ms` and `outcome`
//! are set on the lines about one job and `null` on the others (start, stop,
//! reload, relay, job-server lines). `unique` is the job's unique key (UTF-8,
//! invalid bytes replaced); `outcome` is one of the `outcome` labels of
//! `gearman_worker_jobs_total` (`ok`, `failed`, `timeout`, `retried`,
//! `dead_letter`). The `message` is the text line's message, so database
//! passwords are replaced by `***` in both formats (they are redacted where
//! the message is made, see [`crate::db::redact_url`]).
//!
//! The level is process-wide ([`set_level`]); records below it are not
//! formatted. Records of other crates are prefixed with their target
//! (`gearman_core::client: ...`); gearman-core's debug lines (one per job,
//! duplicating ours) show at trace, except "cannot connect", which shows at
//! warn at most once per [`CONNECT_WARN_EVERY`] so an unreachable job server
//! is visible at the default level. [`LogLimiter`] holds back warnings that
//! repeat (the relay's: one line per kind per 30 s, with the count of those
//! left out). Per-function job counters ([`Stats`]) feed the summary printed
//! on exit.

pub use log::Level;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Parses a level name: `error`, `warn` (or `warning`), `info`, `debug` or
/// `trace`, any case.
///
/// # Errors
/// Any other name (the message names it and lists the valid ones).
pub fn parse_level(s: &str) -> Result<Level, String> {
    if s.eq_ignore_ascii_case("warning") {
        return Ok(Level::Warn);
    }
    s.parse().map_err(|_| {
        format!(
            "unknown log level `{}` (expected error, warn, info, debug or trace)",
            s.to_ascii_lowercase()
        )
    })
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `2026-11-29T08:47:06.123Z WARN  message`.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    /// `text` or `json`.
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format `{other}` (expected text or json)"
            )),
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static FORMAT: AtomicU8 = AtomicU8::new(0);

/// Sets the process-wide log level (default `info`).
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    // gearman-core's debug records must reach the logger while warn lines
    // are shown: "cannot connect" is promoted to warn.
    let needed = if level >= Level::Warn {
        level.max(Level::Debug)
    } else {
        level
    };
    log::set_max_level(needed.to_level_filter());
}

/// The current process-wide log level.
pub fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        1 => Level::Error,
        2 => Level::Warn,
        3 => Level::Info,
        4 => Level::Debug,
        _ => Level::Trace,
    }
}

/// True when a line at `level` would be written.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Sets the process-wide log format (default text).
pub fn set_format(f: LogFormat) {
    FORMAT.store(
        match f {
            LogFormat::Text => 0,
            LogFormat::Json => 1,
        },
        Ordering::Relaxed,
    );
}

/// The process-wide log format.
pub fn format() -> LogFormat {
    if FORMAT.load(Ordering::Relaxed) == 1 {
        LogFormat::Json
    } else {
        LogFormat::Text
    }
}

/// The fields of a line about one job.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobFields<'a> {
    /// Function name.
    pub function: &'a str,
    /// Job handle.
    pub handle: &'a str,
    /// Unique key (bytes as received).
    pub unique: &'a [u8],
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Time in the handler, in milliseconds.
    pub duration_ms: f64,
    /// `ok`, `failed`, `timeout`, `retried` or `dead_letter`.
    pub outcome: &'a str,
}

/// Logs one line about a job at `level`, with the job's fields as `log`
/// key-values (keys of their own in the JSON format).
pub fn write_job(level: Level, job: &JobFields<'_>, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let unique = String::from_utf8_lossy(job.unique);
    log::log!(
        level,
        function = job.function,
        handle = job.handle,
        unique = &*unique,
        attempt = job.attempt,
        duration_ms = (job.duration_ms * 1000.0).round() / 1000.0,
        outcome = job.outcome;
        "{args}"
    );
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-29T08:47:06.123Z`.
pub fn timestamp(t: SystemTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from(t)
        .format(FORMAT)
        .unwrap_or_else(|_| "????-??-??T??:??:??.???Z".into())
}

/// Seconds since 1970-01-01 UTC.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Formats a duration for log lines: `12.3ms`, `1.204s`.
pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

/// Level a record of another crate is shown at (see the module doc).
fn bridged_level(level: Level, msg: &str) -> Level {
    match level {
        Level::Debug if msg.contains("cannot connect") && connect_warn_due() => Level::Warn,
        Level::Debug => Level::Trace,
        other => other,
    }
}

/// Minimum time between two "cannot connect" warnings.
pub const CONNECT_WARN_EVERY: Duration = Duration::from_secs(30);

static LAST_CONNECT_WARN: Mutex<Option<std::time::Instant>> = Mutex::new(None);

fn connect_warn_due() -> bool {
    let mut g = LAST_CONNECT_WARN.lock().unwrap_or_else(|p| p.into_inner());
    let now = std::time::Instant::now();
    match *g {
        Some(t) if now.duration_since(t) < CONNECT_WARN_EVERY => false,
        _ => {
            *g = Some(now);
            true
        }
    }
}

/// The job fields of a record's key-values, as JSON (absent: `null`).
#[derive(Default)]
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for JsonFields {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        use serde_json::Value as J;
        let key = key.as_str();
        if !JSON_JOB_KEYS.contains(&key) {
            return Ok(());
        }
        let v = if let Some(n) = value.to_u64() {
            J::from(n)
        } else if let Some(n) = value.to_i64() {
            J::from(n)
        } else if let Some(x) = value.to_f64() {
            J::from(x)
        } else if let Some(b) = value.to_bool() {
            J::Bool(b)
        } else if let Some(s) = value.to_borrowed_str() {
            J::String(s.to_string())
        } else {
            J::String(value.to_string())
        };
        self.0.insert(key.to_string(), v);
        Ok(())
    }
}

/// The job keys of a JSON line, besides `time`, `level` and `message`.
const JSON_JOB_KEYS: [&str; 6] = [
    "function",
    "handle",
    "unique",
    "attempt",
    "duration_ms",
    "outcome",
];

/// One log line (with its newline). `prefix` (a record's target) goes
/// before the message.
fn format_line(
    format: LogFormat,
    t: SystemTime,
    level: Level,
    r: &log::Record<'_>,
    prefix: Option<&str>,
) -> String {
    let time = timestamp(t);
    let message = match prefix {
        Some(p) => format!("{p}: {}", r.args()),
        None => r.args().to_string(),
    };
    match format {
        LogFormat::Text => format!("{time} {level:<5} {message}\n"),
        LogFormat::Json => {
            let mut fields = JsonFields::default();
            let _ = r.key_values().visit(&mut fields);
            let mut obj = fields.0;
            for k in JSON_JOB_KEYS {
                obj.entry(k).or_insert(serde_json::Value::Null);
            }
            obj.insert("time".into(), time.into());
            obj.insert("level".into(), level.as_str().to_ascii_lowercase().into());
            obj.insert("message".into(), message.into());
            let mut s = serde_json::Value::Object(obj).to_string();
            s.push('\n');
            s
        }
    }
}

/// The process's `log::Log`: writes records at or above the level to
/// stderr in the process-wide format.
#[derive(Debug)]
pub struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        // Other crates' debug records may be promoted to warn; decide in `log`.
        enabled(m.level()) || (m.level() == Level::Debug && enabled(Level::Warn))
    }

    fn log(&self, r: &log::Record<'_>) {
        let ours = r.target().starts_with("gearman_worker");
        let (level, prefix) = if ours {
            (r.level(), None)
        } else {
            if !enabled(Level::Warn) {
                return;
            }
            let level = if r.level() == Level::Debug {
                bridged_level(Level::Debug, &r.args().to_string())
            } else {
                r.level()
            };
            (level, Some(r.target()))
        };
        if !enabled(level) {
            return;
        }
        let line = format_line(format(), SystemTime::now(), level, r, prefix);
        // One write call per line keeps lines from different threads whole.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs [`Logger`] as the `log` facade's logger at the current level.
/// Idempotent.
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        set_level(level());
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
            Some(0) => log::warn!(
                "{msg} (repeats within {} s are not logged at warn)",
                self.every.as_secs()
            ),
            Some(n) => log::warn!(
                "{msg} ({n} more like this in the last {} s were not logged at warn)",
                self.every.as_secs()
            ),
        }
    }
}

/// Counters of one function.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FunctionStats {
    /// Jobs completed (WORK_COMPLETE).
    pub ok: u64,
    /// Jobs failed (WORK_FAIL, with or without a WORK_WARNING first, or WORK_EXCEPTION).
    pub failed: u64,
    /// Total time spent in handlers.
    pub busy: Duration,
}

/// Per-function job counters, shared by all worker threads.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<BTreeMap<String, FunctionStats>>,
}

impl Stats {
    /// Records one finished job.
    pub fn record(&self, function: &str, ok: bool, took: Duration) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(function.to_string()).or_default();
        if ok {
            e.ok += 1;
        } else {
            e.failed += 1;
        }
        e.busy += took;
    }

    /// A copy of the counters, by function name.
    pub fn snapshot(&self) -> BTreeMap<String, FunctionStats> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Logs one info line per function: jobs served, failed, mean duration.
    pub fn log_summary(&self) {
        let snap = self.snapshot();
        if snap.is_empty() {
            log::info!("summary: no jobs served");
        }
        for (function, s) in snap {
            let n = s.ok + s.failed;
            let mean = if n > 0 {
                s.busy / n as u32
            } else {
                Duration::ZERO
            };
            log::info!(
                "summary: function={function} jobs={n} ok={} failed={} mean={}",
                s.ok,
                s.failed,
                fmt_duration(mean)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn timestamp_formats_known_instants() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_942_026_123);
        assert_eq!(timestamp(t), "2026-11-29T08:47:06.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn level_parses_names_and_rejects_others() {
        assert_eq!(parse_level("DEBUG").unwrap(), Level::Debug);
        assert_eq!(parse_level("warning").unwrap(), Level::Warn);
        let e = parse_level("loud").unwrap_err();
        assert!(e.contains("loud"), "{e}");
    }

    /// Formats `record`'s line as the logger does.
    fn line_of(format: LogFormat, level: Level, job: Option<&JobFields<'_>>, msg: &str) -> String {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_942_026_123);
        let args = format_args!("{msg}");
        match job {
            Some(j) => {
                let unique = String::from_utf8_lossy(j.unique);
                let kvs: [(&str, log::kv::Value<'_>); 6] = [
                    ("function", j.function.into()),
                    ("handle", j.handle.into()),
                    ("unique", (&*unique).into()),
                    ("attempt", j.attempt.into()),
                    ("duration_ms", j.duration_ms.into()),
                    ("outcome", j.outcome.into()),
                ];
                let r = log::Record::builder()
                    .level(level)
                    .target("gearman_worker::handlers")
                    .key_values(&kvs)
                    .args(args)
                    .build();
                format_line(format, t, level, &r, None)
            }
            None => {
                let r = log::Record::builder()
                    .level(level)
                    .target("gearman_worker::relay")
                    .args(args)
                    .build();
                format_line(format, t, level, &r, None)
            }
        }
    }

    #[test]
    fn text_lines_have_time_padded_level_and_message() {
        assert_eq!(
            line_of(LogFormat::Text, Level::Warn, None, "m"),
            "2026-11-29T08:47:06.123Z WARN  m\n"
        );
        let r = log::Record::builder()
            .level(Level::Debug)
            .target("gearman_core::client")
            .args(format_args!("x"))
            .build();
        let t = UNIX_EPOCH;
        assert_eq!(
            format_line(
                LogFormat::Text,
                t,
                Level::Trace,
                &r,
                Some("gearman_core::client")
            ),
            "1970-01-01T00:00:00.000Z TRACE gearman_core::client: x\n"
        );
    }

    #[test]
    fn json_lines_escape_and_carry_every_key() {
        let j = JobFields {
            function: "f",
            handle: "H:x:1",
            unique: b"u\xff",
            attempt: 2,
            duration_ms: 1.235,
            outcome: "failed",
        };
        let line = line_of(LogFormat::Json, Level::Warn, Some(&j), "a \"quoted\"\nline");
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-11-29T08:47:06.123Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["function"], "f");
        assert_eq!(v["handle"], "H:x:1");
        assert_eq!(v["unique"], "u\u{fffd}");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["duration_ms"], 1.235);
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["message"], "a \"quoted\"\nline");
        assert_eq!(v.as_object().unwrap().len(), 9);
        let v: serde_json::Value =
            serde_json::from_str(&line_of(LogFormat::Json, Level::Info, None, "m")).unwrap();
        assert!(v["function"].is_null() && v["outcome"].is_null());
        assert_eq!(v["level"], "info");
        assert_eq!(v.as_object().unwrap().len(), 9);
        assert!("yaml".parse::<LogFormat>().unwrap_err().contains("yaml"));
    }

    #[test]
    fn core_debug_lines_show_at_trace_and_cannot_connect_at_warn_rarely() {
        assert_eq!(bridged_level(Level::Info, "x"), Level::Info);
        assert_eq!(bridged_level(Level::Debug, "job done"), Level::Trace);
        let first = bridged_level(Level::Debug, "cannot connect to h:1");
        let second = bridged_level(Level::Debug, "cannot connect to h:1");
        // At most one of two back-to-back ones is promoted (the first, unless
        // another test promoted one within CONNECT_WARN_EVERY).
        assert_eq!(second, Level::Trace);
        assert!(first == Level::Warn || first == Level::Trace);
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
    fn stats_count_per_function() {
        let s = Stats::default();
        s.record("a", true, Duration::from_millis(10));
        s.record("a", false, Duration::from_millis(30));
        s.record("b", true, Duration::from_millis(5));
        let snap = s.snapshot();
        assert_eq!(snap["a"].ok, 1);
        assert_eq!(snap["a"].failed, 1);
        assert_eq!(snap["a"].busy, Duration::from_millis(40));
        assert_eq!(snap["b"].ok, 1);
    }
}
