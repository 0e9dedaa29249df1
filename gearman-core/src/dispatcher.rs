//! The dispatcher: background jobs from any number of threads handed off in
//! memory and written by one sender thread, pipelined, one connection per
//! job server.
//!
//! [`Dispatcher::submit`] validates the jobs and appends them to a bounded
//! queue (bounded by job count, [`DispatcherOptions::max_jobs`], and by
//! bytes, [`DispatcherOptions::max_bytes`]) and returns without any socket
//! call. [`Dispatcher::submit_to`] does the same for jobs that go to a
//! server list of the caller's choosing, whatever the routing table says
//! (e.g. the list in force in the database session that made them: each
//! session may have its own). The sender thread takes whatever is queued
//! (at most [`DispatcherOptions::batch`] jobs at a time), groups it by
//! server list (the job's own, from `submit_to`, else the one its
//! function has in the [`Routing`] table), keeping call order within each
//! list, and writes each
//! group through one [`Client`]'s deferred ledger
//! ([`Client::submit_background_deferred_on_tracked`]): one write per
//! server per batch, the JOB_CREATED/ERROR replies matched later, the
//! ledger's retry rule, back-off and fail-over as for any client call.
//! The jobs a write call did not write (its deadline ran out, or no server
//! of the list could be used part-way), which the ledger names exactly,
//! go back to the queue, in their order, and are written later; every
//! other job is counted sent and ends up confirmed, refused or of unknown
//! fate.
//!
//! # When the queue is full
//! [`Dispatcher::submit`] waits (back-pressure) until the jobs fit, at most
//! until its deadline, then fails with [`ErrorKind::Timeout`] saying the
//! dispatcher queue is full; nothing of that call is queued then. Memory is
//! bounded by the two limits (plus one batch in the sender's hands).
//!
//! # When no job server is reachable
//! Jobs wait in the queue: the jobs of a list none of whose servers
//! accepts a connection are set apart (per list, still counted in the
//! queue and its limits), so they hold up no other list's jobs; the sender
//! tries that list again every [`DispatcherOptions::retry_interval`] (each
//! server also keeps the client's connect back-off) and writes them, in
//! their order, once a server of their list accepts a connection again. Meanwhile the queue fills, and submitters
//! get back-pressure and then their deadline's error. Jobs are not dropped
//! for their age; [`DispatcherStats::oldest_age`] shows how long the oldest
//! has waited. [`Dispatcher::stop`] counts what is still queued at its
//! deadline as unsent. A server that accepts connections but does not
//! answer (a stopped process) costs, per `io_timeout`, the first job
//! written on each new connection (awaited, then counted of unknown fate:
//! it may have been queued); the jobs of the batch that call did not write
//! go back to the queue.
//!
//! # Reachability
//! [`DispatcherStats::servers`] lists each server of the routing table
//! and of the lists given to [`Dispatcher::submit_to`] with what the
//! sender last found ([`Reachability`]): `Up` once it connected or wrote
//! to it, `Down` once a connect to it failed or its connection broke
//! (also for a server a list's other servers stood in for). The sender
//! probes each server marked `Down` again while it has nothing to write:
//! a connect only (at most `connect_timeout`, never under the queue lock),
//! every [`DispatcherOptions::retry_interval`] and not before the client's
//! connect back-off for it ends (`retry_backoff`, doubling per failed
//! connect, at most 60 s); the server is marked `Up` when it accepts, and
//! the jobs waiting for a list of it are tried at once. So a server that
//! comes back shows `Up` even with nothing queued for it (a caller that
//! refuses work while every server of its list is `Down` does not lock
//! itself out). Under a load that never leaves the sender idle, a `Down`
//! server is tried again by the writes themselves (once its back-off
//! ends, a job whose turn it is tries it first).
//!
//! # What a crash loses
//! The queue is in memory: a process that dies loses the queued jobs and
//! those written but not yet confirmed (their fate unknown). Jobs that must
//! survive a crash belong in an outbox table.
//!
//! # Counters
//! [`Dispatcher::stats`] reads atomics, without waiting for the sender:
//! `submitted = sent + unsent + queued (+ the batch being written)`, and
//! `sent = confirmed + refused + unknown + pending`.
//!
//! # Panics
//! A panic on the sender thread is caught: it is counted
//! ([`DispatcherStats::panics`]), the jobs in flight on its client are
//! counted as of unknown fate, and the loop restarts with a new client.

use crate::client::{Client, DeferredReport, Options};
use crate::error::{Error, ErrorKind, Result};
use crate::job::Job;
use crate::routing::Routing;
use crate::servers::{ServerAddr, ServerList};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Called on the sender thread with each batch of outcomes read (a report
/// with the confirmed count and the failed jobs: refused, or of unknown
/// fate). Must not block; a panic in it is caught as any panic of the
/// sender.
pub type ReportHook = Arc<dyn Fn(&DeferredReport) + Send + Sync>;

/// Dispatcher settings.
#[derive(Clone)]
pub struct DispatcherOptions {
    /// Settings of the sender's client: `io_timeout` bounds each write and
    /// each confirmation (see [`Client::submit_background_deferred`]),
    /// `retry_backoff` each server's connect back-off, `max_in_flight` the
    /// unconfirmed jobs per connection.
    pub client: Options,
    /// Most jobs queued, the batch the sender is writing included.
    /// Default 100,000.
    pub max_jobs: usize,
    /// Most bytes queued: the sum over queued jobs of function, workload
    /// and unique key lengths. Default 64 MiB.
    pub max_bytes: usize,
    /// Most jobs the sender takes from the queue for one write per server.
    /// Default 1,000.
    pub batch: usize,
    /// How long the sender lets a batch fill: it writes when `batch` jobs
    /// are queued or the oldest queued job has waited this long (or on
    /// [`Dispatcher::flush`] and [`Dispatcher::stop`]). Fewer, larger
    /// writes cost gearmand less CPU per job; each job may wait this much
    /// longer. Default 0 (write as soon as the sender is free).
    pub linger: Duration,
    /// How long the sender waits before trying again a server list none of
    /// whose servers accepted a connection, and between two probes of a
    /// server marked [`Reachability::Down`] (see the module docs). Default
    /// 200 ms.
    pub retry_interval: Duration,
    /// Name of the sender thread. Default `gearman-dispatch`.
    pub thread_name: String,
    /// See [`ReportHook`]. Default none.
    pub on_report: Option<ReportHook>,
}

impl Default for DispatcherOptions {
    fn default() -> DispatcherOptions {
        DispatcherOptions {
            client: Options::default(),
            max_jobs: 100_000,
            max_bytes: 64 << 20,
            batch: 1000,
            linger: Duration::ZERO,
            retry_interval: Duration::from_millis(200),
            thread_name: "gearman-dispatch".into(),
            on_report: None,
        }
    }
}

impl std::fmt::Debug for DispatcherOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherOptions")
            .field("client", &self.client)
            .field("max_jobs", &self.max_jobs)
            .field("max_bytes", &self.max_bytes)
            .field("batch", &self.batch)
            .field("linger", &self.linger)
            .field("retry_interval", &self.retry_interval)
            .field("thread_name", &self.thread_name)
            .field("on_report", &self.on_report.is_some())
            .finish()
    }
}

/// Whether the sender could last use a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// Not tried yet.
    Unknown,
    /// The last connect or write to it succeeded.
    Up,
    /// The last connect to it failed, or its connection broke; probed
    /// again while the sender is idle (see the module docs).
    Down,
}

/// A snapshot of the dispatcher's counters (see [`Dispatcher::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatcherStats {
    /// Jobs accepted by [`Dispatcher::submit`].
    pub submitted: u64,
    /// Jobs written to a job server.
    pub sent: u64,
    /// Of `sent`, jobs confirmed (JOB_CREATED: queued).
    pub confirmed: u64,
    /// Of `sent`, jobs refused (an ERROR reply: not queued).
    pub refused: u64,
    /// Of `sent`, jobs whose confirmation did not come in time or whose
    /// connection was lost first (they may have been queued).
    pub unknown: u64,
    /// Jobs never written: still queued when [`Dispatcher::stop`]'s
    /// deadline passed, or taken by the sender when it panicked. (Jobs a
    /// write call could not write, e.g. because its deadline ran out while
    /// awaiting the answer to a connection's first job, go back to the
    /// queue.)
    pub unsent: u64,
    /// Jobs in the queue now.
    pub queued: u64,
    /// Bytes in the queue now, with those of the batch being written (both
    /// count against [`DispatcherOptions::max_bytes`]).
    pub queued_bytes: u64,
    /// How long the oldest queued job has waited (`None`: queue empty).
    pub oldest_age: Option<Duration>,
    /// Panics caught on the sender thread.
    pub panics: u64,
    /// Each server of the routing table and of the lists given to
    /// [`Dispatcher::submit_to`] (from the first such call on; at most
    /// 64 such lists are remembered past the time their jobs are
    /// written), and whether the sender could last use it.
    pub servers: Vec<(ServerAddr, Reachability)>,
}

impl DispatcherStats {
    /// Written jobs whose confirmation has not been read yet.
    pub fn pending(&self) -> u64 {
        self.sent
            .saturating_sub(self.confirmed + self.refused + self.unknown)
    }
}

struct Queued {
    job: Job,
    bytes: usize,
    at: Instant,
    /// Position in the batch (requeued jobs keep their order).
    seq: usize,
    /// The list given to [`Dispatcher::submit_to`] (interned, see
    /// [`ServerTable::intern`]); `None`: the routing table's list for the
    /// job's function.
    list: Option<Arc<ServerList>>,
}

impl Queued {
    /// The list this job goes to.
    fn list<'a>(&'a self, routing: &'a Routing) -> &'a ServerList {
        match &self.list {
            Some(l) => l,
            None => routing.lookup(&self.job.function),
        }
    }
}

/// Most distinct lists given to [`Dispatcher::submit_to`] kept interned;
/// past it, those no queued job refers to any more are forgotten (and
/// their servers leave [`DispatcherStats::servers`] unless routed).
const MAX_LISTS: usize = 64;

/// The servers whose reachability [`DispatcherStats::servers`] reports:
/// those of the routing table and of the lists given to
/// [`Dispatcher::submit_to`].
#[derive(Default)]
struct ServerTable {
    entries: Vec<(ServerAddr, Arc<AtomicU8>)>,
    /// The routing table's servers.
    routed: Vec<ServerAddr>,
    /// The lists given to `submit_to`, each once: jobs of one list share
    /// one `Arc` (no allocation per job).
    lists: Vec<Arc<ServerList>>,
}

impl ServerTable {
    /// Keeps the entries of servers routed or in an interned list (in that
    /// order of first appearance), adding new ones as `Unknown`.
    fn rebuild(&mut self) {
        let mut wanted: Vec<&ServerAddr> = self.routed.iter().collect();
        for l in &self.lists {
            for a in l.iter() {
                if !wanted.contains(&a) {
                    wanted.push(a);
                }
            }
        }
        self.entries.retain(|(a, _)| wanted.contains(&a));
        let mut add = Vec::new();
        for a in wanted {
            if !self.entries.iter().any(|(x, _)| x == a) {
                add.push((a.clone(), Arc::new(AtomicU8::new(0))));
            }
        }
        self.entries.extend(add);
    }

    /// The shared copy of `list`, made (and its servers added to the
    /// table) on first sight.
    fn intern(&mut self, list: &ServerList) -> Arc<ServerList> {
        if let Some(l) = self.lists.iter().find(|l| ***l == *list) {
            return l.clone();
        }
        if self.lists.len() >= MAX_LISTS {
            self.lists.retain(|l| Arc::strong_count(l) > 1);
        }
        let l = Arc::new(list.clone());
        self.lists.push(l.clone());
        self.rebuild();
        l
    }
}

/// Jobs of a list none of whose servers could be used, waiting apart
/// until `retry_at` so they hold up no other list.
struct Parked {
    list: ServerList,
    jobs: VecDeque<Queued>,
    retry_at: Instant,
}

struct Queue {
    jobs: VecDeque<Queued>,
    /// Per unreachable list; their jobs count in `bytes` and `parked_jobs`.
    parked: Vec<Parked>,
    parked_jobs: usize,
    bytes: usize,
    /// Jobs and bytes in the sender's hands (taken, being written): they
    /// count against the limits until written.
    held: (usize, usize),
    stopping: Option<Instant>,
    /// Set by `flush`: the sender waits for confirmations.
    flushing: u64,
    /// The sender waits for work (a submission must wake it); false while
    /// it works or lingers (woken only by a full batch).
    sleeping: bool,
    routing: Option<Routing>,
}

#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    sent: AtomicU64,
    confirmed: AtomicU64,
    refused: AtomicU64,
    unknown: AtomicU64,
    unsent: AtomicU64,
    queued: AtomicU64,
    queued_bytes: AtomicU64,
    /// Nanoseconds from `epoch` to the oldest job's enqueueing; `u64::MAX`
    /// when empty.
    oldest: AtomicU64,
    panics: AtomicU64,
    /// Jobs taken from the queue and not yet counted as sent or unsent.
    taken: AtomicU64,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when jobs arrive or stop/flush is asked.
    work: Condvar,
    /// Signalled when room frees up or progress is made.
    progress: Condvar,
    counters: Counters,
    epoch: Instant,
    servers: Mutex<ServerTable>,
    done: AtomicBool,
    max_jobs: usize,
    max_bytes: usize,
    batch: usize,
    io_timeout: Duration,
    /// Set by [`Dispatcher::stop_taking`]: jobs not written when the
    /// sender stops go to `kept` (under its lock) instead of `unsent`.
    keep: AtomicBool,
    kept: Mutex<Vec<(Option<ServerList>, Job)>>,
}

fn reach_code(r: Reachability) -> u8 {
    match r {
        Reachability::Unknown => 0,
        Reachability::Up => 1,
        Reachability::Down => 2,
    }
}

/// The sender's schedule of reachability probes: each server marked
/// [`Reachability::Down`] is tried again (a connect only) every
/// `retry_interval`, and not before the client's connect back-off for it
/// ends.
#[derive(Default)]
struct Probes {
    at: Vec<(ServerAddr, Instant)>,
}

impl Probes {
    /// Follows `down` (the servers marked Down now: one first seen is
    /// probed `retry` later) and returns those due at `now`.
    fn due(
        &mut self,
        down: Vec<ServerAddr>,
        retry: Duration,
        client: &Client,
        now: Instant,
    ) -> Vec<ServerAddr> {
        self.at.retain(|(a, _)| down.contains(a));
        for a in down {
            if !self.at.iter().any(|(x, _)| *x == a) {
                self.at.push((a, now + retry));
            }
        }
        for (a, t) in &mut self.at {
            if let Some(b) = client.connect_backoff(a) {
                *t = (*t).max(b);
            }
        }
        self.at
            .iter()
            .filter(|(_, t)| *t <= now)
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// When the next probe is due.
    fn next(&self) -> Option<Instant> {
        self.at.iter().map(|(_, t)| *t).min()
    }

    /// Tries to connect to each of `due`; marks those that accept
    /// [`Reachability::Up`] and returns them; the others are tried again
    /// `retry` later. Called without the queue lock.
    fn run(
        &mut self,
        sh: &Shared,
        client: &mut Client,
        due: Vec<ServerAddr>,
        retry: Duration,
    ) -> Vec<ServerAddr> {
        let mut up = Vec::new();
        for a in due {
            match client.ensure_connected_on(&ServerList::single(a.clone())) {
                Ok(_) => {
                    sh.mark_addr(&a, Reachability::Up);
                    log::info!("gearman dispatcher: job server {a} is reachable again");
                    self.at.retain(|(x, _)| *x != a);
                    up.push(a);
                }
                Err(e) => {
                    log::debug!("gearman dispatcher: job server {a} still unreachable: {e}");
                    let next = Instant::now() + retry;
                    for (x, t) in &mut self.at {
                        if *x == a {
                            *t = next;
                        }
                    }
                }
            }
        }
        up
    }
}

impl Queue {
    /// Jobs waiting: queued and parked.
    fn depth(&self) -> usize {
        self.jobs.len() + self.parked_jobs
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_queue(&self, q: &Queue) {
        let c = &self.counters;
        c.queued.store(q.depth() as u64, Ordering::Release);
        c.queued_bytes
            .store((q.bytes + q.held.1) as u64, Ordering::Release);
        let oldest = q
            .jobs
            .front()
            .into_iter()
            .chain(q.parked.iter().filter_map(|p| p.jobs.front()))
            .map(|j| j.at.saturating_duration_since(self.epoch).as_nanos() as u64)
            .min()
            .unwrap_or(u64::MAX);
        c.oldest.store(oldest, Ordering::Release);
    }

    fn server_table(&self) -> MutexGuard<'_, ServerTable> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_servers(&self, routing: &Routing) {
        let mut t = self.server_table();
        t.routed = routing.all_servers();
        t.rebuild();
    }

    fn mark(&self, addr: &str, r: Reachability) {
        let s = self.server_table();
        for (a, v) in s.entries.iter() {
            if a.to_string() == addr {
                v.store(reach_code(r), Ordering::Release);
            }
        }
    }

    fn mark_addr(&self, addr: &ServerAddr, r: Reachability) {
        let s = self.server_table();
        for (a, v) in s.entries.iter() {
            if a == addr {
                v.store(reach_code(r), Ordering::Release);
            }
        }
    }

    /// The servers marked [`Reachability::Down`] now.
    fn down_servers(&self) -> Vec<ServerAddr> {
        self.server_table()
            .entries
            .iter()
            .filter(|(_, v)| v.load(Ordering::Acquire) == reach_code(Reachability::Down))
            .map(|(a, _)| a.clone())
            .collect()
    }

    fn note(&self, report: &DeferredReport, hook: Option<&ReportHook>) {
        let c = &self.counters;
        c.confirmed.fetch_add(report.confirmed, Ordering::AcqRel);
        for f in &report.failed {
            if f.is_unknown_fate() {
                c.unknown.fetch_add(1, Ordering::AcqRel);
                if let Some(s) = f.error.server() {
                    if f.error.is_connection_lost() {
                        self.mark(s, Reachability::Down);
                    }
                }
            } else {
                c.refused.fetch_add(1, Ordering::AcqRel);
            }
        }
        if report.confirmed > 0 || !report.failed.is_empty() {
            if let Some(h) = hook {
                h(report);
            }
        }
        self.progress.notify_all();
    }
}

/// A sender thread and its bounded queue. See the module docs.
pub struct Dispatcher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Dispatcher {
    /// Starts the sender thread for jobs routed by `routing`. Does no I/O
    /// on the calling thread; connections open on the sender when jobs
    /// come.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(routing: Routing, opts: DispatcherOptions) -> Result<Dispatcher> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                parked: Vec::new(),
                parked_jobs: 0,
                bytes: 0,
                held: (0, 0),
                stopping: None,
                flushing: 0,
                sleeping: false,
                routing: None,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            counters: Counters {
                oldest: AtomicU64::new(u64::MAX),
                ..Counters::default()
            },
            epoch: Instant::now(),
            servers: Mutex::new(ServerTable::default()),
            done: AtomicBool::new(false),
            max_jobs: opts.max_jobs.max(1),
            max_bytes: opts.max_bytes.max(1),
            batch: opts.batch.max(1),
            io_timeout: opts.client.io_timeout,
            keep: AtomicBool::new(false),
            kept: Mutex::new(Vec::new()),
        });
        shared.set_servers(&routing);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(opts.thread_name.clone())
            .spawn(move || sender(s, routing, opts))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Interrupted,
                    format!("could not start the dispatcher thread: {e}"),
                )
            })?;
        Ok(Dispatcher {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `jobs` (all or none) for the sender and returns without any
    /// socket call. When they do not fit (see
    /// [`DispatcherOptions::max_jobs`], [`DispatcherOptions::max_bytes`]),
    /// waits for room until `deadline`.
    ///
    /// # Errors
    /// - [`ErrorKind::InvalidArgument`]: a job is invalid (as
    ///   [`Job::validate`] says), or the call alone exceeds a limit;
    /// - [`ErrorKind::Timeout`]: `dispatcher queue full: ...`, no room
    ///   before `deadline`;
    /// - [`ErrorKind::Interrupted`]: the dispatcher is stopping or stopped.
    pub fn submit(&self, mut jobs: Vec<Job>, deadline: Instant) -> Result<()> {
        self.enqueue(&mut jobs, None, deadline)
    }

    /// As [`Dispatcher::submit`] (same validation, limits, back-pressure
    /// and errors; all or none), but every job of the call goes to `list`,
    /// whatever the routing table says (now or later): e.g. the list in
    /// force in the session that made the jobs. Jobs of one list keep
    /// their call order, whether they came by `submit` (routed to that
    /// list) or by `submit_to`; the sender still writes once per server
    /// per batch. The servers of `list` join
    /// [`DispatcherStats::servers`]. `list` is copied once per distinct
    /// list (kept, shared by its jobs), not per call.
    ///
    /// # Errors
    /// As [`Dispatcher::submit`].
    pub fn submit_to(
        &self,
        list: &ServerList,
        mut jobs: Vec<Job>,
        deadline: Instant,
    ) -> Result<()> {
        self.enqueue(&mut jobs, Some(list), deadline)
    }

    /// As [`Dispatcher::submit_to`], but the jobs are taken out of `jobs`
    /// only when queued: after any error `jobs` is as it was, e.g. to
    /// offer them again after a [`ErrorKind::Timeout`] without keeping a
    /// copy.
    ///
    /// # Errors
    /// As [`Dispatcher::submit`].
    pub fn submit_to_taking(
        &self,
        list: &ServerList,
        jobs: &mut Vec<Job>,
        deadline: Instant,
    ) -> Result<()> {
        self.enqueue(jobs, Some(list), deadline)
    }

    fn enqueue(
        &self,
        jobs: &mut Vec<Job>,
        list: Option<&ServerList>,
        deadline: Instant,
    ) -> Result<()> {
        let mut bytes = 0usize;
        for j in jobs.iter() {
            j.validate()?;
            bytes += j.byte_len();
        }
        if jobs.is_empty() {
            return Ok(());
        }
        let (max_jobs, max_bytes) = self.limits();
        if jobs.len() > max_jobs || bytes > max_bytes {
            return Err(Error::invalid_argument(format!(
                "{} jobs of {bytes} bytes exceed the dispatcher queue's limits \
                 ({max_jobs} jobs, {max_bytes} bytes)",
                jobs.len()
            )));
        }
        let sh = &self.shared;
        // Before the queue lock: the two are never held together.
        let list = list.map(|l| sh.server_table().intern(l));
        let mut q = sh.lock();
        loop {
            if q.stopping.is_some() || sh.done.load(Ordering::Acquire) {
                return Err(Error::interrupted("the dispatcher is stopped"));
            }
            if q.depth() + q.held.0 + jobs.len() <= max_jobs
                && q.bytes + q.held.1 + bytes <= max_bytes
            {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::timeout(format!(
                    "dispatcher queue full: {} jobs, {} bytes queued (limits {max_jobs} jobs, \
                     {max_bytes} bytes); no room for {} more jobs before the deadline",
                    q.depth() + q.held.0,
                    q.bytes + q.held.1,
                    jobs.len()
                )));
            }
            q = sh
                .progress
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let at = Instant::now();
        let n = jobs.len() as u64;
        for job in jobs.drain(..) {
            let b = job.byte_len();
            q.bytes += b;
            q.jobs.push_back(Queued {
                job,
                bytes: b,
                at,
                seq: 0,
                list: list.clone(),
            });
        }
        sh.counters.submitted.fetch_add(n, Ordering::AcqRel);
        sh.publish_queue(&q);
        // Wake the sender only when it waits for work or a batch is full:
        // no futex call per job while it is busy or lingering.
        let wake = q.sleeping || q.jobs.len() >= sh.batch;
        drop(q);
        if wake {
            sh.work.notify_all();
        }
        Ok(())
    }

    fn limits(&self) -> (usize, usize) {
        (self.shared.max_jobs, self.shared.max_bytes)
    }

    /// Replaces the routing table; the sender uses it from its next batch
    /// (jobs already queued included).
    pub fn set_routing(&self, routing: Routing) {
        self.shared.set_servers(&routing);
        self.shared.lock().routing = Some(routing);
        self.shared.work.notify_all();
    }

    /// The counters now (atomics; no wait for the sender).
    pub fn stats(&self) -> DispatcherStats {
        let c = &self.shared.counters;
        // Outcomes before `sent`, so `pending` never goes negative.
        let confirmed = c.confirmed.load(Ordering::Acquire);
        let refused = c.refused.load(Ordering::Acquire);
        let unknown = c.unknown.load(Ordering::Acquire);
        let oldest = c.oldest.load(Ordering::Acquire);
        let oldest_age = (oldest != u64::MAX).then(|| {
            let at = self.shared.epoch + Duration::from_nanos(oldest);
            Instant::now().saturating_duration_since(at)
        });
        let servers = self
            .shared
            .server_table()
            .entries
            .iter()
            .map(|(a, v)| {
                let r = match v.load(Ordering::Acquire) {
                    1 => Reachability::Up,
                    2 => Reachability::Down,
                    _ => Reachability::Unknown,
                };
                (a.clone(), r)
            })
            .collect();
        DispatcherStats {
            submitted: c.submitted.load(Ordering::Acquire),
            sent: c.sent.load(Ordering::Acquire),
            confirmed,
            refused,
            unknown,
            unsent: c.unsent.load(Ordering::Acquire),
            queued: c.queued.load(Ordering::Acquire),
            queued_bytes: c.queued_bytes.load(Ordering::Acquire),
            oldest_age,
            panics: c.panics.load(Ordering::Acquire),
            servers,
        }
    }

    /// Waits until every job submitted before this call has been written
    /// and its confirmation read (or counted as refused, unknown or
    /// unsent), at most until `deadline`. Returns whether that happened.
    pub fn flush(&self, deadline: Instant) -> bool {
        let sh = &self.shared;
        let target = sh.counters.submitted.load(Ordering::Acquire);
        let mut q = sh.lock();
        q.flushing += 1;
        sh.work.notify_all();
        let settled = |sh: &Shared| {
            let c = &sh.counters;
            let out = c.confirmed.load(Ordering::Acquire)
                + c.refused.load(Ordering::Acquire)
                + c.unknown.load(Ordering::Acquire)
                + c.unsent.load(Ordering::Acquire);
            out >= target
        };
        let ok = loop {
            if settled(sh) {
                break true;
            }
            if sh.done.load(Ordering::Acquire) {
                break settled(sh);
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            // Bounded slices: progress is signalled, but never rely on it.
            let wait = (deadline - now).min(Duration::from_millis(50));
            q = sh
                .progress
                .wait_timeout(q, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        q.flushing -= 1;
        ok
    }

    /// Stops the sender: it writes what it can of the queue and reads the
    /// confirmations until `deadline`, then counts what is still queued as
    /// unsent and what is still unconfirmed as of unknown fate, closes its
    /// connections and ends; the thread is joined. Later submissions fail.
    /// Returns whether the thread was joined: `false` only if it did not
    /// end within one second past `deadline` (it is then left detached;
    /// it still ends once its current wait, bounded by `io_timeout`, is
    /// over). Calling it again is harmless.
    pub fn stop(&self, deadline: Instant) -> bool {
        let sh = &self.shared;
        {
            let mut q = sh.lock();
            if q.stopping.is_none() {
                q.stopping = Some(deadline);
            }
        }
        sh.work.notify_all();
        sh.progress.notify_all();
        let give_up = deadline + Duration::from_secs(1);
        let mut q = sh.lock();
        while !sh.done.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= give_up {
                break;
            }
            let wait = (give_up - now).min(Duration::from_millis(50));
            q = sh
                .progress
                .wait_timeout(q, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(q);
        let mut t = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if sh.done.load(Ordering::Acquire) {
            if let Some(h) = t.take() {
                let _ = h.join();
            }
            true
        } else {
            t.is_none()
        }
    }

    /// As [`Dispatcher::stop`], but the jobs not written by `deadline`
    /// (queued, or waiting for a list none of whose servers could be used)
    /// are returned, oldest first, instead of counted as unsent: e.g. to
    /// hand them to a new dispatcher. Each comes with the list it was to go
    /// to (`None`: the routing table's list for its function). Jobs
    /// written but not confirmed by then still count as of unknown fate.
    /// If the thread did not end in time (see [`Dispatcher::stop`]), what
    /// it still holds when it does is counted as unsent.
    pub fn stop_taking(&self, deadline: Instant) -> Vec<(Option<ServerList>, Job)> {
        self.shared.keep.store(true, Ordering::Release);
        self.stop(deadline);
        let mut kept = self.shared.kept.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.keep.store(false, Ordering::Release);
        std::mem::take(&mut *kept)
    }

    /// Whether the sender thread has ended.
    pub fn is_stopped(&self) -> bool {
        self.shared.done.load(Ordering::Acquire)
    }
}

impl Drop for Dispatcher {
    /// Stops with a deadline of the client's `io_timeout` from now.
    fn drop(&mut self) {
        if !self.shared.done.load(Ordering::Acquire) {
            self.stop(Instant::now() + self.shared.io_timeout);
        }
    }
}

/// The sender thread: runs [`run`] under `catch_unwind`, restarting it
/// after a panic, and marks the dispatcher done when it returns.
fn sender(sh: Arc<Shared>, routing: Routing, opts: DispatcherOptions) {
    let mut routing = routing;
    loop {
        let mut client = None;
        let r = catch_unwind(AssertUnwindSafe(|| {
            run(&sh, &mut routing, &opts, &mut client)
        }));
        match r {
            Ok(()) => break,
            Err(_) => {
                let c = &sh.counters;
                c.panics.fetch_add(1, Ordering::AcqRel);
                // Jobs taken but not written: never sent.
                let taken = c.taken.swap(0, Ordering::AcqRel);
                sh.lock().held = (0, 0);
                c.unsent.fetch_add(taken, Ordering::AcqRel);
                // Jobs written but not settled: of unknown fate.
                let pending = sh_pending(&sh);
                c.unknown.fetch_add(pending, Ordering::AcqRel);
                log::error!(
                    "gearman dispatcher: the sender panicked; {taken} jobs unsent, \
                     {pending} of unknown fate; restarting"
                );
                drop(catch_unwind(AssertUnwindSafe(move || drop(client))));
                sh.progress.notify_all();
                if sh.lock().stopping.is_some_and(|d| Instant::now() >= d) {
                    let mut q = sh.lock();
                    count_unsent(&sh, &mut q);
                    break;
                }
            }
        }
    }
    sh.done.store(true, Ordering::Release);
    let _q = sh.lock();
    sh.progress.notify_all();
}

fn sh_pending(sh: &Shared) -> u64 {
    let c = &sh.counters;
    c.sent.load(Ordering::Acquire).saturating_sub(
        c.confirmed.load(Ordering::Acquire)
            + c.refused.load(Ordering::Acquire)
            + c.unknown.load(Ordering::Acquire),
    )
}

fn count_unsent(sh: &Shared, q: &mut Queue) {
    let n = q.depth() as u64;
    let parked = std::mem::take(&mut q.parked);
    let jobs = std::mem::take(&mut q.jobs);
    q.parked_jobs = 0;
    q.bytes = 0;
    let mut kept = sh.kept.lock().unwrap_or_else(|e| e.into_inner());
    if sh.keep.load(Ordering::Acquire) {
        // Oldest first: a parked list's jobs came before its queued ones.
        for p in parked {
            kept.extend(p.jobs.into_iter().map(|j| (Some(p.list.clone()), j.job)));
        }
        kept.extend(
            jobs.into_iter()
                .map(|j| (j.list.map(|l| (*l).clone()), j.job)),
        );
    } else {
        sh.counters.unsent.fetch_add(n, Ordering::AcqRel);
    }
    drop(kept);
    sh.publish_queue(q);
}

/// The sender's loop; returns once stopped.
fn run(sh: &Shared, routing: &mut Routing, opts: &DispatcherOptions, slot: &mut Option<Client>) {
    let hook = opts.on_report.as_ref();
    let client =
        slot.get_or_insert_with(|| Client::with_routing(routing.clone(), opts.client.clone()));
    let batch_max = opts.batch.max(1);
    let mut probes = Probes::default();
    loop {
        // Take a batch, or wait for one.
        let (batch, stopping, flushing) = {
            let mut q = sh.lock();
            loop {
                if let Some(r) = q.routing.take() {
                    *routing = r;
                    client.set_routing(routing.clone());
                }
                let stopping = q.stopping;
                let past_stop = stopping.is_some_and(|d| Instant::now() >= d);
                if past_stop {
                    count_unsent(sh, &mut q);
                    break (Vec::new(), stopping, q.flushing > 0);
                }
                // Let a batch fill (see `linger`) unless it is full or
                // someone waits for the queue to empty.
                let linger_until = q.jobs.front().map(|j| j.at + opts.linger);
                let lingering = !opts.linger.is_zero()
                    && q.jobs.len() < batch_max
                    && stopping.is_none()
                    && q.flushing == 0
                    && linger_until.is_some_and(|t| Instant::now() < t);
                if !q.jobs.is_empty() && lingering {
                    let t = linger_until.expect("queue not empty");
                    q.sleeping = false;
                    q = sh
                        .work
                        .wait_timeout(q, t.saturating_duration_since(Instant::now()))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    continue;
                }
                let b = take_batch(&mut q, routing, batch_max);
                if !b.is_empty() {
                    sh.counters.taken.store(b.len() as u64, Ordering::Release);
                    sh.publish_queue(&q);
                    sh.progress.notify_all();
                    break (b, stopping, q.flushing > 0);
                }
                let pending = client.deferred_pending();
                if q.jobs.is_empty() && (stopping.is_some() || q.flushing > 0) && pending > 0 {
                    // Wait for the confirmations outside the lock.
                    break (Vec::new(), stopping, true);
                }
                if q.depth() == 0 && stopping.is_some() && pending == 0 {
                    break (Vec::new(), stopping, false);
                }
                // Nothing to write now: collect what arrived, then sleep a
                // little (shorter while confirmations are owed).
                if pending > 0 {
                    drop(q);
                    let r = client.collect_deferred(false);
                    sh.note(&r, hook);
                    q = sh.lock();
                    if client.deferred_pending() == 0 || !q.jobs.is_empty() {
                        continue;
                    }
                }
                // Idle: probe the servers marked Down that are due (never
                // under the queue lock), so their reachability shows even
                // with nothing to write to them; lists waiting for one
                // that is back are tried at once.
                let mut next_probe = None;
                if stopping.is_none() {
                    let now = Instant::now();
                    let due = probes.due(sh.down_servers(), opts.retry_interval, client, now);
                    if !due.is_empty() {
                        drop(q);
                        let up = probes.run(sh, client, due, opts.retry_interval);
                        q = sh.lock();
                        let now = Instant::now();
                        for p in q.parked.iter_mut() {
                            if p.list.iter().any(|a| up.contains(a)) {
                                p.retry_at = now;
                            }
                        }
                        continue;
                    }
                    next_probe = probes.next();
                }
                let mut wait = if client.deferred_pending() > 0 {
                    Duration::from_millis(5)
                } else {
                    Duration::from_millis(500)
                };
                if let Some(t) = next_probe {
                    wait = wait.min(t.saturating_duration_since(Instant::now()));
                }
                if let Some(t) = q.parked.iter().map(|p| p.retry_at).min() {
                    wait = wait.min(t.saturating_duration_since(Instant::now()));
                }
                if let Some(d) = stopping {
                    wait = wait.min(d.saturating_duration_since(Instant::now()));
                }
                q.sleeping = true;
                q = sh
                    .work
                    .wait_timeout(q, wait.max(Duration::from_millis(1)))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                q.sleeping = false;
            }
        };
        let deadline_cap = stopping;
        client.options_mut().deadline = deadline_cap;
        if batch.is_empty() {
            if flushing || stopping.is_some() {
                let r = client.collect_deferred(true);
                sh.note(&r, hook);
            }
            if let Some(d) = stopping {
                let q = sh.lock();
                let over = Instant::now() >= d;
                if (q.depth() == 0 && client.deferred_pending() == 0) || over {
                    drop(q);
                    break;
                }
            }
            continue;
        }
        let parked = write_batch(sh, client, routing, batch, hook);
        let mut q = sh.lock();
        q.held = (0, 0);
        let retry_at = Instant::now() + opts.retry_interval;
        for (list, jobs) in parked {
            if q.stopping.is_some_and(|d| Instant::now() >= d) {
                let mut kept = sh.kept.lock().unwrap_or_else(|e| e.into_inner());
                if sh.keep.load(Ordering::Acquire) {
                    kept.extend(jobs.into_iter().map(|j| (Some(list.clone()), j.job)));
                } else {
                    let n = jobs.len() as u64;
                    sh.counters.unsent.fetch_add(n, Ordering::AcqRel);
                }
                continue;
            }
            q.parked_jobs += jobs.len();
            q.bytes += jobs.iter().map(|j| j.bytes).sum::<usize>();
            match q.parked.iter_mut().position(|p| p.list == list) {
                Some(i) => {
                    // Older than what was parked since: in front.
                    let p = &mut q.parked[i];
                    for j in jobs.into_iter().rev() {
                        p.jobs.push_front(j);
                    }
                    p.retry_at = retry_at;
                }
                None => q.parked.push(Parked {
                    list,
                    jobs: jobs.into(),
                    retry_at,
                }),
            }
        }
        sh.counters.taken.store(0, Ordering::Release);
        sh.publish_queue(&q);
        drop(q);
        sh.progress.notify_all();
    }
    // Stopped: what is still owed is of unknown fate; close connections.
    let r = client.collect_deferred(false);
    sh.note(&r, hook);
    let owed = client.deferred_pending() as u64;
    if owed > 0 {
        client.options_mut().deadline = Some(Instant::now());
        client.disconnect();
        let r = client.take_deferred_report();
        sh.note(&r, hook);
    }
    let mut q = sh.lock();
    count_unsent(sh, &mut q);
}

/// Takes up to `max` jobs: first those of parked lists that are due for
/// another try, then from the queue, where a job of a parked list (not
/// due) joins its list's parked jobs instead. Moves their bytes to `held`.
fn take_batch(q: &mut Queue, routing: &Routing, max: usize) -> Vec<Queued> {
    let now = Instant::now();
    let mut b: Vec<Queued> = Vec::new();
    for p in q.parked.iter_mut().filter(|p| p.retry_at <= now) {
        while b.len() < max {
            match p.jobs.pop_front() {
                Some(j) => b.push(j),
                None => break,
            }
        }
    }
    q.parked_jobs -= b.len();
    q.parked.retain(|p| !p.jobs.is_empty());
    while b.len() < max {
        let Some(j) = q.jobs.pop_front() else {
            break;
        };
        let list = j.list(routing);
        if let Some(p) = q
            .parked
            .iter_mut()
            .find(|p| p.retry_at > now && &p.list == list)
        {
            p.jobs.push_back(j);
            q.parked_jobs += 1;
            continue;
        }
        b.push(j);
    }
    for (k, j) in b.iter_mut().enumerate() {
        j.seq = k;
        q.bytes -= j.bytes;
        q.held.0 += 1;
        q.held.1 += j.bytes;
    }
    b
}

/// Groups a batch by the list each job goes to (its own, else the
/// routing table's): one entry per distinct list, in order of first use,
/// with the indices of its jobs in order.
fn group(batch: &[Queued], routing: &Routing) -> Vec<(ServerList, Vec<usize>)> {
    let mut out: Vec<(&ServerList, Vec<usize>)> = Vec::new();
    for (i, j) in batch.iter().enumerate() {
        let l = j.list(routing);
        match out.iter_mut().find(|(x, _)| std::ptr::eq(*x, l) || *x == l) {
            Some((_, v)) => v.push(i),
            None => out.push((l, vec![i])),
        }
    }
    out.into_iter().map(|(l, v)| (l.clone(), v)).collect()
}

/// Writes one batch, grouped by server list: one write per server. Returns
/// the jobs not written, by list (to wait apart, parked, until retried):
/// those of lists none of whose servers could be used, and those a write
/// call could not write.
fn write_batch(
    sh: &Shared,
    client: &mut Client,
    routing: &Routing,
    batch: Vec<Queued>,
    hook: Option<&ReportHook>,
) -> Vec<(ServerList, Vec<Queued>)> {
    let c = &sh.counters;
    let groups = group(&batch, routing);
    let mut slots: Vec<Option<Queued>> = batch.into_iter().map(Some).collect();
    let mut parked: Vec<(ServerList, Vec<Queued>)> = Vec::new();
    for (list, idx) in groups {
        let mut requeue = Vec::new();
        // Some server of the list must accept a connection first; if none
        // does, the jobs wait in the queue (nothing of them is written).
        match client.ensure_connected_on(&list) {
            Ok(addr) => sh.mark_addr(&addr, Reachability::Up),
            Err(e) => {
                for a in list.iter() {
                    sh.mark_addr(a, Reachability::Down);
                }
                log::warn!("gearman dispatcher: no job server of the list can be used: {e}");
                for i in idx {
                    if let Some(q) = slots[i].take() {
                        requeue.push(q);
                    }
                }
                parked.push((list, requeue));
                continue;
            }
        }
        let group: Vec<&Job> = idx
            .iter()
            .filter_map(|&i| slots[i].as_ref().map(|q| &q.job))
            .collect();
        let r = client.submit_background_deferred_on_tracked(&list, &group);
        // What the call found of the list's servers: connected (Up), or
        // its last connect failed (Down, probed again while idle).
        for a in list.iter() {
            if client.has_connection(a) {
                sh.mark_addr(a, Reachability::Up);
            } else if client.connect_backoff(a).is_some() {
                sh.mark_addr(a, Reachability::Down);
            }
        }
        let w = match r {
            Ok(w) => w,
            Err(e) => {
                // An invalid job: `enqueue` validated them, so this is a
                // bug; nothing was written, and writing again would fail
                // again: counted as unsent.
                log::error!(
                    "gearman dispatcher: {} jobs refused by the client, dropped: {e}",
                    group.len()
                );
                let n = group.len() as u64;
                c.unsent.fetch_add(n, Ordering::AcqRel);
                c.taken.fetch_sub(n, Ordering::AcqRel);
                for &i in &idx {
                    slots[i] = None;
                }
                continue;
            }
        };
        let written = (group.len() - w.unwritten.len()) as u64;
        c.sent.fetch_add(written, Ordering::AcqRel);
        c.taken.fetch_sub(written, Ordering::AcqRel);
        if !w.unwritten.is_empty() {
            // Not written: the call's deadline ran out (e.g. waiting for the
            // answer to a connection's first job of a type) or every server
            // failed part-way. The client says which (not necessarily the
            // last ones: scheduled jobs go last, and a job whose connection
            // broke is written again after the others). They go back to
            // the queue.
            let why = w.error.map(|e| e.to_string()).unwrap_or_default();
            log::warn!(
                "gearman dispatcher: {} of {} jobs not written now, queued again: {why}",
                w.unwritten.len(),
                group.len()
            );
            for &k in &w.unwritten {
                if let Some(q) = slots[idx[k]].take() {
                    requeue.push(q);
                }
            }
        }
        for &i in &idx {
            slots[i] = None;
        }
        if !requeue.is_empty() {
            // They keep their order in the batch.
            requeue.sort_by_key(|q| q.seq);
            parked.push((list, requeue));
        }
    }
    let r = client.collect_deferred(false);
    sh.note(&r, hook);
    parked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> ServerList {
        ServerList::parse(s).unwrap()
    }

    #[test]
    fn lists_are_interned_and_only_unused_ones_forgotten() {
        let mut t = ServerTable {
            routed: vec![ServerAddr::parse("r:1").unwrap()],
            ..ServerTable::default()
        };
        t.rebuild();
        let a = t.intern(&l("a:1,r:1"));
        let a2 = t.intern(&l("a:1,r:1"));
        assert!(Arc::ptr_eq(&a, &a2), "one copy per distinct list");
        let names: Vec<String> = t.entries.iter().map(|(a, _)| a.to_string()).collect();
        assert_eq!(names, ["r:1", "a:1"]);
        drop(a2);
        // Fill up: the unused lists go, the one still held stays.
        for i in 0..MAX_LISTS {
            t.intern(&l(&format!("x{i}:1")));
        }
        assert!(t.lists.len() <= MAX_LISTS);
        assert!(t.lists.iter().any(|x| Arc::ptr_eq(x, &a)));
        assert!(t.entries.iter().any(|(x, _)| x.to_string() == "a:1"));
        assert!(!t.entries.iter().any(|(x, _)| x.to_string() == "x0:1"));
        assert!(t.entries.iter().any(|(x, _)| x.to_string() == "r:1"));
    }
}
