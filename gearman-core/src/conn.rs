//! One connection to a job server, plain TCP or TLS (`tls://` entries):
//! buffered, non-blocking underneath, every wait bounded by a deadline and
//! cut into short slices with the host's interrupt hook called between them.
//!
//! A TLS connection is complete only after its handshake and one ECHO round
//! trip through it, both within the connect bound: a server that refuses
//! the client after the handshake (TLS 1.3 reports a missing client
//! certificate only then) fails the connect, not a job. Until then nothing
//! but the handshake and the ECHO is sent; nothing at all is ever sent
//! unencrypted to a `tls://` server.

use crate::error::{Error, ErrorKind, Result};
use crate::proto::{self, Decoded, Packet, PacketType};
use crate::servers::ServerAddr;
use crate::tls::TlsConfig;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest single wait between two calls of the interrupt hook.
pub const SLICE: Duration = Duration::from_millis(50);

/// A hook the host fills in (PostgreSQL: check for query cancel). Called
/// between wait slices of at most 50 ms; an `Err` aborts the wait with
/// that error, and the connection is dropped.
pub type Interrupt = Arc<dyn Fn() -> Result<()> + Send + Sync>;

/// Readiness a wait asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    Read,
    ReadWrite,
}

/// One connection: the socket, a read buffer of received bytes not yet
/// decoded, and a write buffer of bytes not yet sent.
pub struct Connection {
    addr: ServerAddr,
    stream: TcpStream,
    /// The TLS session of a `tls://` server: plaintext goes through it.
    tls: Option<Tls>,
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    max_packet: usize,
    closed: bool,
    /// Set while an exchange is in progress. If it is still set when the
    /// connection is next used, the exchange was abandoned (an unwinding
    /// interrupt, a panic) and the stream is out of step: drop it.
    pub(crate) busy: bool,
    /// Submission packet types (bit = type number) the server has answered
    /// with JOB_CREATED on this connection; only those are pipelined.
    answered: u64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("buffered_in", &(self.rend - self.rpos))
            .field("buffered_out", &(self.wbuf.len() - self.wpos))
            .finish()
    }
}

/// The TLS side of a connection.
struct Tls {
    session: Box<rustls::ClientConnection>,
    config: TlsConfig,
    /// The socket reported end of stream.
    eof: bool,
    /// A read stopped at [`TLS_READ_CAP`] before the socket was drained:
    /// rustls or the socket may hold more, which a poll may not show. The
    /// waits then return at once.
    more: bool,
}

/// Most decrypted bytes one [`Connection::read_ready`] takes from a TLS
/// connection before returning, so a server that sends without pause
/// cannot keep one read going (and its buffer growing) past the caller's
/// deadline and memory bounds: 1 MiB.
const TLS_READ_CAP: usize = 1 << 20;

/// A TLS failure carried through `io::Error`, so the read and write paths
/// keep one shape.
fn tls_io_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn as_tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

impl Tls {
    /// Reads decrypted bytes into `buf` without waiting: `Ok(0)` at the end
    /// of the stream, `WouldBlock` when neither rustls nor the socket holds
    /// more. Sends what rustls has to say meanwhile (alerts, key updates).
    fn read(&mut self, stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed the socket without close_notify: the end
                // of the stream for a framed protocol like ours.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            match self.session.read_tls(stream) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            let processed = self.session.process_new_packets();
            self.send_pending(stream);
            processed.map_err(tls_io_error)?;
        }
    }

    /// Writes what rustls holds for the socket, as far as it takes it now.
    fn send_pending(&mut self, stream: &mut TcpStream) {
        while self.session.wants_write() {
            match self.session.write_tls(stream) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
    }
}

/// Calls the hook, if any.
pub(crate) fn check_interrupt(hook: Option<&Interrupt>) -> Result<()> {
    match hook {
        Some(h) => h(),
        None => Ok(()),
    }
}

fn poll_fds(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for the
    // duration of the call, and its length is passed alongside.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// Time left until `deadline`, capped at one slice.
pub(crate) fn slice_until(deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
        None => SLICE,
    }
}

/// Connects to one socket address within `timeout`. Without a hook this is
/// one bounded OS connect; with a hook the connect runs in attempts of at
/// most 200 ms with the hook asked between them (a refused connect returns
/// at once either way).
fn connect_one(sa: &SocketAddr, timeout: Duration, hook: Option<&Interrupt>) -> Result<TcpStream> {
    if hook.is_none() {
        return TcpStream::connect_timeout(sa, timeout).map_err(|e| map_connect_err(e, sa));
    }
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupt(hook)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::new(
                ErrorKind::ConnectFailed,
                format!("connect to {sa} timed out"),
            ));
        }
        match TcpStream::connect_timeout(sa, left.min(SLICE * 4)) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
            Err(e) => return Err(map_connect_err(e, sa)),
        }
    }
}

fn map_connect_err(e: io::Error, sa: &SocketAddr) -> Error {
    let what = if e.kind() == io::ErrorKind::TimedOut {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    Error::new(
        ErrorKind::ConnectFailed,
        format!("connect to {sa} failed: {what}"),
    )
    .with_source(e)
}

impl Connection {
    /// Connects to `addr` (every address its host name resolves to, in turn),
    /// with `timeout` per attempt; sets TCP_NODELAY and non-blocking mode.
    pub fn connect(
        addr: &ServerAddr,
        timeout: Duration,
        max_packet: usize,
        hook: Option<&Interrupt>,
    ) -> Result<Connection> {
        Connection::connect_until(addr, timeout, None, max_packet, hook)
    }

    /// [`Connection::connect`] within an overall `deadline`: each attempt
    /// gets at most `timeout` and never runs past the deadline. An attempt
    /// cut short by the deadline, or a deadline already passed, is a
    /// [`ErrorKind::Timeout`] ("deadline reached while connecting"); an
    /// attempt that used its whole `timeout` is [`ErrorKind::ConnectFailed`].
    /// Name resolution itself is not bounded (use addresses, or a local
    /// resolver, where that matters). A `tls://` server is checked against
    /// [`TlsConfig::system`]; see [`Connection::connect_with`].
    pub fn connect_until(
        addr: &ServerAddr,
        timeout: Duration,
        deadline: Option<Instant>,
        max_packet: usize,
        hook: Option<&Interrupt>,
    ) -> Result<Connection> {
        Connection::connect_with(addr, timeout, deadline, max_packet, hook, None)
    }

    /// [`Connection::connect_until`] with the TLS configuration for a
    /// `tls://` server (`None`: [`TlsConfig::system`]; ignored for a
    /// plaintext server). For a `tls://` server each attempt's bound covers
    /// the TCP connect, the TLS handshake and one ECHO round trip through
    /// it; a handshake that stalls fails when the bound passes. A server
    /// that does not verify (unknown CA, another name, expired), refuses
    /// the handshake, or does not speak TLS fails at once with
    /// [`ErrorKind::ConnectFailed`] and [`Error::is_tls`], without trying
    /// the host's other addresses.
    pub fn connect_with(
        addr: &ServerAddr,
        timeout: Duration,
        deadline: Option<Instant>,
        max_packet: usize,
        hook: Option<&Interrupt>,
        tls: Option<&TlsConfig>,
    ) -> Result<Connection> {
        let tls_config = if addr.tls {
            Some(match tls {
                Some(t) => t.clone(),
                None => TlsConfig::system().map_err(|e| e.at(addr))?,
            })
        } else {
            None
        };
        let deadline_hit =
            || Error::timeout("deadline reached while connecting to the job server").at(addr);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(deadline_hit());
        }
        let addrs: Vec<SocketAddr> = (addr.host.as_str(), addr.port)
            .to_socket_addrs()
            .map_err(|e| {
                Error::new(
                    ErrorKind::ConnectFailed,
                    format!("cannot resolve {}: {e}", addr.host),
                )
                .at(addr)
            })?
            .collect();
        let mut last = Error::new(ErrorKind::ConnectFailed, "no address").at(addr);
        for sa in &addrs {
            let started = Instant::now();
            let (attempt, cut) = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(deadline_hit());
                    }
                    (timeout.min(left), left < timeout)
                }
                None => (timeout, false),
            };
            match connect_one(sa, attempt, hook) {
                Ok(stream) => {
                    let io_err = |e: io::Error| {
                        Error::new(ErrorKind::ConnectFailed, e.to_string())
                            .with_source(e)
                            .at(addr)
                    };
                    stream.set_nodelay(true).map_err(io_err)?;
                    stream.set_nonblocking(true).map_err(io_err)?;
                    let tls = match &tls_config {
                        Some(cfg) => Some(Tls {
                            session: Box::new(cfg.start(&addr.host).map_err(|e| e.at(addr))?),
                            config: cfg.clone(),
                            eof: false,
                            more: false,
                        }),
                        None => None,
                    };
                    let mut conn = Connection {
                        addr: addr.clone(),
                        stream,
                        tls,
                        rbuf: vec![0; 65536],
                        rpos: 0,
                        rend: 0,
                        wbuf: Vec::with_capacity(4096),
                        wpos: 0,
                        max_packet,
                        closed: false,
                        busy: false,
                        answered: 0,
                    };
                    if conn.tls.is_some() {
                        let until = started + attempt;
                        conn.establish_tls(until, hook).map_err(|e| {
                            if e.is_interrupted() {
                                e
                            } else if cut && deadline.is_some_and(|d| Instant::now() >= d) {
                                Error::tls(
                                    ErrorKind::Timeout,
                                    format!(
                                        "deadline reached while connecting to the job server \
                                         ({})",
                                        e.message()
                                    ),
                                )
                                .at(addr)
                            } else {
                                e
                            }
                        })?;
                    }
                    return Ok(conn);
                }
                Err(e) if e.kind() == &ErrorKind::Interrupted => return Err(e.at(addr)),
                Err(e) if cut && deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Err(Error::timeout(format!(
                        "deadline reached while connecting to the job server ({})",
                        e.message()
                    ))
                    .at(addr))
                }
                Err(e) => last = e.at(addr),
            }
        }
        Err(last)
    }

    /// Runs the TLS handshake and one ECHO round trip, until `until`. Every
    /// failure is a [`ErrorKind::ConnectFailed`] with [`Error::is_tls`]
    /// (an interrupt stays [`ErrorKind::Interrupted`]).
    fn establish_tls(&mut self, until: Instant, hook: Option<&Interrupt>) -> Result<()> {
        let fail = |m: String| Error::tls(ErrorKind::ConnectFailed, m);
        let addr = self.addr.clone();
        let tls = self.tls.as_mut().expect("a TLS connection");
        loop {
            while tls.session.wants_write() {
                match tls.session.write_tls(&mut self.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(fail(format!("sending the TLS handshake failed: {e}")).at(&addr))
                    }
                }
            }
            if !tls.session.is_handshaking() && !tls.session.wants_write() {
                break;
            }
            if Instant::now() >= until {
                return Err(fail(
                    "the TLS handshake did not finish within the connect timeout \
                     (the server is stalled, or is not a TLS server)"
                        .to_string(),
                )
                .at(&addr));
            }
            check_interrupt(hook).map_err(|e| e.at(&addr))?;
            let mut events = libc::POLLIN;
            if tls.session.wants_write() {
                events |= libc::POLLOUT;
            }
            let mut fds = [libc::pollfd {
                fd: self.stream.as_raw_fd(),
                events,
                revents: 0,
            }];
            let ready = poll_fds(&mut fds, slice_until(Some(until)))
                .map_err(|e| fail(format!("poll failed: {e}")).at(&addr))?;
            if ready == 0 || fds[0].revents & !libc::POLLOUT == 0 {
                continue;
            }
            match tls.session.read_tls(&mut self.stream) {
                Ok(0) => {
                    return Err(fail(
                        "the server closed the connection during the TLS handshake \
                         (is it a TLS server?)"
                            .to_string(),
                    )
                    .at(&addr))
                }
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(fail(format!("receiving the TLS handshake failed: {e}")).at(&addr))
                }
            }
            if let Err(e) = tls.session.process_new_packets() {
                // Tell the server why (the alert rustls queued), then give up.
                tls.send_pending(&mut self.stream);
                return Err(fail(tls.config.explain(&addr.host, &e)).at(&addr));
            }
        }
        // The handshake is done on our side; the server may still refuse
        // us (TLS 1.3 checks the client certificate after our Finished).
        // One ECHO through the session settles it within the same bound.
        let token = b"gearman-sql tls check".to_vec();
        self.queue_packet(&Packet::req(PacketType::EchoReq, vec![token.clone()]))?;
        let reply = self.recv(Some(until), hook).map_err(|e| {
            if e.is_interrupted() {
                e
            } else if e.is_tls() {
                // An alert after the handshake: the connect failed.
                fail(e.message().to_string()).at(&addr)
            } else if e.is_timeout() {
                fail(
                    "no answer through TLS within the connect timeout after the handshake"
                        .to_string(),
                )
                .at(&addr)
            } else {
                fail(format!(
                    "the connection failed right after the TLS handshake: {}",
                    e.message()
                ))
                .at(&addr)
            }
        })?;
        if reply.kind != PacketType::EchoRes || reply.args.first() != Some(&token) {
            return Err(fail(format!(
                "the server behind TLS did not answer ECHO_REQ with its echo (got {}): \
                 is it a Gearman job server?",
                reply.kind.name()
            ))
            .at(&addr));
        }
        Ok(())
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether a JOB_CREATED has answered a submission of type `kind` on
    /// this connection (see [`Connection::note_answered`]).
    pub(crate) fn has_answered(&self, kind: crate::proto::PacketType) -> bool {
        self.answered & (1u64 << (kind as u32 % 64)) != 0
    }

    /// Records that the server answered a submission of type `kind` with
    /// JOB_CREATED on this connection: it may be pipelined from now on.
    pub(crate) fn note_answered(&mut self, kind: crate::proto::PacketType) {
        self.answered |= 1u64 << (kind as u32 % 64);
    }

    /// The server this connection talks to.
    pub fn addr(&self) -> &ServerAddr {
        &self.addr
    }

    pub(crate) fn fd(&self) -> i32 {
        self.stream.as_raw_fd()
    }

    /// Queues bytes to send (see [`Connection::flush`]).
    pub fn queue(&mut self) -> &mut Vec<u8> {
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        &mut self.wbuf
    }

    /// Queues one packet.
    pub fn queue_packet(&mut self, p: &Packet) -> Result<()> {
        p.encode(self.queue())
    }

    /// Whether queued bytes remain unsent.
    pub fn wants_write(&self) -> bool {
        self.wpos < self.wbuf.len() || self.tls.as_ref().is_some_and(|t| t.session.wants_write())
    }

    /// Whether the peer closed the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Writes as much queued data as the socket takes now, without waiting.
    pub(crate) fn write_ready(&mut self) -> Result<()> {
        if let Some(tls) = self.tls.as_mut() {
            loop {
                if self.wpos < self.wbuf.len() {
                    // rustls takes what fits its buffer (64 KiB) and
                    // encrypts it into records.
                    match tls.session.writer().write(&self.wbuf[self.wpos..]) {
                        Ok(n) => self.wpos += n,
                        Err(e) => {
                            self.closed = true;
                            return Err(Error::lost(format!("send failed: {e}"))
                                .with_source(e)
                                .at(&self.addr));
                        }
                    }
                }
                if !tls.session.wants_write() {
                    break;
                }
                match tls.session.write_tls(&mut self.stream) {
                    Ok(0) => {
                        return Err(Error::lost("connection closed while sending").at(&self.addr))
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.closed = true;
                        return Err(Error::lost(format!("send failed: {e}"))
                            .with_source(e)
                            .at(&self.addr));
                    }
                }
            }
        } else {
            self.write_plain()?;
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        Ok(())
    }

    /// The plaintext half of [`Connection::write_ready`]: only ever for a
    /// connection without TLS (a byte written here to a `tls://` server
    /// would be a byte of a job in the clear).
    fn write_plain(&mut self) -> Result<()> {
        debug_assert!(self.tls.is_none());
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(Error::lost("connection closed while sending").at(&self.addr)),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.closed = true;
                    return Err(Error::lost(format!("send failed: {e}"))
                        .with_source(e)
                        .at(&self.addr));
                }
            }
        }
        Ok(())
    }

    /// Reads whatever the socket has now, without waiting. Returns the number
    /// of bytes read; end of stream marks the connection closed.
    pub(crate) fn read_ready(&mut self) -> Result<usize> {
        // `rbuf[rpos..rend]` holds received bytes not yet decoded; the rest
        // of `rbuf` is spare room, zeroed once when it is allocated.
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
            if self.rbuf.len() > 1 << 20 {
                // Give back the room a large packet needed.
                self.rbuf = vec![0; 65536];
            }
        }
        let mut total = 0;
        loop {
            if self.rbuf.len() - self.rend < 16384 {
                if self.rpos > 0 {
                    self.rbuf.copy_within(self.rpos..self.rend, 0);
                    self.rend -= self.rpos;
                    self.rpos = 0;
                }
                if self.rbuf.len() - self.rend < 16384 {
                    let grow = self.rbuf.len().max(65536);
                    self.rbuf.resize(self.rbuf.len() + grow, 0);
                }
            }
            let got = match self.tls.as_mut() {
                Some(tls) => tls.read(&mut self.stream, &mut self.rbuf[self.rend..]),
                None => self.stream.read(&mut self.rbuf[self.rend..]),
            };
            match got {
                Ok(0) => {
                    self.closed = true;
                    return Ok(total);
                }
                Ok(n) => {
                    self.rend += n;
                    total += n;
                    // A short read drained the socket; with TLS, read on
                    // until the socket is empty: bytes rustls holds would
                    // not wake a poll.
                    match self.tls.as_mut() {
                        None if self.rend < self.rbuf.len() => return Ok(total),
                        None => {}
                        Some(t) if total >= TLS_READ_CAP => {
                            t.more = true;
                            return Ok(total);
                        }
                        Some(_) => {}
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(t) = self.tls.as_mut() {
                        t.more = false;
                    }
                    return Ok(total);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.closed = true;
                    if let (Some(t), Some(te)) = (self.tls.as_ref(), as_tls_error(&e)) {
                        return Err(Error::tls(
                            ErrorKind::ConnectionLost,
                            t.config.explain(&self.addr.host, te),
                        )
                        .at(&self.addr));
                    }
                    return Err(Error::lost(format!("receive failed: {e}"))
                        .with_source(e)
                        .at(&self.addr));
                }
            }
        }
    }

    /// Decodes one buffered packet, if a whole one has arrived.
    pub(crate) fn next_packet(&mut self) -> Result<Option<Packet>> {
        match proto::decode(&self.rbuf[self.rpos..self.rend], self.max_packet)
            .map_err(|e| e.at(&self.addr))?
        {
            Decoded::Packet(p, n) => {
                self.rpos += n;
                Ok(Some(p))
            }
            Decoded::NeedMore(_) => Ok(None),
        }
    }

    /// Decodes one buffered admin line.
    pub(crate) fn next_line(&mut self) -> Result<Option<String>> {
        match proto::decode_line(&self.rbuf[self.rpos..self.rend])? {
            Some((line, n)) => {
                self.rpos += n;
                Ok(Some(line))
            }
            None => Ok(None),
        }
    }

    /// Whether received bytes are waiting to be decoded, after taking what
    /// the socket holds now (no wait).
    pub(crate) fn has_more_input(&mut self) -> Result<bool> {
        if self.rpos == self.rend && !self.closed {
            self.read_ready()?;
        }
        Ok(self.rpos < self.rend)
    }

    /// Drops received bytes nobody asked for (what is left of an earlier
    /// answer), taking what the socket holds now first (no wait).
    pub(crate) fn discard_stray(&mut self) -> Result<()> {
        if !self.closed {
            self.read_ready()?;
        }
        self.rpos = 0;
        self.rend = 0;
        Ok(())
    }

    /// The error to report when the peer closed with nothing decodable left.
    pub(crate) fn closed_error(&self) -> Error {
        let partial = self.rend - self.rpos;
        let msg = if partial > 0 {
            format!("connection closed by the job server in the middle of a packet ({partial} bytes of it received)")
        } else {
            "connection closed by the job server".to_string()
        };
        Error::lost(msg).at(&self.addr)
    }

    /// Waits until the socket is readable (or writable, if asked and data is
    /// queued), for at most `timeout`. Returns whether it became ready.
    pub(crate) fn wait(&self, want: Want, timeout: Duration) -> Result<bool> {
        if self.tls_buffered() {
            return Ok(true);
        }
        let mut events = libc::POLLIN;
        if want == Want::ReadWrite && self.wants_write() {
            events |= libc::POLLOUT;
        }
        let mut fds = [libc::pollfd {
            fd: self.fd(),
            events,
            revents: 0,
        }];
        let n = poll_fds(&mut fds, timeout)
            .map_err(|e| Error::lost(format!("poll failed: {e}")).at(&self.addr))?;
        Ok(n > 0)
    }

    /// Whether a TLS read stopped early and more input may be held where a
    /// poll does not see it.
    fn tls_buffered(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.more)
    }

    /// Sends all queued bytes, waiting at most until `deadline`.
    pub fn flush(&mut self, deadline: Option<Instant>, hook: Option<&Interrupt>) -> Result<()> {
        loop {
            self.write_ready()?;
            if !self.wants_write() {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::timeout("timed out sending to the job server").at(&self.addr));
            }
            check_interrupt(hook).map_err(|e| e.at(&self.addr))?;
            // Read while waiting, so a server that answers as we send never
            // blocks on a full socket buffer.
            if self.wait(Want::ReadWrite, slice_until(deadline))? {
                self.read_ready()?;
                if self.closed {
                    return Err(self.closed_error());
                }
            }
        }
    }

    /// Sends what is queued and receives the next packet, waiting at most
    /// until `deadline` and calling `hook` between slices.
    pub fn recv(&mut self, deadline: Option<Instant>, hook: Option<&Interrupt>) -> Result<Packet> {
        self.flush(deadline, hook)?;
        loop {
            if let Some(p) = self.next_packet()? {
                return Ok(p);
            }
            if self.closed {
                return Err(self.closed_error());
            }
            self.fill(deadline, hook)?;
        }
    }

    /// Receives one admin text line.
    pub fn recv_line(
        &mut self,
        deadline: Option<Instant>,
        hook: Option<&Interrupt>,
    ) -> Result<String> {
        self.flush(deadline, hook)?;
        loop {
            if let Some(l) = self.next_line()? {
                return Ok(l);
            }
            if self.closed {
                return Err(self.closed_error());
            }
            self.fill(deadline, hook)?;
        }
    }

    /// Waits for more bytes (one slice at a time) and reads them.
    fn fill(&mut self, deadline: Option<Instant>, hook: Option<&Interrupt>) -> Result<()> {
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::timeout("timed out waiting for the job server").at(&self.addr));
            }
            if self.wait(Want::Read, slice_until(deadline))? {
                let n = self.read_ready()?;
                if n > 0 || self.closed {
                    return Ok(());
                }
            }
            check_interrupt(hook).map_err(|e| e.at(&self.addr))?;
        }
    }

    /// Whether a cached, idle connection is still usable: no unread bytes and
    /// not closed by the peer (a restarted server leaves a dead socket that
    /// only shows up as end-of-stream). Costs one poll and, rarely, one read.
    pub fn is_usable(&mut self) -> bool {
        if self.closed || self.busy || self.wants_write() {
            return false;
        }
        match self.wait(Want::Read, Duration::ZERO) {
            Ok(false) => self.rpos == self.rend,
            Ok(true) if self.tls.is_some() => {
                // TLS records that carry no data (session tickets, key
                // updates) arrive while idle; only data, an alert or the
                // end of the stream make the connection unusable.
                matches!(self.read_ready(), Ok(0))
                    && !self.closed
                    && self.rpos == self.rend
                    && !self.wants_write()
            }
            Ok(true) => {
                // Readable while idle: either end-of-stream or stray bytes.
                // Either way the stream is not in a known state.
                false
            }
            Err(_) => false,
        }
    }

    /// Waits on several connections at once for at most `timeout`; returns
    /// the indices of those that are ready, each with whether it is readable
    /// (data, end of stream or an error to collect) as opposed to only
    /// writable.
    pub(crate) fn wait_many(
        conns: &[&Connection],
        timeout: Duration,
    ) -> Result<Vec<(usize, bool)>> {
        let mut fds: Vec<libc::pollfd> = conns
            .iter()
            .map(|c| libc::pollfd {
                fd: c.fd(),
                events: if c.wants_write() {
                    libc::POLLIN | libc::POLLOUT
                } else {
                    libc::POLLIN
                },
                revents: 0,
            })
            .collect();
        // Input a TLS read left where poll cannot see it: ready now.
        let buffered = conns.iter().any(|c| c.tls_buffered());
        let timeout = if buffered { Duration::ZERO } else { timeout };
        poll_fds(&mut fds, timeout).map_err(|e| Error::lost(format!("poll failed: {e}")))?;
        let readable = libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
        Ok(fds
            .iter()
            .enumerate()
            .filter(|(i, f)| f.revents != 0 || conns[*i].tls_buffered())
            .map(|(i, f)| (i, f.revents & readable != 0 || conns[i].tls_buffered()))
            .collect())
    }
}
