//! The bounded pool of job-server clients shared by every session and
//! server list of the process.

use super::deferred::note_deferred;
use super::{lock, Runtime};
use gearman_core::{Client, ErrorKind, ServerList};
use std::time::{Duration, Instant};

/// An idle pooled client and when it was put back.
#[derive(Debug)]
pub(super) struct Idle {
    client: Client,
    since: Instant,
}

impl Runtime {
    /// Runs `f` with a pooled client for `servers`, then puts the client
    /// back unless the error left its connection in an unknown state.
    ///
    /// The pool is shared by every server list: it holds at most
    /// `max_idle_connections` idle clients in all, each keeping one
    /// connection per server of the list it last served. A call takes the
    /// idle client that served the same list most recently, else the one
    /// whose list shares the most servers with `servers` (it is re-pointed
    /// with `Client::set_servers`, which keeps the connections to the
    /// shared servers and closes the others), else a new client; so a
    /// server named in many lists has one pooled connection per concurrent
    /// caller, not one per list. Putting a client back into a full pool
    /// closes the least recently used idle one; idle clients unused for
    /// `idle_timeout_ms` are closed at the next call (no background thread:
    /// it would outlive the library when `DROP FUNCTION` unloads it).
    ///
    /// Confirmations of pipelined background jobs that the client still owes
    /// (possibly submitted by another thread) are collected without waiting
    /// before and after `f`, and with waiting (bounded by the I/O timeout,
    /// or the call's deadline) before a client is closed; failures among
    /// them are reported (see [`note_deferred`]). Putting a client back into
    /// a full pool closes the least recently used idle client that owes no
    /// confirmation, if there is one.
    pub fn with_client<T>(
        &self,
        servers: &ServerList,
        f: impl FnOnce(&mut Client) -> gearman_core::Result<T>,
    ) -> gearman_core::Result<T> {
        self.with_client_until(servers, None, f)
    }

    /// [`Runtime::with_client`], with every wait of `f` (and of closing
    /// pooled clients on the way) bounded by `deadline` as well
    /// (`Options::deadline`): for SQL functions that make several calls
    /// within one bound.
    pub fn with_client_until<T>(
        &self,
        servers: &ServerList,
        deadline: Option<Instant>,
        f: impl FnOnce(&mut Client) -> gearman_core::Result<T>,
    ) -> gearman_core::Result<T> {
        // Closing clients on the way never waits past the call's bound.
        let close_by = deadline.unwrap_or_else(|| Instant::now() + self.opts.io_timeout);
        let (taken, expired) = {
            let mut pool = lock(&self.pool);
            let expired = self.take_expired(&mut pool);
            (take_best(&mut pool, servers), expired)
        };
        close_clients(expired, close_by);
        let mut client = match taken {
            Some(mut c) => {
                if c.servers() != servers {
                    c.set_servers(servers.clone());
                }
                c
            }
            None => Client::new(servers.clone(), self.opts.clone()),
        };
        client.options_mut().deadline = deadline;
        note_deferred(client.collect_deferred(false));
        let r = f(&mut client);
        let reusable = match &r {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                ErrorKind::Timeout | ErrorKind::Protocol | ErrorKind::Interrupted
            ),
        };
        note_deferred(client.collect_deferred(false));
        if !reusable || self.config.max_idle_connections == 0 {
            close_clients(vec![client], close_by);
            return r;
        }
        client.options_mut().deadline = None;
        let evicted = {
            let mut pool = lock(&self.pool);
            pool.push(Idle {
                client,
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
                let r = c.client.collect_deferred(false);
                if !r.failed.is_empty() {
                    reports.push(r);
                }
            }
        }
        for r in reports {
            note_deferred(r);
        }
    }

    /// Number of idle pooled clients (all server lists).
    pub fn idle_clients(&self) -> usize {
        lock(&self.pool).len()
    }
}

/// Takes the idle client best suited to `servers` (see
/// [`Runtime::with_client`]): the most recent one with the same list, else
/// the most recent one sharing the most servers with it.
fn take_best(pool: &mut Vec<Idle>, servers: &ServerList) -> Option<Client> {
    let mut best: Option<(usize, usize)> = None; // (score, index)
    for (i, idle) in pool.iter().enumerate() {
        let theirs = idle.client.servers();
        let score = if theirs == servers {
            usize::MAX
        } else {
            servers
                .iter()
                .filter(|a| theirs.iter().any(|b| b == *a))
                .count()
        };
        // Later entries are more recent: `>=` prefers them on ties.
        if score > 0 && best.is_none_or(|(s, _)| score >= s) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| pool.remove(i).client)
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
