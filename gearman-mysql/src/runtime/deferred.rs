//! The reports of pipelined background jobs (`background_dispatch =
//! "pipelined"`): refused or of unknown fate after their call returned.

use super::log::log_error;
use super::session::{note_submitter, set_error_of, take_submitter, ConnId};
use super::Runtime;
use gearman_core::{DeferredFailure, DeferredReport, Job};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Pipelined background jobs that failed after their call returned, as
/// collected by this thread since its last error-log line about them.
#[derive(Debug, Default)]
struct DeferredTally {
    refused: u64,
    unknown: u64,
    first_refused: Option<String>,
    first_unknown: Option<String>,
    since: Option<Instant>,
}

thread_local! {
    static DEFERRED: RefCell<DeferredTally> = RefCell::new(DeferredTally::default());
}

/// Counts of pipelined background jobs since the library was loaded, all
/// connections together (see [`dispatch_counts`]).
static SENT: AtomicU64 = AtomicU64::new(0);
static CONFIRMED: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);
static UNKNOWN: AtomicU64 = AtomicU64::new(0);

/// The pipelined background jobs of this server process since the library
/// was loaded (`gman_dispatch_status()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DispatchCounts {
    /// Jobs whose call returned their key (written to a job server).
    pub sent: u64,
    /// Jobs gearmand confirmed (JOB_CREATED: queued).
    pub confirmed: u64,
    /// Jobs gearmand refused (an ERROR reply: not queued).
    pub refused: u64,
    /// Jobs whose confirmation did not come in time or whose connection was
    /// lost first (fate unknown: they may have been queued).
    pub unknown: u64,
}

impl DispatchCounts {
    /// `refused + unknown`.
    pub fn failed(&self) -> u64 {
        self.refused + self.unknown
    }

    /// Jobs written whose confirmation has not been read yet:
    /// `sent - confirmed - failed`.
    pub fn pending(&self) -> u64 {
        self.sent.saturating_sub(self.confirmed + self.failed())
    }
}

/// The counts so far. A job is counted as sent before it is written (its
/// confirmation may be read by another thread at once), and uncounted again
/// if its call fails.
pub fn dispatch_counts() -> DispatchCounts {
    // Read the outcomes before `sent`, so that `pending` never counts a job
    // twice that was confirmed between the loads.
    let confirmed = CONFIRMED.load(Ordering::Acquire);
    let refused = REFUSED.load(Ordering::Acquire);
    let unknown = UNKNOWN.load(Ordering::Acquire);
    DispatchCounts {
        sent: SENT.load(Ordering::Acquire),
        confirmed,
        refused,
        unknown,
    }
}

fn failed_total() -> u64 {
    REFUSED.load(Ordering::Relaxed) + UNKNOWN.load(Ordering::Relaxed)
}

/// Collection reports held back per thread for at most this long before
/// their error-log line is written even mid-statement.
const DEFERRED_FLUSH_AFTER: Duration = Duration::from_secs(1);

impl DeferredTally {
    fn add(&mut self, f: &DeferredFailure) {
        if !f.is_unknown_fate() {
            self.refused += 1;
            if self.first_refused.is_none() {
                self.first_refused = Some(describe_failure(f));
            }
        } else {
            self.unknown += 1;
            if self.first_unknown.is_none() {
                self.first_unknown = Some(describe_failure(f));
            }
        }
    }

    fn message(&self, total: u64) -> String {
        let mut m = format!(
            "pipelined background dispatch: {} job{} not confirmed",
            self.refused + self.unknown,
            if self.refused + self.unknown == 1 {
                ""
            } else {
                "s"
            }
        );
        if self.refused > 0 {
            m.push_str(&format!(
                "; {} refused by the job server, not queued (first: {})",
                self.refused,
                self.first_refused.as_deref().unwrap_or("?")
            ));
        }
        if self.unknown > 0 {
            m.push_str(&format!(
                "; {} of unknown fate, no confirmation in time or connection lost: \
                 they may have been queued (first: {})",
                self.unknown,
                self.first_unknown.as_deref().unwrap_or("?")
            ));
        }
        m.push_str(&format!("; {total} since the library was loaded"));
        m
    }
}

fn describe_failure(f: &DeferredFailure) -> String {
    format!(
        "function '{}' unique '{}': {}",
        f.function,
        String::from_utf8_lossy(&f.unique),
        f.error
    )
}

/// Takes note of a collection report of pipelined background jobs: its
/// failures are added to this thread's tally, which becomes one error-log
/// line at the end of the statement (or after a second), and each failure
/// becomes the `gman_last_error()` of the connection that submitted the job
/// (never of the connection that merely collected the confirmation on a
/// shared pooled connection; see [`crate::runtime::session::note_submitter`]).
pub fn note_deferred(report: DeferredReport) {
    CONFIRMED.fetch_add(report.confirmed, Ordering::AcqRel);
    if report.failed.is_empty() {
        return;
    }
    let n = report.failed.len() as u64;
    for f in &report.failed {
        let counter = if !f.is_unknown_fate() {
            &REFUSED
        } else {
            &UNKNOWN
        };
        counter.fetch_add(1, Ordering::AcqRel);
    }
    let total = failed_total();
    let mut per_conn: Vec<(ConnId, DeferredTally)> = Vec::new();
    for f in &report.failed {
        if let Some(c) = take_submitter(f.function.as_bytes(), &f.unique) {
            let i = match per_conn.iter().position(|(x, _)| *x == c) {
                Some(i) => i,
                None => {
                    per_conn.push((c, DeferredTally::default()));
                    per_conn.len() - 1
                }
            };
            per_conn[i].1.add(f);
        }
    }
    for (c, t) in per_conn {
        set_error_of(c, &t.message(total), true);
    }
    let r = DEFERRED.try_with(|t| {
        let mut t = t.borrow_mut();
        for f in &report.failed {
            t.add(f);
        }
        let since = *t.since.get_or_insert_with(Instant::now);
        since.elapsed() >= DEFERRED_FLUSH_AFTER
    });
    match r {
        Ok(flush_now) => {
            if flush_now {
                flush_deferred_failures();
            }
        }
        // Thread-local storage is gone (thread exit): log directly.
        Err(_) => log_error(&format!(
            "pipelined background dispatch: {n} jobs not confirmed; {}; {total} since the library was loaded",
            report.failed.first().map(describe_failure).unwrap_or_default()
        )),
    }
}

/// Writes this thread's tally of failed pipelined jobs, if any, as one
/// error-log line and resets it (end of statement).
pub fn flush_deferred_failures() {
    let msg = DEFERRED
        .try_with(|t| {
            let mut t = t.borrow_mut();
            if t.refused + t.unknown == 0 {
                return None;
            }
            let m = t.message(failed_total());
            *t = DeferredTally::default();
            Some(m)
        })
        .ok()
        .flatten();
    if let Some(m) = msg {
        log_error(&m);
    }
}

impl Runtime {
    /// Hands one background job (with a unique key) to the process-wide
    /// sender (`background_dispatch = "pipelined"`, see
    /// [`super::dispatch`]) and returns without a socket call; waits at
    /// most `io_timeout_ms` for room in its bounded queue. The calling
    /// connection is noted as its submitter first: a later refusal or
    /// unknown fate goes to that connection's `gman_last_error()`.
    pub fn submit_pipelined(&self, job: &Job) -> gearman_core::Result<()> {
        let key = job.unique_bytes();
        // As the core names the function in its reports.
        let function = job.function_name();
        note_submitter(function.as_bytes(), key);
        SENT.fetch_add(1, Ordering::AcqRel);
        super::dispatch::submit(self, job.clone()).inspect_err(|_| {
            SENT.fetch_sub(1, Ordering::AcqRel);
            take_submitter(function.as_bytes(), key);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::session::last_error;
    use gearman_core::ErrorKind;

    #[test]
    fn deferred_failures_become_last_error_and_one_line() {
        let e = gearman_core::Error::new(
            ErrorKind::Server {
                code: "QUEUE_ERROR".into(),
                text: "Job queue is full".into(),
            },
            "refused",
        );
        let failed = (0..3)
            .map(|i| gearman_core::DeferredFailure {
                function: "f".into(),
                unique: format!("u{i}").into_bytes(),
                error: e.clone(),
            })
            .collect();
        std::thread::spawn(move || {
            for i in 0..3 {
                crate::runtime::session::note_submitter(b"f", format!("u{i}").as_bytes());
            }
            note_deferred(DeferredReport {
                confirmed: 5,
                failed,
                pending: 0,
            });
            let m = last_error().unwrap();
            assert!(m.contains("3 jobs not confirmed"), "{m}");
            assert!(m.contains("3 refused by the job server"), "{m}");
            assert!(m.contains("QUEUE_ERROR"), "{m}");
            assert!(m.contains("unique 'u0'"), "{m}");
            flush_deferred_failures();
            assert_eq!(DEFERRED.with(|t| t.borrow().refused), 0);
        })
        .join()
        .unwrap();
    }
}
