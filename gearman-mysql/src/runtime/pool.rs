//! The bounded pool of job-server clients shared by every session of the
//! process.

use super::deferred::note_deferred;
use super::{lock, Runtime};
use gearman_core::{Client, ErrorKind};
use std::time::{Duration, Instant};

/// An idle pooled client, the routing version it has, and when it was put
/// back.
#[derive(Debug)]
pub(super) struct Idle {
    client: Client,
    routing: u64,
    since: Instant,
}

impl Runtime {
    /// Runs `f` with a pooled client, then puts the client back unless the
    /// error left its connections in an unknown state.
    ///
    /// Every client routes each job by its function through the routing
    /// table in force when the call starts (gearman-core's `Routing`), and
    /// keeps one connection per server, shared by every list that names the
    /// server. The pool holds at most `max_idle_connections` idle clients;
    /// a call takes the one returned last, else makes one, so a server has
    /// at most one pooled connection per concurrent caller whatever the
    /// number of lists that name it. A client whose table is out of date
    /// is given the new one (`Client::set_routing`: connections to servers
    /// still named are kept, the others closed). Putting a client back into
    /// a full pool closes the least recently used idle one that owes no
    /// confirmation (else the least recently used); idle clients unused for
    /// `idle_timeout_ms` are closed at the next call (no background thread:
    /// it would outlive the library when `DROP FUNCTION` unloads it).
    ///
    /// Confirmations of pipelined background jobs that the client still owes
    /// (possibly submitted by another thread) are collected around `f`
    /// (`Client::collecting`: what has arrived, without waiting, then what
    /// `f` read on the way), and with waiting (bounded by the I/O timeout,
    /// or the call's deadline) before a client is closed; failures among
    /// them are reported (see [`note_deferred`]).
    pub fn with_client<T>(
        &self,
        f: impl FnOnce(&mut Client) -> gearman_core::Result<T>,
    ) -> gearman_core::Result<T> {
        self.with_client_until(None, f)
    }

    /// [`Runtime::with_client`], with every wait of `f` (and of closing
    /// pooled clients on the way) bounded by `deadline` as well
    /// (`Options::deadline`): for SQL functions that make several calls
    /// within one bound.
    pub fn with_client_until<T>(
        &self,
        deadline: Option<Instant>,
        f: impl FnOnce(&mut Client) -> gearman_core::Result<T>,
    ) -> gearman_core::Result<T> {
        // Closing clients on the way never waits past the call's bound.
        let close_by = deadline.unwrap_or_else(|| Instant::now() + self.opts.io_timeout);
        let (version, table) = self.routing();
        let (taken, expired) = {
            let mut pool = lock(&self.pool);
            let expired = self.take_expired(&mut pool);
            (pool.pop(), expired)
        };
        close_clients(expired, close_by);
        let mut client = match taken {
            Some(mut idle) => {
                if idle.routing != version {
                    idle.client.set_routing((*table).clone());
                }
                idle.client
            }
            None => Client::with_routing((*table).clone(), self.opts.clone()),
        };
        client.options_mut().deadline = deadline;
        let (r, report) = client.collecting(f);
        note_deferred(report);
        let reusable = match &r {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                ErrorKind::Timeout | ErrorKind::Protocol | ErrorKind::Interrupted
            ),
        };
        if !reusable || self.config.max_idle_connections == 0 {
            close_clients(vec![client], close_by);
            return r;
        }
        client.options_mut().deadline = None;
        let evicted = {
            let mut pool = lock(&self.pool);
            pool.push(Idle {
                client,
                routing: version,
                since: Instant::now(),
            });
            let mut evicted = Vec::new();
            while pool.len() > self.config.max_idle_connections {
                // The least recently used one that owes no confirmation (the
                // pool is in return order), else the least recently used.
                let i = pool
                    .iter()
                    .position(|c| c.client.deferred_pending() == 0)
                    .unwrap_or(0);
                evicted.push(pool.remove(i).client);
            }
            evicted
        };
        close_clients(evicted, close_by);
        r
    }

    /// Removes the idle clients unused for longer than `idle_timeout_ms`.
    fn take_expired(&self, pool: &mut Vec<Idle>) -> Vec<Client> {
        let limit = Duration::from_millis(self.config.idle_timeout_ms);
        let now = Instant::now();
        let mut out = Vec::new();
        let mut i = 0;
        while i < pool.len() {
            if now.duration_since(pool[i].since) > limit {
                out.push(pool.remove(i).client);
            } else {
                i += 1;
            }
        }
        out
    }

    /// Collects, without waiting, the confirmations that idle pooled clients
    /// have received meanwhile (end of a statement with pipelined calls).
    pub fn collect_idle(&self) {
        let mut reports = Vec::new();
        {
            let mut pool = lock(&self.pool);
            for c in pool.iter_mut() {
                // Confirmations count too (gman_dispatch_status), not only
                // failures.
                reports.push(c.client.collect_deferred(false));
            }
        }
        for r in reports {
            note_deferred(r);
        }
    }

    /// Number of idle pooled clients.
    pub fn idle_clients(&self) -> usize {
        lock(&self.pool).len()
    }
}

/// Closes clients outside the pool lock: the confirmations they still owe
/// are read until `by` at the latest, the rest are reported as of unknown
/// fate (see [`note_deferred`]).
fn close_clients(clients: Vec<Client>, by: Instant) {
    for mut c in clients {
        c.options_mut().deadline = Some(by);
        c.disconnect();
        note_deferred(c.take_deferred_report());
    }
}
