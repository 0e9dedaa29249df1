//! Status across the routing table: one job by handle or unique key, the
//! admin `status` of every server, and the concurrent sum of results.

use super::engine::parse_num;
use super::Client;
use crate::admin::{status_all_with, FunctionStatus};
use crate::error::{Error, ErrorKind, Result};
use crate::job::{first_known, Job, JobHandle, JobStatus, Known, UniqueStatus, MAX_UNIQUE};
use crate::proto::{Packet, PacketType};
use crate::servers::{ServerAddr, ServerList};
use std::time::Instant;

/// A bound on one job's result for [`Client::sum`] that a caller may set
/// as [`Options::max_result`](crate::Options::max_result) (the MySQL UDF
/// does): an integer in text form with room for surrounding whitespace.
/// The sum itself applies the client's `max_result`, whatever it is.
pub const SUM_RESULT_MAX: usize = 4096;

/// The status of a job asked by handle or by unique key
/// ([`Client::job_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyStatus {
    /// Some server knows the job (queued or running).
    pub known: bool,
    /// A worker holds the job now.
    pub running: bool,
    /// Last WORK_STATUS numerator (0 if none).
    pub numerator: u64,
    /// Last WORK_STATUS denominator (0 if none).
    pub denominator: u64,
    /// Foreground clients waiting on the job: `Some` for a unique key
    /// (GET_STATUS_UNIQUE tells it), `None` for a handle.
    pub waiting: Option<u64>,
}

impl Known for KeyStatus {
    fn known(&self) -> bool {
        self.known
    }
}

impl From<JobStatus> for KeyStatus {
    fn from(s: JobStatus) -> KeyStatus {
        KeyStatus {
            known: s.known,
            running: s.running,
            numerator: s.numerator,
            denominator: s.denominator,
            waiting: None,
        }
    }
}

impl From<UniqueStatus> for KeyStatus {
    fn from(s: UniqueStatus) -> KeyStatus {
        KeyStatus {
            known: s.known,
            running: s.running,
            numerator: s.numerator,
            denominator: s.denominator,
            waiting: Some(s.waiting),
        }
    }
}

/// Checks a unique key given to a status call.
fn check_unique(unique: &[u8]) -> Result<()> {
    if unique.is_empty() {
        return Err(Error::invalid_argument("unique key is empty"));
    }
    if unique.len() > MAX_UNIQUE {
        return Err(Error::invalid_argument(format!(
            "unique key is {} bytes; at most {MAX_UNIQUE} are allowed",
            unique.len()
        )));
    }
    if unique.contains(&0) {
        return Err(Error::invalid_argument("unique key contains a NUL byte"));
    }
    Ok(())
}

impl Client {
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

    /// Asks the server that `unique` routes to in the default list for the
    /// status of the job with that unique key (GET_STATUS_UNIQUE).
    pub fn status_by_unique(&mut self, unique: &[u8]) -> Result<UniqueStatus> {
        let list = self.routing.default_list().clone();
        self.status_by_unique_on(&list, unique)
    }

    /// [`Client::status_by_unique`] within `list`: the server the key routes
    /// to, failing over as a job would.
    pub fn status_by_unique_on(
        &mut self,
        list: &ServerList,
        unique: &[u8],
    ) -> Result<UniqueStatus> {
        check_unique(unique)?;
        let deadline = self.deadline_in(self.opts.io_timeout);
        let order = self.order(list, Some(unique));
        let p = Packet::req(PacketType::GetStatusUnique, vec![unique.to_vec()]);
        let r = self.walk(order, deadline, |c, addr| {
            c.exchange(addr, &p, PacketType::StatusResUnique, deadline)
        })?;
        Ok(UniqueStatus {
            known: r.arg(1) == b"1",
            running: r.arg(2) == b"1",
            numerator: parse_num(r.arg(3)),
            denominator: parse_num(r.arg(4)),
            waiting: parse_num(r.arg(5)),
        })
    }

    /// The status of a job by handle or unique key, across the routing
    /// table, all within one deadline (`io_timeout` from the call's start,
    /// never past [`Options::deadline`](crate::Options::deadline)):
    ///
    /// - a handle this client received (from [`Client::submit_background`]
    ///   or [`Client::submit_background_all`]; the last 4096 are kept) is
    ///   asked of the server that issued it (GET_STATUS);
    /// - another `H:...` handle is asked of each server of the table
    ///   ([`Routing::all_servers`](crate::Routing::all_servers) order) until
    ///   one knows it;
    /// - anything else is a unique key, asked (GET_STATUS_UNIQUE) of the
    ///   server it routes to in each list of the table
    ///   ([`Routing::lists`](crate::Routing::lists): default first) until
    ///   one knows it.
    ///
    /// `known = false` when no server knows the job. An unreachable server
    /// is skipped if another answers; with none answering, the first error.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`]: an empty key, a unique key over 63
    /// bytes or with NUL, a handle of 64 bytes or more.
    pub fn job_status(&mut self, key: &str) -> Result<KeyStatus> {
        if key.is_empty() {
            return Err(Error::invalid_argument("job handle or unique key is empty"));
        }
        let deadline = self.deadline_in(self.opts.io_timeout);
        self.within(deadline, |c| c.job_status_inner(key))
    }

    fn job_status_inner(&mut self, key: &str) -> Result<KeyStatus> {
        if let Some(server) = self.handles.map.get(key).cloned() {
            let h = JobHandle {
                server,
                handle: key.to_string(),
            };
            return self.status(&h).map(KeyStatus::from);
        }
        if key.starts_with("H:") {
            let servers = self.routing.all_servers();
            return first_known(servers, |server| {
                let h = JobHandle {
                    server,
                    handle: key.to_string(),
                };
                self.status(&h).map(KeyStatus::from)
            });
        }
        check_unique(key.as_bytes())?;
        // The key routes within the list of the function it was sent for,
        // which the key does not tell: ask each distinct list.
        let lists: Vec<ServerList> = self.routing.lists().into_iter().cloned().collect();
        first_known(lists, |list| {
            self.status_by_unique_on(&list, key.as_bytes())
                .map(KeyStatus::from)
        })
    }

    /// The admin `status` of every server of the routing table
    /// ([`Routing::all_servers`](crate::Routing::all_servers) order), all
    /// within `io_timeout` from the call's start (never past
    /// [`Options::deadline`](crate::Options::deadline)); each connect at
    /// most `connect_timeout`. One entry per server; a server not reached
    /// in time has a [`ErrorKind::Timeout`] error. Per function,
    /// [`FunctionStatus::queued`] is the number of jobs waiting for a worker
    /// (the server's total minus those running): the `queued` both
    /// databases report.
    pub fn server_status(&mut self) -> Vec<(ServerAddr, Result<Vec<FunctionStatus>>)> {
        let deadline = self.deadline_in(self.opts.io_timeout);
        self.server_status_until(deadline)
    }

    /// [`Client::server_status`] within an explicit deadline.
    pub fn server_status_until(
        &mut self,
        deadline: Instant,
    ) -> Vec<(ServerAddr, Result<Vec<FunctionStatus>>)> {
        let deadline = self.opts.deadline.map_or(deadline, |d| d.min(deadline));
        status_all_with(
            self.routing.all_servers(),
            self.opts.connect_timeout,
            deadline,
            self.opts.tls.as_ref(),
        )
    }

    /// Runs every job at once (as [`Client::run_all`], each routed by its
    /// function) and adds up the results, each an integer in text form
    /// (ASCII whitespace around it allowed). `Ok(None)` when no job gave a
    /// number (no jobs at all). Each result is bounded by
    /// [`Options::max_result`](crate::Options::max_result), as for
    /// [`Client::run_all`] (see [`SUM_RESULT_MAX`]).
    ///
    /// # Errors
    /// The first failed job's error (as the job returned it), a result that
    /// is not an integer ([`ErrorKind::NotAnInteger`], naming the function
    /// and the start of the result), or a sum past `i64`
    /// ([`ErrorKind::Overflow`]).
    pub fn sum(&mut self, jobs: &[Job]) -> Result<Option<i64>> {
        self.sum_with(jobs, |_, e| Err(e))
    }

    /// [`Client::sum`], with each job's error (failure, or a result that is
    /// not an integer) handed to `on_error` with the job's index: `Ok(())`
    /// leaves that job out of the sum, `Err` ends the call with it. An
    /// overflow always ends the call.
    pub fn sum_with(
        &mut self,
        jobs: &[Job],
        mut on_error: impl FnMut(usize, Error) -> Result<()>,
    ) -> Result<Option<i64>> {
        if jobs.is_empty() {
            return Ok(None);
        }
        let results = self.run_all(jobs);
        let mut total: Option<i64> = None;
        for (i, (job, r)) in jobs.iter().zip(results).enumerate() {
            match r.and_then(|b| parse_int(&b, job)) {
                Ok(n) => {
                    total = Some(total.unwrap_or(0).checked_add(n).ok_or_else(|| {
                        Error::new(
                            ErrorKind::Overflow,
                            "the sum overflows a signed 64-bit integer (bigint)",
                        )
                    })?);
                }
                Err(e) => on_error(i, e)?,
            }
        }
        Ok(total)
    }
}

/// A job's result as an integer, or a [`ErrorKind::NotAnInteger`] error.
fn parse_int(b: &[u8], job: &Job) -> Result<i64> {
    let s = String::from_utf8_lossy(b);
    s.trim().parse::<i64>().map_err(|_| {
        let shown: String = s.trim().chars().take(40).collect();
        Error::new(
            ErrorKind::NotAnInteger,
            format!(
                "function {}: the worker's result {shown:?} is not an integer",
                job.function_name()
            ),
        )
    })
}
