//! Status functions: `gman_job_status`, `gman_server_status`,
//! `gman_dispatch_status`.

use crate::backend;
use crate::error::{or_report, GmError};
use crate::gucs;
use gearman_core::KeyStatus;
use pgrx::prelude::*;
use std::time::Instant;

/// The status of a job, by job handle or by unique key.
///
/// A handle this backend received (immediate dispatch, or a job sent at
/// commit) is asked of the server that issued it (GET_STATUS); another
/// `H:...` handle is asked of each configured server (`gearman.servers`,
/// then the servers of this session's per-function
/// `gman_servers_set(servers, function)` lists) until one knows it;
/// anything else is taken as a unique key, which is what
/// `gman_do_background` returns in `commit` and `outbox` modes: asked
/// (GET_STATUS_UNIQUE) of the server the key routes to in the default list,
/// then in each per-function list, until one knows it.
///
/// `(handle text) RETURNS TABLE(known bool, running bool, numerator bigint, denominator bigint)`:
/// one row; `known = false` when no server knows the job (finished, never
/// submitted, or not yet sent because its transaction is still open).
/// The rule is the core's `Client::job_status`, the same as MariaDB's
/// `gman_job_status`. The whole walk has one deadline, `gearman.timeout`
/// or 5 s from the start of the call, whichever comes first (connecting,
/// failing over and waiting draw from it).
/// VOLATILE, STRICT, PARALLEL RESTRICTED.
#[pg_extern(volatile, strict, parallel_restricted)]
pub fn gman_job_status(
    handle: &str,
) -> TableIterator<
    'static,
    (
        name!(known, bool),
        name!(running, bool),
        name!(numerator, i64),
        name!(denominator, i64),
    ),
> {
    match or_report(backend::within_deadline(|_| job_status(handle))) {
        Some(s) => TableIterator::once((
            s.known,
            s.running,
            s.numerator.min(i64::MAX as u64) as i64,
            s.denominator.min(i64::MAX as u64) as i64,
        )),
        None => TableIterator::empty(),
    }
}

fn job_status(key: &str) -> Result<KeyStatus, GmError> {
    let routing = backend::routing()?;
    // The rule is the core's (the same in MySQL): see Client::job_status.
    backend::with_client(Some(&routing), true, |c| c.job_status(key)).map_err(|e| {
        let e = if e.message() == "job handle or unique key is empty" {
            gearman_core::Error::invalid_argument("empty job handle or unique key")
        } else {
            e
        };
        GmError::from_core(&e, "(status)", &routing.default_list().to_string())
    })
}

/// Per server and function: jobs waiting for a worker (`queued`: the
/// server's total minus those running, as `gman_server_status()` in
/// MariaDB), jobs running, and workers registered; from the admin `status` command of every server in
/// `gearman.servers` and in the session's per-function overrides. An
/// unreachable server raises (`on_error = error`) or is skipped with a
/// WARNING. One deadline for the whole call, `gearman.timeout` from its
/// start (each connect at most `gearman.connect_timeout`); a server not
/// answered by then is reported like an unreachable one. A line of the
/// server's answer that cannot be parsed (e.g. a function name with a
/// newline sent by another client) is skipped.
///
/// `() RETURNS TABLE(server text, function text, queued bigint, running bigint, workers bigint)`.
/// VOLATILE, STRICT (no arguments), PARALLEL RESTRICTED.
#[pg_extern(volatile, strict, parallel_restricted)]
pub fn gman_server_status() -> TableIterator<
    'static,
    (
        name!(server, String),
        name!(function, String),
        name!(queued, i64),
        name!(running, i64),
        name!(workers, i64),
    ),
> {
    let routing = backend::routing().unwrap_or_else(|e| e.raise());
    let deadline = Instant::now() + gucs::timeout();
    // Every server of the routing table; queued = total - running, the
    // core's (and MariaDB's) meaning. with_client fails only before any
    // I/O (a bad gearman.tls_* file): reported per on_error, and no server
    // is asked (never a fallback to other roots).
    let answers =
        match backend::with_client(
            Some(&routing),
            true,
            |c| Ok(c.server_status_until(deadline)),
        ) {
            Ok(a) => a,
            Err(e) => {
                GmError::from_core(&e, "(admin status)", "").report();
                Vec::new()
            }
        };
    let mut rows = Vec::new();
    for (addr, r) in answers {
        let r = r.map_err(|e| GmError::from_core(&e, "(admin status)", &addr.to_string()));
        if let Some(list) = or_report(r) {
            for f in list {
                let queued = f.queued();
                rows.push((
                    addr.to_string(),
                    f.function,
                    queued.min(i64::MAX as u64) as i64,
                    f.running.min(i64::MAX as u64) as i64,
                    f.workers.min(i64::MAX as u64) as i64,
                ));
            }
        }
        pg_sys::check_for_interrupts!();
    }
    TableIterator::new(rows)
}

/// This backend's counters of background jobs sent after COMMIT
/// (`gearman.dispatch = commit`). Calling it first takes the gearmand
/// confirmations that have already arrived, without waiting (failures among
/// them raise the usual WARNING).
///
/// `() RETURNS TABLE(sent bigint, confirmed bigint, failed bigint, pending bigint)`:
/// one row; counts of jobs (not batches or transactions) since the backend
/// started:
/// - `sent`: jobs of committed transactions this backend set out to send
///   (held jobs dropped at PRE_COMMIT under `on_error = warning` are not
///   counted);
/// - `confirmed`: jobs gearmand acknowledged (JOB_CREATED: queued);
/// - `failed`: jobs refused by gearmand (an ERROR reply, e.g. `QUEUE_ERROR`
///   when the function's `maxqueue` is reached: not queued), jobs whose
///   connection was lost before their confirmation or whose confirmation
///   did not arrive within `gearman.commit_send_timeout` of their write
///   (fate unknown: gearmand may or may not have queued them), and jobs
///   that could not be written at all after COMMIT;
/// - `pending`: jobs written whose confirmation has not been read yet.
///
/// `sent = confirmed + failed + pending`. Per backend; jobs of `immediate`
/// and `outbox` dispatch are not counted. VOLATILE, STRICT (no arguments),
/// PARALLEL RESTRICTED.
#[pg_extern(volatile, strict, parallel_restricted)]
pub fn gman_dispatch_status() -> TableIterator<
    'static,
    (
        name!(sent, i64),
        name!(confirmed, i64),
        name!(failed, i64),
        name!(pending, i64),
    ),
> {
    let (c, pending) = backend::dispatch_status();
    let big = |n: u64| n.min(i64::MAX as u64) as i64;
    TableIterator::once((
        big(c.sent),
        big(c.confirmed),
        big(c.failed),
        big(pending as u64),
    ))
}
