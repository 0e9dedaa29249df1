//! `gman_server_status()`: JSON array, one object per server and function
//! (admin `status` of every server of the routing table, gearman-core's
//! `Client::server_status`: `queued` is the jobs waiting for a worker,
//! total minus running, in both databases).

use super::{Signature, Site, Udf};
use crate::abi::Arg;
use crate::runtime::runtime;
use std::time::Instant;

/// Every server's admin status.
#[derive(Debug, Clone, Copy)]
pub struct ServerStatus;

impl Udf for ServerStatus {
    fn signature(&self) -> Signature {
        Signature {
            usage: "()",
            min: 0,
            max: 0,
        }
    }

    /// Every server of the routing table, all within `io_timeout_ms` from
    /// the start of the call (each connect within `connect_timeout_ms`); a
    /// server not reached in time is an entry with its error.
    fn process(&mut self, site: &mut Site, _args: &[Arg<'_>]) -> Result<Option<Vec<u8>>, String> {
        let rt = runtime()?;
        let deadline = Instant::now() + rt.options().io_timeout;
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let answers = rt
            .with_client(|c| Ok(c.server_status_until(deadline)))
            .map_err(|e| e.to_string())?;
        let servers = answers.len();
        for (addr, r) in answers {
            match r {
                Ok(list) => {
                    for f in list {
                        out.push(serde_json::json!({
                            "server": addr.to_string(),
                            "function": &f.function,
                            "total": f.total,
                            "queued": f.queued(),
                            "running": f.running,
                            "workers": f.workers,
                        }));
                    }
                }
                Err(e) => {
                    errors.push(format!("{addr}: {e}"));
                    out.push(serde_json::json!({
                        "server": addr.to_string(), "error": e.to_string(),
                    }));
                }
            }
        }
        if servers > 0 && errors.len() == servers {
            return Err(errors.join("; "));
        }
        if !errors.is_empty() {
            // Partial answer: still returned, but not silently.
            site.fail(format!("{}: {}", site.name, errors.join("; ")));
        }
        Ok(Some(serde_json::Value::Array(out).to_string().into_bytes()))
    }
}
