//! Per-connection state inside the server: which client connection runs the
//! current call, and that connection's last error (`gman_last_error()`).
//!
//! ## Connection identity
//!
//! A UDF runs on whichever server thread serves the statement. MariaDB
//! reuses threads for new connections (`thread_cache_size`), and with
//! `thread_handling=pool-of-threads` one connection's statements run on
//! different threads, so a thread-local value is not a connection's value.
//! The identity used here is the server's own connection id (the value of
//! `CONNECTION_ID()`), read from the connection's `THD` through two functions
//! that mariadbd exports for plugins: `_current_thd()` (the `THD` attached to
//! the calling thread) and `thd_get_thread_id(THD*)` (its connection id).
//! They are looked up once with `dlsym(RTLD_DEFAULT, ...)` in the running
//! server. Connection ids are not reused while the connection lives and the
//! counter only wraps after 2^32 connections (MariaDB then skips ids in use).
//!
//! If the server does not export both symbols (a build without them, or a
//! server other than MariaDB that lacks them), no identity exists: errors
//! are then only written to the error log and `gman_last_error()` returns
//! NULL (one error-log line says so), rather than sharing errors between
//! connections.
//!
//! ## Last error
//!
//! One message per connection, at most [`MAX_ERROR_BYTES`] bytes. It is
//! cleared when the connection starts a statement that calls any `gman_*`
//! function other than `gman_last_error()` (at that function's `_init`), and
//! replaced by every failure after that; so after a statement it holds the
//! last failure of that statement, or NULL if none failed. One exception:
//! the report of pipelined background jobs that this connection submitted
//! and that were refused later (found whenever some call collects their
//! confirmations) is not cleared by later statements; it stays until the
//! connection's next error replaces it. At most
//! [`MAX_CONNECTIONS`] connections' messages are kept (a connection that
//! ends leaves no signal to a UDF): past that, the oldest message is
//! dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Longest message kept per connection; longer ones are cut (at a character
/// boundary) and end in "...".
pub const MAX_ERROR_BYTES: usize = 4096;
/// Connections whose last error is kept at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// Pipelined jobs whose submitting connection is remembered at once (to
/// report a later refusal to that connection only).
pub const MAX_ATTRIBUTED_JOBS: usize = 16_384;

/// The server connection running the current call, if the server tells.
pub type ConnId = u64;

#[cfg(not(test))]
mod ident {
    use super::ConnId;
    use std::ffi::c_void;
    use std::os::raw::c_ulong;
    use std::sync::OnceLock;

    type CurrentThd = unsafe extern "C" fn() -> *mut c_void;
    type ThdGetThreadId = unsafe extern "C" fn(*const c_void) -> c_ulong;

    #[derive(Clone, Copy)]
    struct Syms {
        current_thd: CurrentThd,
        thread_id: ThdGetThreadId,
    }

    static SYMS: OnceLock<Option<Syms>> = OnceLock::new();

    fn resolve() -> Option<Syms> {
        // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names only
        // looks symbols up; the types are those of MariaDB's declarations
        // (`extern "C" THD *_current_thd(void)`, `extern "C" unsigned long
        // thd_get_thread_id(const MYSQL_THD)`).
        unsafe {
            let a = libc::dlsym(libc::RTLD_DEFAULT, c"_current_thd".as_ptr());
            let b = libc::dlsym(libc::RTLD_DEFAULT, c"thd_get_thread_id".as_ptr());
            if a.is_null() || b.is_null() {
                crate::runtime::log::log_error(
                    "the server exports no _current_thd/thd_get_thread_id: \
                     gman_last_error() is unavailable (always NULL); errors go to the error log only",
                );
                return None;
            }
            Some(Syms {
                current_thd: std::mem::transmute::<*mut c_void, CurrentThd>(a),
                thread_id: std::mem::transmute::<*mut c_void, ThdGetThreadId>(b),
            })
        }
    }

    pub fn current() -> Option<ConnId> {
        let s = (*SYMS.get_or_init(resolve))?;
        // SAFETY: both are the server's own functions (resolved above);
        // `_current_thd` returns the calling thread's THD or NULL, and
        // `thd_get_thread_id` only reads a field of a non-null THD.
        unsafe {
            let thd = (s.current_thd)();
            if thd.is_null() {
                return None;
            }
            Some((s.thread_id)(thd) as ConnId)
        }
    }
}

#[cfg(test)]
mod ident {
    //! Unit tests run outside a server: each test thread is a connection.
    use super::ConnId;
    use std::sync::atomic::{AtomicU64, Ordering};

    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static ID: ConnId = NEXT.fetch_add(1, Ordering::Relaxed);
    }

    pub fn current() -> Option<ConnId> {
        ID.try_with(|i| *i).ok()
    }
}

/// The connection running the current call, or `None` outside a connection
/// (or when the server does not tell, see the module docs).
pub fn current_connection() -> Option<ConnId> {
    ident::current()
}

#[derive(Default)]
struct Errors {
    seq: u64,
    /// Sequence number, message, whether it is a pipelined-jobs report.
    by_conn: HashMap<ConnId, (u64, String, bool)>,
}

static ERRORS: OnceLock<Mutex<Errors>> = OnceLock::new();

fn errors() -> MutexGuard<'static, Errors> {
    ERRORS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn cut(msg: &str) -> String {
    if msg.len() <= MAX_ERROR_BYTES {
        return msg.to_owned();
    }
    let mut n = MAX_ERROR_BYTES - 3;
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    format!("{}...", &msg[..n])
}

/// Records `msg` as the last error of connection `conn`; `deferred`: a
/// report of pipelined jobs, which a new statement does not clear.
pub fn set_error_of(conn: ConnId, msg: &str, deferred: bool) {
    let mut e = errors();
    e.seq += 1;
    let seq = e.seq;
    e.by_conn.insert(conn, (seq, cut(msg), deferred));
    if e.by_conn.len() > MAX_CONNECTIONS {
        if let Some(oldest) = e
            .by_conn
            .iter()
            .min_by_key(|(_, (s, _, _))| *s)
            .map(|(k, _)| *k)
        {
            e.by_conn.remove(&oldest);
        }
    }
}

/// Records `msg` as the current connection's last error (nothing outside a
/// connection).
pub fn set_last_error(msg: &str) {
    if let Some(c) = current_connection() {
        set_error_of(c, msg, false);
    }
}

/// The current connection's last error.
pub fn last_error() -> Option<String> {
    let c = current_connection()?;
    errors().by_conn.get(&c).map(|(_, m, _)| m.clone())
}

/// Forgets the current connection's last error (a new statement starts),
/// unless it is a report of refused pipelined jobs.
pub fn clear_last_error() {
    if let Some(c) = current_connection() {
        let mut e = errors();
        if e.by_conn.get(&c).is_some_and(|(_, _, deferred)| !deferred) {
            e.by_conn.remove(&c);
        }
    }
}

/// Which connection submitted each pipelined job still possibly owed a
/// confirmation, keyed by (function, unique key); oldest first.
#[derive(Default)]
struct Submitters {
    by_job: HashMap<(Vec<u8>, Vec<u8>), ConnId>,
    order: VecDeque<(Vec<u8>, Vec<u8>)>,
}

static SUBMITTERS: OnceLock<Mutex<Submitters>> = OnceLock::new();

fn submitters() -> MutexGuard<'static, Submitters> {
    SUBMITTERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Remembers that the current connection submitted the pipelined job
/// `(function, unique)`, so that a later refusal is reported to it only.
/// At most [`MAX_ATTRIBUTED_JOBS`] are remembered (oldest forgotten).
pub fn note_submitter(function: &[u8], unique: &[u8]) {
    let Some(c) = current_connection() else {
        return;
    };
    let key = (function.to_vec(), unique.to_vec());
    let mut s = submitters();
    if s.by_job.insert(key.clone(), c).is_none() {
        s.order.push_back(key);
    }
    while s.by_job.len() > MAX_ATTRIBUTED_JOBS {
        match s.order.pop_front() {
            Some(k) => {
                s.by_job.remove(&k);
            }
            None => break,
        }
    }
    // Keys removed by `take_submitter` leave stale entries in `order`.
    if s.order.len() > 2 * MAX_ATTRIBUTED_JOBS {
        let Submitters { by_job, order } = &mut *s;
        order.retain(|k| by_job.contains_key(k));
    }
}

/// The connection that submitted the pipelined job `(function, unique)`,
/// forgetting it.
pub fn take_submitter(function: &[u8], unique: &[u8]) -> Option<ConnId> {
    submitters()
        .by_job
        .remove(&(function.to_vec(), unique.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_per_connection_and_cleared() {
        set_last_error("boom");
        assert_eq!(last_error().as_deref(), Some("boom"));
        std::thread::spawn(|| {
            assert_eq!(last_error(), None);
            set_last_error("other");
        })
        .join()
        .unwrap();
        assert_eq!(last_error().as_deref(), Some("boom"));
        clear_last_error();
        assert_eq!(last_error(), None);
        let me = current_connection().unwrap();
        set_error_of(me, "3 jobs not confirmed", true);
        clear_last_error();
        assert_eq!(last_error().as_deref(), Some("3 jobs not confirmed"));
        set_last_error("next");
        clear_last_error();
        assert_eq!(last_error(), None);
    }

    #[test]
    fn long_messages_are_cut() {
        set_last_error(&"é".repeat(MAX_ERROR_BYTES));
        let m = last_error().unwrap();
        assert!(
            m.len() <= MAX_ERROR_BYTES && m.ends_with("..."),
            "{}",
            m.len()
        );
    }

    #[test]
    fn submitters_are_remembered_once() {
        note_submitter(b"f", b"k1");
        let me = current_connection();
        assert_eq!(take_submitter(b"f", b"k1"), me);
        assert_eq!(take_submitter(b"f", b"k1"), None);
    }
}
