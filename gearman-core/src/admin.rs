//! The text admin protocol (protocol.md section 10), parsed into typed rows.

use crate::conn::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::proto::{decode_list, encode_admin_command, DEFAULT_MAX_PACKET};
use crate::servers::ServerAddr;
use crate::tls::TlsConfig;
use std::time::{Duration, Instant};

/// One line of `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionStatus {
    /// Function name.
    pub function: String,
    /// Jobs queued or running.
    pub total: u64,
    /// Jobs held by a worker now.
    pub running: u64,
    /// Registered workers (registrations, not idle workers).
    pub workers: u64,
}

impl FunctionStatus {
    /// Jobs waiting for a worker (`total - running`).
    pub fn queued(&self) -> u64 {
        self.total.saturating_sub(self.running)
    }
}

/// One line of `prioritystatus`: queued (not running) jobs per priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityStatus {
    /// Function name.
    pub function: String,
    /// Queued high-priority jobs.
    pub high: u64,
    /// Queued normal-priority jobs.
    pub normal: u64,
    /// Queued low-priority jobs.
    pub low: u64,
    /// Registered workers.
    pub workers: u64,
}

/// One line of `workers`: a connection (client, worker or admin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The server's file descriptor for the connection.
    pub fd: i64,
    /// Peer address.
    pub ip: String,
    /// Client id (`-` if none was set).
    pub client_id: String,
    /// Registered functions, most recent first.
    pub functions: Vec<String>,
}

/// One line of `show jobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// Job handle.
    pub handle: String,
    /// Times the job was requeued.
    pub retries: u64,
    /// The job will be skipped (abandoned or cancelled).
    pub ignore: bool,
    /// The job is in a persistent queue.
    pub persisted: bool,
}

/// A connection speaking the text admin protocol.
#[derive(Debug)]
pub struct Admin {
    conn: Connection,
    timeout: Duration,
    /// No command waits past this, if set.
    until: Option<Instant>,
}

fn num(field: &str, line: &str) -> Result<u64> {
    field
        .trim()
        .parse()
        .map_err(|_| Error::protocol(format!("bad number {field:?} in admin line {line:?}")))
}

fn admin_err(line: &str) -> Error {
    Error::new(
        ErrorKind::Server {
            code: line
                .strip_prefix("ERR ")
                .unwrap_or(line)
                .split(' ')
                .next()
                .unwrap_or("")
                .to_string(),
            text: line.to_string(),
        },
        line.to_string(),
    )
}

/// Parses every line with `parse`, skipping (and logging) the lines it
/// cannot parse: a function name with a newline, registered by a raw
/// CAN_DO, forges lines in gearmand's answers for every admin client, and
/// one bad line must not hide the rest (issue 10).
fn parse_lines<T>(
    what: &str,
    lines: &[String],
    mut parse: impl FnMut(&str) -> Result<T>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(lines.len());
    let mut skipped = 0usize;
    for l in lines {
        match parse(l) {
            Ok(t) => out.push(t),
            Err(e) => {
                skipped += 1;
                if skipped == 1 {
                    log::warn!("skipping a line of the admin {what} answer: {e}");
                }
            }
        }
    }
    if skipped > 1 {
        log::warn!("skipped {skipped} unparseable lines of the admin {what} answer");
    }
    out
}

fn status_line(l: &str) -> Result<FunctionStatus> {
    let f: Vec<&str> = l.split('\t').collect();
    if f.len() != 4 {
        return Err(Error::protocol(format!("bad status line {l:?}")));
    }
    Ok(FunctionStatus {
        function: f[0].to_string(),
        total: num(f[1], l)?,
        running: num(f[2], l)?,
        workers: num(f[3], l)?,
    })
}

fn workers_line(l: &str) -> Result<WorkerInfo> {
    let (head, funcs) = l
        .split_once(" :")
        .or_else(|| l.strip_suffix(':').map(|h| (h.trim_end(), "")))
        .ok_or_else(|| Error::protocol(format!("bad workers line {l:?}")))?;
    let mut w = head.split_whitespace();
    let (Some(fd), Some(ip), Some(id), None) = (w.next(), w.next(), w.next(), w.next()) else {
        return Err(Error::protocol(format!("bad workers line {l:?}")));
    };
    Ok(WorkerInfo {
        fd: fd
            .parse()
            .map_err(|_| Error::protocol(format!("bad fd in {l:?}")))?,
        ip: ip.to_string(),
        client_id: id.to_string(),
        functions: funcs.split_whitespace().map(str::to_string).collect(),
    })
}

/// Parses a `status` reply body. A line that is not `function TAB total
/// TAB running TAB workers` is skipped (see the module docs of
/// [`Admin::list`]); never fails.
pub fn parse_status(lines: &[String]) -> Result<Vec<FunctionStatus>> {
    Ok(parse_lines("status", lines, status_line))
}

/// Parses a `workers` reply body. A line that is not `fd ip id : functions`
/// is skipped; never fails.
pub fn parse_workers(lines: &[String]) -> Result<Vec<WorkerInfo>> {
    Ok(parse_lines("workers", lines, workers_line))
}

/// Most bytes of one admin list answer kept in memory: 64 MiB.
const MAX_LIST_BYTES: usize = 64 << 20;

impl Admin {
    /// Connects to `addr`; `timeout` bounds the connect and each command.
    pub fn connect(addr: &ServerAddr, timeout: Duration) -> Result<Admin> {
        Ok(Admin {
            conn: Connection::connect(addr, timeout, DEFAULT_MAX_PACKET, None)?,
            timeout,
            until: None,
        })
    }

    /// Connects to `addr` within `connect_timeout` and never past
    /// `deadline`; every later command is bounded by `timeout` and by
    /// `deadline` too. A passed deadline is an [`ErrorKind::Timeout`].
    pub fn connect_until(
        addr: &ServerAddr,
        connect_timeout: Duration,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Admin> {
        Admin::connect_with(addr, connect_timeout, timeout, Some(deadline), None)
    }

    /// [`Admin::connect_until`] with an optional deadline and the TLS
    /// configuration for a `tls://` server (`None`: the system's roots; see
    /// [`Connection::connect_with`]).
    pub fn connect_with(
        addr: &ServerAddr,
        connect_timeout: Duration,
        timeout: Duration,
        deadline: Option<Instant>,
        tls: Option<&TlsConfig>,
    ) -> Result<Admin> {
        Ok(Admin {
            conn: Connection::connect_with(
                addr,
                connect_timeout,
                deadline,
                DEFAULT_MAX_PACKET,
                None,
                tls,
            )?,
            timeout,
            until: deadline,
        })
    }

    fn deadline(&self) -> Option<Instant> {
        let d = Instant::now() + self.timeout;
        Some(self.until.map_or(d, |u| u.min(d)))
    }

    /// Sends a command and reads a one-line reply. `ERR ...` is an error.
    pub fn command(&mut self, command: &str) -> Result<String> {
        encode_admin_command(command, self.conn.queue())?;
        self.conn.discard_stray()?;
        let line = self.conn.recv_line(self.deadline(), None)?;
        if line.starts_with("ERR") {
            return Err(admin_err(&line).at(self.conn.addr()));
        }
        Ok(line)
    }

    /// Sends a command and reads a `.`-terminated list reply.
    ///
    /// A `.` line followed by more bytes already received is not the end:
    /// only one command is outstanding, so those bytes belong to the same
    /// answer, and the `.` was forged by a function name holding a newline
    /// (registered by some other client's raw CAN_DO). Such `.` lines are
    /// dropped and the answer read on; the typed parsers then skip the
    /// lines they cannot parse. Bytes left over from an earlier answer are
    /// discarded before a command is sent. An answer over 64 MiB is a
    /// protocol error.
    pub fn list(&mut self, command: &str) -> Result<Vec<String>> {
        encode_admin_command(command, self.conn.queue())?;
        self.conn.discard_stray()?;
        let deadline = self.deadline();
        let mut lines = Vec::new();
        let mut bytes = 0usize;
        loop {
            let line = self.conn.recv_line(deadline, None)?;
            if line == "." {
                if self.conn.has_more_input()? {
                    continue;
                }
                return Ok(lines);
            }
            if lines.is_empty() && line.starts_with("ERR") {
                return Err(admin_err(&line).at(self.conn.addr()));
            }
            bytes += line.len() + 1;
            if bytes > MAX_LIST_BYTES {
                return Err(Error::protocol(format!(
                    "admin answer to {command:?} is longer than {MAX_LIST_BYTES} bytes"
                ))
                .at(self.conn.addr()));
            }
            lines.push(line);
        }
    }

    /// `status`: every known function with total, running and workers.
    /// Unparseable lines are skipped (see [`Admin::list`]).
    pub fn status(&mut self) -> Result<Vec<FunctionStatus>> {
        let lines = self.list("status")?;
        parse_status(&lines).map_err(|e| e.at(self.conn.addr()))
    }

    /// `prioritystatus`: queued jobs per priority. Unparseable lines are
    /// skipped.
    pub fn priority_status(&mut self) -> Result<Vec<PriorityStatus>> {
        let lines = self.list("prioritystatus")?;
        Ok(parse_lines("prioritystatus", &lines, |l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() != 5 {
                return Err(Error::protocol(format!("bad prioritystatus line {l:?}")));
            }
            Ok(PriorityStatus {
                function: f[0].to_string(),
                high: num(f[1], l)?,
                normal: num(f[2], l)?,
                low: num(f[3], l)?,
                workers: num(f[4], l)?,
            })
        }))
    }

    /// `workers`: every connection with its registered functions.
    /// Unparseable lines are skipped.
    pub fn workers(&mut self) -> Result<Vec<WorkerInfo>> {
        let lines = self.list("workers")?;
        parse_workers(&lines)
    }

    /// `show jobs`: every job the server holds. Unparseable lines are
    /// skipped.
    pub fn show_jobs(&mut self) -> Result<Vec<JobInfo>> {
        let lines = self.list("show jobs")?;
        Ok(parse_lines("show jobs", &lines, |l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() != 4 {
                return Err(Error::protocol(format!("bad show jobs line {l:?}")));
            }
            Ok(JobInfo {
                handle: f[0].to_string(),
                retries: num(f[1], l)?,
                ignore: f[2].trim() == "1",
                persisted: f[3].trim() == "1",
            })
        }))
    }

    /// `version`, e.g. `1.1.20`.
    pub fn version(&mut self) -> Result<String> {
        let l = self.command("version")?;
        Ok(l.strip_prefix("OK ").unwrap_or(&l).to_string())
    }

    /// `getpid`: the server's process id.
    pub fn getpid(&mut self) -> Result<u32> {
        let l = self.command("getpid")?;
        let v = l.strip_prefix("OK ").unwrap_or(&l);
        v.trim()
            .parse()
            .map_err(|_| Error::protocol(format!("bad getpid reply {l:?}")))
    }

    /// `maxqueue FUNCTION [N]`: limits the function's queue (queued plus
    /// running) to `size` jobs; `None` or 0 means unlimited.
    pub fn maxqueue(&mut self, function: &str, size: Option<u32>) -> Result<()> {
        crate::job::validate_function_name(function.as_bytes())?;
        let cmd = match size {
            Some(n) => format!("maxqueue {function} {n}"),
            None => format!("maxqueue {function}"),
        };
        self.command(&cmd).map(|_| ())
    }

    /// `cancel job HANDLE`: the job's clients get WORK_FAIL and a queued job
    /// is skipped; a running worker is not stopped. Errors with
    /// `UNKNOWN_JOB` if the server does not know the handle.
    pub fn cancel_job(&mut self, handle: &str) -> Result<()> {
        if handle.is_empty() || handle.contains(char::is_whitespace) {
            return Err(Error::invalid_argument("job handle must be one word"));
        }
        self.command(&format!("cancel job {handle}")).map(|_| ())
    }
}

/// Splits `.`-terminated list text into lines (for tools that already have
/// the whole reply, e.g. from `gearadmin`).
pub fn split_list(text: &[u8]) -> Result<Vec<String>> {
    match decode_list(text)? {
        Some((lines, _)) => Ok(lines),
        None => Err(Error::protocol("admin list without its final '.' line")),
    }
}

/// `status` of every server in `servers`, all within one `deadline`: each
/// connect takes at most `connect_timeout` and none runs past the deadline,
/// nor does any reply. One entry per server, in order; a server not reached
/// by the deadline has an [`ErrorKind::Timeout`] error saying so (it was
/// not tried, or its connect or reply was cut short).
pub fn status_all(
    servers: impl IntoIterator<Item = ServerAddr>,
    connect_timeout: Duration,
    deadline: Instant,
) -> Vec<(ServerAddr, Result<Vec<FunctionStatus>>)> {
    status_all_with(servers, connect_timeout, deadline, None)
}

/// [`status_all`] with the TLS configuration for `tls://` servers (`None`:
/// the system's roots).
pub fn status_all_with(
    servers: impl IntoIterator<Item = ServerAddr>,
    connect_timeout: Duration,
    deadline: Instant,
    tls: Option<&TlsConfig>,
) -> Vec<(ServerAddr, Result<Vec<FunctionStatus>>)> {
    servers
        .into_iter()
        .map(|addr| {
            let r = if Instant::now() >= deadline {
                Err(Error::timeout("deadline reached before this server was asked").at(&addr))
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                Admin::connect_with(&addr, connect_timeout, left, Some(deadline), tls)
                    .and_then(|mut a| a.status())
            };
            (addr, r)
        })
        .collect()
}
