//! The blocking worker: registers functions, grabs jobs, reports results,
//! sleeps and wakes per protocol.md 4.4 and 7.3, reconnects with back-off,
//! and stops gracefully.
//!
//! Jobs are grabbed with GRAB_JOB_UNIQ where the server answers it, and
//! with GRAB_JOB where it does not (Perl's Gearman::Server answers ERROR):
//! the first GRAB_JOB_UNIQ on each connection is followed by an ECHO_REQ,
//! and an echo that comes back with no GRAB reply before it switches that
//! connection to GRAB_JOB.
//!
//! One connection per server, each served by its own thread. A connection
//! runs one job at a time; for N jobs of a function at once run N workers.

use crate::conn::{Connection, Want, SLICE};
use crate::error::{Error, Result};
use crate::proto::{Packet, PacketType, DEFAULT_MAX_PACKET};
use crate::servers::{ServerAddr, ServerList};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a handler returns: the result bytes, or a failure.
pub type WorkResult = std::result::Result<Vec<u8>, WorkError>;

/// How a job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkError {
    /// WORK_FAIL: the client gets a plain failure.
    Fail,
    /// A failure with a message. Sent as WORK_WARNING(message) then
    /// WORK_FAIL, or as WORK_EXCEPTION(message) when
    /// [`WorkerOptions::exceptions`] is set.
    Exception(Vec<u8>),
}

/// The payload of the ECHO_REQ that follows the first GRAB_JOB_UNIQ on a
/// connection ([`Worker::probe`]).
const PROBE_ECHO: &[u8] = b"gearman-core grab probe";

/// How a connection grabs jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grab {
    /// Not known yet: GRAB_JOB_UNIQ with an echo behind it.
    Probe,
    /// GRAB_JOB_UNIQ (answered on this connection).
    Uniq,
    /// GRAB_JOB (GRAB_JOB_UNIQ refused or dropped on this connection).
    Plain,
}

impl Grab {
    fn name(self) -> &'static str {
        match self {
            Grab::Probe | Grab::Uniq => "GRAB_JOB_UNIQ",
            Grab::Plain => "GRAB_JOB",
        }
    }
}

type Handler = Arc<dyn Fn(&mut JobContext<'_>) -> WorkResult + Send + Sync>;

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Sent as SET_CLIENT_ID (shown by admin `workers`). Default none.
    pub client_id: Option<String>,
    /// Bound on one connect. Default 2 s.
    pub connect_timeout: Duration,
    /// Bound on sending a result or waiting for a GRAB reply. Default 30 s.
    pub io_timeout: Duration,
    /// While asleep, send a GRAB this often even without a NOOP: gearmand
    /// 1.1.20 wakes nobody for scheduled (epoch) jobs (protocol.md 7.4).
    /// Default 5 s.
    pub idle_regrab: Duration,
    /// Longest wait between reconnect attempts (the back-off starts at
    /// 100 ms and doubles). Default 10 s.
    pub reconnect_max_backoff: Duration,
    /// Largest packet accepted from the server. Default 64 MiB.
    pub max_packet: usize,
    /// How a [`WorkError::Exception`] is reported. Default false: as
    /// WORK_WARNING with the message, then WORK_FAIL; every client gets a
    /// plain failure and a foreground client also gets the message as a
    /// warning (this crate's [`Client`](crate::Client) puts it in the
    /// error). True: as WORK_EXCEPTION, which gearmand 1.1.20 forwards to
    /// clients that set the `exceptions` option and converts into a
    /// WORK_FAIL for the others, with a NUL byte left after the job handle
    /// (protocol.md 4.5, 4.6); libgearman 1.1 clients (Debian's `gearman`,
    /// PHP's and Python's bindings on it) do not match that packet to their
    /// job and keep waiting. Set it only where every client asks for
    /// exceptions or strips the NUL.
    pub exceptions: bool,
    /// Trust and identity for `tls://` servers (see
    /// [`Options::tls`](crate::Options::tls)). Default `None`: the system's
    /// roots, no client certificate.
    pub tls: Option<crate::TlsConfig>,
}

impl Default for WorkerOptions {
    fn default() -> WorkerOptions {
        WorkerOptions {
            client_id: None,
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(30),
            idle_regrab: Duration::from_secs(5),
            reconnect_max_backoff: Duration::from_secs(10),
            max_packet: DEFAULT_MAX_PACKET,
            exceptions: false,
            tls: None,
        }
    }
}

/// Asks a running [`Worker`] to stop: it finishes the job in hand, sends its
/// result, and returns from [`Worker::run`].
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Requests a graceful stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The job a handler works on, and the way to report progress.
pub struct JobContext<'a> {
    conn: &'a mut Connection,
    deadline_len: Duration,
    handle: String,
    function: String,
    unique: Vec<u8>,
    workload: Vec<u8>,
}

impl std::fmt::Debug for JobContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("handle", &self.handle)
            .field("function", &self.function)
            .field("workload_len", &self.workload.len())
            .finish()
    }
}

impl JobContext<'_> {
    /// The job handle.
    pub fn handle(&self) -> &str {
        &self.handle
    }

    /// The function name.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The unique key (empty if none, and always empty on a server that
    /// does not answer GRAB_JOB_UNIQ, such as Perl's Gearman::Server: the
    /// worker grabs with GRAB_JOB there, whose JOB_ASSIGN carries no key).
    pub fn unique(&self) -> &[u8] {
        &self.unique
    }

    /// The workload.
    pub fn workload(&self) -> &[u8] {
        &self.workload
    }

    /// Takes the workload out of the context (it is empty afterwards).
    pub fn take_workload(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.workload)
    }

    fn send(&mut self, kind: PacketType, args: Vec<Vec<u8>>) -> Result<()> {
        self.conn.queue_packet(&Packet::req(kind, args))?;
        self.conn
            .flush(Some(Instant::now() + self.deadline_len), None)
    }

    /// Sends a WORK_DATA chunk to the waiting clients.
    pub fn send_data(&mut self, data: &[u8]) -> Result<()> {
        let h = self.handle.as_bytes().to_vec();
        self.send(PacketType::WorkData, vec![h, data.to_vec()])
    }

    /// Sends a WORK_WARNING to the waiting clients.
    pub fn send_warning(&mut self, data: &[u8]) -> Result<()> {
        let h = self.handle.as_bytes().to_vec();
        self.send(PacketType::WorkWarning, vec![h, data.to_vec()])
    }

    /// Sends WORK_STATUS progress (stored by the server for GET_STATUS).
    pub fn send_status(&mut self, numerator: u64, denominator: u64) -> Result<()> {
        let h = self.handle.as_bytes().to_vec();
        let (n, d) = (numerator.to_string(), denominator.to_string());
        self.send(
            PacketType::WorkStatus,
            vec![h, n.into_bytes(), d.into_bytes()],
        )
    }
}

/// A worker for one or more functions on one or more servers.
pub struct Worker {
    servers: ServerList,
    opts: WorkerOptions,
    functions: Vec<(String, Handler)>,
    stop: StopHandle,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("servers", &self.servers)
            .field(
                "functions",
                &self.functions.iter().map(|f| &f.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Worker {
    /// A worker for `servers`; register functions, then [`Worker::run`].
    pub fn new(servers: ServerList, opts: WorkerOptions) -> Worker {
        Worker {
            servers,
            opts,
            functions: Vec::new(),
            stop: StopHandle::default(),
        }
    }

    /// Registers `name` (CAN_DO) with its handler. Registering a name again
    /// replaces its handler. The name is checked by [`Worker::run`] with
    /// [`validate_function_name`](crate::validate_function_name) (no
    /// control characters or whitespace; 1 to 512 bytes).
    pub fn register(
        &mut self,
        name: &str,
        handler: impl Fn(&mut JobContext<'_>) -> WorkResult + Send + Sync + 'static,
    ) {
        self.functions.retain(|(n, _)| n != name);
        self.functions.push((name.to_string(), Arc::new(handler)));
    }

    /// A handle to stop [`Worker::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Serves jobs until stopped. Returns `Err` only for a setup error (no
    /// function registered, a function name refused by
    /// [`validate_function_name`](crate::validate_function_name)); connection failures are
    /// retried with back-off for as long as the worker runs.
    pub fn run(self) -> Result<()> {
        if self.functions.is_empty() {
            return Err(Error::invalid_argument("no function registered"));
        }
        for (name, _) in &self.functions {
            crate::job::validate_function_name(name.as_bytes())?;
        }
        let shared = Arc::new(self);
        let mut threads = Vec::new();
        for addr in shared.servers.iter().skip(1) {
            let w = Arc::clone(&shared);
            let addr = addr.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("gearman-worker {addr}"))
                    .spawn(move || w.serve_server(&addr))
                    .map_err(|e| Error::invalid_argument(format!("cannot start thread: {e}")))?,
            );
        }
        let first = shared
            .servers
            .get(0)
            .expect("a list is never empty")
            .clone();
        shared.serve_server(&first);
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }

    /// Connects, registers and serves one server until stopped.
    fn serve_server(&self, addr: &ServerAddr) {
        let mut backoff = Duration::from_millis(100);
        while !self.stop.is_stopped() {
            match self.connect(addr) {
                Ok(mut conn) => {
                    backoff = Duration::from_millis(100);
                    match self.serve(&mut conn) {
                        Ok(()) => return,
                        Err(e) => {
                            log::warn!("worker connection to {addr} failed: {e}; reconnecting")
                        }
                    }
                }
                // A TLS refusal is a configuration or security problem
                // someone must see; a server that is down is routine.
                Err(e) if e.is_tls() => {
                    log::warn!("worker cannot connect to {addr}: {e}; retrying in {backoff:?}")
                }
                Err(e) => log::debug!("worker cannot connect to {addr}: {e}"),
            }
            self.sleep(backoff);
            backoff = (backoff * 2).min(self.opts.reconnect_max_backoff);
        }
    }

    /// Sleeps up to `d`, waking early on stop.
    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.stop.is_stopped() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(SLICE));
        }
    }

    fn connect(&self, addr: &ServerAddr) -> Result<Connection> {
        let mut c = Connection::connect_with(
            addr,
            self.opts.connect_timeout,
            None,
            self.opts.max_packet,
            None,
            self.opts.tls.as_ref(),
        )?;
        if let Some(id) = &self.opts.client_id {
            c.queue_packet(&Packet::req(
                PacketType::SetClientId,
                vec![id.as_bytes().to_vec()],
            ))?;
        }
        for (name, _) in &self.functions {
            c.queue_packet(&Packet::req(
                PacketType::CanDo,
                vec![name.as_bytes().to_vec()],
            ))?;
        }
        c.flush(Some(Instant::now() + self.opts.io_timeout), None)?;
        Ok(c)
    }

    /// The GRAB / work / PRE_SLEEP loop on one connection. `Ok` on stop.
    ///
    /// Grabs with GRAB_JOB_UNIQ (the unique key reaches the handler) where
    /// the server answers it, else with GRAB_JOB (JOB_ASSIGN, no unique key):
    /// Perl's Gearman::Server answers GRAB_JOB_UNIQ with ERROR. Which one is
    /// decided per connection, by [`Worker::probe`], so a reconnect (maybe
    /// to another server behind the same address) asks again.
    fn serve(&self, conn: &mut Connection) -> Result<()> {
        let mut grab = Grab::Probe;
        loop {
            if self.stop.is_stopped() {
                return Ok(());
            }
            let reply = match grab {
                Grab::Probe => match self.probe(conn)? {
                    Some(reply) => {
                        grab = Grab::Uniq;
                        reply
                    }
                    None => {
                        grab = Grab::Plain;
                        conn.queue_packet(&Packet::req(PacketType::GrabJob, vec![]))?;
                        self.next_reply(conn)?
                    }
                },
                Grab::Uniq => {
                    conn.queue_packet(&Packet::req(PacketType::GrabJobUniq, vec![]))?;
                    self.next_reply(conn)?
                }
                Grab::Plain => {
                    conn.queue_packet(&Packet::req(PacketType::GrabJob, vec![]))?;
                    self.next_reply(conn)?
                }
            };
            match reply.kind {
                PacketType::JobAssignUniq | PacketType::JobAssign | PacketType::JobAssignAll => {
                    self.work(conn, reply)?;
                }
                PacketType::NoJob => {
                    conn.queue_packet(&Packet::req(PacketType::PreSleep, vec![]))?;
                    conn.flush(Some(Instant::now() + self.opts.io_timeout), None)?;
                    self.doze(conn)?;
                }
                other => {
                    return Err(Error::protocol(format!(
                        "unexpected {} in reply to {}",
                        other.name(),
                        grab.name()
                    ))
                    .at(conn.addr()))
                }
            }
        }
    }

    /// The first grab on a connection: GRAB_JOB_UNIQ followed by ECHO_REQ.
    /// A job server answers in order, so a GRAB reply (NO_JOB or a
    /// JOB_ASSIGN*) before the echo means GRAB_JOB_UNIQ is known: that reply
    /// is returned. The echo with no GRAB reply before it means the server
    /// refused GRAB_JOB_UNIQ (an ERROR, as Perl's Gearman::Server sends) or
    /// dropped it: `None`, and the caller grabs with GRAB_JOB from then on.
    /// An ERROR alone decides nothing: it may be unsolicited (protocol.md
    /// 4.7). The echo that follows an answered GRAB is skipped later.
    fn probe(&self, conn: &mut Connection) -> Result<Option<Packet>> {
        conn.queue_packet(&Packet::req(PacketType::GrabJobUniq, vec![]))?;
        conn.queue_packet(&Packet::req(PacketType::EchoReq, vec![PROBE_ECHO.to_vec()]))?;
        let deadline = Some(Instant::now() + self.opts.io_timeout);
        let mut refusal = None;
        loop {
            let p = conn.recv(deadline, None)?;
            match p.kind {
                PacketType::Noop => continue,
                PacketType::Error => {
                    log::debug!(
                        "job server {} sent ERROR {}: {} after GRAB_JOB_UNIQ",
                        conn.addr(),
                        p.arg_str(0),
                        p.arg_str(1)
                    );
                    refusal = Some(format!("ERROR {}: {}", p.arg_str(0), p.arg_str(1)));
                }
                PacketType::EchoRes if p.arg(0) == PROBE_ECHO => {
                    log::info!(
                        "job server {} does not answer GRAB_JOB_UNIQ ({}); grabbing \
                         with GRAB_JOB on this connection (handlers see no unique key)",
                        conn.addr(),
                        refusal.as_deref().unwrap_or("no reply")
                    );
                    return Ok(None);
                }
                PacketType::EchoRes => continue,
                _ => return Ok(Some(p)),
            }
        }
    }

    /// The reply to a GRAB: skips NOOPs and the probe's echo, and logs
    /// unsolicited ERRORs (protocol.md 4.7: ERROR for a late WORK_* result
    /// arrives here).
    fn next_reply(&self, conn: &mut Connection) -> Result<Packet> {
        let deadline = Some(Instant::now() + self.opts.io_timeout);
        loop {
            let p = conn.recv(deadline, None)?;
            match p.kind {
                PacketType::Noop | PacketType::EchoRes => continue,
                PacketType::Error => {
                    log::warn!(
                        "job server {} reported {}: {}",
                        conn.addr(),
                        p.arg_str(0),
                        p.arg_str(1)
                    );
                }
                _ => return Ok(p),
            }
        }
    }

    /// Asleep after PRE_SLEEP: returns on NOOP, after `idle_regrab`, or on
    /// stop (then the caller sees the flag and returns).
    fn doze(&self, conn: &mut Connection) -> Result<()> {
        let until = Instant::now() + self.opts.idle_regrab;
        loop {
            while let Some(p) = conn.next_packet()? {
                match p.kind {
                    PacketType::Noop => return Ok(()),
                    // The probe's echo, when its GRAB was answered first.
                    PacketType::EchoRes => {}
                    PacketType::Error => log::warn!(
                        "job server {} reported {}: {}",
                        conn.addr(),
                        p.arg_str(0),
                        p.arg_str(1)
                    ),
                    other => {
                        return Err(Error::protocol(format!(
                            "unexpected {} while asleep",
                            other.name()
                        ))
                        .at(conn.addr()))
                    }
                }
            }
            if conn.is_closed() {
                return Err(conn.closed_error());
            }
            if self.stop.is_stopped() || Instant::now() >= until {
                return Ok(());
            }
            if conn.wait(Want::Read, SLICE)? {
                conn.read_ready()?;
            }
        }
    }

    /// Runs one assigned job and sends its terminal packet.
    fn work(&self, conn: &mut Connection, assign: Packet) -> Result<()> {
        let mut args = assign.args.into_iter();
        let handle = args.next().unwrap_or_default();
        let function = args.next().unwrap_or_default();
        let (unique, workload) = match assign.kind {
            PacketType::JobAssign => (Vec::new(), args.next().unwrap_or_default()),
            PacketType::JobAssignUniq => {
                let u = args.next().unwrap_or_default();
                (u, args.next().unwrap_or_default())
            }
            _ => {
                let u = args.next().unwrap_or_default();
                let _reducer = args.next();
                (u, args.next().unwrap_or_default())
            }
        };
        let handle_s = String::from_utf8_lossy(&handle).into_owned();
        let function_s = String::from_utf8_lossy(&function).into_owned();
        let handler = self
            .functions
            .iter()
            .find(|(n, _)| n.as_bytes() == function.as_slice())
            .map(|(_, h)| Arc::clone(h));
        let started = Instant::now();
        let outcome = match handler {
            None => {
                log::warn!("job {handle_s} for unregistered function {function_s:?}");
                Err(WorkError::Fail)
            }
            Some(h) => {
                let mut ctx = JobContext {
                    conn: &mut *conn,
                    deadline_len: self.opts.io_timeout,
                    handle: handle_s.clone(),
                    function: function_s.clone(),
                    unique,
                    workload,
                };
                match catch_unwind(AssertUnwindSafe(|| h(&mut ctx))) {
                    Ok(r) => r,
                    Err(panic) => {
                        let msg = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".into());
                        log::warn!("handler for {function_s} panicked on job {handle_s}: {msg}");
                        Err(WorkError::Exception(
                            format!("handler panicked: {msg}").into_bytes(),
                        ))
                    }
                }
            }
        };
        let packet = match outcome {
            Ok(data) => Packet::req(PacketType::WorkComplete, vec![handle, data]),
            Err(WorkError::Fail) => Packet::req(PacketType::WorkFail, vec![handle]),
            Err(WorkError::Exception(msg)) if self.opts.exceptions => {
                Packet::req(PacketType::WorkException, vec![handle, msg])
            }
            Err(WorkError::Exception(msg)) => {
                conn.queue_packet(&Packet::req(
                    PacketType::WorkWarning,
                    vec![handle.clone(), msg],
                ))?;
                Packet::req(PacketType::WorkFail, vec![handle])
            }
        };
        log::debug!(
            "job {handle_s} ({function_s}) done in {:?}: {}",
            started.elapsed(),
            packet.kind.name()
        );
        conn.queue_packet(&packet)?;
        conn.flush(Some(Instant::now() + self.opts.io_timeout), None)
    }
}
