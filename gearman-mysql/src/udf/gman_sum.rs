//! `gman_sum(function, workload)` (AGGREGATE): one foreground job per row,
//! all jobs of a group run concurrently, the sum of their integer results.

use super::{job, Aggregate, Signature, Site};
use crate::abi::Arg;
use crate::config::{DEFAULT_MAX_SUM_ROWS, SUM_RESULT_MAX};
use crate::runtime::runtime;
use gearman_core::{Job, ServerList};
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
    fn run(&mut self) -> Result<Option<i64>, String> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.jobs.is_empty() {
            return Ok(None);
        }
        let rt = runtime()?;
        // One bound for the whole group, over every server list it uses.
        let deadline = rt.options().foreground_timeout.map(|t| Instant::now() + t);
        // All rows of one group share one client: the jobs are grouped by
        // server list so that per-function routing still holds.
        let mut by_list: Vec<(ServerList, Vec<usize>)> = Vec::new();
        for (i, j) in self.jobs.iter().enumerate() {
            let l = rt.servers_for(&j.function);
            match by_list.iter_mut().find(|(x, _)| *x == l) {
                Some((_, v)) => v.push(i),
                None => by_list.push((l, vec![i])),
            }
        }
        let mut total: i64 = 0;
        for (list, idx) in by_list {
            let jobs: Vec<Job> = idx.iter().map(|&i| self.jobs[i].clone()).collect();
            // Each row's result is an integer: a small cap per job bounds
            // the whole group (rows x SUM_RESULT_MAX).
            let results = rt
                .with_client_until(&list, deadline, |c| {
                    let cap = c.options().max_result;
                    c.options_mut().max_result = cap.min(SUM_RESULT_MAX);
                    let r = c.run_all(&jobs);
                    c.options_mut().max_result = cap;
                    Ok(r)
                })
                .map_err(|e| e.to_string())?;
            for (job, r) in jobs.iter().zip(results) {
                let bytes = r.map_err(|e| job::describe(job, &e))?;
                let text = String::from_utf8_lossy(&bytes);
                let n: i64 = text.trim().parse().map_err(|_| {
                    format!(
                        "function '{}' returned '{}', not an integer",
                        String::from_utf8_lossy(&job.function),
                        text.chars().take(40).collect::<String>()
                    )
                })?;
                total = total
                    .checked_add(n)
                    .ok_or_else(|| "sum overflows a signed 64-bit integer".to_string())?;
            }
        }
        Ok(Some(total))
    }
}
