//! Replies on a lane's connection, matched to the tasks of a set:
//! JOB_CREATED and ERROR in submission order, WORK_* by job handle.

use super::engine::{parse_num, server_error, submit_kind, Budget, Lane, Outcome, Phase, Task};
use crate::error::{Error, ErrorKind, Result};
use crate::job::{Event, JobHandle};
use crate::proto::{Packet, PacketType};
use crate::servers::ServerAddr;

pub(super) fn finish(task: &mut Task<'_>, outcome: Result<Outcome>) {
    if task.phase != Phase::Done {
        task.phase = Phase::Done;
        task.outcome = Some(outcome);
    }
}

/// Fails every unfinished task of a lane with `e`. Tasks still in the
/// backlog were never written, so their error says they were not sent; the
/// others may or may not have reached the server.
pub(super) fn fail_lane(lane: &mut Lane, tasks: &mut [Task<'_>], e: &Error) {
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

/// Handles one packet received on a lane's connection; returns the
/// submission type a JOB_CREATED answered.
pub(super) fn dispatch(
    lane: &mut Lane,
    tasks: &mut [Task<'_>],
    p: Packet,
    events: &mut Option<&mut dyn FnMut(Event)>,
    budget: &mut Budget,
) -> Result<Option<PacketType>> {
    match p.kind {
        PacketType::JobCreated | PacketType::Error => on_reply(lane, tasks, p),
        PacketType::WorkData
        | PacketType::WorkWarning
        | PacketType::WorkStatus
        | PacketType::WorkComplete
        | PacketType::WorkFail
        | PacketType::WorkException => on_work(lane, tasks, p, events, budget).map(|_| None),
        PacketType::Noop => Ok(None),
        other => Err(Error::protocol(format!(
            "unexpected {} packet on a client connection",
            other.name()
        ))
        .at(&lane.addr)),
    }
}

/// JOB_CREATED or ERROR: the answer to the oldest submission in flight.
fn on_reply(lane: &mut Lane, tasks: &mut [Task<'_>], p: Packet) -> Result<Option<PacketType>> {
    let addr = lane.addr.clone();
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
    Ok(Some(answered))
}

/// A WORK_* packet: delivered to the next task waiting on its handle.
fn on_work(
    lane: &mut Lane,
    tasks: &mut [Task<'_>],
    p: Packet,
    events: &mut Option<&mut dyn FnMut(Event)>,
    budget: &mut Budget,
) -> Result<()> {
    let addr = lane.addr.clone();
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
        return Ok(());
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
    let add = if grows { p.arg(1).len() } else { 0 };
    let over_job = tasks[ti].data.len().saturating_add(add) > budget.per_job;
    let over_total = budget
        .total
        .is_some_and(|t| budget.held.saturating_add(add) > t);
    if grows && (over_job || over_total) {
        let job = String::from_utf8_lossy(&handle);
        let msg = if over_job {
            format!("result of job {job} exceeded {} bytes", budget.per_job)
        } else {
            format!(
                "the results of this call exceeded {} bytes in all; job {job} was given up",
                budget.total.unwrap_or(0)
            )
        };
        let e = Error::new(ErrorKind::ResultTooLarge, msg).at(&addr);
        budget.held -= tasks[ti].data.len();
        tasks[ti].data = Vec::new();
        finish(&mut tasks[ti], Err(e));
        lane.open -= 1;
        if queue.is_empty() {
            lane.running.remove(&handle);
            if !terminal {
                lane.discard.insert(handle);
            }
        }
        return Ok(());
    }
    budget.held += add;
    deliver(&mut tasks[ti], &p, &handle, &addr, events);
    if terminal {
        lane.open -= 1;
        if queue.is_empty() {
            lane.running.remove(&handle);
        }
    } else {
        queue.push_back(ti);
    }
    Ok(())
}

/// Hands a WORK_* packet to its task: data and warnings accumulate (and go
/// to `events`), a terminal packet finishes the task.
fn deliver(
    task: &mut Task<'_>,
    p: &Packet,
    handle: &[u8],
    addr: &ServerAddr,
    events: &mut Option<&mut dyn FnMut(Event)>,
) {
    match p.kind {
        PacketType::WorkData => {
            task.data.extend_from_slice(p.arg(1));
            if let Some(cb) = events.as_mut() {
                cb(Event::Data(p.arg(1).to_vec()));
            }
        }
        PacketType::WorkWarning => {
            task.warning = Some(p.arg(1).to_vec());
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
            let mut data = std::mem::take(&mut task.data);
            data.extend_from_slice(p.arg(1));
            finish(task, Ok(Outcome::Result(data)));
        }
        PacketType::WorkFail => {
            let mut msg = format!("the worker failed job {}", String::from_utf8_lossy(handle));
            if let Some(w) = task.warning.take() {
                // Text for people: a command's stderr ends in a
                // newline that would split the message.
                msg.push_str(": ");
                msg.push_str(String::from_utf8_lossy(&w).trim_end());
            }
            let e = Error::new(ErrorKind::JobFailed, msg).at(addr);
            finish(task, Err(e));
        }
        _ => {
            let data = p.arg(1).to_vec();
            let e = Error::new(
                ErrorKind::JobException(data.clone()),
                format!(
                    "the worker raised an exception for job {}: {}",
                    String::from_utf8_lossy(handle),
                    String::from_utf8_lossy(&data).trim_end()
                ),
            )
            .at(addr);
            finish(task, Err(e));
        }
    }
}
