//! One TCP connection to a job server: buffered, non-blocking underneath,
//! every wait bounded by a deadline and cut into short slices with the host's
//! interrupt hook called between them.

use crate::error::{Error, ErrorKind, Result};
use crate::proto::{self, Decoded, Packet};
use crate::servers::ServerAddr;
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
    /// resolver, where that matters).
    pub fn connect_until(
        addr: &ServerAddr,
        timeout: Duration,
        deadline: Option<Instant>,
        max_packet: usize,
        hook: Option<&Interrupt>,
    ) -> Result<Connection> {
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
                    return Ok(Connection {
                        addr: addr.clone(),
                        stream,
                        rbuf: vec![0; 65536],
                        rpos: 0,
                        rend: 0,
                        wbuf: Vec::with_capacity(4096),
                        wpos: 0,
                        max_packet,
                        closed: false,
                        busy: false,
                        answered: 0,
                    });
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
        self.wpos < self.wbuf.len()
    }

    /// Whether the peer closed the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Writes as much queued data as the socket takes now, without waiting.
    pub(crate) fn write_ready(&mut self) -> Result<()> {
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
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
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
            match self.stream.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => {
                    self.closed = true;
                    return Ok(total);
                }
                Ok(n) => {
                    self.rend += n;
                    total += n;
                    if self.rend < self.rbuf.len() {
                        return Ok(total);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.closed = true;
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
        poll_fds(&mut fds, timeout).map_err(|e| Error::lost(format!("poll failed: {e}")))?;
        let readable = libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
        Ok(fds
            .iter()
            .enumerate()
            .filter(|(_, f)| f.revents != 0)
            .map(|(i, f)| (i, f.revents & readable != 0))
            .collect())
    }
}
