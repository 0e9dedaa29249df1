//! The blocking client: foreground and background jobs, status, and
//! concurrent task sets over one or more servers, routed per job by a
//! [`Routing`] table.
//!
//! The modules, along the client's seams:
//! - this one: the public API ([`Client`], [`Options`]);
//! - `engine`: the submission engine. Every submission path goes through
//!   it ([`Client::run`], [`Client::run_all`], [`Client::submit_background`],
//!   [`Client::submit_background_all`]): submissions are written to each
//!   server's connection in batches, replies without a handle (JOB_CREATED,
//!   ERROR) are matched in order (protocol.md 6), WORK_* packets by handle.
//!   A single `run` is a set of one; a set of many takes about as long as
//!   its slowest job, and N background submissions cost about one round
//!   trip per window of jobs rather than one each;
//! - `deferred`: the deferred-dispatch ledger (background jobs written
//!   without waiting for JOB_CREATED, their report, and its retry rule);
//! - `pool`: connections (one per server, shared by every list that names
//!   it), back-off, fail-over ([`Error::retry`](crate::Error::retry) decides), exchanges;
//! - `status`: job status by handle or unique key across the routing
//!   table, admin status of every server, the concurrent sum.

mod deferred;
mod dispatch;
mod engine;
mod pool;
mod status;

pub use deferred::{DeferredFailure, DeferredReport, DeferredWrite};
pub use status::{KeyStatus, SUM_RESULT_MAX};

use crate::conn::{Connection, Interrupt};
use crate::error::{Result, Retry};
use crate::job::{Event, Job, JobHandle};
use crate::proto::{Packet, PacketType, DEFAULT_MAX_PACKET};
use crate::routing::Routing;
use crate::servers::{AddrMap, Router, ServerAddr, ServerList};
use deferred::{Deferred, Ledger};
use engine::Outcome;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Client settings. All durations are wall-clock.
#[derive(Clone)]
pub struct Options {
    /// Bound on one TCP connect. Default 2 s.
    pub connect_timeout: Duration,
    /// Bound on one exchange: a submission until its JOB_CREATED, a status
    /// query, an echo. Default 5 s.
    pub io_timeout: Duration,
    /// Bound on a whole foreground job, from submission to result. Default
    /// `None` (no bound in the core; the database crates set one).
    pub foreground_timeout: Option<Duration>,
    /// Ask each connection for WORK_EXCEPTION packets (OPTION_REQ
    /// `exceptions`). Default false: exceptions then arrive as WORK_FAIL.
    /// Only matters for workers that send WORK_EXCEPTION; a failure sent as
    /// WORK_WARNING + WORK_FAIL (this crate's worker, by default) is a
    /// [`ErrorKind::JobFailed`](crate::ErrorKind::JobFailed) with the warning in its message either way.
    pub exceptions: bool,
    /// First back-off for a server that refused a connection; doubles per
    /// consecutive failure up to 60 s. Default 5 s.
    pub retry_backoff: Duration,
    /// Largest packet accepted from a server. Default 64 MiB. A connection
    /// accepts at least `max_result` plus room for the job handle, so a
    /// result up to `max_result` in one WORK_COMPLETE is never refused.
    pub max_packet: usize,
    /// Sent as SET_CLIENT_ID on each new connection (shown by admin `workers`).
    pub client_id: Option<String>,
    /// Most submissions awaiting JOB_CREATED per connection in a pipelined
    /// set. Default 1024.
    pub max_in_flight: usize,
    /// Called between wait slices of at most 50 ms; an `Err` aborts the wait.
    pub interrupt: Option<Interrupt>,
    /// Largest result, in bytes, accumulated for one foreground job (its
    /// WORK_DATA chunks and WORK_COMPLETE data together), in every path:
    /// [`Client::run`], [`Client::run_with`], [`Client::run_all`] (per job).
    /// Past it the job fails with [`ErrorKind::ResultTooLarge`](crate::ErrorKind::ResultTooLarge) ("result of
    /// job H exceeded N bytes"), the rest of its data is read and dropped
    /// without being kept, and the connection is closed when the call ends.
    /// A `run_all` of N jobs holds at most N times this. Default 16 MiB
    /// ([`DEFAULT_MAX_RESULT`]).
    pub max_result: usize,
    /// Largest total, in bytes, of the results one call holds at once over
    /// all its jobs ([`Client::run_all`], [`Client::sum`]; a single job is
    /// bounded by `max_result` anyway). Past it, the job whose data would
    /// cross it fails with [`ErrorKind::ResultTooLarge`](crate::ErrorKind::ResultTooLarge)
    /// ("the results of this call exceeded N bytes in all"), its data is
    /// dropped as for `max_result`, and the other jobs go on within what is
    /// left. Default `None` (no bound beyond N times `max_result`).
    pub max_total_result: Option<usize>,
    /// An absolute bound on every call while set (e.g. the end of the
    /// statement a database is running): each call's own deadline (see
    /// [`Client`]) is the earlier of this and the one it computes. Default
    /// `None`.
    pub deadline: Option<Instant>,
    /// Trust and identity for `tls://` servers, loaded once with
    /// [`TlsConfig::load`](crate::TlsConfig::load). Default `None`: a
    /// `tls://` server is verified against the system's roots
    /// ([`TlsConfig::system`](crate::TlsConfig::system)) and no client
    /// certificate is presented. Plaintext servers ignore it.
    pub tls: Option<crate::TlsConfig>,
}

/// Default [`Options::max_result`]: 16 MiB, MySQL's default largest UDF
/// result.
pub const DEFAULT_MAX_RESULT: usize = 16 << 20;

impl Default for Options {
    fn default() -> Options {
        Options {
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(5),
            foreground_timeout: None,
            exceptions: false,
            retry_backoff: Duration::from_secs(5),
            max_packet: DEFAULT_MAX_PACKET,
            client_id: None,
            max_in_flight: 1024,
            interrupt: None,
            max_result: DEFAULT_MAX_RESULT,
            max_total_result: None,
            deadline: None,
            tls: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("foreground_timeout", &self.foreground_timeout)
            .field("exceptions", &self.exceptions)
            .field("retry_backoff", &self.retry_backoff)
            .field("max_packet", &self.max_packet)
            .field("client_id", &self.client_id)
            .field("max_in_flight", &self.max_in_flight)
            .field("interrupt", &self.interrupt.is_some())
            .field("max_result", &self.max_result)
            .field("max_total_result", &self.max_total_result)
            .field("deadline", &self.deadline)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Bytes of a WORK_COMPLETE besides its data: header, job handle (< 64
/// bytes) and separator, with room to spare.
const RESULT_PACKET_ROOM: usize = 1024;

const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A blocking Gearman client. Keeps one connection per server, reused across
/// calls; not shared between threads (make one per thread, or pool them).
///
/// Every call has one deadline from its start: `foreground_timeout` for a
/// foreground job where set, else `io_timeout` (background submissions,
/// status, `check_reachable`, `ensure_connected`, the deferred calls), and
/// never later than [`Options::deadline`]. Connecting (each attempt at most
/// `connect_timeout` and never past the time left), failing over and
/// waiting all draw from it; when it passes while failing over, the error
/// is an [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) saying "deadline reached", with the servers
/// tried and how many were not.
///
/// Each job goes to the server list its function has in the client's
/// [`Routing`] (its own list, else the default list). Connections are kept
/// by server address: one per server, shared by every list that names it.
#[derive(Debug)]
pub struct Client {
    /// Shared so that a call takes it without copying the lists.
    routing: Arc<Routing>,
    opts: Options,
    conns: AddrMap<Connection>,
    router: Router,
    stats: ClientStats,
    /// Deferred background submissions awaiting JOB_CREATED, per server.
    deferred: AddrMap<VecDeque<Deferred>>,
    ledger: Ledger,
    /// Jobs written by [`Client::submit_background_deferred`] since the
    /// client was made.
    deferred_written: u64,
    /// Job handles this client received, for [`Client::job_status`].
    handles: HandleMemory,
}

/// Most job handles a client remembers (oldest forgotten first).
const MAX_HANDLES: usize = 4096;

/// Handle text -> the server that issued it, bounded.
#[derive(Debug, Default)]
struct HandleMemory {
    map: HashMap<String, ServerAddr>,
    order: VecDeque<String>,
}

impl HandleMemory {
    fn remember(&mut self, h: &JobHandle) {
        if self
            .map
            .insert(h.handle.clone(), h.server.clone())
            .is_none()
        {
            self.order.push_back(h.handle.clone());
            while self.order.len() > MAX_HANDLES {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// Counters of a client's connection attempts, for tests and monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// TCP connections opened successfully.
    pub connects: u64,
    /// Connect attempts that failed.
    pub connect_failures: u64,
}

impl Client {
    /// A client whose every job goes to `servers` (a routing table with
    /// that default list and no per-function list). Does no I/O:
    /// connections open on first use.
    pub fn new(servers: ServerList, opts: Options) -> Client {
        Client::with_routing(Routing::new(servers), opts)
    }

    /// A client that routes each job by its function through `routing`.
    /// Does no I/O: connections open on first use.
    pub fn with_routing(routing: Routing, opts: Options) -> Client {
        Client {
            routing: Arc::new(routing),
            opts,
            conns: AddrMap::default(),
            router: Router::default(),
            stats: ClientStats::default(),
            deferred: AddrMap::default(),
            ledger: Ledger::default(),
            deferred_written: 0,
            handles: HandleMemory::default(),
        }
    }

    /// The routing table in force.
    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    /// Replaces the routing table; takes effect for the next call. Only the
    /// connections to servers that no list names any more are closed, and
    /// not those still owing confirmations of deferred jobs: they stay open
    /// (without waiting) until [`Client::collect_deferred`] or a later
    /// change finds them settled. A server named by the old and the new
    /// table keeps its connection.
    pub fn set_routing(&mut self, routing: Routing) {
        if routing != *self.routing {
            self.routing = Arc::new(routing);
            self.close_unrouted();
        }
    }

    /// Sets (`Some`) or removes (`None`) the server list of one function,
    /// as [`Routing::set_function`]; connections as [`Client::set_routing`].
    ///
    /// # Errors
    /// An invalid function name; nothing changes then.
    pub fn set_function_servers(
        &mut self,
        function: &[u8],
        list: Option<ServerList>,
    ) -> Result<()> {
        let mut r = (*self.routing).clone();
        r.set_function(function, list)?;
        self.set_routing(r);
        Ok(())
    }

    /// Closes the connections to servers no list names, except those owing
    /// deferred confirmations.
    fn close_unrouted(&mut self) {
        let deferred = &self.deferred;
        let routing = &self.routing;
        self.conns
            .retain(|a, _| routing.names(a) || deferred.get(a).is_some_and(|q| !q.is_empty()));
    }

    /// Connection counters since the client was made.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Replaces the default server list of the routing table (per-function
    /// lists stay); connections as [`Client::set_routing`].
    pub fn set_servers(&mut self, servers: ServerList) {
        if *self.routing.default_list() != servers {
            Arc::make_mut(&mut self.routing).set_default(servers);
            self.close_unrouted();
        }
    }

    /// The default server list.
    pub fn servers(&self) -> &ServerList {
        self.routing.default_list()
    }

    /// The settings, for changing between calls.
    pub fn options_mut(&mut self) -> &mut Options {
        &mut self.opts
    }

    /// The settings.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Number of open connections (for tests and pools).
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    /// Closes the connection to `addr`, if one is open, and no other. Jobs
    /// written on it whose confirmations have not been read are reported
    /// as of unknown fate (see [`Client::take_deferred_report`]).
    pub fn close_connection(&mut self, addr: &ServerAddr) {
        if self.deferred.get(addr).is_some_and(|q| !q.is_empty()) {
            self.expire_deferred(
                addr,
                "not confirmed before the client closed the connection: unknown whether the \
                 job was queued (it may have been)",
            );
        }
        self.conns.remove(addr);
    }

    /// Closes every connection.
    pub fn disconnect(&mut self) {
        let _ = self.collect_deferred(true);
        let owing: Vec<ServerAddr> = self.deferred.keys().cloned().collect();
        for a in owing {
            self.expire_deferred(
                &a,
                "not confirmed before the client disconnected: unknown whether the job was \
                 queued (it may have been)",
            );
        }
        self.conns.clear();
    }

    /// Submits a background job and returns its handle once the server has
    /// queued it (JOB_CREATED). With `job.epoch` set it is a scheduled job
    /// (SUBMIT_JOB_EPOCH). Errors: invalid job, no reachable server, server
    /// ERROR (e.g. queue full), timeout.
    ///
    /// If the connection breaks during the exchange, the job is submitted
    /// once more (reconnecting, or on the next server): a background job is
    /// delivered at least once. Give it a unique key to make a repeat
    /// coalesce with the first submission on the same server.
    ///
    /// The whole call (connecting, failing over, the exchange, the repeat)
    /// takes at most `io_timeout`. A timeout waiting for JOB_CREATED says
    /// the job "may have been queued": a server that is slow, not dead,
    /// may still queue and run it (a paused gearmand runs it when resumed).
    /// Retry such a job only with a unique key, or it may run twice.
    pub fn submit_background(&mut self, job: &Job) -> Result<JobHandle> {
        let deadline = self.deadline_in(self.opts.io_timeout);
        let mut tries = 0;
        loop {
            tries += 1;
            let mut r = self.submit_set(std::slice::from_ref(job), true, None, Some(deadline));
            match r.pop().expect("one result per job") {
                Ok(Outcome::Handle(h)) => {
                    self.handles.remember(&h);
                    return Ok(h);
                }
                Ok(Outcome::Result(_)) => unreachable!("background task yields a handle"),
                Err(e) if tries < 2 && e.retry() == Retry::Reconnect => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs a foreground job and returns the worker's result: WORK_DATA
    /// chunks and the WORK_COMPLETE data joined. Errors: [`ErrorKind::JobFailed`](crate::ErrorKind::JobFailed),
    /// [`ErrorKind::JobException`](crate::ErrorKind::JobException), [`ErrorKind::ResultTooLarge`](crate::ErrorKind::ResultTooLarge), timeouts,
    /// lost connection.
    ///
    /// One deadline from the call's start (`foreground_timeout`, or
    /// `io_timeout` for connecting and submitting when that is unset)
    /// bounds connecting, failing over and waiting. A timeout waiting for
    /// JOB_CREATED means the job may have been queued and may still run;
    /// retry with a unique key so a repeat coalesces with it.
    pub fn run(&mut self, job: &Job) -> Result<Vec<u8>> {
        self.run_with(job, &mut |_| {})
    }

    /// [`Client::run`], reporting WORK_DATA, WORK_WARNING and WORK_STATUS to
    /// `events` as they arrive.
    pub fn run_with(&mut self, job: &Job, events: &mut dyn FnMut(Event)) -> Result<Vec<u8>> {
        let mut r = self.submit_set(std::slice::from_ref(job), false, Some(events), None);
        match r.pop().expect("one result per job") {
            Ok(Outcome::Result(d)) => Ok(d),
            Ok(Outcome::Handle(_)) => unreachable!("foreground task yields a result"),
            Err(e) => Err(e),
        }
    }

    /// Runs all jobs as foreground jobs at once (a task set): every job is
    /// submitted before any result is awaited, so the whole set takes about
    /// as long as its slowest job. Each job goes to its function's list;
    /// jobs of every list run in the same set. Results come back in input
    /// order.
    pub fn run_all(&mut self, jobs: &[Job]) -> Vec<Result<Vec<u8>>> {
        self.submit_set(jobs, false, None, None)
            .into_iter()
            .map(|r| {
                r.map(|o| match o {
                    Outcome::Result(d) => d,
                    Outcome::Handle(_) => unreachable!("foreground task yields a result"),
                })
            })
            .collect()
    }

    /// Submits all jobs as background jobs, pipelined: written in batches of
    /// up to `max_in_flight` per connection, confirmations matched in order.
    /// One result per job, in input order; a job the server refused has its
    /// own error, and a connection lost mid-batch fails every unconfirmed job
    /// on it with [`ErrorKind::ConnectionLost`](crate::ErrorKind::ConnectionLost) (it may or may not have been
    /// queued), as does a timeout waiting for JOB_CREATED ("may have been
    /// queued"): retry only jobs with a unique key. The whole call takes
    /// at most `io_timeout`.
    pub fn submit_background_all(&mut self, jobs: &[Job]) -> Vec<Result<JobHandle>> {
        let out: Vec<Result<JobHandle>> = self
            .submit_set(jobs, true, None, None)
            .into_iter()
            .map(|r| {
                r.map(|o| match o {
                    Outcome::Handle(h) => h,
                    Outcome::Result(_) => unreachable!("background task yields a handle"),
                })
            })
            .collect();
        for h in out.iter().flatten() {
            self.handles.remember(h);
        }
        out
    }

    /// Checks that some server of the default list answers (one ECHO round
    /// trip, to the first healthy server in routing order) and returns
    /// which. The whole call, failing over included, takes at most
    /// `io_timeout`.
    pub fn check_reachable(&mut self) -> Result<ServerAddr> {
        let list = self.routing.default_list().clone();
        self.check_reachable_on(&list)
    }

    /// [`Client::check_reachable`] for the servers of `list`.
    pub fn check_reachable_on(&mut self, list: &ServerList) -> Result<ServerAddr> {
        let deadline = self.deadline_in(self.opts.io_timeout);
        let order = self.order(list, None);
        let p = Packet::req(PacketType::EchoReq, vec![b"ping".to_vec()]);
        self.walk(order, deadline, |c, addr| {
            c.exchange(addr, &p, PacketType::EchoRes, deadline)
                .map(|_| addr.clone())
        })
    }

    /// Makes sure some server of the default list can take a job, without
    /// a round trip, and returns which: the first server in routing order
    /// (as for a job without unique key; servers in connect back-off come
    /// last) whose cached connection is usable, or that accepts a new TCP
    /// connection.
    ///
    /// A cached connection is usable if the peer has not closed it (found
    /// with one non-blocking poll/read, no packet exchanged). If it still
    /// owes confirmations of deferred jobs, the replies that already arrived
    /// are taken (into the deferred report) and the rest is not waited for.
    /// A closed connection is dropped (its unconfirmed deferred jobs become
    /// failures of unknown outcome) and reopened.
    ///
    /// What this proves: at this moment the kernel of some server host
    /// accepts (or has not reset) a TCP connection on the Gearman port.
    /// What it does not prove: that gearmand behind it answers (a stopped or
    /// hung process still has its connections accepted by the kernel), or
    /// that it will take the jobs (queue full under `maxqueue`, persistent
    /// queue failure). Such problems surface later, as failures in the
    /// report of [`Client::collect_deferred`] for deferred jobs, or as the
    /// error of the call that next waits for a reply. Use
    /// [`Client::check_reachable`] (one ECHO round trip) to prove a server
    /// answers.
    ///
    /// The whole call, failing over included, takes at most `io_timeout`.
    ///
    /// Errors: no server configured, every server refused the connection or
    /// timed out ([`ErrorKind::ConnectFailed`](crate::ErrorKind::ConnectFailed)), the call's deadline passed
    /// ([`ErrorKind::Timeout`](crate::ErrorKind::Timeout), naming the servers tried), or the interrupt
    /// hook stopped a connect.
    pub fn ensure_connected(&mut self) -> Result<ServerAddr> {
        let list = self.routing.default_list().clone();
        self.ensure_connected_on(&list)
    }

    /// [`Client::ensure_connected`] for the servers of `list`.
    pub fn ensure_connected_on(&mut self, list: &ServerList) -> Result<ServerAddr> {
        let deadline = self.deadline_in(self.opts.io_timeout);
        let order = self.order(list, None);
        self.walk(order, deadline, |c, addr| {
            c.connection_nowait(addr, deadline).map(|_| addr.clone())
        })
    }

    /// If the last connect to `addr` failed: when its connect back-off
    /// ends (see [`Options::retry_backoff`]).
    pub(crate) fn connect_backoff(&self, addr: &ServerAddr) -> Option<Instant> {
        self.router.backoff_until(addr)
    }

    /// Whether a connection to `addr` is open (as far as known without
    /// I/O).
    pub fn has_connection(&self, addr: &ServerAddr) -> bool {
        self.conns.get(addr).is_some_and(|c| !c.is_closed())
    }

    /// The deadline of a call that may take `base` from now, bounded by
    /// [`Options::deadline`].
    fn deadline_in(&self, base: Duration) -> Instant {
        let d = Instant::now() + base;
        self.opts.deadline.map_or(d, |o| o.min(d))
    }

    /// Runs `f` with [`Options::deadline`] no later than `deadline`, then
    /// restores it: one deadline for a call made of several exchanges.
    fn within<T>(&mut self, deadline: Instant, f: impl FnOnce(&mut Client) -> T) -> T {
        let saved = self.opts.deadline;
        self.opts.deadline = Some(saved.map_or(deadline, |d| d.min(deadline)));
        let r = f(self);
        self.opts.deadline = saved;
        r
    }

    /// The servers of `list` in the order to try them for a job with this
    /// unique key (see [`Router::order`]).
    fn order(&mut self, list: &ServerList, unique: Option<&[u8]>) -> Vec<ServerAddr> {
        self.router
            .order(list, unique)
            .into_iter()
            .map(|i| list.get(i).expect("index in range").clone())
            .collect()
    }
}
