//! The blocking client: foreground and background jobs, status, and
//! concurrent task sets over one or more servers.
//!
//! Every submission path goes through one engine ([`Client::submit_set`]):
//! submissions are written to each server's connection in batches, replies
//! without a handle (JOB_CREATED, ERROR) are matched in order (protocol.md 6),
//! WORK_* packets by handle. A single `run` is a set of one; `run_all` and
//! `submit_background_all` are sets of many, so N foreground jobs take about
//! as long as the slowest one, and N background submissions cost about one
//! round trip per window of jobs rather than one each.

use crate::conn::{check_interrupt, slice_until, Connection, Interrupt};
use crate::error::{Error, ErrorKind, Result};
use crate::job::{Event, Job, JobHandle, JobStatus, UniqueStatus};
use crate::proto::{Packet, PacketType, DEFAULT_MAX_PACKET};
use crate::servers::{Router, ServerAddr, ServerList};
use std::collections::{HashMap, VecDeque};
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
    /// [`ErrorKind::JobFailed`] with the warning in its message either way.
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
    /// Past it the job fails with [`ErrorKind::ResultTooLarge`] ("result of
    /// job H exceeded N bytes"), the rest of its data is read and dropped
    /// without being kept, and the connection is closed when the call ends.
    /// A `run_all` of N jobs holds at most N times this. Default 16 MiB
    /// ([`DEFAULT_MAX_RESULT`]).
    pub max_result: usize,
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
/// is an [`ErrorKind::Timeout`] saying "deadline reached", with the servers
/// tried and how many were not.
#[derive(Debug)]
pub struct Client {
    servers: ServerList,
    opts: Options,
    conns: HashMap<ServerAddr, Connection>,
    router: Router,
    stats: ClientStats,
    /// Deferred background submissions awaiting JOB_CREATED, per server.
    deferred: HashMap<ServerAddr, VecDeque<Deferred>>,
    report: DeferredReport,
    /// Jobs written by [`Client::submit_background_deferred`] since the
    /// client was made.
    deferred_written: u64,
}

#[derive(Debug)]
struct Deferred {
    function: Vec<u8>,
    unique: Vec<u8>,
    /// The submission packet type (answered types are pipelined).
    kind: PacketType,
    /// Its confirmation is overdue after this: `io_timeout` from the write.
    due: Instant,
}

/// A deferred background submission that did not get a job handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredFailure {
    /// The job's function.
    pub function: String,
    /// The job's unique key (empty if none).
    pub unique: Vec<u8>,
    /// Why: a server ERROR (the job was refused, e.g. `QUEUE_ERROR`), or a
    /// lost connection or timeout (unknown whether the job was queued).
    pub error: Error,
}

/// Outcome of deferred background submissions collected so far
/// (see [`Client::submit_background_deferred`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeferredReport {
    /// Jobs the server confirmed with JOB_CREATED.
    pub confirmed: u64,
    /// Jobs refused by the server or whose fate is unknown (among them the
    /// overdue ones, see [`DeferredReport::overdue`]).
    pub failed: Vec<DeferredFailure>,
    /// Jobs still awaiting their confirmation (none is awaited past its
    /// deadline: `io_timeout` from its write).
    pub pending: usize,
}

impl DeferredReport {
    /// Of [`DeferredReport::failed`], the jobs whose confirmation did not
    /// come in time ([`ErrorKind::Timeout`]): overdue (no JOB_CREATED within
    /// `io_timeout` of the write, e.g. a server that accepts but never
    /// answers, or answers a byte a second), not answered at all (a server
    /// that ignores the packet type, e.g. Python `gear` and
    /// SUBMIT_JOB_EPOCH), or behind such a job on a connection that was
    /// closed for it. Their fate is unknown: they may have been queued.
    pub fn overdue(&self) -> usize {
        self.failed.iter().filter(|f| f.error.is_timeout()).count()
    }
}

impl DeferredFailure {
    /// Whether the job may have been queued (anything but a server's
    /// refusal with ERROR).
    pub fn is_unknown_fate(&self) -> bool {
        !self.error.is_server_error()
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

/// What a finished task produced.
enum Outcome {
    Handle(JobHandle),
    Result(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Created,
    Done,
}

struct Task<'a> {
    job: &'a Job,
    background: bool,
    phase: Phase,
    data: Vec<u8>,
    /// The last WORK_WARNING's data: added to a WORK_FAIL's message, since a
    /// worker may send its failure reason that way (see
    /// [`WorkerOptions::exceptions`](crate::worker::WorkerOptions::exceptions)).
    warning: Option<Vec<u8>>,
    outcome: Option<Result<Outcome>>,
}

/// Per-connection state within one set.
struct Lane {
    addr: ServerAddr,
    /// Tasks not yet written (window full).
    backlog: VecDeque<usize>,
    /// Tasks written, awaiting JOB_CREATED/ERROR, in order.
    fifo: VecDeque<usize>,
    /// Foreground tasks by handle; several when coalesced on this connection.
    running: HashMap<Vec<u8>, VecDeque<usize>>,
    /// Handles of jobs failed for a too large result: their further packets
    /// are dropped unread into nothing, and the connection is closed when
    /// the set ends (the server may still send them).
    discard: std::collections::HashSet<Vec<u8>>,
    open: usize,
}

impl Client {
    /// A client for `servers`. Does no I/O: connections open on first use.
    pub fn new(servers: ServerList, opts: Options) -> Client {
        Client {
            servers,
            opts,
            conns: HashMap::new(),
            router: Router::default(),
            stats: ClientStats::default(),
            deferred: HashMap::new(),
            report: DeferredReport::default(),
            deferred_written: 0,
        }
    }

    /// Writes background jobs to the job servers without waiting for their
    /// confirmations: the JOB_CREATED (or ERROR) replies are read later, by
    /// [`Client::collect_deferred`] or before the next use of the same
    /// connection. This costs one write per batch instead of one round trip
    /// per job. Nothing is sent if any job is invalid. Returns an error if a
    /// job could not be written (no reachable server, connection lost while
    /// writing); jobs already written stay deferred.
    ///
    /// A connection that still awaits confirmations of earlier deferred jobs
    /// is reused without waiting for them (their replies come first, in
    /// order); only past `max_in_flight` unconfirmed jobs on one connection
    /// does this wait, until half of them are confirmed. Every job counted
    /// by [`Client::deferred_written`] ends up in a later report as
    /// confirmed or failed (or is still pending).
    ///
    /// Confirmations are matched to jobs in order, so nothing is pipelined
    /// behind a packet the server has not been seen to answer: per
    /// connection, the first job of each submission type (SUBMIT_JOB_BG,
    /// SUBMIT_JOB_HIGH_BG, SUBMIT_JOB_LOW_BG, SUBMIT_JOB_EPOCH) is sent
    /// alone and its answer awaited within this call's deadline; only once
    /// a JOB_CREATED has answered a type are more of it pipelined. A server
    /// that drops the packet (Python `gear` ignores SUBMIT_JOB_EPOCH) makes
    /// that job a failure of unknown fate ("the server may not support
    /// it"), and the connection is closed so no later JOB_CREATED is
    /// credited to it. Scheduled (epoch) jobs are written after the other
    /// jobs of the call, so such a server holds up only them.
    ///
    /// Every owed confirmation has a deadline, `io_timeout` from its write:
    /// past it (a server that accepts but never answers, or answers a byte
    /// a second) the job, and every one still owed behind it on that
    /// connection, is reported as failed of unknown fate (counted by
    /// [`DeferredReport::overdue`]) by whichever later call reads the
    /// connection (this one, [`Client::collect_deferred`], or any call that
    /// reuses it), and the connection is closed. The whole call takes at
    /// most `io_timeout`.
    pub fn submit_background_deferred(&mut self, jobs: &[Job]) -> Result<()> {
        for job in jobs {
            job.validate()?;
        }
        let deadline = self.deadline_in(self.opts.io_timeout);
        let hook = self.opts.interrupt.clone();
        let mut touched: Vec<ServerAddr> = Vec::new();
        let mut first_err: Option<Error> = None;
        // Scheduled (epoch) jobs last: a server that ignores SUBMIT_JOB_EPOCH
        // then costs only them the wait for an answer that never comes.
        let ordered = jobs
            .iter()
            .filter(|j| j.epoch.is_none())
            .chain(jobs.iter().filter(|j| j.epoch.is_some()));
        for job in ordered {
            let open: Vec<&ServerAddr> = touched.iter().collect();
            let addr = match self.pick_server_with(job, &open, true, deadline) {
                Ok(a) => a,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let conn = self
                .conns
                .get_mut(&addr)
                .expect("picked server has a connection");
            let kind = submit_kind(job, true);
            // A type this connection has not seen answered is sent alone
            // and its answer awaited now: a server that drops it (Python
            // `gear` ignores SUBMIT_JOB_EPOCH) must not have a later job's
            // JOB_CREATED credited to it.
            let probe = !conn.has_answered(kind);
            encode_submit(job, true, conn.queue())?;
            self.deferred_written += 1;
            self.deferred
                .entry(addr.clone())
                .or_default()
                .push_back(Deferred {
                    function: job.function.clone(),
                    unique: job.unique_bytes().to_vec(),
                    kind,
                    due: Instant::now() + self.opts.io_timeout,
                });
            if probe {
                if let Err(e) = self.drain_deferred(&addr, true, 0, deadline) {
                    if self.deferred.get(&addr).is_some_and(|q| !q.is_empty()) {
                        // The call's deadline came first: the answer is not
                        // awaited any longer, and nothing may follow it.
                        let why = format!(
                            "no answer to the first {} on this connection before the call's \
                             deadline: the server may not support it; unknown whether the job \
                             was queued (it may have been)",
                            kind.name()
                        );
                        self.expire_deferred(&addr, &why);
                    }
                    touched.retain(|t| t != &addr);
                    if !e.is_timeout() {
                        first_err.get_or_insert(e);
                    }
                    continue;
                }
            }
            if !touched.contains(&addr) {
                touched.push(addr);
            }
            // Keep the in-flight window bounded: past it, collect first.
            let n = self
                .deferred
                .get(touched.last().expect("pushed"))
                .map_or(0, VecDeque::len);
            let window = self.opts.max_in_flight.max(1);
            if n >= window {
                let a = touched.last().expect("pushed").clone();
                if let Err(e) = self.drain_deferred(&a, true, window / 2, deadline) {
                    // The connection is gone; the next job reconnects.
                    touched.retain(|t| t != &a);
                    first_err.get_or_insert(e);
                }
            }
        }
        for addr in touched {
            let Some(conn) = self.conns.get_mut(&addr) else {
                continue;
            };
            if let Err(e) = conn.flush(Some(deadline), hook.as_ref()) {
                self.fail_deferred(&addr, &e);
                self.conns.remove(&addr);
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Reads the confirmations of deferred submissions. With `wait`, waits
    /// until every one has arrived, at most the exchange timeout
    /// (`io_timeout`) for all servers together; without, takes only what
    /// has already arrived. Returns the report accumulated since the last
    /// call and resets it.
    pub fn collect_deferred(&mut self, wait: bool) -> DeferredReport {
        let deadline = self.deadline_in(self.opts.io_timeout);
        let addrs: Vec<ServerAddr> = self.deferred.keys().cloned().collect();
        for addr in addrs {
            let _ = self.drain_deferred(&addr, wait, 0, deadline);
        }
        self.take_deferred_report()
    }

    /// The report accumulated since the last call (of this or
    /// [`Client::collect_deferred`]), without any I/O: confirmations and
    /// failures that other calls read on the way (every call that reuses a
    /// connection first reads the replies still owed on it) are kept here
    /// until taken. `pending` is the number still awaited.
    pub fn take_deferred_report(&mut self) -> DeferredReport {
        let mut r = std::mem::take(&mut self.report);
        r.pending = self.deferred_pending();
        r
    }

    /// Deferred jobs still awaiting their confirmation, over all servers.
    pub fn deferred_pending(&self) -> usize {
        self.deferred.values().map(VecDeque::len).sum()
    }

    /// Jobs written by [`Client::submit_background_deferred`] since the
    /// client was made (a job that could not be written, e.g. because no
    /// server was reachable, is not counted). Each of them is eventually
    /// reported once, as confirmed or failed.
    pub fn deferred_written(&self) -> u64 {
        self.deferred_written
    }

    /// Matches buffered JOB_CREATED/ERROR replies to deferred submissions on
    /// `addr`; with `block`, waits until at most `keep` are pending.
    fn drain_deferred(
        &mut self,
        addr: &ServerAddr,
        block: bool,
        keep: usize,
        deadline: Instant,
    ) -> Result<()> {
        let deadline = Some(deadline);
        let hook = self.opts.interrupt.clone();
        loop {
            let pending = self.deferred.get(addr).map_or(0, VecDeque::len);
            if pending == 0 {
                self.deferred.remove(addr);
                return Ok(());
            }
            if block && pending <= keep {
                return Ok(());
            }
            let Some(conn) = self.conns.get_mut(addr) else {
                let e = Error::lost("connection closed before confirmations arrived").at(addr);
                self.fail_deferred(addr, &e);
                return Err(e);
            };
            let front = self
                .deferred
                .get(addr)
                .and_then(VecDeque::front)
                .expect("pending > 0");
            let (due, front_kind) = (front.due, front.kind);
            let io_timeout = self.opts.io_timeout;
            let overdue_why = |conn: &Connection| {
                let mut why = format!(
                    "no confirmation (JOB_CREATED) of the {} within {:?} of sending it: \
                     unknown whether the job was queued (it may have been)",
                    front_kind.name(),
                    io_timeout
                );
                if !conn.has_answered(front_kind) {
                    why.push_str(
                        "; the server has not answered this packet type on this connection: \
                         it may not support it",
                    );
                }
                why
            };
            let step = if block {
                let wait = deadline.map_or(due, |d| d.min(due));
                match conn.recv(Some(wait), hook.as_ref()) {
                    Ok(p) => Ok(Some(p)),
                    Err(e) if e.is_timeout() && Instant::now() >= due => {
                        let why = overdue_why(conn);
                        self.expire_deferred(addr, &why);
                        return Err(Error::timeout(why).at(addr));
                    }
                    // The caller's deadline, not the confirmation's: the
                    // stream is intact (a partial packet stays buffered).
                    Err(e) if e.is_timeout() => return Err(e),
                    Err(e) => Err(e),
                }
            } else {
                // What is already buffered first; read the socket (one
                // non-blocking read) only when that runs out.
                match conn.next_packet() {
                    Ok(Some(p)) => Ok(Some(p)),
                    Ok(None) => conn
                        .write_ready()
                        .and_then(|_| conn.read_ready())
                        .and_then(|_| conn.next_packet())
                        .and_then(|p| match p {
                            None if conn.is_closed() => Err(conn.closed_error()),
                            other => Ok(other),
                        }),
                    Err(e) => Err(e),
                }
            };
            let p = match step {
                Ok(Some(p)) => p,
                Ok(None) if Instant::now() >= due => {
                    // Nothing arrived for it, and it is overdue.
                    let why = match self.conns.get(addr) {
                        Some(c) => overdue_why(c),
                        None => "overdue".to_string(),
                    };
                    self.expire_deferred(addr, &why);
                    return Err(Error::timeout(why).at(addr));
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.fail_deferred(addr, &e);
                    self.conns.remove(addr);
                    return Err(e);
                }
            };
            let d = self
                .deferred
                .get_mut(addr)
                .and_then(VecDeque::pop_front)
                .expect("pending > 0");
            match p.kind {
                PacketType::JobCreated => {
                    self.report.confirmed += 1;
                    if let Some(c) = self.conns.get_mut(addr) {
                        c.note_answered(d.kind);
                    }
                }
                PacketType::Error => self.report.failed.push(DeferredFailure {
                    function: String::from_utf8_lossy(&d.function).into_owned(),
                    unique: d.unique,
                    error: server_error(&p).at(addr),
                }),
                other => {
                    let e = Error::protocol(format!(
                        "expected JOB_CREATED for a deferred job, got {}",
                        other.name()
                    ))
                    .at(addr);
                    self.deferred.get_mut(addr).expect("present").push_front(d);
                    self.fail_deferred(addr, &e);
                    self.conns.remove(addr);
                    return Err(e);
                }
            }
        }
    }

    /// Every deferred job still owed on `addr` becomes an overdue failure of
    /// unknown fate: the first with `why`, the others as closed behind it;
    /// the connection is closed (a late answer would be credited to the
    /// wrong job).
    fn expire_deferred(&mut self, addr: &ServerAddr, why: &str) {
        self.conns.remove(addr);
        if let Some(q) = self.deferred.remove(addr) {
            for (k, d) in q.into_iter().enumerate() {
                let msg = if k == 0 {
                    why.to_string()
                } else {
                    "not confirmed: the connection was closed because an earlier job's \
                     confirmation was overdue; unknown whether the job was queued (it may have been)"
                        .to_string()
                };
                self.report.failed.push(DeferredFailure {
                    function: String::from_utf8_lossy(&d.function).into_owned(),
                    unique: d.unique,
                    error: Error::timeout(msg).at(addr),
                });
            }
        }
    }

    /// Every deferred job on `addr` becomes a failure of unknown outcome.
    fn fail_deferred(&mut self, addr: &ServerAddr, e: &Error) {
        if let Some(q) = self.deferred.remove(addr) {
            for d in q {
                self.report.failed.push(DeferredFailure {
                    function: String::from_utf8_lossy(&d.function).into_owned(),
                    unique: d.unique,
                    error: e.clone(),
                });
            }
        }
    }

    /// Connection counters since the client was made.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Replaces the server list; connections to servers no longer listed are
    /// closed, except those still owing confirmations of deferred jobs: they
    /// stay open (without waiting) until [`Client::collect_deferred`] or a
    /// later `set_servers` finds them settled. Takes effect for the next call.
    pub fn set_servers(&mut self, servers: ServerList) {
        let deferred = &self.deferred;
        self.conns.retain(|a, _| {
            servers.iter().any(|s| s == a) || deferred.get(a).is_some_and(|q| !q.is_empty())
        });
        self.servers = servers;
    }

    /// The server list in force.
    pub fn servers(&self) -> &ServerList {
        &self.servers
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
                Ok(Outcome::Handle(h)) => return Ok(h),
                Ok(Outcome::Result(_)) => unreachable!("background task yields a handle"),
                Err(e) if tries < 2 && e.is_connection_lost() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs a foreground job and returns the worker's result: WORK_DATA
    /// chunks and the WORK_COMPLETE data joined. Errors: [`ErrorKind::JobFailed`],
    /// [`ErrorKind::JobException`], [`ErrorKind::ResultTooLarge`], timeouts,
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
    /// as long as its slowest job. Results come back in input order.
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
    /// on it with [`ErrorKind::ConnectionLost`] (it may or may not have been
    /// queued), as does a timeout waiting for JOB_CREATED ("may have been
    /// queued"): retry only jobs with a unique key. The whole call takes
    /// at most `io_timeout`.
    pub fn submit_background_all(&mut self, jobs: &[Job]) -> Vec<Result<JobHandle>> {
        self.submit_set(jobs, true, None, None)
            .into_iter()
            .map(|r| {
                r.map(|o| match o {
                    Outcome::Handle(h) => h,
                    Outcome::Result(_) => unreachable!("background task yields a handle"),
                })
            })
            .collect()
    }

    /// Asks the server that issued `handle` for the job's status (GET_STATUS).
    pub fn status(&mut self, handle: &JobHandle) -> Result<JobStatus> {
        if handle.handle.len() >= 64 || handle.handle.contains('\0') {
            return Err(Error::invalid_argument(
                "job handle must be under 64 bytes without NUL",
            ));
        }
        let p = Packet::req(
            PacketType::GetStatus,
            vec![handle.handle.as_bytes().to_vec()],
        );
        let deadline = self.deadline_in(self.opts.io_timeout);
        let reply = self.exchange(&handle.server.clone(), &p, PacketType::StatusRes, deadline)?;
        Ok(JobStatus {
            known: reply.arg(1) == b"1",
            running: reply.arg(2) == b"1",
            numerator: parse_num(reply.arg(3)),
            denominator: parse_num(reply.arg(4)),
        })
    }

    /// Asks the server that `unique` routes to for the status of the job with
    /// that unique key (GET_STATUS_UNIQUE).
    pub fn status_by_unique(&mut self, unique: &[u8]) -> Result<UniqueStatus> {
        if unique.is_empty() || unique.len() > crate::job::MAX_UNIQUE || unique.contains(&0) {
            return Err(Error::invalid_argument(
                "unique key must be 1 to 63 bytes without NUL",
            ));
        }
        let deadline = self.deadline_in(self.opts.io_timeout);
        let order = self.router.order(&self.servers, Some(unique));
        let p = Packet::req(PacketType::GetStatusUnique, vec![unique.to_vec()]);
        let r = self.walk(
            order,
            deadline,
            |c, addr| c.exchange(addr, &p, PacketType::StatusResUnique, deadline),
            |e| e.kind() == &ErrorKind::ConnectFailed,
        )?;
        Ok(UniqueStatus {
            known: r.arg(1) == b"1",
            running: r.arg(2) == b"1",
            numerator: parse_num(r.arg(3)),
            denominator: parse_num(r.arg(4)),
            waiting: parse_num(r.arg(5)),
        })
    }

    /// Checks that some server answers (one ECHO round trip, to the first
    /// healthy server in routing order) and returns which. The whole call,
    /// failing over included, takes at most `io_timeout`.
    pub fn check_reachable(&mut self) -> Result<ServerAddr> {
        let deadline = self.deadline_in(self.opts.io_timeout);
        let order = self.router.order(&self.servers, None);
        let p = Packet::req(PacketType::EchoReq, vec![b"ping".to_vec()]);
        self.walk(
            order,
            deadline,
            |c, addr| {
                c.exchange(addr, &p, PacketType::EchoRes, deadline)
                    .map(|_| addr.clone())
            },
            |e| e.is_retryable() || e.is_timeout(),
        )
    }

    /// Makes sure some server can take a job, without a round trip, and
    /// returns which: the first server in routing order (as for a job
    /// without unique key; servers in connect back-off come last) whose
    /// cached connection is usable, or that accepts a new TCP connection.
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
    /// timed out ([`ErrorKind::ConnectFailed`]), the call's deadline passed
    /// ([`ErrorKind::Timeout`], naming the servers tried), or the interrupt
    /// hook stopped a connect.
    pub fn ensure_connected(&mut self) -> Result<ServerAddr> {
        let deadline = self.deadline_in(self.opts.io_timeout);
        let order = self.router.order(&self.servers, None);
        self.walk(
            order,
            deadline,
            |c, addr| c.connection_nowait(addr, deadline).map(|_| addr.clone()),
            |e| e.kind() != &ErrorKind::Interrupted,
        )
    }

    /// The deadline of a call that may take `base` from now, bounded by
    /// [`Options::deadline`].
    fn deadline_in(&self, base: Duration) -> Instant {
        let d = Instant::now() + base;
        self.opts.deadline.map_or(d, |o| o.min(d))
    }

    /// Tries `f` on the servers of `order` in turn until one succeeds, an
    /// error `go_on` does not accept, or `deadline` passes (then a
    /// [`ErrorKind::Timeout`] naming the servers tried and how many were
    /// not). With every server failed, the last error.
    fn walk<T>(
        &mut self,
        order: Vec<usize>,
        deadline: Instant,
        mut f: impl FnMut(&mut Client, &ServerAddr) -> Result<T>,
        go_on: impl Fn(&Error) -> bool,
    ) -> Result<T> {
        let total = order.len();
        let mut tried: Vec<(ServerAddr, Error)> = Vec::new();
        for (k, i) in order.into_iter().enumerate() {
            let addr = self.servers.get(i).expect("index in range").clone();
            if Instant::now() >= deadline {
                return Err(deadline_error(&tried, total - k));
            }
            match f(self, &addr) {
                Ok(t) => return Ok(t),
                Err(e) if e.is_timeout() && Instant::now() >= deadline => {
                    tried.push((addr, e));
                    return Err(deadline_error(&tried, total - k - 1));
                }
                Err(e) if go_on(&e) => tried.push((addr, e)),
                Err(e) => return Err(e),
            }
        }
        Err(tried.pop().map_or_else(
            || Error::new(ErrorKind::NoServers, "no job server configured"),
            |(_, e)| e,
        ))
    }

    /// As [`Client::connection`], but a connection still owing replies to
    /// deferred submissions is not drained first: the replies already
    /// received are taken, and if some are still due and the peer has not
    /// closed, the connection is returned as it is (for more deferred
    /// submissions, whose replies queue up behind). Never waits for a reply.
    fn connection_nowait(
        &mut self,
        addr: &ServerAddr,
        deadline: Instant,
    ) -> Result<&mut Connection> {
        if self.deferred.contains_key(addr) {
            // An error here failed the deferred jobs and dropped the
            // connection; `connection` below then reconnects.
            let _ = self.drain_deferred(addr, false, 0, deadline);
            let owing = self.deferred.get(addr).is_some_and(|q| !q.is_empty());
            let open = self
                .conns
                .get(addr)
                .is_some_and(|c| !c.is_closed() && !c.busy);
            if owing && open {
                return Ok(self.conns.get_mut(addr).expect("checked above"));
            }
        }
        self.connection(addr, deadline)
    }

    /// One request, one expected reply, on the cached connection to `addr`.
    fn exchange(
        &mut self,
        addr: &ServerAddr,
        p: &Packet,
        want: PacketType,
        deadline: Instant,
    ) -> Result<Packet> {
        let hook = self.opts.interrupt.clone();
        let conn = self.connection(addr, deadline)?;
        let deadline = Some(deadline);
        conn.busy = true;
        let r = conn
            .queue_packet(p)
            .and_then(|_| conn.recv(deadline, hook.as_ref()));
        match r {
            Ok(reply) if reply.kind == want => {
                conn.busy = false;
                Ok(reply)
            }
            Ok(reply) if reply.kind == PacketType::Error => {
                conn.busy = false;
                Err(server_error(&reply).at(addr))
            }
            Ok(reply) => {
                self.conns.remove(addr);
                Err(Error::protocol(format!(
                    "expected {} but the server sent {}",
                    want.name(),
                    reply.kind.name()
                ))
                .at(addr))
            }
            Err(e) => {
                self.conns.remove(addr);
                Err(e)
            }
        }
    }

    /// The cached connection to `addr`, or a new one. A cached connection
    /// that the server closed meanwhile (restart) is replaced silently; a
    /// failed connect puts the server into back-off.
    fn connection(&mut self, addr: &ServerAddr, deadline: Instant) -> Result<&mut Connection> {
        if self.deferred.contains_key(addr) {
            // Replies to deferred submissions come first on this connection.
            let _ = self.drain_deferred(addr, true, 0, deadline);
            if self.deferred.get(addr).is_some_and(|q| !q.is_empty()) {
                return Err(Error::timeout(
                    "deadline reached while reading the confirmations still owed on the connection",
                )
                .at(addr));
            }
        }
        let usable = match self.conns.get_mut(addr) {
            Some(c) => c.is_usable(),
            None => false,
        };
        if !usable {
            self.conns.remove(addr);
            let c = match self.open(addr, deadline) {
                Ok(c) => {
                    self.stats.connects += 1;
                    c
                }
                Err(e) => {
                    self.stats.connect_failures += 1;
                    if e.kind() == &ErrorKind::ConnectFailed {
                        self.router
                            .mark_dead(addr, self.opts.retry_backoff, MAX_BACKOFF);
                    }
                    return Err(e);
                }
            };
            self.router.mark_alive(addr);
            self.conns.insert(addr.clone(), c);
        }
        Ok(self.conns.get_mut(addr).expect("just inserted"))
    }

    fn open(&self, addr: &ServerAddr, deadline: Instant) -> Result<Connection> {
        let hook = self.opts.interrupt.as_ref();
        let mut c = Connection::connect_with(
            addr,
            self.opts.connect_timeout,
            Some(deadline),
            self.opts
                .max_packet
                .max(self.opts.max_result.saturating_add(RESULT_PACKET_ROOM)),
            hook,
            self.opts.tls.as_ref(),
        )?;
        if let Some(id) = &self.opts.client_id {
            c.queue_packet(&Packet::req(
                PacketType::SetClientId,
                vec![id.as_bytes().to_vec()],
            ))?;
        }
        if self.opts.exceptions {
            c.queue_packet(&Packet::req(
                PacketType::OptionReq,
                vec![b"exceptions".to_vec()],
            ))?;
            let reply = c.recv(Some(deadline), hook)?;
            match reply.kind {
                PacketType::OptionRes => {}
                PacketType::Error => return Err(server_error(&reply).at(addr)),
                k => {
                    return Err(
                        Error::protocol(format!("expected OPTION_RES, got {}", k.name())).at(addr),
                    )
                }
            }
        } else {
            c.flush(Some(deadline), hook)?;
        }
        Ok(c)
    }

    /// The engine: submits `jobs` (all foreground or all background),
    /// drives every connection involved until each job has its outcome or a
    /// deadline passes, and returns one result per job in input order.
    ///
    /// One deadline from the start bounds connecting and failing over:
    /// `foreground_timeout` for foreground jobs where set, else
    /// `io_timeout`, never past `outer` or [`Options::deadline`].
    fn submit_set(
        &mut self,
        jobs: &[Job],
        background: bool,
        mut events: Option<&mut dyn FnMut(Event)>,
        outer: Option<Instant>,
    ) -> Vec<Result<Outcome>> {
        let start = Instant::now();
        let fg_bound = if background {
            None
        } else {
            self.opts.foreground_timeout
        };
        let mut call_deadline = self.deadline_in(fg_bound.unwrap_or(self.opts.io_timeout));
        if let Some(o) = outer {
            call_deadline = call_deadline.min(o);
        }
        let mut tasks: Vec<Task<'_>> = jobs
            .iter()
            .map(|job| Task {
                job,
                background,
                phase: Phase::Waiting,
                data: Vec::new(),
                warning: None,
                outcome: None,
            })
            .collect();
        // Validate and route every task to a lane (connection).
        let mut lanes: Vec<Lane> = Vec::new();
        for (ti, task) in tasks.iter_mut().enumerate() {
            let job = task.job;
            if let Err(e) = job.validate().and_then(|_| {
                if !background && job.epoch.is_some() {
                    Err(Error::invalid_argument(
                        "a scheduled (epoch) job must be a background job",
                    ))
                } else {
                    Ok(())
                }
            }) {
                finish(task, Err(e));
                continue;
            }
            let open: Vec<&ServerAddr> = lanes.iter().map(|l| &l.addr).collect();
            match self.pick_server(job, &open, call_deadline) {
                Ok(addr) => {
                    let li = match lanes.iter().position(|l| l.addr == addr) {
                        Some(li) => li,
                        None => {
                            lanes.push(Lane {
                                addr,
                                backlog: VecDeque::new(),
                                fifo: VecDeque::new(),
                                running: HashMap::new(),
                                discard: Default::default(),
                                open: 0,
                            });
                            lanes.len() - 1
                        }
                    };
                    lanes[li].backlog.push_back(ti);
                    lanes[li].open += 1;
                }
                Err(e) => finish(task, Err(e)),
            }
        }
        for lane in &mut lanes {
            // Scheduled (epoch) jobs last on each connection (stable): a
            // server that ignores SUBMIT_JOB_EPOCH then holds up only them.
            lane.backlog
                .make_contiguous()
                .sort_by_key(|&ti| tasks[ti].job.epoch.is_some());
        }
        for lane in &lanes {
            if let Some(c) = self.conns.get_mut(&lane.addr) {
                c.busy = true;
            }
        }
        let submit_deadline = (start + self.opts.io_timeout).min(call_deadline);
        let fg_deadline = if background {
            None
        } else if fg_bound.is_some() {
            Some(call_deadline)
        } else {
            self.opts.deadline
        };
        let hook = self.opts.interrupt.clone();
        let window = self.opts.max_in_flight.max(1);
        let max_result = self.opts.max_result;

        loop {
            // Feed each lane's window and note whether work remains.
            let mut active: Vec<usize> = Vec::new();
            for (li, lane) in lanes.iter_mut().enumerate() {
                if lane.open == 0 {
                    continue;
                }
                let Some(conn) = self.conns.get_mut(&lane.addr) else {
                    continue;
                };
                while lane.fifo.len() < window {
                    let Some(&ti) = lane.backlog.front() else {
                        break;
                    };
                    // Nothing is pipelined behind a submission type this
                    // connection has not seen answered, and such a type is
                    // sent only alone: a server that drops it must not have
                    // a later JOB_CREATED credited to it.
                    let kind = submit_kind(tasks[ti].job, background);
                    let behind_probe = lane.fifo.back().is_some_and(|&t| {
                        !conn.has_answered(submit_kind(tasks[t].job, background))
                    });
                    if behind_probe || (!lane.fifo.is_empty() && !conn.has_answered(kind)) {
                        break;
                    }
                    lane.backlog.pop_front();
                    match encode_submit(tasks[ti].job, background, conn.queue()) {
                        Ok(()) => lane.fifo.push_back(ti),
                        Err(e) => {
                            finish(&mut tasks[ti], Err(e));
                            lane.open -= 1;
                        }
                    }
                }
                if lane.open > 0 {
                    active.push(li);
                }
            }
            if active.is_empty() {
                break;
            }
            // Deadlines and the interrupt hook.
            let now = Instant::now();
            let awaiting_created = active.iter().any(|&li| !lanes[li].fifo.is_empty());
            let mut failure: Option<Error> = None;
            if awaiting_created && now >= submit_deadline {
                failure = Some(Error::timeout(format!(
                    "no JOB_CREATED for the submission within {:?}: the job may have been queued \
                     (submit it with a unique key to make a retry safe)",
                    submit_deadline.saturating_duration_since(start)
                )));
            } else if let Some(d) = fg_deadline.filter(|&d| now >= d) {
                // The bound that applied: foreground_timeout, or a shorter
                // Options::deadline.
                failure = Some(Error::timeout(format!(
                    "foreground job did not finish within {:?}",
                    d.saturating_duration_since(start)
                )));
            } else if let Err(e) = check_interrupt(hook.as_ref()) {
                failure = Some(e);
            }
            if let Some(e) = failure {
                for &li in &active {
                    let lane = &mut lanes[li];
                    let mut e = e.clone();
                    let probe = lane
                        .fifo
                        .front()
                        .map(|&t| submit_kind(tasks[t].job, background));
                    if let (Some(kind), Some(c)) = (probe, self.conns.get(&lane.addr)) {
                        if e.is_timeout() && !c.has_answered(kind) {
                            e = Error::timeout(format!(
                                "{} (the first {} on this connection: the server may not support it)",
                                e.message(),
                                kind.name()
                            ));
                        }
                    }
                    fail_lane(lane, &mut tasks, &e.at(&lane.addr));
                    self.conns.remove(&lane.addr);
                }
                break;
            }
            // Wait for any connection, then move bytes and decode.
            let next_deadline = if awaiting_created {
                Some(fg_deadline.map_or(submit_deadline, |d| d.min(submit_deadline)))
            } else {
                fg_deadline
            };
            let wait = slice_until(next_deadline);
            // Send what the sockets take now, without waiting.
            for &li in &active {
                let lane = &mut lanes[li];
                let conn = self
                    .conns
                    .get_mut(&lane.addr)
                    .expect("active lane has a connection");
                if conn.wants_write() {
                    if let Err(e) = conn.write_ready() {
                        fail_lane(lane, &mut tasks, &e);
                        self.conns.remove(&lane.addr);
                    }
                }
            }
            active.retain(|&li| lanes[li].open > 0);
            if active.is_empty() {
                continue;
            }
            let ready = {
                let conns: Vec<&Connection> = active
                    .iter()
                    .map(|&li| &self.conns[&lanes[li].addr])
                    .collect();
                Connection::wait_many(&conns, wait)
            };
            let ready = match ready {
                Ok(r) => r,
                Err(e) => {
                    for &li in &active {
                        let lane = &mut lanes[li];
                        fail_lane(lane, &mut tasks, &e.clone().at(&lane.addr));
                        self.conns.remove(&lane.addr);
                    }
                    break;
                }
            };
            for (k, readable) in ready {
                let li = active[k];
                let lane = &mut lanes[li];
                let conn = self
                    .conns
                    .get_mut(&lane.addr)
                    .expect("active lane has a connection");
                let r = conn.write_ready().and_then(|_| {
                    if !readable {
                        return Ok(());
                    }
                    conn.read_ready()?;
                    while let Some(p) = conn.next_packet()? {
                        if let Some(kind) = dispatch(lane, &mut tasks, p, &mut events, max_result)?
                        {
                            conn.note_answered(kind);
                        }
                    }
                    if conn.is_closed() && lane.open > 0 {
                        return Err(conn.closed_error());
                    }
                    Ok(())
                });
                if let Err(e) = r {
                    fail_lane(lane, &mut tasks, &e);
                    self.conns.remove(&lane.addr);
                }
            }
        }
        for lane in &lanes {
            if !lane.discard.is_empty() {
                // The server may still send data of a job given up on.
                self.conns.remove(&lane.addr);
            }
            if let Some(c) = self.conns.get_mut(&lane.addr) {
                c.busy = false;
                self.router.mark_alive(&lane.addr);
            }
        }
        tasks
            .into_iter()
            .map(|t| {
                t.outcome.unwrap_or_else(|| {
                    Err(Error::new(
                        ErrorKind::Protocol,
                        "job left without an outcome",
                    ))
                })
            })
            .collect()
    }

    /// The server for `job`: the first in routing order whose connection is
    /// (or can be) open. Connect failures put servers into back-off and move
    /// on to the next.
    fn pick_server(
        &mut self,
        job: &Job,
        open: &[&ServerAddr],
        deadline: Instant,
    ) -> Result<ServerAddr> {
        self.pick_server_with(job, open, false, deadline)
    }

    /// [`Client::pick_server`]; with `nowait`, a connection owing deferred
    /// replies is taken as it is (see [`Client::connection_nowait`]).
    fn pick_server_with(
        &mut self,
        job: &Job,
        open: &[&ServerAddr],
        nowait: bool,
        deadline: Instant,
    ) -> Result<ServerAddr> {
        let order = self.router.order(&self.servers, job.unique.as_deref());
        self.walk(
            order,
            deadline,
            |c, addr| {
                if open.contains(&addr) {
                    return Ok(addr.clone());
                }
                if nowait {
                    c.connection_nowait(addr, deadline).map(|_| addr.clone())
                } else {
                    c.connection(addr, deadline).map(|_| addr.clone())
                }
            },
            |e| e.kind() != &ErrorKind::Interrupted,
        )
    }
}

/// The error of a call whose deadline passed while failing over: which
/// servers were tried (first five, with why) and how many were not.
fn deadline_error(tried: &[(ServerAddr, Error)], untried: usize) -> Error {
    let mut msg = String::from("deadline reached before a job server could be used");
    if tried.is_empty() {
        msg.push_str("; no server was tried");
    } else {
        msg.push_str("; tried ");
        for (k, (a, e)) in tried.iter().take(5).enumerate() {
            if k > 0 {
                msg.push_str(", ");
            }
            msg.push_str(&format!("{a} ({})", e.message()));
        }
        if tried.len() > 5 {
            msg.push_str(&format!(" and {} more", tried.len() - 5));
        }
    }
    if untried > 0 {
        msg.push_str(&format!("; {untried} not tried"));
    }
    Error::timeout(msg)
}

fn finish(task: &mut Task<'_>, outcome: Result<Outcome>) {
    if task.phase != Phase::Done {
        task.phase = Phase::Done;
        task.outcome = Some(outcome);
    }
}

/// Fails every unfinished task of a lane with `e`. Tasks still in the
/// backlog were never written, so their error says they were not sent; the
/// others may or may not have reached the server.
fn fail_lane(lane: &mut Lane, tasks: &mut [Task<'_>], e: &Error) {
    for ti in lane.backlog.drain(..) {
        let not_sent = Error::new(e.kind().clone(), format!("not sent: {}", e.message()));
        let not_sent = match e.server() {
            Some(s) => not_sent.at(s),
            None => not_sent,
        };
        finish(&mut tasks[ti], Err(not_sent));
    }
    let pending = lane
        .fifo
        .drain(..)
        .chain(lane.running.drain().flat_map(|(_, v)| v));
    for ti in pending {
        finish(&mut tasks[ti], Err(e.clone()));
    }
    lane.open = 0;
}

/// Handles one packet received on a lane's connection.
fn dispatch(
    lane: &mut Lane,
    tasks: &mut [Task<'_>],
    p: Packet,
    events: &mut Option<&mut dyn FnMut(Event)>,
    max_result: usize,
) -> Result<Option<PacketType>> {
    let addr = lane.addr.clone();
    match p.kind {
        PacketType::JobCreated | PacketType::Error => {
            let Some(ti) = lane.fifo.pop_front() else {
                return Err(Error::protocol(format!(
                    "unexpected {} with no submission outstanding",
                    p.kind.name()
                ))
                .at(&addr));
            };
            if p.kind == PacketType::Error {
                finish(&mut tasks[ti], Err(server_error(&p).at(&addr)));
                lane.open -= 1;
                return Ok(None);
            }
            let answered = submit_kind(tasks[ti].job, tasks[ti].background);
            let handle = p.args.into_iter().next().unwrap_or_default();
            if tasks[ti].background {
                let h = JobHandle {
                    server: addr,
                    handle: String::from_utf8_lossy(&handle).into_owned(),
                };
                finish(&mut tasks[ti], Ok(Outcome::Handle(h)));
                lane.open -= 1;
            } else {
                tasks[ti].phase = Phase::Created;
                lane.running.entry(handle).or_default().push_back(ti);
            }
            return Ok(Some(answered));
        }
        PacketType::WorkData
        | PacketType::WorkWarning
        | PacketType::WorkStatus
        | PacketType::WorkComplete
        | PacketType::WorkFail
        | PacketType::WorkException => {
            let handle = p.arg(0).to_vec();
            let terminal = matches!(
                p.kind,
                PacketType::WorkComplete | PacketType::WorkFail | PacketType::WorkException
            );
            if lane.discard.contains(&handle) {
                // A job failed for a too large result: drop its data. The
                // handle stays until the set ends (the connection is closed
                // then): a connection attached twice to the job gets its
                // terminal packet twice.
                return Ok(None);
            }
            let Some(queue) = lane.running.get_mut(&handle) else {
                // A job we no longer wait for (e.g. its set timed out earlier
                // on a connection we kept): nothing to deliver it to.
                return Err(Error::protocol(format!(
                    "{} for unknown job handle {:?}",
                    p.kind.name(),
                    String::from_utf8_lossy(&handle)
                ))
                .at(&addr));
            };
            // The same connection attached twice to one job gets every
            // packet twice (protocol.md 4.1): deliver each copy to the next
            // task in turn.
            let ti = queue.pop_front().expect("queues are never left empty");
            let grows = matches!(p.kind, PacketType::WorkData | PacketType::WorkComplete);
            if grows && tasks[ti].data.len().saturating_add(p.arg(1).len()) > max_result {
                let e = Error::new(
                    ErrorKind::ResultTooLarge,
                    format!(
                        "result of job {} exceeded {max_result} bytes",
                        String::from_utf8_lossy(&handle)
                    ),
                )
                .at(&addr);
                tasks[ti].data = Vec::new();
                finish(&mut tasks[ti], Err(e));
                lane.open -= 1;
                if queue.is_empty() {
                    lane.running.remove(&handle);
                    if !terminal {
                        lane.discard.insert(handle);
                    }
                }
                return Ok(None);
            }
            match p.kind {
                PacketType::WorkData => {
                    tasks[ti].data.extend_from_slice(p.arg(1));
                    if let Some(cb) = events.as_mut() {
                        cb(Event::Data(p.arg(1).to_vec()));
                    }
                }
                PacketType::WorkWarning => {
                    tasks[ti].warning = Some(p.arg(1).to_vec());
                    if let Some(cb) = events.as_mut() {
                        cb(Event::Warning(p.arg(1).to_vec()));
                    }
                }
                PacketType::WorkStatus => {
                    if let Some(cb) = events.as_mut() {
                        cb(Event::Status {
                            numerator: parse_num(p.arg(1)),
                            denominator: parse_num(p.arg(2)),
                        });
                    }
                }
                PacketType::WorkComplete => {
                    let mut data = std::mem::take(&mut tasks[ti].data);
                    data.extend_from_slice(p.arg(1));
                    finish(&mut tasks[ti], Ok(Outcome::Result(data)));
                }
                PacketType::WorkFail => {
                    let mut msg =
                        format!("the worker failed job {}", String::from_utf8_lossy(&handle));
                    if let Some(w) = tasks[ti].warning.take() {
                        // Text for people: a command's stderr ends in a
                        // newline that would split the message.
                        msg.push_str(": ");
                        msg.push_str(String::from_utf8_lossy(&w).trim_end());
                    }
                    let e = Error::new(ErrorKind::JobFailed, msg).at(&addr);
                    finish(&mut tasks[ti], Err(e));
                }
                _ => {
                    let data = p.arg(1).to_vec();
                    let e = Error::new(
                        ErrorKind::JobException(data.clone()),
                        format!(
                            "the worker raised an exception for job {}: {}",
                            String::from_utf8_lossy(&handle),
                            String::from_utf8_lossy(&data).trim_end()
                        ),
                    )
                    .at(&addr);
                    finish(&mut tasks[ti], Err(e));
                }
            }
            if terminal {
                lane.open -= 1;
                if queue.is_empty() {
                    lane.running.remove(&handle);
                }
            } else {
                queue.push_back(ti);
            }
        }
        PacketType::Noop => {}
        other => {
            return Err(Error::protocol(format!(
                "unexpected {} packet on a client connection",
                other.name()
            ))
            .at(&addr))
        }
    }
    Ok(None)
}

/// The packet type that submits `job`.
fn submit_kind(job: &Job, background: bool) -> PacketType {
    match job.epoch {
        Some(_) => PacketType::SubmitJobEpoch,
        None => job.priority.submit_type(background),
    }
}

fn encode_submit(job: &Job, background: bool, out: &mut Vec<u8>) -> Result<()> {
    use crate::proto::{encode, Magic};
    let unique = job.unique_bytes();
    match job.epoch {
        Some(t) => {
            let when = t.to_string();
            encode(
                Magic::Req,
                PacketType::SubmitJobEpoch,
                &[&job.function, unique, when.as_bytes(), &job.workload],
                out,
            )
        }
        None => encode(
            Magic::Req,
            job.priority.submit_type(background),
            &[&job.function, unique, &job.workload],
            out,
        ),
    }
}

/// An ERROR packet as an [`Error`].
pub(crate) fn server_error(p: &Packet) -> Error {
    let code = p.arg_str(0);
    let text = p.arg_str(1);
    Error::new(
        ErrorKind::Server {
            code: code.clone(),
            text: text.clone(),
        },
        format!("{code}: {text}"),
    )
}

fn parse_num(b: &[u8]) -> u64 {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}
