//! `gman_sum(function, workload)`: one foreground job per row, all run
//! concurrently in the final step, the sum of the integer results.

use crate::backend;
use crate::error::{or_report, GmError};
use crate::functions::make_job;
use crate::gucs;
use gearman_core::{Job, Priority};
use pgrx::prelude::*;
use pgrx::{Internal, PgMemoryContexts, PgSqlErrorCode};

/// The aggregate's state: the jobs collected so far.
#[derive(Default)]
struct SumState {
    function: Option<String>,
    jobs: Vec<Job>,
}

/// State function of `gman_sum`: collects one job per row (rows with a NULL
/// function are skipped; a NULL workload is empty).
/// VOLATILE, not STRICT, PARALLEL UNSAFE. Internal use only.
// `fcinfo` is the call's own FunctionCallInfo, passed by PostgreSQL through
// pgrx; it is only handed back to AggCheckCallContext.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
#[pg_extern(volatile, parallel_unsafe)]
pub fn gman_sum_state(
    state: Internal,
    function: Option<&str>,
    workload: Option<&str>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Internal {
    let mut state = state;
    // SAFETY: the datum is NULL or the SumState this function allocated in
    // the aggregate's memory context (it lives as long as the group).
    let st: &mut SumState = unsafe {
        match state.get_mut::<SumState>() {
            Some(s) => s,
            None => {
                let mut ctx: pg_sys::MemoryContext = std::ptr::null_mut();
                if pg_sys::AggCheckCallContext(fcinfo, &mut ctx) == 0 || ctx.is_null() {
                    GmError::new(
                        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                        "gearman: gman_sum_state can only be called by the gman_sum aggregate",
                    )
                    .raise();
                }
                let ptr = PgMemoryContexts::For(ctx).leak_and_drop_on_delete(SumState::default());
                state = Internal::from(Some(pg_sys::Datum::from(ptr)));
                &mut *ptr
            }
        }
    };
    if let Some(f) = function {
        match make_job(
            f,
            workload.unwrap_or("").as_bytes().to_vec(),
            None,
            Priority::Normal,
        ) {
            Ok(j) => {
                if st.function.is_none() {
                    st.function = Some(f.to_string());
                }
                st.jobs.push(j);
            }
            Err(e) => e.raise(),
        }
    }
    state
}

/// Final function of `gman_sum`: runs every collected job at once (the
/// core's `Client::sum`, each job routed by its function) and sums the
/// results, each an integer in text form (surrounding whitespace allowed).
/// NULL when there were no jobs (or, with `on_error = warning`, none
/// succeeded). All of it within one deadline, `gearman.timeout`; each
/// result is capped at `gearman.max_result_size`.
/// VOLATILE, PARALLEL UNSAFE. Internal use only.
#[pg_extern(volatile, parallel_unsafe)]
pub fn gman_sum_final(state: Internal) -> Option<i64> {
    // One deadline (gearman.timeout) for every job of the group together.
    backend::within_deadline(|_| sum_final(state))
}

fn sum_final(state: Internal) -> Option<i64> {
    // SAFETY: see gman_sum_state.
    let st = unsafe { state.get::<SumState>() }?;
    if st.jobs.is_empty() {
        return None;
    }
    let label = st.function.clone().unwrap_or_default();
    let routing = backend::routing().unwrap_or_else(|e| e.raise());
    let map = |i: usize, e: &gearman_core::Error| {
        let f = st.jobs[i].function_name();
        let servers = routing.lookup(&st.jobs[i].function).to_string();
        sum_error(e, &f, &servers)
    };
    // The core runs every job at once (each routed by its function), parses
    // and adds; failed jobs are collected here and reported afterwards,
    // never while core frames are on the stack. Under on_error = warning
    // a failed job is left out of the sum with a WARNING.
    let warn = matches!(gucs::on_error(), gucs::OnError::Warning);
    let mut skipped: Vec<(usize, gearman_core::Error)> = Vec::new();
    let mut failed_at = 0;
    let r = backend::with_client(Some(&routing), true, |c| {
        c.sum_with(&st.jobs, |i, e| {
            if warn && !e.is_interrupted() {
                skipped.push((i, e));
                Ok(())
            } else {
                failed_at = i;
                Err(e)
            }
        })
    });
    if r.as_ref().is_err_and(gearman_core::Error::is_interrupted) {
        pg_sys::check_for_interrupts!();
    }
    for (i, e) in &skipped {
        map(*i, e).warn();
    }
    match r {
        Ok(total) => total,
        Err(e) if e.kind() == &gearman_core::ErrorKind::Overflow => GmError::new(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            "gearman: gman_sum overflowed bigint",
        )
        .detail(format!("function: {label}"))
        .raise(),
        Err(e) => or_report(Err(map(failed_at, &e))),
    }
}

/// A job's error in `gman_sum` as an SQL error: a result that is not an
/// integer is `22P02` with a hint, the rest as every other call.
fn sum_error(e: &gearman_core::Error, function: &str, servers: &str) -> GmError {
    if e.kind() == &gearman_core::ErrorKind::NotAnInteger {
        return GmError::new(
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            format!("gearman: gman_sum: {}", e.message()),
        )
        .detail(format!("function: {function}"))
        .hint("gman_sum adds up integer results; use gman_do_many to get each result.");
    }
    GmError::from_core(e, function, servers)
}
