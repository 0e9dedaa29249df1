//! The SQL surface: `gman_do*`, `gman_do_background*`, `gman_do_many`,
//! `gman_servers_set`.
//!
//! Strictness: these functions are STRICT in their function-name argument
//! only (design.md): a NULL function name returns NULL without contacting
//! any server, a NULL workload submits an empty workload, a NULL unique key
//! means none. PostgreSQL cannot express "strict in one argument", so they
//! are declared non-STRICT and check it themselves. All are VOLATILE and
//! PARALLEL UNSAFE (they talk to the network and use per-backend state).
//!
//! Background jobs in `gearman.dispatch = commit` (the default) are held
//! until COMMIT and then written to gearmand without waiting for its
//! confirmation (see [`crate::xact`]): `gman_do_background*` returns the
//! job's unique key (the given one or a new UUID), which
//! `gman_job_status(key)` accepts. The confirmations are collected on the
//! next use of the connection by this backend; a job gearmand refused (e.g.
//! queue full under `maxqueue`), whose connection was lost before its
//! confirmation, or whose confirmation did not arrive within
//! `gearman.commit_send_timeout` of its write surfaces as a WARNING on a later statement and in
//! `gman_dispatch_status()`, not as an error of the committed transaction.

use crate::backend;
use crate::error::{or_report, GmError};
use crate::gucs::{self, Dispatch};
use crate::xact;
use gearman_core::{Job, Priority};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::ffi::CString;

/// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
const PG_EPOCH_UNIX: i64 = 946_684_800;

/// Builds and checks a job with the core's one validator
/// ([`Job::from_args`]): the same checks and texts as MySQL's UDFs. An
/// empty unique key means none.
pub(crate) fn make_job(
    function: &str,
    workload: Vec<u8>,
    unique: Option<&str>,
    priority: Priority,
) -> Result<Job, GmError> {
    let job =
        Job::from_args(function.as_bytes(), workload, unique.map(str::as_bytes)).map_err(|e| {
            let long_key = e.message().starts_with("unique key is");
            let g = GmError::from_core(&e, function, "(not sent)");
            if long_key {
                g.hint(
                    "gearmand keys jobs by at most 63 bytes of unique key; a longer key is \
                     not cut, it is refused. Hash long keys, e.g. md5(key).",
                )
            } else {
                g
            }
        })?;
    Ok(job.with_priority(priority))
}

/// Runs a foreground job and returns the worker's result bytes.
pub(crate) fn foreground(
    function: &str,
    workload: Vec<u8>,
    unique: Option<&str>,
    priority: Priority,
) -> Result<Vec<u8>, GmError> {
    let job = make_job(function, workload, unique, priority)?;
    let routing = backend::routing()?;
    backend::with_client(Some(&routing), true, |c| c.run(&job)).map_err(|e| {
        let servers = routing.lookup(function.as_bytes());
        GmError::from_core(&e, function, &servers.to_string())
    })
}

/// Seconds since the Unix epoch for a timestamptz (rounded down).
fn epoch_seconds(ts: TimestampWithTimeZone) -> Result<i64, GmError> {
    if !ts.is_finite() {
        return Err(GmError::invalid(
            "gearman: run_at must be a finite timestamp, not infinity",
        ));
    }
    let us: i64 = ts.into_inner();
    Ok(us.div_euclid(1_000_000) + PG_EPOCH_UNIX)
}

/// Sends (immediate), holds for commit (commit) or writes to the outbox
/// (outbox) one background job. Returns the job handle (immediate) or the
/// unique key (commit, outbox).
pub(crate) fn background(
    function: &str,
    workload: Vec<u8>,
    unique: Option<&str>,
    priority: Priority,
    run_at: Option<TimestampWithTimeZone>,
) -> Result<String, GmError> {
    let mode = gucs::dispatch();
    let unique_owned;
    let unique = match (mode, unique.filter(|u| !u.is_empty())) {
        (Dispatch::Immediate, u) => u,
        (_, Some(u)) => Some(u),
        (_, None) => {
            // SAFETY: plain read of this backend's process id (set after
            // the fork): no getpid system call per key.
            unique_owned = gearman_core::new_unique_key_in(unsafe { pg_sys::MyProcPid } as u32);
            Some(unique_owned.as_str())
        }
    };
    let mut job = make_job(function, workload, unique, priority)?;
    if let Some(ts) = run_at {
        job = job.with_epoch(epoch_seconds(ts)?);
    }
    match mode {
        Dispatch::Immediate => {
            let routing = backend::routing()?;
            // The core remembers the handle's server for gman_job_status.
            let h = backend::with_client(Some(&routing), true, |c| c.submit_background(&job))
                .map_err(|e| {
                    let servers = routing.lookup(function.as_bytes());
                    GmError::from_core(&e, function, &servers.to_string())
                })?;
            Ok(h.handle)
        }
        Dispatch::Commit => {
            let routing = backend::routing()?;
            // The key we made, or the caller's (text: valid UTF-8).
            let key = match unique {
                Some(u) => u.to_string(),
                None => String::from_utf8_lossy(job.unique_bytes()).into_owned(),
            };
            xact::hold(job, routing);
            Ok(key)
        }
        Dispatch::Outbox => {
            let key = String::from_utf8_lossy(job.unique_bytes()).into_owned();
            xact::outbox_insert(function, &job.workload, &key, priority.as_str(), run_at)?;
            Ok(key)
        }
    }
}

/// Result bytes as `text`: must be valid UTF-8 without NUL bytes; returned
/// byte for byte otherwise (nothing added or removed).
pub(crate) fn into_text(bytes: Vec<u8>, function: &str) -> Result<String, GmError> {
    if bytes.contains(&0) {
        return Err(text_error(function, "contains a NUL byte"));
    }
    String::from_utf8(bytes).map_err(|_| text_error(function, "is not valid UTF-8"))
}

fn text_error(function: &str, what: &str) -> GmError {
    GmError::new(
        PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
        format!("gearman: the worker's result {what} and cannot be returned as text"),
    )
    .detail(format!("function: {function}"))
    .hint(
        "Call the bytea form to get the result byte for byte, e.g. \
           gman_do('f', convert_to('workload', 'UTF8')).",
    )
}

macro_rules! foreground_fns {
    ($text_fn:ident, $bytea_fn:ident, $sql:tt, $prio:expr, $doc:tt) => {
        #[doc = $doc]
        ///
        /// `(function text, workload text, unique text DEFAULT NULL) RETURNS text`.
        /// VOLATILE, not STRICT (NULL function gives NULL), PARALLEL UNSAFE.
        /// Waits at most `gearman.timeout`; query cancel and
        /// `statement_timeout` end the wait. Errors: see the crate docs.
        #[pg_extern(name = $sql, volatile, parallel_unsafe)]
        pub fn $text_fn(
            function: Option<&str>,
            workload: Option<&str>,
            unique: default!(Option<&str>, "NULL"),
        ) -> Option<String> {
            let function = function?;
            let workload = workload.unwrap_or("").as_bytes().to_vec();
            or_report(
                foreground(function, workload, unique, $prio).and_then(|b| into_text(b, function)),
            )
        }

        #[doc = $doc]
        ///
        /// `(function text, workload bytea, unique text DEFAULT NULL) RETURNS bytea`:
        /// the result byte for byte. VOLATILE, not STRICT, PARALLEL UNSAFE.
        #[pg_extern(name = $sql, volatile, parallel_unsafe)]
        pub fn $bytea_fn(
            function: Option<&str>,
            workload: Option<&[u8]>,
            unique: default!(Option<&str>, "NULL"),
        ) -> Option<Vec<u8>> {
            let function = function?;
            let workload = workload.unwrap_or(&[]).to_vec();
            or_report(foreground(function, workload, unique, $prio))
        }
    };
}

foreground_fns!(
    gman_do_text,
    gman_do_bytea,
    "gman_do",
    Priority::Normal,
    "Runs a foreground job (normal priority) and returns the worker's result."
);
foreground_fns!(
    gman_do_high_text,
    gman_do_high_bytea,
    "gman_do_high",
    Priority::High,
    "Runs a high-priority foreground job and returns the worker's result."
);
foreground_fns!(
    gman_do_low_text,
    gman_do_low_bytea,
    "gman_do_low",
    Priority::Low,
    "Runs a low-priority foreground job and returns the worker's result."
);

macro_rules! background_fns {
    ($text_fn:ident, $bytea_fn:ident, $sql:tt, $prio:expr, $doc:tt) => {
        #[doc = $doc]
        ///
        /// `(function text, workload text, unique text DEFAULT NULL) RETURNS text`.
        /// Per `gearman.dispatch`: `immediate` sends it now and returns the job
        /// handle; `commit` (default) holds it until COMMIT and returns its
        /// unique key (the given one, or a new UUID; `gman_job_status` takes
        /// it); `outbox` writes a row to `gearman.outbox` and returns the
        /// unique key. In `commit` mode COMMIT fails if no server is
        /// reachable (`on_error = error`), then writes the jobs without
        /// waiting for gearmand's confirmations: those are collected on the
        /// next use of the connection, and a job gearmand refused (e.g. queue
        /// full), whose connection was lost before confirmation or whose
        /// confirmation did not arrive within `gearman.commit_send_timeout`
        /// is reported as a WARNING on a later statement and in
        /// `gman_dispatch_status()`. In `immediate` mode the wait for
        /// JOB_CREATED is bounded by 5 s (connecting and fail-over
        /// included); a timeout there may still have queued the job.
        /// VOLATILE, not STRICT (NULL function gives NULL), PARALLEL UNSAFE.
        #[pg_extern(name = $sql, volatile, parallel_unsafe)]
        pub fn $text_fn(
            function: Option<&str>,
            workload: Option<&str>,
            unique: default!(Option<&str>, "NULL"),
        ) -> Option<String> {
            let function = function?;
            let workload = workload.unwrap_or("").as_bytes().to_vec();
            or_report(background(function, workload, unique, $prio, None))
        }

        #[doc = $doc]
        ///
        /// `(function text, workload bytea, unique text DEFAULT NULL) RETURNS text`.
        /// VOLATILE, not STRICT, PARALLEL UNSAFE.
        #[pg_extern(name = $sql, volatile, parallel_unsafe)]
        pub fn $bytea_fn(
            function: Option<&str>,
            workload: Option<&[u8]>,
            unique: default!(Option<&str>, "NULL"),
        ) -> Option<String> {
            let function = function?;
            let workload = workload.unwrap_or(&[]).to_vec();
            or_report(background(function, workload, unique, $prio, None))
        }
    };
}

background_fns!(
    gman_do_background_text,
    gman_do_background_bytea,
    "gman_do_background",
    Priority::Normal,
    "Submits a background job (normal priority)."
);
background_fns!(
    gman_do_high_background_text,
    gman_do_high_background_bytea,
    "gman_do_high_background",
    Priority::High,
    "Submits a high-priority background job."
);
background_fns!(
    gman_do_low_background_text,
    gman_do_low_background_bytea,
    "gman_do_low_background",
    Priority::Low,
    "Submits a low-priority background job."
);

/// Submits a scheduled background job (SUBMIT_JOB_EPOCH): gearmand hands it
/// to a worker at `run_at` (whole seconds, rounded down).
///
/// `(function text, workload text, run_at timestamptz, unique text DEFAULT NULL) RETURNS text`:
/// the job handle (`immediate`) or unique key (`commit`, `outbox`), as
/// `gman_do_background`. VOLATILE, not STRICT (NULL function or NULL
/// run_at gives NULL), PARALLEL UNSAFE.
#[pg_extern(name = "gman_do_background_at", volatile, parallel_unsafe)]
pub fn gman_do_background_at_text(
    function: Option<&str>,
    workload: Option<&str>,
    run_at: Option<TimestampWithTimeZone>,
    unique: default!(Option<&str>, "NULL"),
) -> Option<String> {
    let function = function?;
    let run_at = run_at?;
    let workload = workload.unwrap_or("").as_bytes().to_vec();
    or_report(background(
        function,
        workload,
        unique,
        Priority::Normal,
        Some(run_at),
    ))
}

/// `gman_do_background_at` with a `bytea` workload.
/// VOLATILE, not STRICT, PARALLEL UNSAFE.
#[pg_extern(name = "gman_do_background_at", volatile, parallel_unsafe)]
pub fn gman_do_background_at_bytea(
    function: Option<&str>,
    workload: Option<&[u8]>,
    run_at: Option<TimestampWithTimeZone>,
    unique: default!(Option<&str>, "NULL"),
) -> Option<String> {
    let function = function?;
    let run_at = run_at?;
    let workload = workload.unwrap_or(&[]).to_vec();
    or_report(background(
        function,
        workload,
        unique,
        Priority::Normal,
        Some(run_at),
    ))
}

/// Scatter/gather: one foreground job per array element, all submitted
/// before any result is awaited; one row per element, in input order
/// (`ordinality` counts from 1). A NULL element is an empty workload.
///
/// `(function text, workloads text[]) RETURNS TABLE(ordinality int, result text)`.
/// A failed job raises (`on_error = error`) or gives a WARNING and a NULL
/// result for that row. VOLATILE, not STRICT (NULL function or array gives
/// no rows), PARALLEL UNSAFE.
#[pg_extern(volatile, parallel_unsafe)]
pub fn gman_do_many(
    function: Option<&str>,
    workloads: Option<Array<'_, &str>>,
) -> TableIterator<'static, (name!(ordinality, i32), name!(result, Option<String>))> {
    let (Some(function), Some(workloads)) = (function, workloads) else {
        return TableIterator::empty();
    };
    let calls = workloads
        .iter()
        .map(|w| (function.to_string(), w.unwrap_or("").as_bytes().to_vec()))
        .collect();
    TableIterator::new(backend::within_deadline(|_| gather(calls)))
}

/// Scatter/gather over several functions: element `i` of `workloads` goes
/// to the function named by element `i` of `functions` (the cookbook's
/// "one request, several kinds of work"). All jobs are submitted before
/// any result is awaited, so the call takes about as long as the slowest
/// job, not the sum; one row per element, in input order.
///
/// `(functions text[], workloads text[]) RETURNS TABLE(ordinality int, result text)`.
/// The arrays must have the same length; a NULL function element is an
/// error, a NULL workload element an empty workload. Jobs whose functions
/// have different server lists (`gman_servers_set(servers, function)`) go
/// each to its own list, all in the same set (every job submitted before
/// any result is awaited). Errors per row as the
/// one-function form. VOLATILE, not STRICT (a NULL array gives no rows),
/// PARALLEL UNSAFE.
#[pg_extern(name = "gman_do_many", volatile, parallel_unsafe)]
pub fn gman_do_many_functions(
    functions: Option<Array<'_, &str>>,
    workloads: Option<Array<'_, &str>>,
) -> TableIterator<'static, (name!(ordinality, i32), name!(result, Option<String>))> {
    let (Some(functions), Some(workloads)) = (functions, workloads) else {
        return TableIterator::empty();
    };
    if functions.len() != workloads.len() {
        GmError::invalid(format!(
            "gearman: gman_do_many got {} function(s) and {} workload(s); the arrays must \
             have the same length",
            functions.len(),
            workloads.len()
        ))
        .raise();
    }
    let mut calls = Vec::with_capacity(functions.len());
    for (i, (f, w)) in functions.iter().zip(workloads.iter()).enumerate() {
        let Some(f) = f else {
            GmError::invalid(format!(
                "gearman: gman_do_many: function {} of {} is NULL",
                i + 1,
                functions.len()
            ))
            .raise();
        };
        calls.push((f.to_string(), w.unwrap_or("").as_bytes().to_vec()));
    }
    TableIterator::new(backend::within_deadline(|_| gather(calls)))
}

/// Runs `(function, workload)` foreground jobs concurrently, each routed
/// by its function (jobs of every server list run in one set); returns
/// `(ordinality, result)` rows in input order. Bad arguments raise before
/// anything is sent. Called within one deadline (`gearman.timeout`) for
/// every job together; each job's result is capped at
/// `gearman.max_result_size`, and all results together at 1 GB (past it,
/// the job that would cross it fails with 54000).
fn gather(calls: Vec<(String, Vec<u8>)>) -> Vec<(i32, Option<String>)> {
    let jobs: Vec<Job> = calls
        .iter()
        .map(|(f, w)| make_job(f, w.clone(), None, Priority::Normal).unwrap_or_else(|e| e.raise()))
        .collect();
    let routing = backend::routing().unwrap_or_else(|e| e.raise());
    let out = match backend::with_client(Some(&routing), true, |c| Ok(c.run_all(&jobs))) {
        Ok(r) => r,
        Err(e) => {
            let f = &calls[0].0;
            let servers = routing.lookup(f.as_bytes()).to_string();
            GmError::from_core(&e, f, &servers).raise()
        }
    };
    // A cancel that arrived during the set: raise it now.
    if out
        .iter()
        .any(|r| matches!(r, Err(e) if e.is_interrupted()))
    {
        pg_sys::check_for_interrupts!();
    }
    out.into_iter()
        .zip(&calls)
        .enumerate()
        .map(|(i, (r, (f, _)))| {
            let r = r
                .map_err(|e| {
                    let servers = routing.lookup(f.as_bytes()).to_string();
                    GmError::from_core(&e, f, &servers)
                })
                .and_then(|b| into_text(b, f));
            (i as i32 + 1, or_report(r))
        })
        .collect()
}

/// Sets the server list for this session (`host[:port],...`) and returns
/// true, as pggearman's `gman_servers_set(text) RETURNS boolean` did (so
/// `IF gman_servers_set(...) THEN` runs unchanged). The same as `SET
/// gearman.servers = ...`, so it needs the same privilege (superuser or
/// `GRANT SET ON PARAMETER gearman.servers`) and is undone by a rolled-back
/// transaction. A list that does not parse raises `22023` naming the bad
/// entry (`gearman.on_error = warning`: a WARNING and false); a missing
/// privilege raises `42501`.
///
/// `(servers text) RETURNS boolean`. VOLATILE, STRICT, PARALLEL UNSAFE.
#[pg_extern(name = "gman_servers_set", volatile, strict, parallel_unsafe)]
pub fn gman_servers_set(servers: &str) -> bool {
    if let Err(e) = backend::parse_servers(servers) {
        e.report();
        return false;
    }
    set_servers_guc(servers, true);
    true
}

/// Sets the server list for one function in this session; an empty list
/// removes the override. Needs the privilege to set `gearman.servers`.
/// Returns true (pggearman's per-function form returned boolean too);
/// errors as the one-argument form.
///
/// `(servers text, function text) RETURNS boolean`. VOLATILE, STRICT,
/// PARALLEL UNSAFE.
#[pg_extern(name = "gman_servers_set", volatile, strict, parallel_unsafe)]
pub fn gman_servers_set_function(servers: &str, function: &str) -> bool {
    if let Err(e) = gearman_core::validate_function_name(function.as_bytes()) {
        GmError::from_core(&e, function, servers).report();
        return false;
    }
    let list = if servers.trim().is_empty() {
        None
    } else {
        match backend::parse_servers(servers) {
            Ok(l) => Some(l),
            Err(e) => {
                e.report();
                return false;
            }
        }
    };
    // Privilege check only (changeVal = false): the same rule as SET.
    set_servers_guc(&gucs::servers_text(), false);
    if let Err(e) = backend::set_function_servers(function, list) {
        e.report();
        return false;
    }
    true
}

/// `SET gearman.servers` with the caller's privileges (as `set_config()`).
fn set_servers_guc(value: &str, change: bool) {
    let value = CString::new(value)
        .unwrap_or_else(|_| GmError::invalid("gearman: server list contains a NUL byte").raise());
    // SAFETY: valid NUL-terminated strings; set_config_option reports
    // failures with ereport(ERROR), which pgrx turns into a Rust panic.
    unsafe {
        let context = if pg_sys::superuser() {
            pg_sys::GucContext::PGC_SUSET
        } else {
            pg_sys::GucContext::PGC_USERSET
        };
        pg_sys::set_config_option(
            c"gearman.servers".as_ptr(),
            value.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SET,
            change,
            pgrx::PgLogLevel::ERROR as i32,
            false,
        );
    }
}
