//! `gman_sum(function, workload)`: one foreground job per row, all run
//! concurrently in the final step, the sum of the integer results.

use crate::backend;
use crate::error::{or_report, GmError};
use crate::functions::make_job;
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

/// Final function of `gman_sum`: runs every collected job at once
/// (`run_all`) and sums the results, each an integer in text form
/// (surrounding whitespace allowed). NULL when there were no jobs. All of
/// it within one deadline, `gearman.timeout`; each result is capped at
/// `gearman.max_result_size`.
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
    // Jobs may name different functions; group by function for routing.
    let mut total: i64 = 0;
    let mut any = false;
    let mut by_function: Vec<(String, Vec<Job>)> = Vec::new();
    for j in &st.jobs {
        let f = j.function_name();
        match by_function.iter_mut().find(|(name, _)| *name == f) {
            Some((_, v)) => v.push(j.clone()),
            None => by_function.push((f, vec![j.clone()])),
        }
    }
    for (function, jobs) in by_function {
        let servers = match backend::servers_for(&function) {
            Ok(s) => s,
            Err(e) => e.raise(),
        };
        let text = servers.to_string();
        let results = match backend::with_client(&servers, true, |c| Ok(c.run_all(&jobs))) {
            Ok(r) => r,
            Err(e) => GmError::from_core(&e, &function, &text).raise(),
        };
        if results
            .iter()
            .any(|r| matches!(r, Err(e) if e.is_interrupted()))
        {
            pg_sys::check_for_interrupts!();
        }
        for r in results {
            let r = r
                .map_err(|e| GmError::from_core(&e, &function, &text))
                .and_then(|b| parse_int(&b, &function));
            if let Some(v) = or_report(r) {
                any = true;
                total = total.checked_add(v).unwrap_or_else(|| {
                    GmError::new(
                        PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                        "gearman: gman_sum overflowed bigint",
                    )
                    .detail(format!("function: {label}"))
                    .raise()
                });
            }
        }
    }
    any.then_some(total)
}

fn parse_int(b: &[u8], function: &str) -> Result<i64, GmError> {
    let s = String::from_utf8_lossy(b);
    s.trim().parse::<i64>().map_err(|_| {
        GmError::new(
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            format!(
                "gearman: gman_sum: the worker's result {:?} is not an integer",
                s.trim()
            ),
        )
        .detail(format!("function: {function}"))
        .hint("gman_sum adds up integer results; use gman_do_many to get each result.")
    })
}
