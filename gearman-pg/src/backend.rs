//! Per-backend state: the cached Gearman client and its routing table
//! (`gearman.servers` as the default list, `gman_servers_set(servers,
//! function)` overrides as per-function lists).
//!
//! A PostgreSQL backend is a single-threaded process, so the state lives in
//! a `thread_local!` `RefCell` and needs no lock. The client keeps one
//! connection per job server, shared by every list that names it and
//! reused across statements and transactions (calls alternating between
//! functions with different lists reuse them too); the core drops a
//! connection that broke or whose exchange was abandoned, and reopens it on
//! the next call. The job handles the client received are remembered by the
//! core for `gman_job_status`.
//!
//! It also keeps the counters of background jobs sent after COMMIT
//! (`gearman.dispatch = commit`, see [`crate::xact`]): those are written
//! without waiting for gearmand's confirmations, which are read later.
//! Every [`with_client`] first takes the confirmations that have arrived
//! (without waiting) and, after its work, whatever the core read on the way
//! (reusing a connection first reads the replies still owed on it); jobs
//! gearmand refused or whose connection was lost before confirmation are
//! reported as one WARNING per batch and counted, see
//! [`dispatch_status`].

use crate::error::{process_pending_interrupts, GmError};
use crate::gucs;
use gearman_core::{
    Client, DeferredReport, Error, ErrorKind, Interrupt, Job, Options, Routing, ServerList,
};
use pgrx::{pg_sys, PgSqlErrorCode};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Unique keys (and functions) named in a WARNING about failed jobs.
const WARN_FIRST: usize = 5;
/// Jobs encoded per write of the commit-time send.
const COMMIT_CHUNK: usize = 4096;

/// This backend's counters of background jobs sent after COMMIT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchCounters {
    /// Jobs of committed transactions that the backend set out to send.
    pub sent: u64,
    /// Jobs gearmand confirmed (JOB_CREATED).
    pub confirmed: u64,
    /// Jobs not queued or of unknown fate: refused by gearmand (ERROR, e.g.
    /// `QUEUE_ERROR` under `maxqueue`), connection lost before the
    /// confirmation, or not written at all (no server reachable at COMMIT).
    pub failed: u64,
    /// Jobs of committed transactions handed to the dispatcher background
    /// worker (with `shared_preload_libraries`; not in `sent`).
    pub handed_off: u64,
}

#[derive(Default)]
struct State {
    client: Option<Client>,
    /// The routing table in force, with the settings' generation
    /// ([`gucs::servers_generation`]) and the `gearman.servers` text its
    /// default list was parsed from. A new `Rc` whenever it changes, so
    /// jobs held for commit keep the table of their call.
    routing: Option<(u64, String, Rc<Routing>)>,
    dispatch: DispatchCounters,
    /// The deadline of the SQL call in progress that makes several
    /// exchanges (a status walk over servers), see [`within_deadline`].
    call_deadline: Option<Instant>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// The interrupt hook given to the core: reports a pending query cancel,
/// statement_timeout or termination as `Err(Interrupted)` so the core stops
/// waiting, drops the connection and returns; PostgreSQL's own error is
/// raised afterwards by [`process_pending_interrupts`], never while core
/// frames are on the stack. Reads only signal flags, so it is safe from any
/// thread.
fn pg_interrupt() -> gearman_core::Result<()> {
    // SAFETY: plain reads of sig_atomic_t / uint32 globals set by signal
    // handlers; no PostgreSQL function is called.
    let stop = unsafe {
        std::ptr::read_volatile(&raw const pg_sys::InterruptPending) != 0
            && std::ptr::read_volatile(&raw const pg_sys::InterruptHoldoffCount) == 0
            && std::ptr::read_volatile(&raw const pg_sys::CritSectionCount) == 0
            && (std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
                || (std::ptr::read_volatile(&raw const pg_sys::QueryCancelPending) != 0
                    && std::ptr::read_volatile(&raw const pg_sys::QueryCancelHoldoffCount) == 0))
    };
    if stop {
        Err(Error::interrupted(
            "query cancel, statement_timeout or termination requested",
        ))
    } else {
        Ok(())
    }
}

/// The interrupt hook for the send after COMMIT, where PostgreSQL holds
/// interrupts: a pending query cancel (`pg_cancel_backend`,
/// `statement_timeout`) or termination ends the send; PostgreSQL handles
/// the request itself once the commit is complete. Reads only signal flags.
fn commit_interrupt() -> gearman_core::Result<()> {
    // SAFETY: plain reads of sig_atomic_t globals set by signal handlers.
    let stop = unsafe {
        std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
            || std::ptr::read_volatile(&raw const pg_sys::QueryCancelPending) != 0
    };
    if stop {
        Err(Error::interrupted(
            "query cancel, statement_timeout or termination requested during the send after \
             COMMIT",
        ))
    } else {
        Ok(())
    }
}

/// Runs `f` (one SQL call that may talk to several servers in turn) with
/// one deadline for all of it, `gearman.timeout` from now: every exchange
/// made through [`with_client`] meanwhile draws from it.
pub fn within_deadline<R>(f: impl FnOnce(Instant) -> R) -> R {
    let deadline = Instant::now() + gucs::timeout();
    let outer = STATE.with(|s| s.borrow_mut().call_deadline.replace(deadline));
    struct Restore(Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0;
            let _ = STATE.try_with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    s.call_deadline = outer;
                }
            });
        }
    }
    let _restore = Restore(outer);
    f(deadline)
}

/// Largest total of the results one call holds over all its jobs
/// (`gman_do_many`, `gman_sum`): 1 GB, PostgreSQL's largest value.
pub const MAX_TOTAL_RESULT: usize = 1 << 30;

fn options(interruptible: bool) -> Options {
    Options {
        connect_timeout: gucs::connect_timeout(),
        foreground_timeout: Some(gucs::timeout()),
        max_result: gucs::max_result_size(),
        max_total_result: Some(MAX_TOTAL_RESULT),
        client_id: Some(format!("postgres-{}", std::process::id())),
        interrupt: interrupt_hook(interruptible),
        ..Options::default()
    }
}

fn interrupt_hook(interruptible: bool) -> Option<Interrupt> {
    if interruptible {
        Some(Arc::new(pg_interrupt) as Interrupt)
    } else {
        None
    }
}

/// Parses a server list, as an SQL error.
pub fn parse_servers(text: &str) -> Result<ServerList, GmError> {
    ServerList::parse(text).map_err(|e| {
        GmError::invalid(format!("gearman: invalid server list \"{text}\": {e}")).hint(
            "Write host[:port],host[:port] (tls://host[:port] for TLS); the port defaults \
                 to 4730.",
        )
    })
}

/// The routing table in force: `gearman.servers` (or the deprecated
/// `pggearman.default_servers`) as the default list, this session's
/// `gman_servers_set(servers, function)` overrides as per-function lists.
/// The same `Rc` while nothing changes.
pub fn routing() -> Result<Rc<Routing>, GmError> {
    // Fast path: the settings took no value since the table was made.
    let generation = gucs::servers_generation();
    let hit = STATE.with(|s| {
        let s = s.borrow();
        match &s.routing {
            Some((g, _, r)) if *g == generation && generation != 0 => Some(r.clone()),
            _ => None,
        }
    });
    if let Some(r) = hit {
        return Ok(r);
    }
    let text = gucs::servers_text();
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some((g, t, r)) = &mut s.routing {
            if *t == text {
                *g = generation;
                return Ok(r.clone());
            }
        }
        let list = parse_servers(&text)?;
        let mut r = s
            .routing
            .as_ref()
            .map_or_else(Routing::default, |(_, _, r)| (**r).clone());
        r.set_default(list);
        let r = Rc::new(r);
        s.routing = Some((generation, text, r.clone()));
        Ok(r)
    })
}

/// The servers a job for `function` goes to now (for messages).
pub fn servers_for(function: &str) -> Result<ServerList, GmError> {
    Ok(routing()?.lookup(function.as_bytes()).clone())
}

/// Sets (or, with `None`, removes) a per-function server override. The
/// function name must have passed `validate_function_name`.
pub fn set_function_servers(function: &str, list: Option<ServerList>) -> Result<(), GmError> {
    let current = routing()?;
    let mut r = (*current).clone();
    r.set_function(function.as_bytes(), list)
        .map_err(|e| GmError::from_core(&e, function, "(not set)"))?;
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some((_, _, cur)) = s.routing.as_mut() {
            *cur = Rc::new(r);
        }
    });
    Ok(())
}

/// Runs `f` with the backend's client, routed by `routing` when given (the
/// table in force; `None` leaves the client's table as it is, for calls
/// that name their servers), with the current timeouts. Changing the table
/// closes only connections to servers no list names any more.
/// `interruptible = false` (used after COMMIT, where interrupts are held
/// anyway) installs no interrupt hook.
///
/// A core error of kind `Interrupted` makes PostgreSQL raise its pending
/// cancel error once `f` has returned.
///
/// Before `f`, the confirmations of jobs sent after earlier commits that
/// have arrived are taken (without waiting); after `f`, those the core read
/// on the way. Failures among them are counted and reported as one WARNING
/// (see [`dispatch_status`]).
pub fn with_client<R>(
    routing: Option<&Routing>,
    interruptible: bool,
    f: impl FnOnce(&mut Client) -> gearman_core::Result<R>,
) -> gearman_core::Result<R> {
    // gearman.tls_* (read once per change; a bad file fails the call).
    let tls = crate::tls::current()?;
    let (result, report) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.client.get_or_insert_with(|| {
            register_exit_callback();
            Client::with_routing(routing.cloned().unwrap_or_default(), options(true))
        });
        let call_deadline = s.call_deadline;
        let client = s.client.as_mut().expect("made above");
        let o = client.options_mut();
        o.connect_timeout = gucs::connect_timeout();
        o.foreground_timeout = Some(gucs::timeout());
        o.max_result = gucs::max_result_size();
        o.deadline = call_deadline;
        o.tls = tls;
        if o.interrupt.is_some() != interruptible {
            o.interrupt = interrupt_hook(interruptible);
        }
        if let Some(r) = routing {
            if client.routing() != r {
                client.set_routing(r.clone());
            }
        }
        // Owed confirmations before and after (no I/O when none is owed).
        client.collecting(f)
    });
    settle(report);
    if let Err(e) = &result {
        if interruptible {
            process_pending_interrupts(e);
        }
    }
    result
}

/// Writes the background jobs of a committed transaction, each routed by
/// `routing` (the table in force when it was called), without waiting for
/// any confirmation, all within `deadline`: connecting
/// and writing draw from it, and a query cancel, `statement_timeout` or
/// termination ends it early. Returns how many jobs were written (handed to
/// the kernel; their confirmations are read later) and, if not all, why.
/// Jobs written whose connection fails before the end are reported (and
/// counted) by [`with_client`] as failures of unknown fate.
pub fn send_committed(
    routing: &Routing,
    jobs: &[Job],
    deadline: Instant,
) -> (usize, Option<Error>) {
    let r = with_client(None, false, |c| {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok((
                0,
                Some(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "gearman.commit_send_timeout ({} ms) passed before these jobs were sent",
                        gucs::commit_send_timeout().as_millis()
                    ),
                )),
            ));
        }
        let saved = c.options().clone();
        let o = c.options_mut();
        // The call ends by `deadline`; each job's confirmation is due
        // within gearman.commit_send_timeout of its write (read later).
        o.io_timeout = gucs::commit_send_timeout();
        o.connect_timeout = o.connect_timeout.min(remaining);
        // Never wait for confirmations here: they are read later.
        o.max_in_flight = usize::MAX;
        o.deadline = Some(deadline);
        o.interrupt = Some(Arc::new(commit_interrupt) as Interrupt);
        // In chunks, so the write buffer holds one chunk's encoding rather
        // than a second copy of every job of the transaction.
        let before = c.deferred_written();
        let mut r = Ok(());
        for chunk in jobs.chunks(COMMIT_CHUNK) {
            r = c.submit_background_deferred_via(routing, chunk);
            if r.is_err() {
                break;
            }
        }
        let written = usize::try_from(c.deferred_written() - before).unwrap_or(jobs.len());
        *c.options_mut() = saved;
        Ok((written.min(jobs.len()), r.err()))
    });
    match r {
        Ok(v) => v,
        Err(e) => (0, Some(e)),
    }
}

/// Whether this backend's connections may owe confirmations (true when
/// that cannot be read now). No I/O, no PostgreSQL call, never panics: for
/// the fast path of the end-of-transaction callbacks.
pub fn may_owe_confirmations() -> bool {
    STATE
        .try_with(|s| {
            s.try_borrow().map_or(true, |s| {
                s.client.as_ref().is_some_and(|c| c.deferred_pending() > 0)
            })
        })
        .unwrap_or(true)
}

/// Takes the confirmations of jobs sent after earlier commits that have
/// arrived, without waiting, and reports failures among them (one WARNING).
/// Does nothing (no I/O) when none is owed. Called at the end of every
/// transaction, so that a later statement reports them even if it calls
/// no `gman_*` function.
pub fn collect_owed() {
    let report = STATE.with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        let c = s.client.as_mut()?;
        if c.deferred_pending() == 0 {
            return None;
        }
        let hook = c.options().interrupt.clone();
        c.options_mut().interrupt = None;
        let r = c.collect_deferred(false);
        c.options_mut().interrupt = hook;
        Some(r)
    });
    if let Some(r) = report {
        settle(r);
    }
}

/// Counts a report of deferred jobs and emits one WARNING for its failures.
fn settle(report: DeferredReport) {
    if report.confirmed == 0 && report.failed.is_empty() {
        return;
    }
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.dispatch.confirmed += report.confirmed;
        s.dispatch.failed += report.failed.len() as u64;
    });
    if let Some(w) = failure_warning(&report) {
        w.warn();
    }
}

/// User text (unique keys, function names) for a WARNING that may be sent
/// after COMMIT: printable ASCII as is, everything else escaped (`\u{..}`,
/// `\x..`). A message the client's encoding cannot represent raises an
/// ERROR while it is sent, and an ERROR after commit must never happen.
pub(crate) fn ascii(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for c in String::from_utf8_lossy(b).chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

/// The WARNING for the failures of one report: count, functions and the
/// first unique keys, the first reasons in the detail.
fn failure_warning(report: &DeferredReport) -> Option<GmError> {
    let failed = &report.failed;
    let first = failed.first()?;
    let mut functions: Vec<&str> = Vec::new();
    for f in failed {
        if !functions.contains(&f.function.as_str()) {
            functions.push(&f.function);
        }
    }
    let more = |n: usize| {
        if n > WARN_FIRST {
            format!(", ... ({} more)", n - WARN_FIRST)
        } else {
            String::new()
        }
    };
    let keys: Vec<String> = failed
        .iter()
        .take(WARN_FIRST)
        .map(|f| ascii(&f.unique))
        .collect();
    let refused = report.refused();
    let unknown = report.unknown_fate();
    let overdue = report.overdue();
    let overdue_text = if overdue > 0 {
        format!(", {overdue} of them not confirmed in time")
    } else {
        String::new()
    };
    let reasons: Vec<String> = failed
        .iter()
        .take(WARN_FIRST)
        .map(|f| {
            format!(
                "{} ({}): {}",
                ascii(&f.unique),
                ascii(f.function.as_bytes()),
                ascii(f.error.to_string().as_bytes())
            )
        })
        .collect();
    let code = match first.error.kind() {
        ErrorKind::Server { .. } => PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
        _ => PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
    };
    Some(
        GmError::new(
            code,
            format!(
                "gearman: {} background job(s) sent after commit were not confirmed \
                 ({refused} refused by the job server, {unknown} of unknown fate{overdue_text}); \
                 function(s): {}{}; unique key(s): {}{}",
                failed.len(),
                functions
                    .iter()
                    .take(WARN_FIRST)
                    .map(|f| ascii(f.as_bytes()))
                    .collect::<Vec<_>>()
                    .join(", "),
                more(functions.len()),
                keys.join(", "),
                more(failed.len()),
            ),
        )
        .detail(reasons.join("; "))
        .hint(
            "A refused job (e.g. QUEUE_ERROR: the function's maxqueue is reached) was not \
             queued; for a lost connection or a confirmation that did not come within \
             gearman.commit_send_timeout of the write, the job may have been queued \
             (check with gman_job_status(unique_key)). The transactions that made these jobs \
             are committed. Counters: SELECT * FROM gman_dispatch_status(). Use \
             gearman.dispatch = 'outbox' for jobs that must not be lost.",
        ),
    )
}

/// Counts jobs of a committed transaction that the backend sets out to
/// send, of which `not_written` could not even be written (they count as
/// failed; the caller warns about them).
pub fn count_sent(sent: usize, not_written: usize) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.dispatch.sent += sent as u64;
        s.dispatch.failed += not_written as u64;
    });
}

/// Counts jobs this backend handed to the dispatcher after COMMIT.
pub fn count_handed_off(jobs: u64) {
    STATE.with(|s| s.borrow_mut().dispatch.handed_off += jobs);
}

/// This backend's counters of jobs sent after COMMIT, and the number still
/// awaiting confirmation. First takes the confirmations that have arrived,
/// without waiting (failures among them raise the usual WARNING). Does not
/// change the client's server list.
pub fn dispatch_status() -> (DispatchCounters, usize) {
    let report = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.client.as_mut().map(|c| c.collect_deferred(false))
    });
    let pending = report.as_ref().map_or(0, |r| r.pending);
    if let Some(r) = report {
        settle(r);
    }
    (STATE.with(|s| s.borrow().dispatch), pending)
}

/// Registers [`at_exit`] for this process, when its client is made (not in
/// `_PG_init`: exit callbacks registered in the postmaster, with
/// `shared_preload_libraries`, are reset in each forked backend).
fn register_exit_callback() {
    // SAFETY: registering a callback with a static function pointer and a
    // zero argument; called once per process (the client is made once).
    unsafe {
        pg_sys::before_shmem_exit(Some(exit_callback), pg_sys::Datum::from(0usize));
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn exit_callback(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    at_exit();
}

/// Longest wait for owed confirmations when the backend exits.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// At backend exit (`before_shmem_exit`): if confirmations of jobs sent
/// after COMMIT are still owed, waits for them (at most 2 s in all), so
/// that the connections close after gearmand has answered (a socket closed
/// with unread replies is reset, which can discard bytes not yet
/// transmitted), and logs failures as a WARNING (to the server log: the
/// client may be gone).
pub fn at_exit() {
    let report = STATE
        .try_with(|s| {
            let mut s = s.try_borrow_mut().ok()?;
            let c = s.client.as_mut()?;
            if c.deferred_pending() == 0 {
                return None;
            }
            let o = c.options_mut();
            o.io_timeout = o.io_timeout.min(EXIT_WAIT);
            o.deadline = None;
            o.interrupt = None;
            // Waits for what is owed (at most EXIT_WAIT for all servers),
            // then whatever is still owed is of unknown fate.
            c.disconnect();
            Some(c.take_deferred_report())
        })
        .ok()
        .flatten();
    if let Some(w) = report.as_ref().and_then(failure_warning) {
        w.warn();
    }
}

/// The client's connection counters (for tests), if it was made.
pub fn client_stats() -> Option<gearman_core::ClientStats> {
    STATE.with(|s| s.borrow().client.as_ref().map(Client::stats))
}
