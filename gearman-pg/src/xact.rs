//! Background jobs held until COMMIT (`gearman.dispatch = commit`), and the
//! outbox rows of `gearman.dispatch = outbox`.
//!
//! Jobs are kept in backend memory with the subtransaction that queued them
//! and the server list in force when they were queued:
//! - a subtransaction that commits hands its jobs to its parent; one that
//!   aborts (`ROLLBACK TO SAVEPOINT`, an exception block) drops its jobs;
//! - `PRE_COMMIT`: each server list with held jobs must have a reachable
//!   server ([`gearman_core::Client::ensure_connected`]: a usable cached
//!   connection, or a new TCP connection; no round trip), so a gearmand
//!   that is down fails the transaction (`on_error = error`) instead of
//!   losing its jobs;
//! - `COMMIT` (the commit is durable and visible): the jobs are taken
//!   over, and written once PostgreSQL has released the transaction's locks
//!   (the resource-release callback after locks, still inside COMMIT), so
//!   no other session waits for the write. They are written pipelined,
//!   with `submit_background_deferred`, never waiting for gearmand's
//!   JOB_CREATED confirmations, all within one deadline
//!   (`gearman.commit_send_timeout`, default 5 s, from the start of the
//!   send); a query cancel, `statement_timeout` or termination ends the
//!   send early. Jobs not written by then are counted as failed and
//!   reported in one WARNING. Errors here can only be
//!   WARNINGs: the transaction is already committed;
//! - `ABORT`: the jobs are dropped;
//! - `PREPARE TRANSACTION` with held jobs is an error that points to outbox.
//!
//! With `gearman` in `shared_preload_libraries` (and `gearman.use_dispatcher`
//! on, not in recovery) `PRE_COMMIT` hands off instead of checking and
//! sending ([`hand_off`]): a list the dispatcher reports down is checked by
//! this backend (connect only) and fails per `on_error` if it is down; the
//! jobs are encoded and room is reserved for them in the shared queue
//! ([`crate::shmq`]; a full queue makes the commit wait at most
//! `gearman.commit_send_timeout`, then fail per `on_error`); after the locks
//! are released the record is copied in and the dispatcher's latch set
//! ([`crate::dispatcher`] writes it). `ABORT` after `PRE_COMMIT` gives the
//! room back. Jobs larger than the whole queue are sent as below.
//!
//! So a commit-mode transaction costs no round trip to gearmand. The
//! confirmations are read on the next use of the connection by this backend
//! (any `gman_*` call, the next commit that sends jobs, or
//! `gman_dispatch_status()`), without waiting for those not yet arrived. A
//! job gearmand refused (e.g. `QUEUE_ERROR` when the function's `maxqueue`
//! is reached), whose connection was lost before its confirmation, or whose
//! confirmation did not arrive within `gearman.commit_send_timeout` of its
//! write (both: fate unknown, it may have been queued) is reported then, as a WARNING on that later statement, and
//! counted in `gman_dispatch_status()`. The reachability check cannot catch
//! a gearmand that accepts connections but does not answer or refuses jobs:
//! those show up as such deferred failures. Jobs that must not be lost
//! belong in `gearman.dispatch = outbox`. When the backend exits with
//! confirmations still owed, it waits for them (at most 2 s in all) and
//! logs failures to the server log.

use crate::backend;
use crate::error::GmError;
use crate::gucs::{self, OnError};
use crate::shmq;
use gearman_core::{Job, Routing, ServerList};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Instant;

struct Held {
    subxact: pg_sys::SubTransactionId,
    /// The routing table in force when the job was made: it goes to the
    /// list its function had then (design.md), not at commit.
    routing: Rc<Routing>,
    job: Job,
}

impl Held {
    fn servers(&self) -> &ServerList {
        self.routing.lookup(&self.job.function)
    }
}

/// A transaction's jobs encoded for the dispatcher, with the room reserved
/// for them in the shared queue.
struct Handoff {
    body: Vec<u8>,
    jobs: u64,
    /// Bytes reserved (record header included).
    bytes: u64,
}

#[derive(Default)]
struct XactState {
    held: Vec<Held>,
    /// With the dispatcher: the jobs of the transaction that is committing,
    /// encoded at PRE_COMMIT with room reserved, copied into the queue once
    /// its locks are released.
    handoff: Option<Handoff>,
    /// Jobs of the transaction that is committing, to be written once its
    /// locks are released.
    committed: Vec<Held>,
    /// Functions written to the outbox in this transaction (NOTIFY at commit).
    notified: HashSet<String>,
}

thread_local! {
    static XACT: RefCell<XactState> = RefCell::new(XactState::default());
}

/// Registers the transaction callbacks. Call once, from `_PG_init`.
pub fn init() {
    // SAFETY: registering permanent callbacks with static function
    // pointers and a null argument.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
        pg_sys::RegisterResourceReleaseCallback(Some(release_callback), std::ptr::null_mut());
    }
}

/// Whether this backend holds nothing for any transaction: no jobs held,
/// committed or handed off, no outbox NOTIFY due (false when that cannot
/// be read now). No PostgreSQL call, never panics: the callbacks below
/// return at once then, without entering the error-handling guard, so a
/// transaction that queues no job pays next to nothing for the preload.
fn idle() -> bool {
    XACT.try_with(|x| {
        x.try_borrow().is_ok_and(|x| {
            x.held.is_empty()
                && x.committed.is_empty()
                && x.handoff.is_none()
                && x.notified.is_empty()
        })
    })
    .unwrap_or(false)
}

/// Called by PostgreSQL for each resource owner and phase at the end of a
/// (sub)transaction. After the locks of a committed top-level transaction
/// are released (phase `AFTER_LOCKS`, still inside COMMIT), writes its
/// jobs; then reads the confirmations owed by earlier commits that have
/// arrived (no wait), so that failures among them are reported on this
/// statement.
unsafe extern "C-unwind" fn release_callback(
    phase: pg_sys::ResourceReleasePhase::Type,
    is_commit: bool,
    is_top_level: bool,
    _arg: *mut std::ffi::c_void,
) {
    if phase != pg_sys::ResourceReleasePhase::RESOURCE_RELEASE_AFTER_LOCKS
        || !is_commit
        || !is_top_level
        || (idle() && !backend::may_owe_confirmations())
    {
        return;
    }
    after_commit();
}

#[pg_guard]
extern "C-unwind" fn after_commit() {
    let (committed, handoff) = XACT.with(|x| {
        let mut x = x.borrow_mut();
        (std::mem::take(&mut x.committed), x.handoff.take())
    });
    if let Some(h) = handoff {
        if let Some(q) = shmq::get() {
            q.push(&h.body, h.jobs);
            backend::count_handed_off(h.jobs);
        }
    }
    if committed.is_empty() {
        backend::collect_owed();
    } else {
        send_after_commit(committed);
    }
}

/// Holds `job` until the current transaction commits; it goes to the list
/// its function has in `routing` (the table in force now).
pub fn hold(job: Job, routing: Rc<Routing>) {
    // SAFETY: plain read of the current subtransaction id.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    XACT.with(|x| {
        x.borrow_mut().held.push(Held {
            subxact,
            routing,
            job,
        })
    });
}

/// Number of jobs held for the current transaction.
pub fn held_count() -> usize {
    XACT.with(|x| x.borrow().held.len())
}

unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if !idle() {
        subxact_end(event, my_subid, parent_subid);
    }
}

#[pg_guard]
extern "C-unwind" fn subxact_end(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    parent_subid: pg_sys::SubTransactionId,
) {
    XACT.with(|x| {
        let mut x = x.borrow_mut();
        match event {
            pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => {
                for h in x.held.iter_mut() {
                    if h.subxact >= my_subid {
                        h.subxact = parent_subid;
                    }
                }
            }
            pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
                // Subtransaction ids grow; anything at or above this one
                // belongs to it or to its (already ended) children.
                x.held.retain(|h| h.subxact < my_subid);
            }
            _ => {}
        }
    });
}

unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if !idle() {
        xact_end(event);
    }
}

#[pg_guard]
extern "C-unwind" fn xact_end(event: pg_sys::XactEvent::Type) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT => {
            notify_outbox();
            pre_commit();
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            // Written after the locks are released (release_callback).
            XACT.with(|x| {
                let mut x = x.borrow_mut();
                x.notified.clear();
                let held = std::mem::take(&mut x.held);
                x.committed.extend(held);
            });
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            let handoff = XACT.with(|x| {
                let mut x = x.borrow_mut();
                x.held.clear();
                x.committed.clear();
                x.notified.clear();
                x.handoff.take()
            });
            // Failed after PRE_COMMIT: give the reserved room back.
            if let (Some(h), Some(q)) = (handoff, shmq::get()) {
                q.release(h.bytes);
            }
        }
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE => {
            let n = held_count();
            if n > 0 {
                GmError::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!(
                        "gearman: cannot PREPARE a transaction that holds {n} background job(s) \
                         for commit"
                    ),
                )
                .detail(
                    "gearman.dispatch = commit sends jobs from this backend after COMMIT, \
                     which a prepared transaction never reaches.",
                )
                .hint(
                    "Use SET gearman.dispatch = 'outbox' for two-phase commit: outbox jobs are \
                     rows written inside the transaction.",
                )
                .raise();
            }
            // A prepared transaction may not NOTIFY; the relay's polling
            // finds its outbox rows after COMMIT PREPARED.
            XACT.with(|x| x.borrow_mut().notified.clear());
        }
        _ => {}
    }
}

/// Distinct server lists among the held jobs, in first-use order.
fn distinct_servers(held: &[Held]) -> Vec<ServerList> {
    let mut out: Vec<ServerList> = Vec::new();
    for h in held {
        if !out.iter().any(|s| s == h.servers()) {
            out.push(h.servers().clone());
        }
    }
    out
}

/// Checks that every server list with held jobs has a reachable server
/// (without a round trip), while the transaction can still fail. With the
/// dispatcher, hands off instead (see [`hand_off`]).
fn pre_commit() {
    if held_count() == 0 {
        return;
    }
    if let Some(q) = dispatcher_queue() {
        if hand_off(q) {
            return;
        }
    }
    // One deadline (gearman.timeout) for the checks of every list together.
    backend::within_deadline(|_| pre_commit_checks());
}

/// The shared queue, when this transaction's jobs go through the
/// dispatcher: the library was preloaded, `gearman.use_dispatcher` is on,
/// a dispatcher process runs (not while it starts or restarts, or when
/// PostgreSQL could not start it, e.g. `max_worker_processes` is used up),
/// and the server is not in recovery (a hot standby runs no dispatcher).
/// Otherwise this backend sends its own jobs.
fn dispatcher_queue() -> Option<shmq::Queue> {
    let q = shmq::get()?;
    if !gucs::use_dispatcher() || q.dispatcher_pid().is_none() {
        return None;
    }
    // SAFETY: plain call; reads shared state.
    let in_recovery = unsafe { pg_sys::RecoveryInProgress() };
    (!in_recovery).then_some(q)
}

/// Hands the held jobs to the dispatcher: fails (per `gearman.on_error`)
/// the jobs of each list whose every server the dispatcher last found down
/// and this backend cannot connect to either (a connect, no round trip;
/// only while the dispatcher reports the list down), encodes the rest and reserves room for them in the shared queue,
/// waiting while it is full (at most `gearman.commit_send_timeout`; then
/// they fail per `gearman.on_error`). Returns false when the jobs are too
/// large for the queue: this backend then sends them itself.
fn hand_off(q: shmq::Queue) -> bool {
    let down: Vec<String> = if q.any_down() {
        q.servers()
            .into_iter()
            .filter(|(_, r)| *r == shmq::Reach::Down)
            .map(|(a, _)| a)
            .collect()
    } else {
        Vec::new()
    };
    if !down.is_empty() {
        // One deadline (gearman.timeout) for the checks of every list.
        backend::within_deadline(|_| {
            let lists = XACT.with(|x| distinct_servers(&x.borrow().held));
            for list in lists {
                if list.iter().all(|a| down.contains(&a.to_string())) {
                    // The dispatcher may not have noticed a recovery yet (it
                    // retries within its connect back-off): this backend
                    // checks itself, as without the preload, then closes the
                    // connection the check opened (the dispatcher writes the
                    // jobs; this backend's other connections stay).
                    let r = backend::with_client(None, true, |c| {
                        let had: Vec<bool> = list.iter().map(|a| c.has_connection(a)).collect();
                        let r = c.ensure_connected_on(&list);
                        if let Ok(a) = &r {
                            let opened = list.iter().zip(&had).any(|(x, h)| x == a && !h);
                            if opened {
                                c.close_connection(a);
                            }
                        }
                        r
                    });
                    if let Err(e) = r {
                        unreachable_list(&list, &e);
                    }
                }
            }
        });
    }
    let (body, jobs) = XACT.with(|x| {
        let x = x.borrow();
        // One allocation: the jobs' bytes plus their framing (22 bytes a
        // job at most) and room for a few lists.
        let size: usize = x
            .held
            .iter()
            .map(|h| {
                h.job.function.len()
                    + h.job.workload.len()
                    + h.job.unique.as_ref().map_or(0, Vec::len)
                    + 22
            })
            .sum();
        let mut body = Vec::with_capacity(size + 256);
        let mut i = 0;
        while i < x.held.len() {
            // Consecutive jobs of one list form one group (call order kept).
            let list = x.held[i].servers();
            let mut j = i;
            while j < x.held.len() && x.held[j].servers() == list {
                j += 1;
            }
            list_text(list, |text| {
                gearman_core::handoff::encode_group_text(
                    &mut body,
                    text,
                    x.held[i..j].iter().map(|h| &h.job),
                )
            });
            i = j;
        }
        (body, x.held.len() as u64)
    });
    if jobs == 0 {
        return true;
    }
    let need = shmq::RECORD_HEADER + body.len() as u64;
    // (The queue holds at most 1 GB, so a record's length fits its u32.)
    if need > q.capacity() {
        return false;
    }
    let deadline = Instant::now() + gucs::commit_send_timeout();
    match q.reserve(need, deadline) {
        Ok(()) => XACT.with(|x| {
            let mut x = x.borrow_mut();
            x.held.clear();
            x.handoff = Some(Handoff {
                body,
                jobs,
                bytes: need,
            });
        }),
        Err(full) => {
            let e = gearman_core::Error::new(
                gearman_core::ErrorKind::Timeout,
                format!(
                    "the dispatcher queue stayed full for gearman.commit_send_timeout ({} ms): \
                     {} job(s) in {} of {} bytes, {} bytes reserved by committing transactions",
                    gucs::commit_send_timeout().as_millis(),
                    full.jobs,
                    full.used,
                    full.capacity,
                    full.reserved
                ),
            );
            let n = jobs;
            match gucs::on_error() {
                OnError::Error => GmError::new(
                    PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
                    format!(
                        "gearman: {n} background job(s) held for commit could not be handed to \
                         the dispatcher; the transaction is rolled back: {e}"
                    ),
                )
                .hint(
                    "Is gearmand up and the dispatcher running (SELECT * FROM \
                     gman_dispatch_status())? Raise gearman.dispatch_queue_size or \
                     gearman.commit_send_timeout, or use gearman.dispatch = 'outbox' to keep \
                     jobs while gearmand is down.",
                )
                .raise(),
                OnError::Warning => {
                    GmError::new(
                        PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
                        format!("gearman: {n} background job(s) held for commit are dropped: {e}"),
                    )
                    .warn();
                    XACT.with(|x| x.borrow_mut().held.clear());
                }
            }
        }
    }
    true
}

/// Calls `f` with `list`'s text, kept from the last call while the list is
/// the same (nearly always: one formatting per list, not per commit).
fn list_text<R>(list: &ServerList, f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static LAST: RefCell<Option<(ServerList, String)>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.as_ref().is_none_or(|(l, _)| l != list) {
            *last = Some((list.clone(), list.to_string()));
        }
        f(&last.as_ref().expect("set above").1)
    })
}

/// A list with held jobs has no usable server: the transaction fails
/// (`on_error = error`), or its jobs are dropped with a WARNING.
fn unreachable_list(list: &ServerList, e: &gearman_core::Error) {
    let text = list.to_string();
    let n = XACT.with(|x| {
        x.borrow()
            .held
            .iter()
            .filter(|h| h.servers() == list)
            .count()
    });
    let err = GmError::from_core(e, "(background jobs held for commit)", &text);
    match gucs::on_error() {
        OnError::Error => GmError {
            message: format!(
                "gearman: no job server reachable for {n} background job(s) held for \
                 commit; the transaction is rolled back: {e}"
            ),
            // A TLS refusal keeps its own hint (which setting to fix).
            hint: if e.is_tls() {
                err.hint.clone()
            } else {
                Some(
                    "Start gearmand or fix gearman.servers and run the transaction again, or \
                     use gearman.dispatch = 'outbox' to keep jobs while gearmand is down."
                        .to_string(),
                )
            },
            ..err
        }
        .raise(),
        OnError::Warning => {
            GmError {
                message: format!(
                    "gearman: no job server reachable; {n} background job(s) held for commit \
                     are dropped: {e}"
                ),
                ..err
            }
            .warn();
            XACT.with(|x| x.borrow_mut().held.retain(|h| h.servers() != list));
        }
    }
}

fn pre_commit_checks() {
    let lists = XACT.with(|x| distinct_servers(&x.borrow().held));
    for list in lists {
        if let Err(e) = backend::with_client(None, true, |c| c.ensure_connected_on(&list)) {
            unreachable_list(&list, &e);
        }
    }
}

/// Sends the committed transaction's jobs without waiting for their
/// confirmations, all within one deadline (`gearman.commit_send_timeout`
/// from now). Never raises: jobs that could not be written are counted as
/// failed and become one WARNING (per routing table: one unless the table
/// changed during the transaction); refusals and lost
/// confirmations are reported later (see the module docs).
fn send_after_commit(held: Vec<Held>) {
    let deadline = Instant::now() + gucs::commit_send_timeout();
    // Group by routing table (one unless it changed during the
    // transaction), keeping call order; the core routes each job by it.
    let mut groups: Vec<(Rc<Routing>, Vec<Job>)> = Vec::new();
    for h in held {
        match groups
            .iter_mut()
            .find(|(r, _)| Rc::ptr_eq(r, &h.routing) || **r == *h.routing)
        {
            Some((_, jobs)) => jobs.push(h.job),
            None => groups.push((h.routing, vec![h.job])),
        }
    }
    for (routing, jobs) in groups {
        let (written, err) = backend::send_committed(&routing, &jobs, deadline);
        let not_written = jobs.len() - written;
        backend::count_sent(jobs.len(), not_written);
        if not_written > 0 {
            let text = routing
                .group(&jobs)
                .iter()
                .map(|(l, _)| l.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            let err = err.unwrap_or_else(|| {
                gearman_core::Error::new(
                    gearman_core::ErrorKind::NoServers,
                    "no job server took the jobs",
                )
            });
            GmError {
                message: format!(
                    "gearman: {not_written} of {} background job(s) could not be sent after \
                     commit: {err}",
                    jobs.len()
                ),
                hint: Some(format!(
                    "The transaction is committed; these jobs were not sent. Counters: \
                     SELECT * FROM gman_dispatch_status(). Raise gearman.commit_send_timeout \
                     ({} ms) for large transactions, or use gearman.dispatch = 'outbox' for \
                     jobs that must not be lost.",
                    gucs::commit_send_timeout().as_millis()
                )),
                ..GmError::from_core(&err, "(background jobs held for commit)", &text)
            }
            .warn();
        }
    }
}

/// Writes one job into `gearman.outbox` in the current transaction; the
/// transaction announces it at commit with `NOTIFY gearman_outbox,
/// '<function>'` (once per function).
pub fn outbox_insert(
    function: &str,
    workload: &[u8],
    unique: &str,
    priority: &str,
    run_at: Option<TimestampWithTimeZone>,
) -> Result<(), GmError> {
    let spi_err = |e: pgrx::spi::Error| {
        GmError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("gearman: writing to gearman.outbox failed: {e}"),
        )
        .hint("Is the extension installed in this database (CREATE EXTENSION gearman)?")
    };
    Spi::run_with_args(
        "INSERT INTO gearman.outbox (function, workload, unique_key, priority, run_at) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            function.into(),
            workload.into(),
            unique.into(),
            priority.into(),
            run_at.into(),
        ],
    )
    .map_err(spi_err)?;
    XACT.with(|x| {
        let mut x = x.borrow_mut();
        if !x.notified.contains(function) {
            x.notified.insert(function.to_string());
        }
    });
    Ok(())
}

/// Queues `NOTIFY gearman_outbox, '<function>'` for each function written to
/// the outbox in this transaction. Called at PRE_COMMIT (before PostgreSQL
/// collects the transaction's notifications), not at insert time, because a
/// transaction that executed NOTIFY cannot be PREPAREd and outbox is the
/// dispatch mode meant for two-phase commit.
fn notify_outbox() {
    let functions: Vec<String> = XACT.with(|x| x.borrow_mut().notified.drain().collect());
    for f in functions {
        let payload = f;
        // SAFETY: pg_notify(text, text) called through fmgr inside the
        // committing transaction (PRE_COMMIT), where NOTIFY is allowed.
        unsafe {
            pgrx::direct_function_call_as_datum(
                pg_sys::pg_notify,
                &["gearman_outbox".into_datum(), payload.as_str().into_datum()],
            );
        }
    }
}
