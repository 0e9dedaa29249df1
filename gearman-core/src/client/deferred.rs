//! The deferred-dispatch ledger: background jobs written without waiting
//! for their JOB_CREATED, the replies read later, the report (confirmed,
//! refused, unknown fate, pending) and its one retry rule. PostgreSQL's
//! commit mode and MySQL's pipelined mode both dispatch through it.

use super::engine::{encode_submit, server_error, submit_kind};
use super::Client;
use crate::conn::Connection;
use crate::error::{Error, Result, Retry};
use crate::job::Job;
use crate::proto::PacketType;
use crate::routing::Routing;
use crate::servers::{ServerAddr, ServerList};
use std::borrow::Borrow;
use std::collections::VecDeque;
use std::time::Instant;

/// Which call of [`Client::submit_background_deferred`] wrote a job, and
/// the job's index in that call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tag {
    call: u64,
    index: usize,
}

#[derive(Debug)]
pub(super) struct Deferred {
    function: Vec<u8>,
    unique: Vec<u8>,
    /// The submission packet type (answered types are pipelined).
    kind: PacketType,
    /// Its confirmation is overdue after this: `io_timeout` from the write.
    due: Instant,
    tag: Tag,
}

impl Deferred {
    fn failure(&self, error: Error) -> (Tag, DeferredFailure) {
        (
            self.tag,
            DeferredFailure {
                function: String::from_utf8_lossy(&self.function).into_owned(),
                unique: self.unique.clone(),
                error,
            },
        )
    }
}

/// What the deferred jobs came to so far, until taken by a report.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    confirmed: u64,
    failed: Vec<(Tag, DeferredFailure)>,
    /// Calls of [`Client::submit_background_deferred`] so far.
    calls: u64,
}

impl Ledger {
    /// Removes and returns the failures of jobs of `call`, those `keep`
    /// selects, in order.
    fn take_of(
        &mut self,
        call: u64,
        keep: impl Fn(&DeferredFailure) -> bool,
    ) -> Vec<(usize, DeferredFailure)> {
        let mut out = Vec::new();
        let mut rest = Vec::with_capacity(self.failed.len());
        for (tag, f) in self.failed.drain(..) {
            if tag.call == call && keep(&f) {
                out.push((tag.index, f));
            } else {
                rest.push((tag, f));
            }
        }
        self.failed = rest;
        out
    }
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
    /// come in time ([`ErrorKind::Timeout`](crate::ErrorKind::Timeout)): overdue (no JOB_CREATED within
    /// `io_timeout` of the write, e.g. a server that accepts but never
    /// answers, or answers a byte a second), not answered at all (a server
    /// that ignores the packet type, e.g. Python `gear` and
    /// SUBMIT_JOB_EPOCH), or behind such a job on a connection that was
    /// closed for it. Their fate is unknown: they may have been queued.
    pub fn overdue(&self) -> usize {
        self.failed.iter().filter(|f| f.error.is_timeout()).count()
    }

    /// Of [`DeferredReport::failed`], the jobs the server refused (an
    /// ERROR reply, e.g. `QUEUE_ERROR`): not queued.
    pub fn refused(&self) -> usize {
        self.failed.iter().filter(|f| !f.is_unknown_fate()).count()
    }

    /// Of [`DeferredReport::failed`], the jobs of unknown fate (connection
    /// lost or confirmation overdue): they may have been queued.
    pub fn unknown_fate(&self) -> usize {
        self.failed.len() - self.refused()
    }

    /// Adds `later` (taken after this one) to this report: counts and
    /// failures add up, `pending` is the later one's.
    pub fn merge(&mut self, later: DeferredReport) {
        self.confirmed += later.confirmed;
        self.failed.extend(later.failed);
        self.pending = later.pending;
    }
}

/// What one call of [`Client::submit_background_deferred_on_tracked`]
/// wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeferredWrite {
    /// Indices into the call's jobs of those it did not write, ascending:
    /// no server of their list could be used before the call's deadline
    /// (or a job whose connection broke could not be written again, see
    /// the retry rule: it may have reached the server before the break).
    /// They are in no report and not counted by
    /// [`Client::deferred_written`]; every other job of the call is.
    pub unwritten: Vec<usize>,
    /// The call's first error, as [`Client::submit_background_deferred`]
    /// returns it (`None`: every job was written without one).
    pub error: Option<Error>,
}

impl DeferredFailure {
    /// Whether the job may have been queued (anything but a server's
    /// refusal with ERROR).
    pub fn is_unknown_fate(&self) -> bool {
        !self.error.is_server_error()
    }
}

impl Client {
    /// Writes background jobs, each to its function's server list, without
    /// waiting for their confirmations: the JOB_CREATED (or ERROR) replies
    /// are read later, by [`Client::collect_deferred`] or before the next
    /// use of the same connection. This costs one write per batch instead
    /// of one round trip per job. Nothing is sent if any job is invalid.
    /// Returns an error if a job could not be written (no reachable server,
    /// connection lost while writing); jobs already written stay deferred.
    ///
    /// The retry rule (the same for every caller: PostgreSQL's commit
    /// mode, MySQL's pipelined mode): a job of this call whose connection
    /// broke ([`Retry::Reconnect`]: closed or reset while writing it, or
    /// before its reply was read within this call) is written once more, on
    /// a new connection (or the next server), within the same deadline; its
    /// first failure is not reported. So a deferred job is delivered at
    /// least once, as [`Client::submit_background`] does; give it a unique
    /// key to make a repeat coalesce with the first submission.
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
        match self.deferred_submit(None, jobs)? {
            (_, Some(e), _) => Err(e),
            (_, None, _) => Ok(()),
        }
    }

    /// [`Client::submit_background_deferred`] with every job to `list`,
    /// whatever the routing table says now.
    pub fn submit_background_deferred_on(&mut self, list: &ServerList, jobs: &[Job]) -> Result<()> {
        self.submit_background_deferred_via(&Routing::new(list.clone()), jobs)
    }

    /// [`Client::submit_background_deferred_on`], saying exactly which
    /// jobs of the call were not written (a caller that writes them again
    /// later, as the dispatcher does, must not guess: the retry rule and
    /// the scheduled-jobs-last order mean they need not be the last ones).
    ///
    /// # Errors
    /// Only an invalid job (nothing is written then); the other errors
    /// are in [`DeferredWrite::error`].
    /// The jobs may be borrowed (`&[&Job]`): nothing is copied but what is
    /// written.
    pub fn submit_background_deferred_on_tracked<J: Borrow<Job>>(
        &mut self,
        list: &ServerList,
        jobs: &[J],
    ) -> Result<DeferredWrite> {
        let routing = Routing::new(list.clone());
        let (_, error, written) = self.deferred_submit(Some(&routing), jobs)?;
        let unwritten = written
            .iter()
            .enumerate()
            .filter(|(_, w)| !**w)
            .map(|(i, _)| i)
            .collect();
        Ok(DeferredWrite { unwritten, error })
    }

    /// [`Client::submit_background_deferred`] with each job routed by
    /// `routing` instead of the client's table: e.g. the table in force
    /// when a job was made, for jobs held until a transaction commits.
    /// Connections are the client's, shared as usual.
    pub fn submit_background_deferred_via(
        &mut self,
        routing: &Routing,
        jobs: &[Job],
    ) -> Result<()> {
        match self.deferred_submit(Some(routing), jobs)? {
            (_, Some(e), _) => Err(e),
            (_, None, _) => Ok(()),
        }
    }

    /// One job, as [`Client::submit_background_deferred`], but a failure
    /// of the job known within this call (a refusal or no answer to the
    /// first job of its type on a connection, which is awaited; a broken
    /// connection after the retry) is this call's error, and is then not in
    /// a later report (nor counted by [`Client::deferred_written`]): for
    /// callers that answer per job (MySQL's pipelined mode, one row at a
    /// time).
    pub fn submit_background_deferred_one(&mut self, job: &Job) -> Result<()> {
        let (call, r, _) = self.deferred_submit(None, std::slice::from_ref(job))?;
        let own = self.ledger.take_of(call, |_| true);
        self.deferred_written -= own.len() as u64;
        match (r, own.into_iter().next()) {
            (Some(e), _) => Err(e),
            (None, Some((_, f))) => Err(f.error),
            (None, None) => Ok(()),
        }
    }

    /// The retry rule around [`Client::deferred_pass`]: returns the call's
    /// number, its first error and, per job, whether it was written
    /// (counted by `deferred_written`, and so in a later report); `Err`
    /// only for an invalid job.
    fn deferred_submit<J: Borrow<Job>>(
        &mut self,
        on: Option<&Routing>,
        jobs: &[J],
    ) -> Result<(u64, Option<Error>, Vec<bool>)> {
        for job in jobs {
            job.borrow().validate()?;
        }
        let deadline = self.deadline_in(self.opts.io_timeout);
        self.ledger.calls += 1;
        let call = self.ledger.calls;
        let all: Vec<usize> = (0..jobs.len()).collect();
        let mut written = vec![false; jobs.len()];
        let mut errors = self.deferred_pass(on, jobs, &all, call, deadline, &mut written);
        let again: Vec<usize> = self
            .ledger
            .take_of(call, |f| f.error.retry() == Retry::Reconnect)
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        if !again.is_empty() {
            self.deferred_written -= again.len() as u64;
            for &i in &again {
                written[i] = false;
            }
            errors.retain(|e| e.retry() != Retry::Reconnect);
            errors.extend(self.deferred_pass(on, jobs, &again, call, deadline, &mut written));
        }
        Ok((call, errors.into_iter().next(), written))
    }

    /// Writes `jobs[i]` for each `i` of `which` (scheduled ones last),
    /// setting `written[i]` for each job written, and flushes every
    /// connection written to; returns the errors met.
    fn deferred_pass<J: Borrow<Job>>(
        &mut self,
        on: Option<&Routing>,
        jobs: &[J],
        which: &[usize],
        call: u64,
        deadline: Instant,
        written: &mut [bool],
    ) -> Vec<Error> {
        let own;
        let routing = match on {
            Some(r) => r,
            None => {
                own = std::sync::Arc::clone(&self.routing);
                &*own
            }
        };
        let mut touched: Vec<ServerAddr> = Vec::new();
        let mut errors: Vec<Error> = Vec::new();
        // Scheduled (epoch) jobs last: a server that ignores SUBMIT_JOB_EPOCH
        // then costs only them the wait for an answer that never comes.
        let ordered = which
            .iter()
            .filter(|&&i| jobs[i].borrow().epoch.is_none())
            .chain(which.iter().filter(|&&i| jobs[i].borrow().epoch.is_some()));
        for &index in ordered {
            let job = jobs[index].borrow();
            let list = routing.lookup(&job.function);
            let tag = Tag { call, index };
            if let Err(e) = self.defer_one(list, job, tag, &mut touched, deadline, written) {
                errors.push(e);
            }
        }
        let hook = self.opts.interrupt.clone();
        for addr in touched {
            let Some(conn) = self.conns.get_mut(&addr) else {
                continue;
            };
            if let Err(e) = conn.flush(Some(deadline), hook.as_ref()) {
                self.fail_deferred(&addr, &e);
                self.conns.remove(&addr);
                errors.push(e);
            }
        }
        errors
    }

    /// Writes one deferred job to a server of `list` (a probe of a type
    /// not yet answered on its connection is awaited), keeping the
    /// connection's in-flight window bounded. `touched` holds the
    /// connections written to and still usable; `written[tag.index]` is
    /// set once the job is (it then counts in `deferred_written` and ends
    /// up in a report).
    fn defer_one(
        &mut self,
        list: &ServerList,
        job: &Job,
        tag: Tag,
        touched: &mut Vec<ServerAddr>,
        deadline: Instant,
        written: &mut [bool],
    ) -> Result<()> {
        let addr = {
            let open: Vec<&ServerAddr> = touched.iter().collect();
            self.pick_server(list, job, &open, true, deadline)?
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
        written[tag.index] = true;
        let d = Deferred {
            function: job.function.clone(),
            unique: job.unique_bytes().to_vec(),
            kind,
            due: Instant::now() + self.opts.io_timeout,
            tag,
        };
        // (No copy of the address per job once its queue exists.)
        match self.deferred.get_mut(&addr) {
            Some(q) => q.push_back(d),
            None => self.deferred.entry(addr.clone()).or_default().push_back(d),
        }
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
                return if e.is_timeout() { Ok(()) } else { Err(e) };
            }
        }
        if !touched.contains(&addr) {
            touched.push(addr.clone());
        }
        // Keep the in-flight window bounded: past it, collect first.
        let n = self.deferred.get(&addr).map_or(0, VecDeque::len);
        let window = self.opts.max_in_flight.max(1);
        if n >= window {
            if let Err(e) = self.drain_deferred(&addr, true, window / 2, deadline) {
                // The connection is gone; the next job reconnects.
                touched.retain(|t| t != &addr);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Runs `f` between two collections of the deferred confirmations: those
    /// that have arrived are taken first (without waiting), then whatever
    /// `f` read on the way (every call that reuses a connection first reads
    /// the replies still owed on it). Returns `f`'s result and the merged
    /// report: what a database does around each SQL call.
    pub fn collecting<R>(&mut self, f: impl FnOnce(&mut Client) -> R) -> (R, DeferredReport) {
        let mut report = if self.deferred_pending() > 0 {
            self.collect_deferred(false)
        } else {
            self.take_deferred_report()
        };
        let r = f(self);
        report.merge(self.take_deferred_report());
        (r, report)
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
        DeferredReport {
            confirmed: std::mem::take(&mut self.ledger.confirmed),
            failed: self.ledger.failed.drain(..).map(|(_, f)| f).collect(),
            pending: self.deferred_pending(),
        }
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
    pub(super) fn drain_deferred(
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
            let overdue_why = |conn: &Connection| overdue_why(conn, front_kind, io_timeout);
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
            self.credit_reply(addr, &p)?;
        }
    }

    /// Credits one reply read on `addr` to the oldest deferred job there:
    /// JOB_CREATED confirms it, ERROR is its refusal; anything else fails
    /// every job owed there and closes the connection.
    fn credit_reply(&mut self, addr: &ServerAddr, p: &crate::proto::Packet) -> Result<()> {
        let d = self
            .deferred
            .get_mut(addr)
            .and_then(VecDeque::pop_front)
            .expect("a job is owed");
        match p.kind {
            PacketType::JobCreated => {
                self.ledger.confirmed += 1;
                if let Some(c) = self.conns.get_mut(addr) {
                    c.note_answered(d.kind);
                }
            }
            PacketType::Error => {
                let f = d.failure(server_error(p).at(addr));
                self.ledger.failed.push(f);
            }
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
        Ok(())
    }

    /// Every deferred job still owed on `addr` becomes an overdue failure of
    /// unknown fate: the first with `why`, the others as closed behind it;
    /// the connection is closed (a late answer would be credited to the
    /// wrong job).
    pub(super) fn expire_deferred(&mut self, addr: &ServerAddr, why: &str) {
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
                let f = d.failure(Error::timeout(msg).at(addr));
                self.ledger.failed.push(f);
            }
        }
    }

    /// Every deferred job on `addr` becomes a failure of unknown outcome.
    pub(super) fn fail_deferred(&mut self, addr: &ServerAddr, e: &Error) {
        if let Some(q) = self.deferred.remove(addr) {
            for d in q {
                let f = d.failure(e.clone());
                self.ledger.failed.push(f);
            }
        }
    }
}

/// Why the oldest deferred job on `conn`, of submission type `kind`, is
/// overdue.
fn overdue_why(conn: &Connection, kind: PacketType, io_timeout: std::time::Duration) -> String {
    let mut why = format!(
        "no confirmation (JOB_CREATED) of the {} within {:?} of sending it: \
         unknown whether the job was queued (it may have been)",
        kind.name(),
        io_timeout
    );
    if !conn.has_answered(kind) {
        why.push_str(
            "; the server has not answered this packet type on this connection: \
             it may not support it",
        );
    }
    why
}
