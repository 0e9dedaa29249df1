//! The log line formats: `text` (default) and `json`.
//!
//! `--log-format json` (TOML `log_format = "json"`) writes one JSON object
//! per line on stderr, always with the same keys:
//!
//! ```json
//! {"time":"2026-11-29T08:47:06.123Z","level":"warn","function":"resize","handle":"H:host:7",
//!  "unique":"u-1","attempt":1,"duration_ms":2001.3,"outcome":"timeout",
//!  "message":"job failed function=resize ...: `convert` timed out after 2000 ms and was killed"}
//! ```
//!
//! `function`, `handle`, `unique`, `attempt`, `duration_ms` and `outcome`
//! are set on the lines about one job and `null` on the others (start, stop,
//! reload, relay, job-server lines). `unique` is the job's unique key (UTF-8,
//! invalid bytes replaced); `outcome` is one of the `outcome` labels of
//! `gearman_worker_jobs_total` (`ok`, `failed`, `timeout`, `retried`,
//! `dead_letter`). The `message` is the text line's message, so database
//! passwords are replaced by `***` in both formats (they are redacted where
//! the message is made, see `db::redact_url`).

use std::sync::atomic::{AtomicU8, Ordering};

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

static FORMAT: AtomicU8 = AtomicU8::new(0);

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

/// One JSON log line (with its newline).
pub fn json_line(time: &str, level: &str, job: Option<&JobFields<'_>>, message: &str) -> String {
    let v = match job {
        Some(j) => serde_json::json!({
            "time": time,
            "level": level.to_ascii_lowercase(),
            "function": j.function,
            "handle": j.handle,
            "unique": String::from_utf8_lossy(j.unique),
            "attempt": j.attempt,
            "duration_ms": (j.duration_ms * 1000.0).round() / 1000.0,
            "outcome": j.outcome,
            "message": message,
        }),
        None => serde_json::json!({
            "time": time,
            "level": level.to_ascii_lowercase(),
            "function": null,
            "handle": null,
            "unique": null,
            "attempt": null,
            "duration_ms": null,
            "outcome": null,
            "message": message,
        }),
    };
    let mut s = v.to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_escape_and_carry_every_key() {
        let j = JobFields {
            function: "f",
            handle: "H:x:1",
            unique: b"u\xff",
            attempt: 2,
            duration_ms: 1.23456,
            outcome: "failed",
        };
        let line = json_line("T", "WARN", Some(&j), "a \"quoted\"\nline");
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["unique"], "u\u{fffd}");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["duration_ms"], 1.235);
        assert_eq!(v["message"], "a \"quoted\"\nline");
        let v: serde_json::Value =
            serde_json::from_str(&json_line("T", "INFO", None, "m")).unwrap();
        assert!(v["function"].is_null() && v["outcome"].is_null());
        assert_eq!(v.as_object().unwrap().len(), 9);
        assert!("yaml".parse::<LogFormat>().unwrap_err().contains("yaml"));
    }
}
