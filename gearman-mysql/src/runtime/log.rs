//! The error-log writer: `[ERROR] gearman-mysql-udf:` lines on mariadbd's
//! stderr, identical lines within a second folded into a count.

use super::lock;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
}
