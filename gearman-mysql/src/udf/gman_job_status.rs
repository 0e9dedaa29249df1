//! `gman_job_status(handle_or_unique)`: JSON status of one job, asked
//! across the routing table (gearman-core's `Client::job_status`): a handle
//! of every server, a unique key of the server it routes to in the default
//! list, then in each function's own list.

use super::{Signature, Site, Udf};
use crate::abi::Arg;
use crate::runtime::runtime;

/// The status of a job by handle or unique key.
#[derive(Debug, Clone, Copy)]
pub struct JobStatus;

impl Udf for JobStatus {
    fn signature(&self) -> Signature {
        Signature {
            usage: "(handle_or_unique)",
            min: 1,
            max: 1,
        }
    }

    /// `{"known","running","numerator","denominator"}`, plus `"waiting"`
    /// for a unique key; all within `io_timeout_ms` from the call's start.
    fn process(&mut self, _site: &mut Site, args: &[Arg<'_>]) -> Result<Option<Vec<u8>>, String> {
        let rt = runtime()?;
        let Some(key) = args.first().and_then(Arg::to_bytes) else {
            return Err("handle is NULL".into());
        };
        let key = String::from_utf8(key)
            .map_err(|_| "job handle or unique key is not valid UTF-8".to_string())?;
        let s = rt
            .with_client(|c| c.job_status(&key))
            .map_err(|e| e.to_string())?;
        let mut json = serde_json::json!({
            "known": s.known, "running": s.running,
            "numerator": s.numerator, "denominator": s.denominator,
        });
        if let Some(w) = s.waiting {
            json["waiting"] = w.into();
        }
        Ok(Some(json.to_string().into_bytes()))
    }
}
