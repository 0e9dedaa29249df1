//! `gman_sum(function, workload)` (AGGREGATE): one foreground job per row,
//! all jobs of a group run concurrently, the sum of their integer results.

use super::{job, Aggregate, Signature, Site};
use crate::abi::Arg;
use crate::config::{DEFAULT_MAX_SUM_ROWS, SUM_RESULT_MAX};
use crate::runtime::runtime;
use gearman_core::{ErrorKind, Job};
use std::time::Instant;

/// The jobs of the current group.
#[derive(Debug, Default)]
pub struct Sum {
    /// Jobs of the current group.
    jobs: Vec<Job>,
    /// First error of the current group.
    error: Option<String>,
}

impl Aggregate for Sum {
    fn signature(&self) -> Signature {
        Signature {
            usage: "(function, workload)",
            min: 2,
            max: 2,
        }
    }

    fn clear(&mut self) {
        self.jobs.clear();
        self.error = None;
    }

    fn add(&mut self, args: &[Arg<'_>]) {
        if self.error.is_some() {
            return;
        }
        let limit = runtime()
            .map(|rt| rt.config.max_sum_rows)
            .unwrap_or(DEFAULT_MAX_SUM_ROWS);
        if self.jobs.len() >= limit {
            self.error = Some(format!(
                "more than {limit} rows in one group (max_sum_rows in the configuration file)"
            ));
            return;
        }
        match job::from_args(args, usize::MAX) {
            Ok(j) => self.jobs.push(j),
            Err(e) => self.error = Some(e),
        }
    }

    fn add_failed(&mut self, msg: String) {
        self.error = Some(msg);
    }

    /// `Ok(None)` for an empty group (SQL NULL, like `SUM()` over no rows).
    fn result(&mut self, _site: &mut Site) -> Result<Option<i64>, String> {
        let r = self.run();
        self.jobs.clear();
        r
    }
}

impl Sum {
    /// The group's jobs at once, across every server list they use
    /// (gearman-core's `Client::sum`: parsed as integers, added with
    /// overflow checked), each result capped at [`SUM_RESULT_MAX`] bytes,
    /// within one `foreground_timeout_ms` from the start.
    fn run(&mut self) -> Result<Option<i64>, String> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.jobs.is_empty() {
            return Ok(None);
        }
        let rt = runtime()?;
        let deadline = rt.options().foreground_timeout.map(|t| Instant::now() + t);
        let jobs = &self.jobs;
        let mut failed_job = None;
        rt.with_client_until(deadline, |c| {
            // Each row's result is an integer: a small cap per job bounds
            // the whole group (rows x SUM_RESULT_MAX).
            let cap = c.options().max_result;
            c.options_mut().max_result = cap.min(SUM_RESULT_MAX);
            let r = c.sum_with(jobs, |i, e| {
                failed_job = Some(i);
                Err(e)
            });
            c.options_mut().max_result = cap;
            r
        })
        .map_err(|e| match (e.kind(), failed_job) {
            // These name the function already.
            (ErrorKind::NotAnInteger | ErrorKind::Overflow, _) | (_, None) => e.to_string(),
            (_, Some(i)) => job::describe(&jobs[i], &e),
        })
    }
}
