//! Process-wide state inside mariadbd: configuration, routing table, the
//! client pool, the per-thread last error and the error-log writer.

use crate::config::Config;
use gearman_core::{Client, ErrorKind, Options, ServerAddr, ServerList};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
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
    pool: Mutex<HashMap<String, Vec<Client>>>,
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
            let list = ServerList::parse(s).map_err(|e| {
                format!(
                    "configuration file {}: function_servers.{f}: {e}",
                    config_path.display()
                )
            })?;
            per_function.insert(f.as_bytes().to_vec(), list);
        }
        let opts = Options {
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            io_timeout: Duration::from_millis(config.io_timeout_ms),
            foreground_timeout: config.foreground_timeout(),
            client_id: Some("gearman-mysql-udf".into()),
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
            pool: Mutex::new(HashMap::new()),
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

    /// Runs `f` with a pooled client for `servers`: an idle one if there is
    /// one, else a new one. The client goes back to the pool afterwards
    /// unless the error left its connection in an unknown state.
    pub fn with_client<T>(
        &self,
        servers: &ServerList,
        f: impl FnOnce(&mut Client) -> gearman_core::Result<T>,
    ) -> gearman_core::Result<T> {
        let key = servers.to_string();
        let taken = lock(&self.pool).get_mut(&key).and_then(|v| v.pop());
        let mut client = taken.unwrap_or_else(|| Client::new(servers.clone(), self.opts.clone()));
        let r = f(&mut client);
        let reusable = match &r {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                ErrorKind::Timeout | ErrorKind::Protocol | ErrorKind::Interrupted
            ),
        };
        if reusable {
            let mut pool = lock(&self.pool);
            let idle = pool.entry(key).or_default();
            if idle.len() < self.config.max_idle_connections {
                idle.push(client);
            }
        }
        r
    }

    /// Number of idle pooled clients (all server lists).
    pub fn idle_clients(&self) -> usize {
        lock(&self.pool).values().map(Vec::len).sum()
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records `msg` as this thread's last error (see `gman_last_error()`).
pub fn set_last_error(msg: &str) {
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = Some(msg.to_owned()));
}

/// This thread's last error, if any.
pub fn last_error() -> Option<String> {
    LAST_ERROR.try_with(|e| e.borrow().clone()).ok().flatten()
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
    fn last_error_is_per_thread() {
        set_last_error("boom");
        assert_eq!(last_error().as_deref(), Some("boom"));
        std::thread::spawn(|| assert_eq!(last_error(), None))
            .join()
            .unwrap();
    }
}
