//! `gman_dispatch_status()`: JSON counts of the pipelined background jobs
//! (`background_dispatch = "pipelined"`) of this server process.

use super::{Signature, Site, Udf};
use crate::abi::Arg;
use crate::runtime::{dispatch_counts, runtime};

/// The counters of pipelined dispatch.
#[derive(Debug, Clone, Copy)]
pub struct DispatchStatus;

impl Udf for DispatchStatus {
    fn signature(&self) -> Signature {
        Signature {
            usage: "()",
            min: 0,
            max: 0,
        }
    }

    /// Reads the confirmations that idle pooled connections have received
    /// meanwhile (without waiting; failures among them are reported as
    /// usual), then the counts.
    fn process(&mut self, _site: &mut Site, _args: &[Arg<'_>]) -> Result<Option<Vec<u8>>, String> {
        let rt = runtime()?;
        rt.collect_idle();
        let c = dispatch_counts();
        let mut json = serde_json::json!({
            "dispatch": if rt.pipelined() { "pipelined" } else { "round_trip" },
            "sent": c.sent,
            "confirmed": c.confirmed,
            "failed": c.failed(),
            "refused": c.refused,
            "unknown": c.unknown,
            "pending": c.pending(),
        });
        // The process-wide sender, once started: its queue and servers.
        if let Some(s) = crate::runtime::dispatch::stats() {
            let servers: serde_json::Map<String, serde_json::Value> = s
                .servers
                .iter()
                .map(|(a, r)| (a.to_string(), format!("{r:?}").to_lowercase().into()))
                .collect();
            json["sender"] = serde_json::json!({
                "queued": s.queued,
                "queued_bytes": s.queued_bytes,
                "oldest_age_ms": s.oldest_age.map(|d| d.as_millis() as u64),
                "written": s.sent,
                "unsent": s.unsent,
                "panics": s.panics,
                "servers": servers,
            });
        }
        Ok(Some(json.to_string().into_bytes()))
    }
}
