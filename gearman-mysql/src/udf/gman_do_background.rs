//! `gman_do_background(function, workload [, unique])`,
//! `gman_do_high_background`, `gman_do_low_background`: one background
//! job, its handle (round trip) or unique key (pipelined).

use super::{job, Signature, Site, Udf};
use crate::abi::Arg;
use crate::runtime::{runtime, Runtime};
use gearman_core::{Job, Priority};

/// A background job at this priority.
#[derive(Debug, Clone, Copy)]
pub struct Background(pub Priority);

impl Udf for Background {
    fn signature(&self) -> Signature {
        Signature {
            usage: "(function, workload [, unique])",
            min: 2,
            max: 3,
        }
    }

    fn process(&mut self, site: &mut Site, args: &[Arg<'_>]) -> Result<Option<Vec<u8>>, String> {
        let rt = runtime()?;
        let job = job::from_args(args, 2)?.with_priority(self.0);
        submit(site, rt, job).map(Some)
    }
}

/// Hands a background job to gearmand per `background_dispatch`: waits for
/// JOB_CREATED and returns the handle, or (pipelined) writes it and returns
/// its unique key (generated when the job has none).
pub fn submit(site: &mut Site, rt: &Runtime, mut job: Job) -> Result<Vec<u8>, String> {
    if rt.pipelined() {
        if job.unique.as_deref().is_none_or(<[u8]>::is_empty) {
            job = job.with_unique(gearman_core::new_unique_key());
        }
        let key = job.unique_bytes().to_vec();
        rt.submit_pipelined(&job)
            .map_err(|e| job::describe(&job, &e))?;
        site.pipelined += 1;
        return Ok(key);
    }
    rt.with_client(|c| c.submit_background(&job))
        .map(|h| h.handle.into_bytes())
        .map_err(|e| job::describe(&job, &e))
}
