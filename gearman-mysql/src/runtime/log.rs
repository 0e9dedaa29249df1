//! The error-log writer: `[ERROR] gearman-mysql-udf:` lines on mariadbd's
//! stderr, identical lines within a second folded into a count.

use super::lock;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use time::format_description::{self, BorrowedFormatItem};
use time::OffsetDateTime;

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
    static FORMAT: OnceLock<Vec<BorrowedFormatItem<'static>>> = OnceLock::new();
    let format = FORMAT.get_or_init(|| {
        format_description::parse_borrowed::<2>("[year]-[month]-[day] [hour]:[minute]:[second]")
            .unwrap_or_default()
    });
    OffsetDateTime::now_utc()
        .format(format.as_slice())
        .unwrap_or_else(|_| "0000-00-00 00:00:00".into())
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
        // The clock's date, not the fallback.
        let year: i32 = t[..4].parse().unwrap();
        assert!(year >= 2024, "{t}");
    }
}
