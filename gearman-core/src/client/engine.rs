//! The submission engine: every foreground and background submission goes
//! through [`Client::submit_set`]. Submissions are written to each server's
//! connection in windows, replies without a handle (JOB_CREATED, ERROR) are
//! matched in order (protocol.md 6), WORK_* packets by handle.

use super::dispatch::{dispatch, fail_lane, finish};
use super::Client;
use crate::conn::{check_interrupt, slice_until, Connection};
use crate::error::{Error, ErrorKind, Result};
use crate::job::{Event, Job, JobHandle};
use crate::proto::{Packet, PacketType};
use crate::servers::ServerAddr;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// What a finished task produced.
pub(super) enum Outcome {
    Handle(JobHandle),
    Result(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Waiting,
    Created,
    Done,
}

pub(super) struct Task<'a> {
    pub(super) job: &'a Job,
    pub(super) background: bool,
    pub(super) phase: Phase,
    pub(super) data: Vec<u8>,
    /// The last WORK_WARNING's data: added to a WORK_FAIL's message, since a
    /// worker may send its failure reason that way (see
    /// [`WorkerOptions::exceptions`](crate::worker::WorkerOptions::exceptions)).
    pub(super) warning: Option<Vec<u8>>,
    pub(super) outcome: Option<Result<Outcome>>,
}

/// Per-connection state within one set.
pub(super) struct Lane {
    pub(super) addr: ServerAddr,
    /// Tasks not yet written (window full).
    pub(super) backlog: VecDeque<usize>,
    /// Tasks written, awaiting JOB_CREATED/ERROR, in order.
    pub(super) fifo: VecDeque<usize>,
    /// Foreground tasks by handle; several when coalesced on this connection.
    pub(super) running: HashMap<Vec<u8>, VecDeque<usize>>,
    /// Handles of jobs failed for a too large result: their further packets
    /// are dropped unread into nothing, and the connection is closed when
    /// the set ends (the server may still send them).
    pub(super) discard: std::collections::HashSet<Vec<u8>>,
    pub(super) open: usize,
}

/// The result bytes one set may hold: per job and, optionally, in all.
pub(super) struct Budget {
    pub(super) per_job: usize,
    pub(super) total: Option<usize>,
    /// Result bytes held now, over every task of the set.
    pub(super) held: usize,
}

/// The deadlines of one set.
#[derive(Clone, Copy)]
struct SetClock {
    start: Instant,
    /// Bound on waiting for JOB_CREATED: `io_timeout` from the start.
    submit: Instant,
    /// Bound on a foreground job's result, if any.
    fg: Option<Instant>,
}

impl Client {
    /// The engine: submits `jobs` (all foreground or all background), each
    /// to its function's server list, drives every connection involved
    /// until each job has its outcome or a deadline passes, and returns one
    /// result per job in input order.
    ///
    /// One deadline from the start bounds connecting and failing over:
    /// `foreground_timeout` for foreground jobs where set, else
    /// `io_timeout`, never past `outer` or [`Options::deadline`](super::Options::deadline).
    pub(super) fn submit_set(
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
        let mut lanes = self.route_tasks(&mut tasks, background, call_deadline);
        for lane in &lanes {
            if let Some(c) = self.conns.get_mut(&lane.addr) {
                c.busy = true;
            }
        }
        let clock = SetClock {
            start,
            submit: (start + self.opts.io_timeout).min(call_deadline),
            fg: if background {
                None
            } else if fg_bound.is_some() {
                Some(call_deadline)
            } else {
                self.opts.deadline
            },
        };
        let mut budget = Budget {
            per_job: self.opts.max_result,
            total: self.opts.max_total_result,
            held: 0,
        };
        loop {
            let active = self.feed_lanes(&mut lanes, &mut tasks, background);
            if active.is_empty() {
                break;
            }
            if let Some(e) = self.set_failure(&lanes, &active, clock) {
                self.fail_active(&mut lanes, &active, &mut tasks, &e, background);
                break;
            }
            if !self.pump(
                &mut lanes,
                active,
                &mut tasks,
                &mut events,
                clock,
                &mut budget,
            ) {
                break;
            }
        }
        self.end_set(&lanes);
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

    /// Validates every task and routes it to a lane (one per connection):
    /// the server its function's list picks. Tasks that cannot be sent
    /// finish with their error.
    fn route_tasks(
        &mut self,
        tasks: &mut [Task<'_>],
        background: bool,
        deadline: Instant,
    ) -> Vec<Lane> {
        let routing = std::sync::Arc::clone(&self.routing);
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
            let list = routing.lookup(&job.function);
            match self.pick_server(list, job, &open, false, deadline) {
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
        lanes
    }

    /// Feeds each lane's window from its backlog; returns the lanes with
    /// work left.
    fn feed_lanes(
        &mut self,
        lanes: &mut [Lane],
        tasks: &mut [Task<'_>],
        background: bool,
    ) -> Vec<usize> {
        let window = self.opts.max_in_flight.max(1);
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
                let behind_probe = lane
                    .fifo
                    .back()
                    .is_some_and(|&t| !conn.has_answered(submit_kind(tasks[t].job, background)));
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
        active
    }

    /// Whether the set must stop now: a submission unconfirmed past its
    /// bound, a foreground bound passed, or the interrupt hook.
    fn set_failure(&self, lanes: &[Lane], active: &[usize], clock: SetClock) -> Option<Error> {
        let now = Instant::now();
        let awaiting_created = active.iter().any(|&li| !lanes[li].fifo.is_empty());
        if awaiting_created && now >= clock.submit {
            return Some(Error::timeout(format!(
                "no JOB_CREATED for the submission within {:?}: the job may have been queued \
                 (submit it with a unique key to make a retry safe)",
                clock.submit.saturating_duration_since(clock.start)
            )));
        }
        if let Some(d) = clock.fg.filter(|&d| now >= d) {
            // The bound that applied: foreground_timeout, or a shorter
            // Options::deadline.
            return Some(Error::timeout(format!(
                "foreground job did not finish within {:?}",
                d.saturating_duration_since(clock.start)
            )));
        }
        check_interrupt(self.opts.interrupt.as_ref()).err()
    }

    /// Fails every active lane with `e` (naming an unanswered first
    /// submission type) and closes its connection.
    fn fail_active(
        &mut self,
        lanes: &mut [Lane],
        active: &[usize],
        tasks: &mut [Task<'_>],
        e: &Error,
        background: bool,
    ) {
        for &li in active {
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
            fail_lane(lane, tasks, &e.at(&lane.addr));
            self.conns.remove(&lane.addr);
        }
    }

    /// One round: writes what the sockets take, waits (at most one slice)
    /// for any connection, reads and dispatches what arrived. A failed
    /// connection fails its lane. Returns false when the set must end.
    fn pump(
        &mut self,
        lanes: &mut [Lane],
        mut active: Vec<usize>,
        tasks: &mut [Task<'_>],
        events: &mut Option<&mut dyn FnMut(Event)>,
        clock: SetClock,
        budget: &mut Budget,
    ) -> bool {
        let awaiting_created = active.iter().any(|&li| !lanes[li].fifo.is_empty());
        let next_deadline = if awaiting_created {
            Some(clock.fg.map_or(clock.submit, |d| d.min(clock.submit)))
        } else {
            clock.fg
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
                    fail_lane(lane, tasks, &e);
                    self.conns.remove(&lane.addr);
                }
            }
        }
        active.retain(|&li| lanes[li].open > 0);
        if active.is_empty() {
            return true;
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
                    fail_lane(lane, tasks, &e.clone().at(&lane.addr));
                    self.conns.remove(&lane.addr);
                }
                return false;
            }
        };
        for (k, readable) in ready {
            let lane = &mut lanes[active[k]];
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
                    if let Some(kind) = dispatch(lane, tasks, p, events, budget)? {
                        conn.note_answered(kind);
                    }
                }
                if conn.is_closed() && lane.open > 0 {
                    return Err(conn.closed_error());
                }
                Ok(())
            });
            if let Err(e) = r {
                fail_lane(lane, tasks, &e);
                self.conns.remove(&lane.addr);
            }
        }
        true
    }

    /// After a set: closes connections that may still carry data of a job
    /// given up on; the others are free again and their servers healthy.
    fn end_set(&mut self, lanes: &[Lane]) {
        for lane in lanes {
            if !lane.discard.is_empty() {
                // The server may still send data of a job given up on.
                self.conns.remove(&lane.addr);
            }
            if let Some(c) = self.conns.get_mut(&lane.addr) {
                c.busy = false;
                self.router.mark_alive(&lane.addr);
            }
        }
    }
}

/// The packet type that submits `job`.
pub(super) fn submit_kind(job: &Job, background: bool) -> PacketType {
    match job.epoch {
        Some(_) => PacketType::SubmitJobEpoch,
        None => job.priority.submit_type(background),
    }
}

pub(super) fn encode_submit(job: &Job, background: bool, out: &mut Vec<u8>) -> Result<()> {
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

pub(super) fn parse_num(b: &[u8]) -> u64 {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}
