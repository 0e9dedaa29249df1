//! The functions this worker serves: built-ins, commands, SQL statements.
//!
//! Each backend implements [`Handler`]: workload bytes in, result bytes or a
//! [`JobError`] out. [`wrap`] turns a handler into the closure the core
//! worker runs, adding the per-job log line, statistics and panic capture.

pub mod builtin;
pub mod exec;
pub mod sql;
pub mod values;

use crate::config::{Backend, FunctionSpec};
use crate::logging::{fmt_duration, write_job, JobFields, Level, Stats};
use crate::metrics::Outcome;
use crate::retry::{self, Envelope, RetryPolicy};
use gearman_core::worker::{JobContext, WorkError, WorkResult};
use gearman_core::ServerList;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Plain failure (WORK_FAIL); the text is for the log only.
    Fail(String),
    /// Failure with data for the client: WORK_WARNING(data) then WORK_FAIL,
    /// or WORK_EXCEPTION(data) with the `exceptions` setting. `reason` is
    /// for the log, `data` goes to the client.
    Exception {
        /// Log text.
        reason: String,
        /// Bytes sent to the client.
        data: Vec<u8>,
    },
}

impl JobError {
    /// An exception whose client data is the same text as the log reason.
    pub fn exception(msg: impl Into<String>) -> JobError {
        let reason = msg.into();
        JobError::Exception {
            data: reason.clone().into_bytes(),
            reason,
        }
    }

    /// The log text.
    pub fn reason(&self) -> &str {
        match self {
            JobError::Fail(r) | JobError::Exception { reason: r, .. } => r,
        }
    }

    /// The core's failure value.
    pub fn into_work_error(self) -> WorkError {
        match self {
            JobError::Fail(_) => WorkError::Fail,
            JobError::Exception { data, .. } => WorkError::Exception(data),
        }
    }
}

/// Runs one job. Implementations are shared by every worker thread of a
/// function, so they are `Send + Sync`; a call blocks until the job is done
/// (bounded by the function's timeout where it has one).
pub trait Handler: Send + Sync + std::fmt::Debug {
    /// Runs one job with `workload`; returns the result bytes.
    ///
    /// # Errors
    /// A [`JobError`] fails the job (never the worker).
    fn call(&self, workload: &[u8]) -> Result<Vec<u8>, JobError>;
}

/// Builds the handler of one configured function. SQL connection pools are
/// shared through `pools` (one per database URL, kept across reloads).
pub fn build(spec: &FunctionSpec, pools: &crate::db::pool::Pools) -> Arc<dyn Handler> {
    match &spec.backend {
        Backend::Builtin(b) => Arc::new(builtin::BuiltinHandler::new(*b)),
        Backend::Exec(e) => Arc::new(exec::ExecHandler::new(e.clone())),
        Backend::Sql(s) => Arc::new(sql::SqlHandler::new(s.clone(), pools)),
    }
}

/// Text of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// What is known about a function beyond its handler: its metrics series
/// (when `--metrics-addr` is on) and its timeout, which tells a timed-out
/// failure from another one.
#[derive(Debug, Clone, Default)]
pub struct Observe {
    /// The function's series, when metrics are on.
    pub metrics: Option<crate::metrics::FunctionMetrics>,
    /// The function's timeout: a failure after at least this long counts
    /// as `timeout`, not `failed`.
    pub timeout: Option<Duration>,
    /// Retries of failed jobs, and the job servers they are scheduled on
    /// (set when the function has retries or a dead-letter table).
    pub retry: Option<(RetryPolicy, ServerList)>,
    /// Where jobs that failed for good go.
    pub dead_letter: Option<Arc<crate::deadletter::Destination>>,
}

impl Observe {
    /// For `spec` served on `servers`, with series from the process's
    /// metrics if they are on.
    pub fn for_spec(spec: &FunctionSpec, servers: &ServerList) -> Observe {
        Observe {
            retry: (spec.retry.retries > 0
                || spec.dead_letter.is_some()
                || spec.dead_letter_function.is_some())
            .then(|| (spec.retry, servers.clone())),
            dead_letter: match (&spec.dead_letter, &spec.dead_letter_function) {
                (Some(u), _) => Some(Arc::new(crate::deadletter::Destination::Table(
                    crate::deadletter::Store::new(u.clone()),
                ))),
                (None, Some(name)) => Some(Arc::new(crate::deadletter::Destination::Function {
                    name: name.clone(),
                    servers: servers.clone(),
                })),
                (None, None) => None,
            },
            metrics: crate::metrics::global().map(|m| m.function(&spec.name)),
            timeout: match &spec.backend {
                Backend::Builtin(_) => None,
                Backend::Exec(e) => e.timeout,
                Backend::Sql(s) => Some(s.timeout),
            },
        }
    }
}

/// One job as the core handed it over.
#[derive(Debug, Clone, Copy)]
pub struct JobInfo<'a> {
    /// Function name.
    pub function: &'a str,
    /// Job handle.
    pub handle: &'a str,
    /// Unique key (empty when the server sent none).
    pub unique: &'a [u8],
    /// Attempt number, from 1.
    pub attempt: u32,
}

/// Runs `handler` on one job: times it, logs one debug line on success and a
/// warn line on failure (function, handle, duration, reason), records it in
/// `stats`, and turns a panic into a failed job.
pub fn run_job(
    handler: &dyn Handler,
    stats: &Stats,
    function: &str,
    handle: &str,
    workload: &[u8],
) -> WorkResult {
    let job = JobInfo {
        function,
        handle,
        unique: b"",
        attempt: 1,
    };
    run_observed(handler, stats, &Observe::default(), &job, workload)
}

/// [`run_job`] that also counts the job in its metrics series and writes
/// the job's fields (unique key, attempt, outcome) into JSON log lines.
pub fn run_observed(
    handler: &dyn Handler,
    stats: &Stats,
    observe: &Observe,
    job: &JobInfo<'_>,
    workload: &[u8],
) -> WorkResult {
    run_observed_reason(handler, stats, observe, job, workload).0
}

/// [`run_observed`], also returning the failure's log text.
fn run_observed_reason(
    handler: &dyn Handler,
    stats: &Stats,
    observe: &Observe,
    job: &JobInfo<'_>,
    workload: &[u8],
) -> (WorkResult, Option<String>) {
    let (function, handle) = (job.function, job.handle);
    if let Some(m) = &observe.metrics {
        m.start();
    }
    let start = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| handler.call(workload)));
    let took = start.elapsed();
    let failure = match &outcome {
        Ok(Ok(_)) => Outcome::Ok,
        _ if observe.timeout.is_some_and(|t| took >= t) => Outcome::Timeout,
        _ => Outcome::Failed,
    };
    if let Some(m) = &observe.metrics {
        m.finish(failure, took);
    }
    let fields = JobFields {
        function,
        handle,
        unique: job.unique,
        attempt: job.attempt,
        duration_ms: took.as_secs_f64() * 1000.0,
        outcome: failure.as_str(),
    };
    match outcome {
        Ok(Ok(result)) => {
            stats.record(function, true, took);
            write_job(
                Level::Debug,
                &fields,
                format_args!(
                    "job done function={function} handle={handle} in={}B out={}B took={}",
                    workload.len(),
                    result.len(),
                    fmt_duration(took)
                ),
            );
            (Ok(result), None)
        }
        Ok(Err(e)) => {
            stats.record(function, false, took);
            write_job(
                Level::Warn,
                &fields,
                format_args!(
                    "job failed function={function} handle={handle} took={}: {}",
                    fmt_duration(took),
                    e.reason()
                ),
            );
            let reason = e.reason().to_string();
            (Err(e.into_work_error()), Some(reason))
        }
        Err(panic) => {
            stats.record(function, false, took);
            let reason = format!("handler panicked: {}", panic_message(panic.as_ref()));
            write_job(
                Level::Warn,
                &fields,
                format_args!(
                    "job failed function={function} handle={handle} took={}: {reason}",
                    fmt_duration(took),
                ),
            );
            (Err(WorkError::Fail), Some(reason))
        }
    }
}

/// The closure registered with the core worker for `handler`.
pub fn wrap(
    handler: Arc<dyn Handler>,
    stats: Arc<Stats>,
) -> impl Fn(&mut JobContext<'_>) -> WorkResult + Send + Sync + 'static {
    wrap_observed(handler, stats, Observe::default())
}

/// [`wrap`] with metrics and the function's timeout ([`Observe`]).
pub fn wrap_observed(
    handler: Arc<dyn Handler>,
    stats: Arc<Stats>,
    observe: Observe,
) -> impl Fn(&mut JobContext<'_>) -> WorkResult + Send + Sync + 'static {
    move |ctx: &mut JobContext<'_>| {
        // A retry envelope is unwrapped even where the function has no
        // retries now (e.g. after a reload): its handler gets the original
        // workload and a failure is not retried.
        let (policy, servers) = match &observe.retry {
            Some((p, s)) => (*p, Some(s)),
            None if ctx.workload().starts_with(retry::MAGIC) => (
                RetryPolicy {
                    retries: 0,
                    ..RetryPolicy::default()
                },
                None,
            ),
            None => {
                let job = JobInfo {
                    function: ctx.function(),
                    handle: ctx.handle(),
                    unique: ctx.unique(),
                    attempt: 1,
                };
                return run_observed(handler.as_ref(), &stats, &observe, &job, ctx.workload());
            }
        };
        // A retry carries its attempt and the original job in an envelope.
        let env = match Envelope::decode(ctx.workload()) {
            Ok(Some(e)) => e,
            Ok(None) => Envelope {
                attempt: 1,
                first_failure: 0,
                unique: ctx.unique().to_vec(),
                workload: ctx.take_workload(),
            },
            Err(e) => {
                log::warn!(
                    "job failed function={} handle={}: {e}",
                    ctx.function(),
                    ctx.handle()
                );
                return Err(JobError::exception(e).into_work_error());
            }
        };
        let job = JobInfo {
            function: ctx.function(),
            handle: ctx.handle(),
            unique: &env.unique,
            attempt: env.attempt,
        };
        retry::set_current_attempt(env.attempt);
        let (result, reason) =
            run_observed_reason(handler.as_ref(), &stats, &observe, &job, &env.workload);
        retry::set_current_attempt(1);
        if result.is_ok() {
            return result;
        }
        let failed = Envelope {
            first_failure: if env.first_failure == 0 {
                crate::logging::unix_now()
            } else {
                env.first_failure
            },
            ..env.clone()
        };
        let fields = JobFields {
            function: job.function,
            handle: job.handle,
            unique: &failed.unique,
            attempt: failed.attempt,
            duration_ms: 0.0,
            outcome: Outcome::Retried.as_str(),
        };
        let reason = reason.unwrap_or_default();
        let Some(servers) = servers.filter(|_| failed.attempt <= policy.retries) else {
            dead_letter(&observe, &job, &failed, &reason);
            return result;
        };
        match retry::schedule(servers, job.function, job.handle, &policy, &failed) {
            Ok(delay) => {
                if let Some(m) = &observe.metrics {
                    m.count(Outcome::Retried);
                }
                write_job(
                    Level::Info,
                    &fields,
                    format_args!(
                        "job retry scheduled function={} handle={}: attempt {} of {} in {}",
                        job.function,
                        job.handle,
                        failed.attempt + 1,
                        policy.retries + 1,
                        fmt_duration(delay)
                    ),
                );
            }
            Err(e) => {
                log::error!(
                    "job function={} handle={} failed on attempt {} and its retry could not be \
                     scheduled, so it is not tried again: {e}",
                    job.function,
                    job.handle,
                    failed.attempt
                );
                let why = format!("{reason} (and its retry could not be scheduled: {e})");
                dead_letter(&observe, &job, &failed, &why);
            }
        }
        result
    }
}

/// Writes a job that failed for good to the function's dead-letter table,
/// if it has one; counts it as `dead_letter` once written.
fn dead_letter(observe: &Observe, job: &JobInfo<'_>, failed: &Envelope, reason: &str) {
    let Some(store) = &observe.dead_letter else {
        return;
    };
    let row = crate::deadletter::NewDeadLetter {
        function: job.function,
        unique_key: &failed.unique,
        workload: &failed.workload,
        last_error: reason,
        attempts: failed.attempt,
        first_failed_unix: failed.first_failure,
    };
    let fields = JobFields {
        function: job.function,
        handle: job.handle,
        unique: &failed.unique,
        attempt: failed.attempt,
        duration_ms: 0.0,
        outcome: Outcome::DeadLetter.as_str(),
    };
    match store.write(&row) {
        Ok(()) => {
            if let Some(m) = &observe.metrics {
                m.count(Outcome::DeadLetter);
            }
            write_job(
                Level::Warn,
                &fields,
                format_args!(
                    "job dead-lettered function={} handle={} after {} attempt(s) into {}",
                    job.function,
                    job.handle,
                    failed.attempt,
                    store.describe()
                ),
            );
        }
        Err(e) => log::error!(
            "job function={} handle={} failed for good and could not be written to the \
             dead-letter destination {}, so it is lost (unique key {:?}, {} byte workload): {e}",
            job.function,
            job.handle,
            store.describe(),
            String::from_utf8_lossy(&failed.unique),
            failed.workload.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Panics;
    impl Handler for Panics {
        fn call(&self, _: &[u8]) -> Result<Vec<u8>, JobError> {
            panic!("boom")
        }
    }

    #[derive(Debug)]
    struct Fails;
    impl Handler for Fails {
        fn call(&self, _: &[u8]) -> Result<Vec<u8>, JobError> {
            Err(JobError::Exception {
                reason: "exit 3".into(),
                data: b"stderr text".to_vec(),
            })
        }
    }

    #[test]
    fn panic_becomes_fail_and_is_counted() {
        let stats = Stats::default();
        let r = run_job(&Panics, &stats, "f", "H:1", b"x");
        assert!(matches!(r, Err(WorkError::Fail)));
        assert_eq!(stats.snapshot()["f"].failed, 1);
    }

    #[test]
    fn exception_carries_data() {
        let stats = Stats::default();
        let r = run_job(&Fails, &stats, "f", "H:1", b"x");
        match r {
            Err(WorkError::Exception(d)) => assert_eq!(d, b"stderr text"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn success_is_counted() {
        let stats = Stats::default();
        let h = builtin::BuiltinHandler::new(crate::config::Builtin::Echo);
        assert_eq!(run_job(&h, &stats, "e", "H:2", b"abc").unwrap(), b"abc");
        assert_eq!(stats.snapshot()["e"].ok, 1);
    }
}
