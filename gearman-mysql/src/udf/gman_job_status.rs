//! `gman_job_status(handle_or_unique)`: JSON status of one job; a handle is
//! asked of every server, a unique key of the default list, then of each
//! function's own list.

use super::job::MAX_UNIQUE;
use super::{Signature, Site, Udf};
use crate::abi::Arg;
use crate::runtime::runtime;
use gearman_core::ServerList;
use std::time::Instant;

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

    fn process(&mut self, _site: &mut Site, args: &[Arg<'_>]) -> Result<Option<Vec<u8>>, String> {
        let rt = runtime()?;
        let key = match args.first().and_then(Arg::to_bytes) {
            Some(k) if !k.is_empty() => k,
            _ => return Err("handle is NULL or empty".into()),
        };
        // One bound for the whole walk over servers and lists.
        let deadline = Some(Instant::now() + rt.options().io_timeout);
        let json = if key.starts_with(b"H:") {
            let handle =
                String::from_utf8(key).map_err(|_| "handle is not valid UTF-8".to_string())?;
            let s = gearman_core::first_known(rt.all_servers(), |addr| {
                let list = ServerList::single(addr.clone());
                let jh = gearman_core::JobHandle {
                    server: addr,
                    handle: handle.clone(),
                };
                rt.with_client_until(&list, deadline, |c| c.status(&jh))
            })
            .map_err(|e| e.to_string())?;
            serde_json::json!({
                "known": s.known, "running": s.running,
                "numerator": s.numerator, "denominator": s.denominator,
            })
        } else {
            if key.len() > MAX_UNIQUE {
                return Err(format!(
                    "unique key is {} bytes, the limit is {MAX_UNIQUE}",
                    key.len()
                ));
            }
            // The key routes within the list of the function it was sent
            // for, which the key does not tell: ask each distinct list,
            // default first, until one knows it.
            let s = gearman_core::first_known(rt.all_lists(), |list| {
                rt.with_client_until(&list, deadline, |c| c.status_by_unique(&key))
            })
            .map_err(|e| e.to_string())?;
            serde_json::json!({
                "known": s.known, "running": s.running,
                "numerator": s.numerator, "denominator": s.denominator,
                "waiting": s.waiting,
            })
        };
        Ok(Some(json.to_string().into_bytes()))
    }
}
