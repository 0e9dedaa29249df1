//! The shared-memory queue between backends and the dispatcher (active only
//! with `gearman` in `shared_preload_libraries`).
//!
//! One segment of `gearman.dispatch_queue_size` bytes plus a header, made
//! at server start. A committing backend reserves room for its
//! transaction's jobs at `PRE_COMMIT` (waiting, at most
//! `gearman.commit_send_timeout`, on a condition variable while the queue
//! is full), and copies them in as one record once the commit is durable
//! and its locks are released, then sets the dispatcher's latch: no socket
//! call, no wait. The dispatcher (see [`crate::dispatcher`]) takes whole
//! records out and wakes waiting backends.
//!
//! Records sit in a byte ring: `u32 length, u32 jobs, body` (the body is
//! [`gearman_core::handoff`]'s encoding). `head`, `tail` and `reserved` are
//! byte counts that only grow (mod 2^64), guarded by one LWLock; the
//! counters are atomics the dispatcher publishes and `gman_dispatch_status()`
//! reads without the lock. So is the reachability of each job server the
//! dispatcher has used (up to [`MAX_SERVERS`]), which the `PRE_COMMIT`
//! check reads.
//!
//! After a crash of any backend (the dispatcher killed with SIGKILL
//! included) PostgreSQL reinitialises shared memory. The postmaster saves
//! the counters just before (an `on_shmem_exit` callback, run while the
//! old segment is still mapped) and the new segment starts from them, with
//! the jobs that were queued or written but unconfirmed at that moment
//! added to `lost`.

use pgrx::pg_sys;
use std::ffi::CStr;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Job servers whose reachability the dispatcher publishes.
pub const MAX_SERVERS: usize = 64;
const ADDR_MAX: usize = 262;
/// Bytes before each record's body: length and job count.
pub const RECORD_HEADER: u64 = 8;

const SEGMENT: &CStr = c"gearman dispatcher queue";
const TRANCHE: &CStr = c"gearman";

/// Counters of the dispatcher, cluster-wide (see `gman_dispatch_status`).
#[repr(C)]
#[derive(Default, Debug)]
pub struct Counters {
    /// Jobs backends copied into the queue.
    pub handed_off: AtomicU64,
    /// Jobs the dispatcher wrote to a job server.
    pub sent: AtomicU64,
    /// Jobs gearmand confirmed (JOB_CREATED).
    pub confirmed: AtomicU64,
    /// Jobs gearmand refused (ERROR, e.g. QUEUE_ERROR).
    pub refused: AtomicU64,
    /// Jobs written whose confirmation never came (connection lost, or no
    /// answer within `gearman.commit_send_timeout`): fate unknown.
    pub unknown: AtomicU64,
    /// Jobs never written: still queued when the dispatcher stopped and its
    /// flush deadline passed.
    pub unsent: AtomicU64,
    /// Jobs queued or unconfirmed when shared memory was reinitialised
    /// after a crash (their fate unknown: the written ones may have been
    /// queued by gearmand).
    pub lost: AtomicU64,
    /// Jobs in the dispatcher's own queue (taken from shared memory, not yet
    /// written) and their bytes.
    pub dispatcher_queued: AtomicU64,
    pub dispatcher_queued_bytes: AtomicU64,
    /// Age in milliseconds of the oldest job in the dispatcher's queue,
    /// `u64::MAX` when empty.
    pub oldest_ms: AtomicU64,
    /// Times a dispatcher process started (since the server started).
    pub starts: AtomicU64,
    /// Commits that waited for room in a full queue, and those whose wait
    /// ended without room (their jobs failed per `gearman.on_error`).
    pub full_waits: AtomicU64,
    pub full_timeouts: AtomicU64,
}

#[repr(C)]
struct Slot {
    state: AtomicU8,
    len: u16,
    addr: [u8; ADDR_MAX],
}

#[repr(C)]
struct Header {
    lock: *mut pg_sys::LWLock,
    room: pg_sys::ConditionVariable,
    capacity: u64,
    // Guarded by `lock`:
    head: u64,
    tail: u64,
    reserved: u64,
    ring_jobs: u64,
    nservers: u32,
    servers: [Slot; MAX_SERVERS],
    /// Servers published as down (read without the lock).
    down: std::sync::atomic::AtomicU32,
    // Atomics:
    dispatcher_pid: AtomicI32,
    latch: AtomicPtr<pg_sys::Latch>,
    counters: Counters,
}

/// Reachability as the dispatcher last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Unknown,
    Up,
    Down,
}

static mut SHM: *mut Header = ptr::null_mut();
static mut CAPACITY: u64 = 0;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;
#[cfg(not(any(feature = "pg13", feature = "pg14")))]
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;

/// Counters carried over a shared-memory reinitialisation (postmaster only).
struct Carry {
    values: [u64; 13],
    in_flight: u64,
}
static mut CARRY: Option<Carry> = None;

fn ring_offset() -> usize {
    std::mem::size_of::<Header>().next_multiple_of(64)
}

fn total_size(capacity: u64) -> usize {
    ring_offset() + capacity as usize
}

/// Asks for the segment and the lock. Call from `_PG_init` while
/// `shared_preload_libraries` is processed, with the queue size in bytes.
pub fn request(capacity: u64) {
    // SAFETY: called once from _PG_init in the postmaster, before any
    // other process exists; plain hook chaining.
    unsafe {
        CAPACITY = capacity;
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        {
            pg_sys::RequestAddinShmemSpace(total_size(capacity));
            pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 1);
        }
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        {
            PREV_REQUEST = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(shmem_request);
        }
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: PostgreSQL calls this hook once in the postmaster while shared
    // memory requests are accepted.
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(total_size(CAPACITY));
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 1);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: called by PostgreSQL in the postmaster (and again after each
    // crash reinitialisation) with shared memory being set up; the segment
    // is created under AddinShmemInitLock as PostgreSQL requires.
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let size = total_size(CAPACITY);
        let h = pg_sys::ShmemInitStruct(SEGMENT.as_ptr(), size, &mut found).cast::<Header>();
        if !found {
            ptr::write_bytes(h.cast::<u8>(), 0, std::mem::size_of::<Header>());
            (*h).lock = &raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock;
            pg_sys::ConditionVariableInit(&raw mut (*h).room);
            (*h).capacity = CAPACITY;
            (*h).counters.oldest_ms.store(u64::MAX, Ordering::Relaxed);
            if let Some(c) = ptr::replace(&raw mut CARRY, None) {
                let all = counters_list(&(*h).counters);
                for (a, v) in all.iter().zip(c.values) {
                    a.store(v, Ordering::Relaxed);
                }
                (*h).counters.lost.fetch_add(c.in_flight, Ordering::Relaxed);
                (*h).counters.dispatcher_queued.store(0, Ordering::Relaxed);
                (*h).counters
                    .dispatcher_queued_bytes
                    .store(0, Ordering::Relaxed);
                (*h).counters.oldest_ms.store(u64::MAX, Ordering::Relaxed);
            }
        }
        SHM = h;
        pg_sys::LWLockRelease(init_lock);
        if !pg_sys::IsUnderPostmaster {
            pg_sys::on_shmem_exit(Some(save_counters), pg_sys::Datum::from(0));
        }
    }
}

/// The counters that carry over a reinitialisation, in a fixed order.
fn counters_list(c: &Counters) -> [&AtomicU64; 13] {
    [
        &c.handed_off,
        &c.sent,
        &c.confirmed,
        &c.refused,
        &c.unknown,
        &c.unsent,
        &c.lost,
        &c.dispatcher_queued,
        &c.dispatcher_queued_bytes,
        &c.oldest_ms,
        &c.starts,
        &c.full_waits,
        &c.full_timeouts,
    ]
}

/// In the postmaster, before the segment goes away (crash reinitialisation
/// or shutdown): keeps the counters and the jobs in flight for the next
/// segment. Reads atomics and plain integers only; takes no lock (every
/// other process has exited).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn save_counters(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    // SAFETY: the segment is still mapped (its removal was registered
    // earlier, so it runs later); no other process is left to write it.
    unsafe {
        let h = SHM;
        if h.is_null() {
            return;
        }
        let c = &(*h).counters;
        let mut values = counters_list(c).map(|a| a.load(Ordering::Relaxed));
        // Everything handed off and not settled was in flight: in the
        // ring, taken by the dispatcher, or written and unconfirmed (the
        // dispatcher publishes its counters a moment late, so this is also
        // where a job confirmed in the last instant lands: fate unknown).
        let settled = c.confirmed.load(Ordering::Relaxed)
            + c.refused.load(Ordering::Relaxed)
            + c.unknown.load(Ordering::Relaxed);
        let in_flight = c.handed_off.load(Ordering::Relaxed).saturating_sub(
            settled + c.unsent.load(Ordering::Relaxed) + c.lost.load(Ordering::Relaxed),
        );
        // `sent` keeps the written jobs whose fate is known; the others are
        // counted in `lost` from now on.
        values[1] = settled;
        ptr::write(&raw mut CARRY, Some(Carry { values, in_flight }));
        SHM = ptr::null_mut();
    }
}

/// The queue, when the library was preloaded (`None` otherwise).
pub fn get() -> Option<Queue> {
    // SAFETY: SHM is set in the postmaster before any backend is forked and
    // never changes in a backend.
    let h = unsafe { SHM };
    (!h.is_null()).then_some(Queue(h))
}

/// A handle on the shared queue.
#[derive(Debug, Clone, Copy)]
pub struct Queue(*mut Header);

/// Why a reservation failed: the queue stayed full until the deadline.
#[derive(Debug)]
pub struct Full {
    pub used: u64,
    pub reserved: u64,
    pub jobs: u64,
    pub capacity: u64,
}

/// Ends a condition-variable sleep (its result differs between majors).
#[allow(clippy::let_unit_value)]
fn cancel_sleep() {
    // SAFETY: plain call; harmless when not prepared.
    let _ = unsafe { pg_sys::ConditionVariableCancelSleep() };
}

struct Locked(*mut pg_sys::LWLock);

impl Locked {
    fn new(lock: *mut pg_sys::LWLock) -> Locked {
        // SAFETY: the lock lives in shared memory for the server's life; an
        // ERROR while it is held is cleaned up by LWLockReleaseAll.
        unsafe { pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
        Locked(lock)
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: acquired in `new` by this process.
        unsafe { pg_sys::LWLockRelease(self.0) };
    }
}

impl Queue {
    fn h(&self) -> &Header {
        // SAFETY: the header lives as long as the server; fields written
        // outside the lock are atomics.
        unsafe { &*self.0 }
    }

    /// The counters (atomics).
    pub fn counters(&self) -> &Counters {
        &self.h().counters
    }

    /// Bytes the ring holds.
    pub fn capacity(&self) -> u64 {
        self.h().capacity
    }

    /// The dispatcher's pid, when one runs.
    pub fn dispatcher_pid(&self) -> Option<i32> {
        let p = self.h().dispatcher_pid.load(Ordering::Acquire);
        (p != 0).then_some(p)
    }

    /// Jobs and bytes in the ring now, and bytes reserved (racy read, for
    /// status).
    pub fn depth(&self) -> (u64, u64, u64) {
        let _l = Locked::new(self.h().lock);
        // SAFETY: under the lock.
        unsafe {
            let h = self.0;
            (
                (*h).ring_jobs,
                (*h).tail.wrapping_sub((*h).head),
                (*h).reserved,
            )
        }
    }

    /// Reserves `need` bytes (a record, header included), waiting for room
    /// until `deadline`. May raise PostgreSQL's ERROR for a query cancel or
    /// termination while waiting (the caller holds no Rust borrow).
    pub fn reserve(&self, need: u64, deadline: Instant) -> Result<(), Full> {
        let h = self.0;
        let mut waited = false;
        loop {
            {
                let _l = Locked::new(self.h().lock);
                // SAFETY: under the lock.
                unsafe {
                    let used = (*h).tail.wrapping_sub((*h).head);
                    let free = (*h).capacity.saturating_sub(used + (*h).reserved);
                    if free >= need {
                        (*h).reserved += need;
                        drop(_l);
                        if waited {
                            cancel_sleep();
                        }
                        return Ok(());
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        let full = Full {
                            used,
                            reserved: (*h).reserved,
                            jobs: (*h).ring_jobs,
                            capacity: (*h).capacity,
                        };
                        drop(_l);
                        if waited {
                            cancel_sleep();
                        }
                        self.counters()
                            .full_timeouts
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(full);
                    }
                }
            }
            if !waited {
                waited = true;
                self.counters().full_waits.fetch_add(1, Ordering::Relaxed);
                self.wake_dispatcher();
                // SAFETY: the condition variable lives in shared memory.
                unsafe { pg_sys::ConditionVariablePrepareToSleep(&raw mut (*h).room) };
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.min(Duration::from_millis(100)).as_millis().max(1) as std::ffi::c_long;
            // SAFETY: prepared above; checks for interrupts (may raise).
            unsafe {
                pg_sys::ConditionVariableTimedSleep(
                    &raw mut (*h).room,
                    ms,
                    pg_sys::PG_WAIT_EXTENSION,
                );
            }
        }
    }

    /// Gives back a reservation that will not be used (the transaction
    /// aborted after `PRE_COMMIT`).
    pub fn release(&self, bytes: u64) {
        {
            let _l = Locked::new(self.h().lock);
            // SAFETY: under the lock.
            unsafe { (*self.0).reserved = (*self.0).reserved.saturating_sub(bytes) };
        }
        // SAFETY: the condition variable lives in shared memory.
        unsafe { pg_sys::ConditionVariableBroadcast(&raw mut (*self.0).room) };
    }

    /// Copies one record (`body` of `jobs` jobs) into room reserved for it
    /// (`RECORD_HEADER + body.len()` bytes) and wakes the dispatcher.
    pub fn push(&self, body: &[u8], jobs: u64) {
        let need = RECORD_HEADER + body.len() as u64;
        let mut header = [0u8; RECORD_HEADER as usize];
        header[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&(jobs as u32).to_le_bytes());
        {
            let _l = Locked::new(self.h().lock);
            // SAFETY: under the lock; the reservation guarantees the room.
            unsafe {
                let h = self.0;
                let tail = (*h).tail;
                self.copy_in(tail, &header);
                self.copy_in(tail.wrapping_add(RECORD_HEADER), body);
                (*h).tail = tail.wrapping_add(need);
                (*h).reserved = (*h).reserved.saturating_sub(need);
                (*h).ring_jobs += jobs;
            }
        }
        self.counters()
            .handed_off
            .fetch_add(jobs, Ordering::Relaxed);
        self.wake_dispatcher();
    }

    /// Sets the dispatcher's latch, if one runs.
    pub fn wake_dispatcher(&self) {
        let latch = self.h().latch.load(Ordering::Acquire);
        if !latch.is_null() {
            // SAFETY: the latch is the dispatcher's PGPROC latch, in shared
            // memory for the server's life; SetLatch is safe on any latch.
            unsafe { pg_sys::SetLatch(latch) };
        }
    }

    fn ring(&self) -> *mut u8 {
        // SAFETY: the ring follows the header in the same allocation.
        unsafe { self.0.cast::<u8>().add(ring_offset()) }
    }

    /// Copies `src` into the ring at byte position `pos` (wrapping).
    ///
    /// # Safety
    /// Under the lock, into reserved room.
    unsafe fn copy_in(&self, pos: u64, src: &[u8]) {
        let cap = self.capacity();
        let at = (pos % cap) as usize;
        let first = src.len().min(cap as usize - at);
        // SAFETY: both ranges are inside the ring (at + first <= cap).
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.ring().add(at), first);
            ptr::copy_nonoverlapping(src.as_ptr().add(first), self.ring(), src.len() - first);
        }
    }

    /// Copies `dst.len()` bytes out of the ring from position `pos`.
    ///
    /// # Safety
    /// Under the lock, from written bytes.
    unsafe fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let cap = self.capacity();
        let at = (pos % cap) as usize;
        let first = dst.len().min(cap as usize - at);
        // SAFETY: as in copy_in.
        unsafe {
            ptr::copy_nonoverlapping(self.ring().add(at), dst.as_mut_ptr(), first);
            ptr::copy_nonoverlapping(self.ring(), dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }

    /// Dispatcher side: takes whole records (at least one when any is
    /// queued, then more while the total stays within `max` bytes) and
    /// returns their bodies with their job counts. Wakes backends waiting
    /// for room.
    pub fn take(&self, max: u64) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        {
            let _l = Locked::new(self.h().lock);
            // SAFETY: under the lock; records between head and tail are
            // complete (written under the lock).
            unsafe {
                let h = self.0;
                let mut taken = 0u64;
                while (*h).head != (*h).tail {
                    let mut header = [0u8; RECORD_HEADER as usize];
                    self.copy_out((*h).head, &mut header);
                    let len = u64::from(u32::from_le_bytes(header[..4].try_into().unwrap()));
                    let jobs = u64::from(u32::from_le_bytes(header[4..].try_into().unwrap()));
                    if !out.is_empty() && taken + len > max {
                        break;
                    }
                    let mut body = vec![0u8; len as usize];
                    self.copy_out((*h).head.wrapping_add(RECORD_HEADER), &mut body);
                    (*h).head = (*h).head.wrapping_add(RECORD_HEADER + len);
                    (*h).ring_jobs = (*h).ring_jobs.saturating_sub(jobs);
                    taken += len;
                    out.push((body, jobs));
                }
            }
        }
        if !out.is_empty() {
            // SAFETY: the condition variable lives in shared memory.
            unsafe { pg_sys::ConditionVariableBroadcast(&raw mut (*self.0).room) };
        }
        out
    }

    /// Dispatcher side: announces this process (its pid and latch), or that
    /// none runs (`None`).
    pub fn set_dispatcher(&self, me: Option<(i32, *mut pg_sys::Latch)>) {
        let (pid, latch) = me.unwrap_or((0, ptr::null_mut()));
        self.h().latch.store(latch, Ordering::Release);
        self.h().dispatcher_pid.store(pid, Ordering::Release);
    }

    /// Dispatcher side: publishes the reachability of the servers it knows.
    pub fn publish_servers(&self, servers: &[(String, Reach)]) {
        let _l = Locked::new(self.h().lock);
        // SAFETY: under the lock (the slot texts); states are atomics.
        unsafe {
            let h = self.0;
            let n = servers.len().min(MAX_SERVERS);
            for (i, (addr, r)) in servers.iter().take(n).enumerate() {
                let s = &mut (*h).servers[i];
                let b = addr.as_bytes();
                let len = b.len().min(ADDR_MAX);
                s.addr[..len].copy_from_slice(&b[..len]);
                s.len = len as u16;
                s.state.store(
                    match r {
                        Reach::Unknown => 0,
                        Reach::Up => 1,
                        Reach::Down => 2,
                    },
                    Ordering::Release,
                );
            }
            (*h).nservers = n as u32;
            let down = servers
                .iter()
                .take(n)
                .filter(|(_, r)| *r == Reach::Down)
                .count();
            (*h).down.store(down as u32, Ordering::Release);
        }
    }

    /// Whether the dispatcher published any server as down (no lock).
    pub fn any_down(&self) -> bool {
        self.h().down.load(Ordering::Acquire) > 0
    }

    /// The published reachability of each server (address text, state).
    pub fn servers(&self) -> Vec<(String, Reach)> {
        let _l = Locked::new(self.h().lock);
        // SAFETY: under the lock.
        unsafe {
            let h = self.0;
            (0..(*h).nservers as usize)
                .map(|i| {
                    let s = &(*h).servers[i];
                    let addr = String::from_utf8_lossy(&s.addr[..s.len as usize]).into_owned();
                    let r = match s.state.load(Ordering::Acquire) {
                        1 => Reach::Up,
                        2 => Reach::Down,
                        _ => Reach::Unknown,
                    };
                    (addr, r)
                })
                .collect()
        }
    }
}
