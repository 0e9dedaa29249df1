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

/// Counters of background jobs sent after COMMIT (`gearman.dispatch =
/// commit`): this backend's own, and the dispatcher's (cluster-wide) when
/// `gearman` is in `shared_preload_libraries`. Calling it first takes the
/// gearmand confirmations owed to this backend that have already arrived,
/// without waiting (failures among them raise the usual WARNING).
///
/// One row; counts of jobs (not batches or transactions). This backend,
/// since it started:
/// - `sent`: jobs of committed transactions this backend wrote itself
///   (without the dispatcher; held jobs dropped at PRE_COMMIT under
///   `on_error = warning` are not counted);
/// - `confirmed`: of those, jobs gearmand acknowledged (JOB_CREATED: queued);
/// - `failed`: of those, jobs refused by gearmand (an ERROR reply, e.g.
///   `QUEUE_ERROR` when the function's `maxqueue` is reached: not queued),
///   jobs whose connection was lost before their confirmation or whose
///   confirmation did not arrive within `gearman.commit_send_timeout` of
///   their write (fate unknown: gearmand may or may not have queued them),
///   and jobs that could not be written at all after COMMIT;
/// - `pending`: jobs written whose confirmation has not been read yet
///   (`sent = confirmed + failed + pending`);
/// - `handed_off`: jobs of committed transactions this backend handed to the
///   dispatcher.
///
/// The dispatcher (NULL without the preload), since the server started
/// (they survive a restart of the dispatcher and a crash reinitialisation):
/// - `dispatcher`: `running`, `not running` (preloaded, but no dispatcher
///   process now: starting, restarting, or the server is in recovery) or
///   `not loaded` (no preload: every backend sends its own jobs);
/// - `dispatcher_pid`: its process id (NULL when not running);
/// - `dispatcher_starts`: times a dispatcher process started;
/// - `cluster_handed_off`: jobs backends handed off;
/// - `cluster_sent`, `cluster_confirmed`, `cluster_refused`,
///   `cluster_unknown`: jobs the dispatcher wrote, and of those the ones
///   gearmand confirmed, refused, or whose fate is unknown (as above);
/// - `cluster_unsent`: jobs never written (still queued when the dispatcher
///   stopped and its flush deadline, `gearman.commit_send_timeout`, passed);
/// - `cluster_lost`: jobs queued or written but unconfirmed when a crash
///   reinitialised shared memory (e.g. the dispatcher killed with SIGKILL):
///   their fate is unknown;
/// - `cluster_queued`, `cluster_queued_bytes`: jobs (and their bytes)
///   handed off and not yet written: in shared memory and in the
///   dispatcher's queue;
/// - `cluster_oldest_ms`: age of the oldest job in the dispatcher's queue
///   (milliseconds; NULL when empty);
/// - `cluster_full_waits`, `cluster_full_timeouts`: commits that waited for
///   room in a full queue, and those whose wait ran out (their jobs failed
///   per `gearman.on_error`);
/// - `servers_down`: the job servers the dispatcher last found down,
///   comma-separated (NULL when none). While every server of a list is
///   down, commits with jobs for it fail per `gearman.on_error`.
///
/// `cluster_handed_off = cluster_sent + cluster_unsent + cluster_lost +
/// cluster_queued` (+ jobs being written at that instant), and
/// `cluster_sent = cluster_confirmed + cluster_refused + cluster_unknown +`
/// those awaiting confirmation. Jobs of `immediate` and `outbox` dispatch
/// are not counted. VOLATILE, STRICT (no arguments), PARALLEL RESTRICTED.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, strict, parallel_restricted)]
pub fn gman_dispatch_status() -> TableIterator<
    'static,
    (
        name!(sent, i64),
        name!(confirmed, i64),
        name!(failed, i64),
        name!(pending, i64),
        name!(handed_off, i64),
        name!(dispatcher, String),
        name!(dispatcher_pid, Option<i32>),
        name!(dispatcher_starts, Option<i64>),
        name!(cluster_handed_off, Option<i64>),
        name!(cluster_sent, Option<i64>),
        name!(cluster_confirmed, Option<i64>),
        name!(cluster_refused, Option<i64>),
        name!(cluster_unknown, Option<i64>),
        name!(cluster_unsent, Option<i64>),
        name!(cluster_lost, Option<i64>),
        name!(cluster_queued, Option<i64>),
        name!(cluster_queued_bytes, Option<i64>),
        name!(cluster_oldest_ms, Option<i64>),
        name!(cluster_full_waits, Option<i64>),
        name!(cluster_full_timeouts, Option<i64>),
        name!(servers_down, Option<String>),
    ),
> {
    use std::sync::atomic::Ordering::Relaxed;
    let (c, pending) = backend::dispatch_status();
    let big = |n: u64| n.min(i64::MAX as u64) as i64;
    let q = crate::shmq::get();
    let d = q.map(|q| {
        let k = q.counters();
        let (ring_jobs, ring_bytes, _) = q.depth();
        let down: Vec<String> = q
            .servers()
            .into_iter()
            .filter(|(_, r)| *r == crate::shmq::Reach::Down)
            .map(|(a, _)| a)
            .collect();
        let oldest = k.oldest_ms.load(Relaxed);
        (
            q.dispatcher_pid(),
            [
                k.starts.load(Relaxed),
                k.handed_off.load(Relaxed),
                k.sent.load(Relaxed),
                k.confirmed.load(Relaxed),
                k.refused.load(Relaxed),
                k.unknown.load(Relaxed),
                k.unsent.load(Relaxed),
                k.lost.load(Relaxed),
                ring_jobs + k.dispatcher_queued.load(Relaxed),
                ring_bytes + k.dispatcher_queued_bytes.load(Relaxed),
                k.full_waits.load(Relaxed),
                k.full_timeouts.load(Relaxed),
            ],
            (oldest != u64::MAX).then_some(oldest),
            (!down.is_empty()).then(|| down.join(",")),
        )
    });
    let state = match &d {
        None => "not loaded",
        Some((Some(_), ..)) => "running",
        Some((None, ..)) => "not running",
    };
    let v = |i: usize| d.as_ref().map(|x| big(x.1[i]));
    TableIterator::once((
        big(c.sent),
        big(c.confirmed),
        big(c.failed),
        big(pending as u64),
        big(c.handed_off),
        state.to_string(),
        d.as_ref().and_then(|x| x.0),
        v(0),
        v(1),
        v(2),
        v(3),
        v(4),
        v(5),
        v(6),
        v(7),
        v(8),
        v(9),
        d.as_ref().and_then(|x| x.2.map(big)),
        v(10),
        v(11),
        d.and_then(|x| x.3),
    ))
}
