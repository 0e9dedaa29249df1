//! Process-wide state inside mariadbd, apart from what any SQL function
//! does: the configuration in force, the routing table (gearman-core's
//! [`Routing`], shared by every session), the client pool ([`pool`]), the
//! reports of pipelined jobs ([`deferred`]), the per-connection last error
//! ([`session`]) and the error-log writer ([`log`]).

pub mod deferred;
pub mod dispatch;
pub mod log;
pub mod pool;
pub mod session;

use crate::config::{BackgroundDispatch, Config};
use gearman_core::{Options, Routing, ServerList};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;

pub use deferred::{dispatch_counts, flush_deferred_failures, note_deferred, DispatchCounts};
pub use log::log_error;
pub use session::{clear_last_error, last_error, set_last_error};

/// Everything the functions share within one server process.
#[derive(Debug)]
pub struct Runtime {
    /// The configuration in force (file or defaults).
    pub config: Config,
    /// Where the configuration was looked for.
    pub config_path: PathBuf,
    opts: Options,
    /// The routing table and its version (bumped by every change), so a
    /// pooled client is given the table again only after a change.
    routing: RwLock<(u64, Arc<Routing>)>,
    pool: Mutex<Vec<pool::Idle>>,
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
        let mut routing = Routing::new(default);
        for (f, s) in &config.function_servers {
            let list = ServerList::parse(s).map_err(|e| {
                format!(
                    "configuration file {}: function_servers.{f}: {e}",
                    config_path.display()
                )
            })?;
            routing
                .set_function(f.as_bytes(), Some(list))
                .map_err(|e| {
                    format!(
                        "configuration file {}: [function_servers]: {}",
                        config_path.display(),
                        e.message()
                    )
                })?;
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
            // gman_do_many's output is at most max_result_bytes, so the
            // results it gathers need not exceed that either: the job that
            // would cross it fails (null in its place) and no more is held.
            max_total_result: Some(config.max_result_bytes as usize),
            ..Options::default()
        };
        Ok(Runtime {
            config,
            config_path,
            opts,
            routing: RwLock::new((0, Arc::new(routing))),
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The routing table in force and its version.
    pub fn routing(&self) -> (u64, Arc<Routing>) {
        let r = self.routing.read().unwrap_or_else(|e| e.into_inner());
        (r.0, r.1.clone())
    }

    /// Sets the default list (`function` None) or one function's list;
    /// `list` None removes a function's own list. Takes effect for the next
    /// call of any session.
    ///
    /// # Errors
    /// An invalid function name (the table is unchanged then).
    pub fn set_servers(
        &self,
        function: Option<&[u8]>,
        list: Option<ServerList>,
    ) -> gearman_core::Result<()> {
        let mut r = self.routing.write().unwrap_or_else(|e| e.into_inner());
        let mut table = (*r.1).clone();
        match (function, list) {
            (None, Some(l)) => table.set_default(l),
            (Some(f), l) => table.set_function(f, l)?,
            (None, None) => return Ok(()),
        }
        if table != *r.1 {
            *r = (r.0 + 1, Arc::new(table));
        }
        Ok(())
    }

    /// The client options (timeouts) from the configuration.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Whether background calls are pipelined (`background_dispatch`).
    pub fn pipelined(&self) -> bool {
        self.config.background_dispatch == BackgroundDispatch::Pipelined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_changes_bump_the_version() {
        let rt = Runtime::new(Config::default(), PathBuf::from("/x")).unwrap();
        let (v0, r) = rt.routing();
        assert_eq!(r.lookup(b"f").to_string(), "127.0.0.1:4730");
        rt.set_servers(Some(b"f"), Some(ServerList::parse("h:1").unwrap()))
            .unwrap();
        let (v1, r) = rt.routing();
        assert!(v1 > v0);
        assert_eq!(r.lookup(b"f").to_string(), "h:1");
        assert_eq!(r.lookup(b"g").to_string(), "127.0.0.1:4730");
        assert_eq!(r.all_servers().len(), 2);
        // No change, no new version.
        rt.set_servers(Some(b"f"), Some(ServerList::parse("h:1").unwrap()))
            .unwrap();
        assert_eq!(rt.routing().0, v1);
        assert!(rt.set_servers(Some(b"bad name"), None).is_err());
        rt.set_servers(Some(b"f"), None).unwrap();
        assert_eq!(rt.routing().1.lookup(b"f").to_string(), "127.0.0.1:4730");
    }
}
