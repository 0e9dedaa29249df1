//! The dispatcher background worker (`gearman` in
//! `shared_preload_libraries`): one process per PostgreSQL server that
//! writes every backend's commit-mode background jobs to the job servers.
//!
//! Backends hand their committed jobs over in shared memory
//! ([`crate::shmq`]) and set this process's latch. It takes whole records
//! out, decodes them ([`gearman_core::handoff`]) and submits each group to
//! one [`gearman_core::Dispatcher`] (its sender thread writes pipelined
//! batches, one connection per job server for the whole cluster, and reads
//! the confirmations). When that dispatcher's own queue is full (job
//! servers down), records stay in shared memory, which fills, and
//! committing backends wait for room (at most `gearman.commit_send_timeout`,
//! then fail per `gearman.on_error` before their commit).
//!
//! It shows in `pg_stat_activity` as `backend_type = 'gearman dispatcher'`.
//! The postmaster starts it at server start (once recovery is finished) and
//! one second after it exits; `SIGKILL` makes PostgreSQL reinitialise (a
//! crash restart of every backend), after which it starts again. At
//! shutdown (`SIGTERM`) it stops taking jobs, writes what it holds and
//! reads the confirmations, for at most `gearman.commit_send_timeout`, then
//! counts what is left as unsent and exits.
//!
//! Settings it uses (from the server's configuration, re-read on reload;
//! a reload that changes the connection settings starts a new sender,
//! which connects anew and gets the jobs the old one could not write
//! within `gearman.commit_send_timeout`, e.g. while gearmand is down):
//! `gearman.servers` (servers shown before any job names them),
//! `gearman.connect_timeout`, `gearman.commit_send_timeout` (bound on each
//! write and each confirmation, and on the flush at shutdown),
//! `gearman.tls_ca_file`, `gearman.tls_cert_file`, `gearman.tls_key_file`,
//! `gearman.dispatch_linger` (while records keep coming, it takes them at
//! most that often, so each write carries many commits' jobs).
//! Each job goes to the server list in force in its backend when it was
//! queued.

use crate::gucs;
use crate::shmq::{self, Reach};
use gearman_core::dispatcher::Reachability;
use gearman_core::{
    handoff, DeferredReport, Dispatcher, DispatcherOptions, Job, Options, Routing, ServerList,
    TlsConfig,
};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `backend_type` in `pg_stat_activity`.
pub const NAME: &str = "gearman dispatcher";
/// Bytes of shared-memory records taken per round.
const TAKE_MAX: u64 = 4 << 20;
/// Most time between two publications of the counters while busy.
const PUBLISH_EVERY: Duration = Duration::from_millis(10);
/// Failure reports kept for the log between two rounds.
const REPORTS_MAX: usize = 64;

/// Registers the background worker. Call from `_PG_init` while
/// `shared_preload_libraries` is processed.
pub fn register() {
    BackgroundWorkerBuilder::new(NAME)
        .set_type(NAME)
        .set_library("gearman")
        .set_function("gearman_dispatcher_main")
        // A connection to no database: shows in pg_stat_activity.
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

/// What the sender's settings are made of; a reload that changes any of
/// them replaces the sender.
#[derive(Clone, PartialEq, Eq)]
struct Settings {
    servers: String,
    connect_timeout: Duration,
    io_timeout: Duration,
    linger: Duration,
    tls: (String, String, String),
}

impl Settings {
    fn current() -> Settings {
        Settings {
            servers: gucs::servers_text(),
            connect_timeout: gucs::connect_timeout(),
            io_timeout: gucs::commit_send_timeout(),
            linger: gucs::dispatch_linger(),
            tls: gucs::tls_files(),
        }
    }
}

/// Failure reports from the sender thread, logged by the main loop (the
/// thread must not call PostgreSQL).
#[derive(Default)]
struct Reports {
    lines: Vec<String>,
    dropped: u64,
}

struct Sender {
    d: Dispatcher,
    settings: Settings,
}

/// Counter values of senders replaced or of earlier processes, added to the
/// current sender's (whose counters start at zero).
#[derive(Default, Clone, Copy)]
struct Base {
    sent: u64,
    confirmed: u64,
    refused: u64,
    unknown: u64,
    unsent: u64,
}

fn start_sender(settings: Settings, reports: &Arc<Mutex<Reports>>, capacity: u64) -> Sender {
    let tls = match TlsConfig::from_settings(&settings.tls.0, &settings.tls.1, &settings.tls.2) {
        Ok(t) => t,
        Err(e) => {
            warning!(
                "gearman dispatcher: gearman.tls_ca_file/tls_cert_file/tls_key_file: {e}; \
                 tls:// servers are verified against the system's roots until this is fixed"
            );
            None
        }
    };
    let default = default_list(&settings.servers);
    let r = reports.clone();
    let opts = DispatcherOptions {
        client: Options {
            connect_timeout: settings.connect_timeout,
            io_timeout: settings.io_timeout,
            // Retry a refusing server soon (the back-off doubles from here
            // up to 60 s); meanwhile a backend checks a list reported down
            // itself before failing a commit (crate::xact).
            retry_backoff: Duration::from_millis(500),
            client_id: Some(format!("postgres-dispatcher-{}", std::process::id())),
            tls,
            ..Options::default()
        },
        max_jobs: 1_000_000,
        max_bytes: capacity.clamp(1 << 20, 1 << 30) as usize,
        // The main loop lingers (collects records) as long; the sender
        // writes each round's jobs at once.
        linger: Duration::ZERO,
        thread_name: "gearman dispatcher sender".into(),
        on_report: Some(Arc::new(move |rep: &DeferredReport| {
            if rep.failed.is_empty() {
                return;
            }
            let mut g = r.lock().unwrap_or_else(|e| e.into_inner());
            if g.lines.len() >= REPORTS_MAX {
                g.dropped += rep.failed.len() as u64;
                return;
            }
            let first = &rep.failed[0];
            g.lines.push(format!(
                "{} background job(s) failed (refused, or fate unknown); first: function {}, \
                 unique key {:?}: {}",
                rep.failed.len(),
                crate::backend::ascii(first.function.as_bytes()),
                crate::backend::ascii(&first.unique),
                first.error
            ));
        })),
        ..DispatcherOptions::default()
    };
    // The sender thread must never run PostgreSQL's signal handlers: it
    // starts with every signal blocked (a new thread inherits the mask).
    // SAFETY: plain libc signal-mask calls on this thread, restored below.
    let d = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let d = Dispatcher::start(Routing::new(default), opts);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        d
    };
    match d {
        Ok(d) => Sender { d, settings },
        Err(e) => error!("gearman dispatcher: {e}"),
    }
}

/// `gearman.servers` as a list (the built-in default if it does not parse).
fn default_list(servers: &str) -> ServerList {
    ServerList::parse(servers)
        .or_else(|_| ServerList::parse(gucs::DEFAULT_SERVERS))
        .expect("the built-in server list parses")
}

/// Publishes the sender's counters (plus `base`) and reachability.
fn publish(q: &shmq::Queue, s: &Sender, base: &Base) {
    use std::sync::atomic::Ordering::Relaxed;
    let st = s.d.stats();
    let c = q.counters();
    c.sent.store(base.sent + st.sent, Relaxed);
    c.confirmed.store(base.confirmed + st.confirmed, Relaxed);
    c.refused.store(base.refused + st.refused, Relaxed);
    c.unknown.store(base.unknown + st.unknown, Relaxed);
    c.unsent.store(base.unsent + st.unsent, Relaxed);
    c.dispatcher_queued.store(st.queued, Relaxed);
    c.dispatcher_queued_bytes.store(st.queued_bytes, Relaxed);
    c.oldest_ms.store(
        st.oldest_age
            .map_or(u64::MAX, |a| a.as_millis().min(u64::MAX as u128 - 1) as u64),
        Relaxed,
    );
    let servers: Vec<(String, Reach)> = st
        .servers
        .iter()
        .map(|(a, r)| {
            (
                a.to_string(),
                match r {
                    Reachability::Up => Reach::Up,
                    Reachability::Down => Reach::Down,
                    Reachability::Unknown => Reach::Unknown,
                },
            )
        })
        .collect();
    q.publish_servers(&servers);
}

/// Folds a stopped sender's final counters into `base`.
fn absorb(base: &mut Base, s: &Sender) {
    let st = s.d.stats();
    base.sent += st.sent;
    base.confirmed += st.confirmed;
    base.refused += st.refused;
    base.unknown += st.unknown;
    base.unsent += st.unsent;
}

fn log_reports(reports: &Arc<Mutex<Reports>>) {
    let (lines, dropped) = {
        let mut g = reports.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut g.lines), std::mem::take(&mut g.dropped))
    };
    for l in lines {
        warning!("gearman dispatcher: {l}");
    }
    if dropped > 0 {
        warning!("gearman dispatcher: {dropped} more background job(s) failed (not itemised)");
    }
}

/// Decoded jobs not yet accepted by the sender (its queue was full), by
/// server list, with their bytes. Consecutive records of one list are
/// merged into one entry (one submission for many commits), up to
/// [`MERGE_JOBS`] jobs and [`MERGE_BYTES`] bytes an entry.
type Backlog = VecDeque<(ServerList, Vec<Job>, usize)>;
/// Most jobs of one merged submission.
const MERGE_JOBS: usize = 4096;
/// Most bytes (function, unique key and workload) of one merged
/// submission: within the sender's smallest queue (1 MB).
const MERGE_BYTES: usize = 256 << 10;

/// Appends `jobs` of `list` to the last entry of `backlog` when that is
/// for the same list and stays within [`MERGE_JOBS`] and [`MERGE_BYTES`];
/// else as a new entry.
fn push_merged(backlog: &mut Backlog, list: &ServerList, mut jobs: Vec<Job>) {
    let bytes: usize = jobs.iter().map(Job::byte_len).sum();
    match backlog.back_mut() {
        Some((l, v, b))
            if l == list && v.len() + jobs.len() <= MERGE_JOBS && *b + bytes <= MERGE_BYTES =>
        {
            v.append(&mut jobs);
            *b += bytes;
        }
        _ => backlog.push_back((list.clone(), jobs, bytes)),
    }
}

/// Moves records from shared memory into the sender: first what is left of
/// earlier rounds, then new records, stopping (records stay in shared
/// memory) while the sender's queue is full. `wait` bounds each submission.
/// Returns the jobs dropped (a record that does not decode: never expected)
/// and the records taken.
fn feed(q: &shmq::Queue, s: &Sender, backlog: &mut Backlog, wait: Duration) -> (u64, usize) {
    let mut dropped = 0;
    let mut taken = 0;
    // The last list parsed (records nearly always name the same one).
    let mut last: Option<(String, ServerList)> = None;
    loop {
        while let Some((list, jobs, _)) = backlog.front_mut() {
            match s.d.submit_to_taking(list, jobs, Instant::now() + wait) {
                Ok(()) => {}
                Err(e) if e.is_timeout() => return (dropped, taken),
                Err(e) => {
                    // Invalid jobs cannot come from a backend (validated
                    // when queued); never lose the rest over one.
                    warning!(
                        "gearman dispatcher: {} job(s) for {list} dropped: {e}",
                        jobs.len()
                    );
                    dropped += jobs.len() as u64;
                }
            }
            backlog.pop_front();
        }
        let records = q.take(TAKE_MAX);
        if records.is_empty() {
            return (dropped, taken);
        }
        taken += records.len();
        for (body, jobs) in records {
            let groups = match handoff::decode_groups(&body) {
                Ok(g) => g,
                Err(e) => {
                    warning!("gearman dispatcher: {jobs} job(s) dropped: {e}");
                    dropped += jobs;
                    continue;
                }
            };
            for (text, js) in groups {
                if last.as_ref().is_none_or(|(t, _)| t != text) {
                    match handoff::parse_list(text) {
                        Ok(l) => last = Some((text.to_string(), l)),
                        Err(e) => {
                            warning!("gearman dispatcher: {} job(s) dropped: {e}", js.len());
                            dropped += js.len() as u64;
                            continue;
                        }
                    }
                }
                push_merged(backlog, &last.as_ref().expect("parsed above").1, js);
            }
        }
    }
}

/// The background worker's entry point (named in [`register`]).
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn gearman_dispatcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    let Some(q) = shmq::get() else {
        error!("gearman dispatcher: the shared queue is missing (gearman must be in shared_preload_libraries)");
    };
    use std::sync::atomic::Ordering::Relaxed;
    let c = q.counters();
    c.starts.fetch_add(1, Relaxed);
    let mut base = Base {
        sent: c.sent.load(Relaxed),
        confirmed: c.confirmed.load(Relaxed),
        refused: c.refused.load(Relaxed),
        unknown: c.unknown.load(Relaxed),
        unsent: c.unsent.load(Relaxed),
    };
    let reports = Arc::new(Mutex::new(Reports::default()));
    let mut sender = start_sender(Settings::current(), &reports, q.capacity());
    // SAFETY: MyProcPid and MyLatch are this process's.
    let me = unsafe { (pg_sys::MyProcPid, pg_sys::MyLatch) };
    q.set_dispatcher(Some(me));
    log!(
        "gearman dispatcher started (queue {} kB, servers {})",
        q.capacity() / 1024,
        sender.settings.servers
    );
    let mut backlog = Backlog::new();
    // Counters and reachability are published at most every PUBLISH_EVERY
    // while busy (publishing takes the queue's lock) and before each sleep.
    let mut published = Instant::now();
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: re-reads the configuration files, as any backend does
            // on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            let now = Settings::current();
            let mut same_connections = now.clone();
            same_connections.servers = sender.settings.servers.clone();
            if now.servers != sender.settings.servers && same_connections == sender.settings {
                // Only the default list changed (it only names servers to
                // show): the sender keeps its queue and connections.
                if let Ok(list) = ServerList::parse(&now.servers) {
                    sender.d.set_routing(Routing::new(list));
                }
                sender.settings.servers = now.servers;
            } else if now != sender.settings {
                // Connection settings changed: a new sender. The old one
                // writes what it can within io_timeout; the new one gets
                // what it could not (e.g. while gearmand is down), ahead of
                // the records not yet submitted.
                let old = std::mem::replace(&mut sender, start_sender(now, &reports, q.capacity()));
                let left = old.d.stop_taking(Instant::now() + old.settings.io_timeout);
                absorb(&mut base, &old);
                let carried = left.len();
                // (Every job came with its list: submit_to.)
                let default = default_list(&sender.settings.servers);
                let mut ahead = Backlog::new();
                for (list, job) in left {
                    push_merged(&mut ahead, list.as_ref().unwrap_or(&default), vec![job]);
                }
                ahead.append(&mut backlog);
                backlog = ahead;
                log!(
                    "gearman dispatcher: settings reloaded; {carried} job(s) not yet written \
                     carried over"
                );
            }
        }
        let (dropped, taken) = feed(&q, &sender, &mut backlog, Duration::ZERO);
        base.unsent += dropped;
        let st = sender.d.stats();
        let busy = !backlog.is_empty() || st.queued > 0 || st.pending() > 0;
        if !busy || published.elapsed() >= PUBLISH_EVERY {
            publish(&q, &sender, &base);
            log_reports(&reports);
            published = Instant::now();
        }
        if taken > 0 && !sender.settings.linger.is_zero() {
            // Commits are coming: collect for gearman.dispatch_linger instead
            // of waking for each one. Backends setting the latch meanwhile make no system
            // call (this process is not waiting on it).
            // SAFETY: resets this process's own latch.
            unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
            std::thread::sleep(sender.settings.linger);
            // SAFETY: plain read of a flag set by the SIGTERM handler.
            if unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) } != 0 {
                break;
            }
            continue;
        }
        let timeout = if busy {
            Duration::from_millis(20)
        } else {
            Duration::from_millis(1000)
        };
        if !BackgroundWorker::wait_latch(Some(timeout)) {
            break;
        }
    }
    // Shutdown: take what backends still hand over for a moment, write it
    // and read the confirmations, within one deadline.
    let deadline = Instant::now() + sender.settings.io_timeout;
    q.set_dispatcher(None);
    let mut quiet = 0;
    while quiet < 3 && Instant::now() < deadline {
        let (dropped, taken) = feed(&q, &sender, &mut backlog, Duration::from_millis(10));
        base.unsent += dropped;
        if taken == 0 && q.depth().0 == 0 {
            quiet += 1;
            std::thread::sleep(Duration::from_millis(10));
        } else {
            quiet = 0;
        }
    }
    let left: u64 = backlog.iter().map(|(_, j, _)| j.len() as u64).sum::<u64>() + q.depth().0;
    sender.d.stop(deadline);
    base.unsent += left;
    publish(&q, &sender, &base);
    log_reports(&reports);
    let st = sender.d.stats();
    log!(
        "gearman dispatcher stopped: {} job(s) written, {} confirmed, {} refused, {} of unknown \
         fate, {} unsent in this run",
        st.sent,
        st.confirmed,
        st.refused,
        st.unknown,
        st.unsent + left
    );
    // Exit code 1: the postmaster starts a new dispatcher after
    // bgw_restart_time (exit code 0 would unregister it), unless the
    // server is shutting down.
    // SAFETY: ends this process through PostgreSQL's exit path.
    unsafe { pg_sys::proc_exit(1) };
}
