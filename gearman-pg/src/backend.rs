//! Per-backend state: the cached Gearman client, session server overrides,
//! and the job handles this backend has seen.
//!
//! A PostgreSQL backend is a single-threaded process, so the state lives in
//! a `thread_local!` `RefCell` and needs no lock. The client keeps one
//! connection per job server, reused across statements and transactions;
//! the core drops a connection that broke or whose exchange was abandoned,
//! and reopens it on the next call.

use crate::error::{process_pending_interrupts, GmError};
use crate::gucs;
use gearman_core::{Client, Error, Interrupt, JobHandle, Options, ServerAddr, ServerList};
use pgrx::pg_sys;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

/// Most job handles remembered for `gman_job_status` (oldest forgotten first).
const MAX_HANDLES: usize = 4096;

#[derive(Default)]
struct State {
    client: Option<Client>,
    /// `gman_servers_set(servers, function)` overrides, by function name.
    function_servers: HashMap<String, Rc<ServerList>>,
    /// The last parsed `gearman.servers` text and its list.
    guc_cache: Option<(String, Rc<ServerList>)>,
    /// Handle text -> the server that issued it, for GET_STATUS routing.
    handles: HashMap<String, JobHandle>,
    handle_order: VecDeque<String>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// The interrupt hook given to the core: reports a pending query cancel,
/// statement_timeout or termination as `Err(Interrupted)` so the core stops
/// waiting, drops the connection and returns; PostgreSQL's own error is
/// raised afterwards by [`process_pending_interrupts`], never while core
/// frames are on the stack. Reads only signal flags, so it is safe from any
/// thread.
fn pg_interrupt() -> gearman_core::Result<()> {
    // SAFETY: plain reads of sig_atomic_t / uint32 globals set by signal
    // handlers; no PostgreSQL function is called.
    let stop = unsafe {
        std::ptr::read_volatile(&raw const pg_sys::InterruptPending) != 0
            && std::ptr::read_volatile(&raw const pg_sys::InterruptHoldoffCount) == 0
            && std::ptr::read_volatile(&raw const pg_sys::CritSectionCount) == 0
            && (std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
                || (std::ptr::read_volatile(&raw const pg_sys::QueryCancelPending) != 0
                    && std::ptr::read_volatile(&raw const pg_sys::QueryCancelHoldoffCount) == 0))
    };
    if stop {
        Err(Error::interrupted(
            "query cancel, statement_timeout or termination requested",
        ))
    } else {
        Ok(())
    }
}

fn options(interruptible: bool) -> Options {
    Options {
        connect_timeout: gucs::connect_timeout(),
        foreground_timeout: Some(gucs::timeout()),
        client_id: Some(format!("postgres-{}", std::process::id())),
        interrupt: if interruptible {
            Some(Arc::new(pg_interrupt) as Interrupt)
        } else {
            None
        },
        ..Options::default()
    }
}

/// Parses a server list, as an SQL error.
pub fn parse_servers(text: &str) -> Result<ServerList, GmError> {
    ServerList::parse(text).map_err(|e| {
        GmError::invalid(format!("gearman: invalid server list \"{text}\": {e}"))
            .hint("Write host[:port],host[:port]; the port defaults to 4730.")
    })
}

/// The servers a job for `function` goes to now: its `gman_servers_set`
/// override, else `gearman.servers` (or the deprecated
/// `pggearman.default_servers`).
pub fn servers_for(function: &str) -> Result<Rc<ServerList>, GmError> {
    let text = gucs::servers_text();
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some(l) = s.function_servers.get(function) {
            return Ok(l.clone());
        }
        if let Some((t, l)) = &s.guc_cache {
            if *t == text {
                return Ok(l.clone());
            }
        }
        let list = Rc::new(parse_servers(&text)?);
        s.guc_cache = Some((text, list.clone()));
        Ok(list)
    })
}

/// The default servers (no per-function override).
pub fn default_servers() -> Result<Rc<ServerList>, GmError> {
    // No function name contains NUL, so this never hits an override.
    servers_for("\0")
}

/// Every distinct server: the default list, then the per-function overrides.
pub fn all_servers() -> Result<Vec<ServerAddr>, GmError> {
    let mut out: Vec<ServerAddr> = default_servers()?.iter().cloned().collect();
    STATE.with(|s| {
        for list in s.borrow().function_servers.values() {
            for a in list.iter() {
                if !out.contains(a) {
                    out.push(a.clone());
                }
            }
        }
    });
    Ok(out)
}

/// Sets (or, with `None`, removes) a per-function server override.
pub fn set_function_servers(function: &str, list: Option<ServerList>) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        match list {
            Some(l) => {
                s.function_servers.insert(function.to_string(), Rc::new(l));
            }
            None => {
                s.function_servers.remove(function);
            }
        }
    });
}

/// Runs `f` with the backend's client pointed at `servers`, with the
/// current timeouts. `interruptible = false` (used after COMMIT, where
/// interrupts are held anyway) installs no interrupt hook.
///
/// A core error of kind `Interrupted` makes PostgreSQL raise its pending
/// cancel error once `f` has returned.
pub fn with_client<R>(
    servers: &ServerList,
    interruptible: bool,
    f: impl FnOnce(&mut Client) -> gearman_core::Result<R>,
) -> gearman_core::Result<R> {
    let result = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let client = s
            .client
            .get_or_insert_with(|| Client::new(servers.clone(), options(true)));
        if client.servers() != servers {
            client.set_servers(servers.clone());
        }
        let o = client.options_mut();
        o.connect_timeout = gucs::connect_timeout();
        o.foreground_timeout = Some(gucs::timeout());
        if o.interrupt.is_some() != interruptible {
            o.interrupt = options(interruptible).interrupt;
        }
        f(client)
    });
    if let Err(e) = &result {
        if interruptible {
            process_pending_interrupts(e);
        }
    }
    result
}

/// Remembers which server issued `handle`.
pub fn remember_handle(handle: &JobHandle) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let key = handle.handle.clone();
        if s.handles.insert(key.clone(), handle.clone()).is_none() {
            s.handle_order.push_back(key);
            while s.handle_order.len() > MAX_HANDLES {
                if let Some(old) = s.handle_order.pop_front() {
                    s.handles.remove(&old);
                }
            }
        }
    });
}

/// The server that issued `handle`, if this backend submitted it recently.
pub fn lookup_handle(handle: &str) -> Option<JobHandle> {
    STATE.with(|s| s.borrow().handles.get(handle).cloned())
}
