//! The process-wide sender of pipelined background jobs
//! (`background_dispatch = "pipelined"`): one gearman-core
//! [`Dispatcher`] per mariadbd process, so the triggers and calls of every
//! connection share one pipelined stream per job server.
//!
//! A call hands its job to the dispatcher's bounded queue and returns its
//! key without a socket call; the sender thread writes what is queued in
//! batches. Refused and unknown-fate jobs are reported by the sender
//! through [`super::deferred::note_deferred`]: counted, one error-log line
//! per batch of failures, and the `gman_last_error()` of the connection that
//! submitted each (remembered by [`super::session::note_submitter`] before
//! the hand-off).
//!
//! # Unloading
//! The sender thread runs code of this library, so the library must not be
//! unmapped while it runs. mariadbd `dlclose()`s the library when the last
//! of its UDFs is dropped (`DROP FUNCTION`) and at shutdown. Before the
//! sender starts, the library pins itself (`dlopen` of its own path with
//! `RTLD_NOLOAD | RTLD_NODELETE`): `dlclose()` then leaves it mapped, the
//! sender keeps writing what was queued, and a later `CREATE FUNCTION`
//! finds the same library, sender and counters (not re-read configuration:
//! restart mariadbd for that). (Observed with MariaDB 10.11 and glibc 2.36:
//! `DROP FUNCTION` of every UDF unmaps the library when no UDF has run yet,
//! and leaves it mapped once one has, because the threads that ran it hold
//! thread-local destructors registered against it; the pin does not rely on
//! that.) If the pin fails, pipelined calls fail with
//! that error and no thread starts. At process exit the library's
//! destructor (`.fini_array`, see `lib.rs`) runs [`shutdown`]: it stops the
//! sender (writing what it can of the queue and reading the confirmations
//! within `io_timeout_ms`), counts the rest as unsent or of unknown fate
//! (one error-log line), and joins the thread. The sender never calls
//! `dlopen`/`dlsym`.

use super::deferred::{flush_deferred_failures, note_deferred};
use super::{lock, Runtime};
use gearman_core::dispatcher::{Dispatcher, DispatcherOptions, DispatcherStats};
use gearman_core::{DeferredReport, Job};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static DISPATCHER: Mutex<Option<Arc<Dispatcher>>> = Mutex::new(None);
/// The routing version the dispatcher was last given.
static ROUTING_VERSION: AtomicU64 = AtomicU64::new(u64::MAX);
/// Set by [`shutdown`]: no dispatcher is started again.
static SHUT_DOWN: AtomicBool = AtomicBool::new(false);

/// The dispatcher, started at first use.
fn dispatcher(rt: &Runtime) -> gearman_core::Result<Arc<Dispatcher>> {
    let mut g = lock(&DISPATCHER);
    if let Some(d) = g.as_ref() {
        return Ok(d.clone());
    }
    if SHUT_DOWN.load(Ordering::Acquire) {
        return Err(gearman_core::Error::interrupted(
            "the library is being unloaded: pipelined dispatch is stopped",
        ));
    }
    pin_library()?;
    let (version, routing) = rt.routing();
    let mut client = rt.options().clone();
    client.client_id = Some("gearman-mysql-udf-dispatcher".into());
    let opts = DispatcherOptions {
        client,
        max_jobs: rt.config.dispatch_queue_jobs as usize,
        max_bytes: rt.config.dispatch_queue_bytes as usize,
        linger: Duration::from_millis(rt.config.dispatch_linger_ms),
        thread_name: "gman-dispatch".into(),
        on_report: Some(Arc::new(|r: &DeferredReport| {
            let failed = !r.failed.is_empty();
            note_deferred(r.clone());
            if failed {
                flush_deferred_failures();
            }
        })),
        ..DispatcherOptions::default()
    };
    let d = Arc::new(Dispatcher::start((*routing).clone(), opts)?);
    ROUTING_VERSION.store(version, Ordering::Release);
    *g = Some(d.clone());
    Ok(d)
}

/// Makes this library stay mapped until the process exits (glibc
/// `RTLD_NODELETE`, applied to the already loaded library with
/// `RTLD_NOLOAD`): `dlclose()` after `DROP FUNCTION` of the last UDF then
/// never unmaps the code the sender thread runs, and a later `CREATE
/// FUNCTION` finds the same library, sender and counters. Called on a
/// connection's thread before the sender starts, never under the loader's
/// lock.
fn pin_library() -> gearman_core::Result<()> {
    static PINNED: AtomicBool = AtomicBool::new(false);
    if PINNED.load(Ordering::Acquire) {
        return Ok(());
    }
    let fail = |why: String| {
        gearman_core::Error::interrupted(format!(
            "pipelined dispatch cannot start: the library could not be pinned in memory \
             ({why}), and its sender thread must not outlive an unload"
        ))
    };
    // SAFETY: dladdr with the address of a function of this library and a
    // zeroed out-struct; dlopen with the path it returns (NUL-terminated,
    // owned by the loader) and flags that load nothing new.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let here = pin_library as *const libc::c_void;
        if libc::dladdr(here, &mut info) == 0 || info.dli_fname.is_null() {
            return Err(fail("dladdr found no library".into()));
        }
        let h = libc::dlopen(
            info.dli_fname,
            libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
        );
        if h.is_null() {
            let e = libc::dlerror();
            let why = if e.is_null() {
                "dlopen failed".to_string()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            };
            return Err(fail(why));
        }
    }
    PINNED.store(true, Ordering::Release);
    Ok(())
}

/// Hands `job` to the sender, waiting at most `io_timeout_ms` for room in
/// its queue. The routing table in force is given to the sender first if
/// it changed (`gman_servers_set`).
pub fn submit(rt: &Runtime, job: Job) -> gearman_core::Result<()> {
    let d = dispatcher(rt)?;
    let (version, routing) = rt.routing();
    if ROUTING_VERSION.swap(version, Ordering::AcqRel) != version {
        d.set_routing((*routing).clone());
    }
    d.submit(vec![job], Instant::now() + rt.options().io_timeout)
}

/// The sender's counters, if it has been started.
pub fn stats() -> Option<DispatcherStats> {
    lock(&DISPATCHER).as_ref().map(|d| d.stats())
}

/// Stops the sender and joins its thread (the library's destructor; see
/// the module docs). Waits at most `io_timeout_ms` for the queue to be
/// written and confirmed, then up to as long again for the thread to end
/// (every wait of the sender is bounded by that deadline).
pub fn shutdown() {
    SHUT_DOWN.store(true, Ordering::Release);
    let d = lock(&DISPATCHER).take();
    let Some(d) = d else {
        return;
    };
    let bound = super::runtime()
        .map(|rt| rt.options().io_timeout)
        .unwrap_or(Duration::from_secs(5));
    let start = Instant::now();
    if !d.stop(start + bound) {
        // Not ended a second past its deadline: wait, bounded, for the
        // thread to end; returning while it runs would unmap its code.
        while !d.is_stopped() && start.elapsed() < 2 * bound + Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        d.stop(Instant::now());
    }
    let s = d.stats();
    if s.unsent > 0 || s.unknown > 0 || s.refused > 0 {
        super::log_error(&format!(
            "pipelined dispatch stopped (library unloaded or server shutdown): {} jobs \
             confirmed, {} refused, {} of unknown fate, {} never sent",
            s.confirmed, s.refused, s.unknown, s.unsent
        ));
    }
}
