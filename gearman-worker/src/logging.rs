//! A small logger of our own: one line per event on stderr.
//!
//! Line shape: `2026-11-29T08:47:06.123Z WARN message`. The level is
//! process-wide ([`set_level`]); messages below it are not formatted at all.
//! Per-function job counters ([`Stats`]) feed the summary printed on exit.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Severity of a log line, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed and was not recovered.
    Error = 1,
    /// A job failed, a server went away, a reload was rejected.
    Warn = 2,
    /// Start, stop, reload, per-function summary.
    Info = 3,
    /// One line per job.
    Debug = 4,
    /// Protocol-level detail.
    Trace = 5,
}

impl Level {
    /// The upper-case name used in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        }
    }
}

impl FromStr for Level {
    type Err = String;

    /// Parses `error`, `warn`, `info`, `debug` or `trace` (any case).
    fn from_str(s: &str) -> Result<Level, String> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Ok(Level::Error),
            "warn" | "warning" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            "trace" => Ok(Level::Trace),
            other => Err(format!(
                "unknown log level `{other}` (expected error, warn, info, debug or trace)"
            )),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str().to_ascii_lowercase())
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the process-wide log level (default `info`).
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
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

/// Writes one line at `level` to stderr (if enabled). Use the macros.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    emit(level, None, args);
}

/// Writes one line about a job at `level` (if enabled): in the JSON format
/// its fields are keys of their own ([`crate::logjson`]).
pub fn write_job(level: Level, job: &crate::logjson::JobFields<'_>, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    emit(level, Some(job), args);
}

fn emit(level: Level, job: Option<&crate::logjson::JobFields<'_>>, args: fmt::Arguments<'_>) {
    let time = timestamp(SystemTime::now());
    let line = match crate::logjson::format() {
        crate::logjson::LogFormat::Text => format!("{time} {:<5} {args}\n", level.as_str()),
        crate::logjson::LogFormat::Json => {
            crate::logjson::json_line(&time, level.as_str(), job, &args.to_string())
        }
    };
    // One write call per line keeps lines from different threads whole.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Logs at error level.
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::logging::write($crate::logging::Level::Error, format_args!($($t)*)) } }
/// Logs at warn level.
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::logging::write($crate::logging::Level::Warn, format_args!($($t)*)) } }
/// Logs at info level.
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::logging::write($crate::logging::Level::Info, format_args!($($t)*)) } }
/// Logs at debug level.
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::logging::write($crate::logging::Level::Debug, format_args!($($t)*)) } }

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-29T08:47:06.123Z`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Seconds since 1970-01-01 UTC.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Formats a duration for log lines: `12.3ms`, `1.204s`.
pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

/// Routes records of the `log` facade (used by gearman-core) to this logger.
#[derive(Debug)]
struct Bridge;

fn from_log(l: log::Level) -> Level {
    match l {
        log::Level::Error => Level::Error,
        log::Level::Warn => Level::Warn,
        log::Level::Info => Level::Info,
        log::Level::Debug => Level::Debug,
        log::Level::Trace => Level::Trace,
    }
}

/// Level a core record is shown at. The core's debug lines (one per job,
/// duplicating ours) show at trace, except "cannot connect", which shows at
/// warn at most once per [`CONNECT_WARN_EVERY`] so an unreachable job server
/// is visible at the default level.
fn bridged_level(level: log::Level, msg: &str) -> Level {
    match from_log(level) {
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

impl log::Log for Bridge {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        // Debug records may be promoted to warn; decide in `log`.
        m.level() <= log::Level::Debug || enabled(from_log(m.level()))
    }

    fn log(&self, r: &log::Record<'_>) {
        if !enabled(Level::Warn) {
            return;
        }
        let msg = r.args().to_string();
        let level = bridged_level(r.level(), &msg);
        write(level, format_args!("{}: {msg}", r.target()));
    }

    fn flush(&self) {}
}

static BRIDGE: Bridge = Bridge;

/// Installs the `log` bridge so gearman-core's messages reach stderr in the
/// same format. Idempotent.
pub fn init() {
    if log::set_logger(&BRIDGE).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
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
            crate::info!("summary: no jobs served");
        }
        for (function, s) in snap {
            let n = s.ok + s.failed;
            let mean = if n > 0 {
                s.busy / n as u32
            } else {
                Duration::ZERO
            };
            crate::info!(
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
        assert_eq!("DEBUG".parse::<Level>().unwrap(), Level::Debug);
        assert_eq!("warning".parse::<Level>().unwrap(), Level::Warn);
        let e = "loud".parse::<Level>().unwrap_err();
        assert!(e.contains("loud"), "{e}");
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
