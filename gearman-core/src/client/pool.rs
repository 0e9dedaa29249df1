//! Connections (one per server, shared by every list of the routing table
//! that names it), connect back-off, fail-over and single exchanges.

use super::engine::server_error;
use super::{Client, MAX_BACKOFF, RESULT_PACKET_ROOM};
use crate::conn::Connection;
use crate::error::{Error, ErrorKind, Result, Retry};
use crate::job::Job;
use crate::proto::{Packet, PacketType};
use crate::servers::{ServerAddr, ServerList};
use std::time::Instant;

impl Client {
    /// Tries `f` on the servers of `order` in turn until one succeeds, or
    /// `deadline` passes (then a [`ErrorKind::Timeout`] naming the servers
    /// tried and how many were not). Each error's [`Error::retry`] decides:
    /// [`Retry::NextServer`] moves on, [`Retry::Reconnect`] tries the same
    /// server once more (a second break moves on), [`Retry::GiveUp`] ends
    /// the walk with that error. With every server failed, the last error.
    pub(super) fn walk<T>(
        &mut self,
        order: Vec<ServerAddr>,
        deadline: Instant,
        mut f: impl FnMut(&mut Client, &ServerAddr) -> Result<T>,
    ) -> Result<T> {
        let total = order.len();
        let mut tried: Vec<(ServerAddr, Error)> = Vec::new();
        for (k, addr) in order.into_iter().enumerate() {
            let mut reconnected = false;
            loop {
                if Instant::now() >= deadline {
                    return Err(deadline_error(&tried, total - k));
                }
                let e = match f(self, &addr) {
                    Ok(t) => return Ok(t),
                    Err(e) => e,
                };
                if e.is_timeout() && Instant::now() >= deadline {
                    tried.push((addr, e));
                    return Err(deadline_error(&tried, total - k - 1));
                }
                match e.retry() {
                    Retry::Reconnect if !reconnected => reconnected = true,
                    Retry::Reconnect | Retry::NextServer => {
                        tried.push((addr, e));
                        break;
                    }
                    Retry::GiveUp => return Err(e),
                }
            }
        }
        Err(tried.pop().map_or_else(
            || Error::new(ErrorKind::NoServers, "no job server configured"),
            |(_, e)| e,
        ))
    }

    /// As [`Client::connection`], but a connection still owing replies to
    /// deferred submissions is not drained first: the replies already
    /// received are taken, and if some are still due and the peer has not
    /// closed, the connection is returned as it is (for more deferred
    /// submissions, whose replies queue up behind). Never waits for a reply.
    pub(super) fn connection_nowait(
        &mut self,
        addr: &ServerAddr,
        deadline: Instant,
    ) -> Result<&mut Connection> {
        if self.deferred.contains_key(addr) {
            // An error here failed the deferred jobs and dropped the
            // connection; `connection` below then reconnects.
            let _ = self.drain_deferred(addr, false, 0, deadline);
            let owing = self.deferred.get(addr).is_some_and(|q| !q.is_empty());
            let open = self
                .conns
                .get(addr)
                .is_some_and(|c| !c.is_closed() && !c.busy);
            if owing && open {
                return Ok(self.conns.get_mut(addr).expect("checked above"));
            }
        }
        self.connection(addr, deadline)
    }

    /// One request, one expected reply, on the cached connection to `addr`.
    pub(super) fn exchange(
        &mut self,
        addr: &ServerAddr,
        p: &Packet,
        want: PacketType,
        deadline: Instant,
    ) -> Result<Packet> {
        let hook = self.opts.interrupt.clone();
        let conn = self.connection(addr, deadline)?;
        let deadline = Some(deadline);
        conn.busy = true;
        let r = conn
            .queue_packet(p)
            .and_then(|_| conn.recv(deadline, hook.as_ref()));
        match r {
            Ok(reply) if reply.kind == want => {
                conn.busy = false;
                Ok(reply)
            }
            Ok(reply) if reply.kind == PacketType::Error => {
                conn.busy = false;
                Err(server_error(&reply).at(addr))
            }
            Ok(reply) => {
                self.conns.remove(addr);
                Err(Error::protocol(format!(
                    "expected {} but the server sent {}",
                    want.name(),
                    reply.kind.name()
                ))
                .at(addr))
            }
            Err(e) => {
                self.conns.remove(addr);
                Err(e)
            }
        }
    }

    /// The cached connection to `addr`, or a new one. A cached connection
    /// that the server closed meanwhile (restart) is replaced silently; a
    /// failed connect puts the server into back-off.
    pub(super) fn connection(
        &mut self,
        addr: &ServerAddr,
        deadline: Instant,
    ) -> Result<&mut Connection> {
        if self.deferred.contains_key(addr) {
            // Replies to deferred submissions come first on this connection.
            let _ = self.drain_deferred(addr, true, 0, deadline);
            if self.deferred.get(addr).is_some_and(|q| !q.is_empty()) {
                return Err(Error::timeout(
                    "deadline reached while reading the confirmations still owed on the connection",
                )
                .at(addr));
            }
        }
        let usable = match self.conns.get_mut(addr) {
            Some(c) => c.is_usable(),
            None => false,
        };
        if !usable {
            self.conns.remove(addr);
            let c = match self.open(addr, deadline) {
                Ok(c) => {
                    self.stats.connects += 1;
                    c
                }
                Err(e) => {
                    self.stats.connect_failures += 1;
                    if e.kind() == &ErrorKind::ConnectFailed {
                        self.router
                            .mark_dead(addr, self.opts.retry_backoff, MAX_BACKOFF);
                    }
                    return Err(e);
                }
            };
            self.router.mark_alive(addr);
            self.conns.insert(addr.clone(), c);
        }
        Ok(self.conns.get_mut(addr).expect("just inserted"))
    }

    pub(super) fn open(&self, addr: &ServerAddr, deadline: Instant) -> Result<Connection> {
        let hook = self.opts.interrupt.as_ref();
        let mut c = Connection::connect_with(
            addr,
            self.opts.connect_timeout,
            Some(deadline),
            self.opts
                .max_packet
                .max(self.opts.max_result.saturating_add(RESULT_PACKET_ROOM)),
            hook,
            self.opts.tls.as_ref(),
        )?;
        if let Some(id) = &self.opts.client_id {
            c.queue_packet(&Packet::req(
                PacketType::SetClientId,
                vec![id.as_bytes().to_vec()],
            ))?;
        }
        if self.opts.exceptions {
            c.queue_packet(&Packet::req(
                PacketType::OptionReq,
                vec![b"exceptions".to_vec()],
            ))?;
            let reply = c.recv(Some(deadline), hook)?;
            match reply.kind {
                PacketType::OptionRes => {}
                PacketType::Error => return Err(server_error(&reply).at(addr)),
                k => {
                    return Err(
                        Error::protocol(format!("expected OPTION_RES, got {}", k.name())).at(addr),
                    )
                }
            }
        } else {
            c.flush(Some(deadline), hook)?;
        }
        Ok(c)
    }

    /// The server of `list` for `job`: the first in routing order whose
    /// connection is (or can be) open. Connect failures put servers into
    /// back-off and move on to the next. With `nowait`, a connection owing
    /// deferred replies is taken as it is (see [`Client::connection_nowait`]).
    pub(super) fn pick_server(
        &mut self,
        list: &ServerList,
        job: &Job,
        open: &[&ServerAddr],
        nowait: bool,
        deadline: Instant,
    ) -> Result<ServerAddr> {
        let order = self.order(list, job.unique.as_deref());
        self.walk(order, deadline, |c, addr| {
            if open.contains(&addr) {
                return Ok(addr.clone());
            }
            if nowait {
                c.connection_nowait(addr, deadline).map(|_| addr.clone())
            } else {
                c.connection(addr, deadline).map(|_| addr.clone())
            }
        })
    }
}

/// The error of a call whose deadline passed while failing over: which
/// servers were tried (first five, with why) and how many were not.
fn deadline_error(tried: &[(ServerAddr, Error)], untried: usize) -> Error {
    let mut msg = String::from("deadline reached before a job server could be used");
    if tried.is_empty() {
        msg.push_str("; no server was tried");
    } else {
        msg.push_str("; tried ");
        for (k, (a, e)) in tried.iter().take(5).enumerate() {
            if k > 0 {
                msg.push_str(", ");
            }
            msg.push_str(&format!("{a} ({})", e.message()));
        }
        if tried.len() > 5 {
            msg.push_str(&format!(" and {} more", tried.len() - 5));
        }
    }
    if untried > 0 {
        msg.push_str(&format!("; {untried} not tried"));
    }
    Error::timeout(msg)
}
