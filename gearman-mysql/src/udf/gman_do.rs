//! `gman_do(function, workload [, unique])`, `gman_do_high`, `gman_do_low`:
//! one foreground job, its result.

use super::{job, Signature, Site, Udf};
use crate::abi::Arg;
use crate::runtime::runtime;
use gearman_core::Priority;
use std::time::Instant;

/// A foreground job at this priority.
#[derive(Debug, Clone, Copy)]
pub struct Do(pub Priority);

impl Udf for Do {
    fn signature(&self) -> Signature {
        Signature {
            usage: "(function, workload [, unique])",
            min: 2,
            max: 3,
        }
    }

    fn process(&mut self, _site: &mut Site, args: &[Arg<'_>]) -> Result<Option<Vec<u8>>, String> {
        let rt = runtime()?;
        let job = job::from_args(args, 2)?.with_priority(self.0);
        // One bound for the whole call: connecting, failing over, waiting.
        let deadline = rt.options().foreground_timeout.map(|t| Instant::now() + t);
        rt.with_client_until(deadline, |c| c.run(&job))
            .map(Some)
            .map_err(|e| job::describe(&job, &e))
    }
}
