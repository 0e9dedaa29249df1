//! Process-wide state inside mariadbd, apart from what any SQL function
//! does: the configuration in force, the routing table ([`routing`]), the
//! client pool ([`pool`]), the reports of pipelined jobs ([`deferred`]),
//! the per-connection last error ([`session`]) and the error-log writer
//! ([`log`]).

pub mod deferred;
pub mod log;
pub mod pool;
pub mod routing;
pub mod session;
pub mod unique;

use crate::config::{BackgroundDispatch, Config};
use gearman_core::{Options, ServerAddr, ServerList};
use routing::Routing;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;

pub use deferred::{dispatch_counts, flush_deferred_failures, note_deferred, DispatchCounts};
pub use log::log_error;
pub use session::{clear_last_error, last_error, set_last_error};
pub use unique::generate_unique;

/// Everything the functions share within one server process.
#[derive(Debug)]
pub struct Runtime {
    /// The configuration in force (file or defaults).
    pub config: Config,
    /// Where the configuration was looked for.
    pub config_path: PathBuf,
    opts: Options,
    routing: RwLock<Routing>,
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
        let opts = Options {
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

    fn routing(&self) -> std::sync::RwLockReadGuard<'_, Routing> {
        self.routing.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The server list a job for `function` goes to right now.
    pub fn servers_for(&self, function: &[u8]) -> ServerList {
        self.routing().servers_for(function)
    }

    /// Sets the default list (`function` None) or one function's list;
    /// `list` None removes a function's own list.
    pub fn set_servers(&self, function: Option<&[u8]>, list: Option<ServerList>) {
        self.routing
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set(function, list);
    }

    /// Every distinct server list of the routing table: the default list
    /// first, then the functions' own lists in function-name order.
    pub fn all_lists(&self) -> Vec<ServerList> {
        self.routing().all_lists()
    }

    /// Every distinct server of the routing table, default list first.
    pub fn all_servers(&self) -> Vec<ServerAddr> {
        self.routing().all_servers()
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
}
