//! The `gearman.*` settings (GUCs), one getter each.
//!
//! All of them work in `postgresql.conf`, `ALTER DATABASE/ROLE ... SET` and
//! `SET`. [`init`] must be called exactly once, from `_PG_init`.
//!
//! `gearman.servers` remembers where its value came from (the GUC source,
//! carried through PostgreSQL's `extra` so that it follows RESET, rollback
//! and SET LOCAL): the deprecated `pggearman.default_servers` is used only
//! while `gearman.servers` is at its built-in default, never when it was
//! set to any value, `127.0.0.1:4730` included.
//!
//! When the library is loaded after a session started (no
//! `shared_preload_libraries`), PostgreSQL re-applies values given before the
//! load (`PGOPTIONS='-c gearman.servers=...'`, an early `SET`). If it rejects
//! one (the role may not set the parameter, or the value does not parse), it
//! would leave the built-in default in force and lose the configured value;
//! [`init`] then re-applies the configured value itself, from the server's
//! configuration files, its command line and `ALTER DATABASE/ROLE ... SET`
//! (see [`restore_configured`]).

use gearman_core::ServerList;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// The server list used when nothing is configured at all.
pub const DEFAULT_SERVERS: &str = "127.0.0.1:4730";

/// `gearman.dispatch`: when background jobs are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PostgresGucEnum)]
pub enum Dispatch {
    /// Held per transaction and sent after COMMIT (the default).
    #[name = c"commit"]
    Commit,
    /// Sent at call time, as pggearman did.
    #[name = c"immediate"]
    Immediate,
    /// Written to `gearman.outbox` in the transaction; a relay sends it.
    #[name = c"outbox"]
    Outbox,
}

/// `gearman.on_error`: what a failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PostgresGucEnum)]
pub enum OnError {
    /// Raise an ERROR (the default).
    #[name = c"error"]
    Error,
    /// Emit a WARNING and return NULL.
    #[name = c"warning"]
    Warning,
}

static SERVERS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"127.0.0.1:4730"));
static LEGACY_SERVERS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static CONNECT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(2000);
static TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
static COMMIT_SEND_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);
static MAX_RESULT_SIZE: GucSetting<i32> = GucSetting::<i32>::new(16 << 20);

/// Largest `gearman.max_result_size`: 1 GB, PostgreSQL's largest value.
pub const MAX_RESULT_SIZE_LIMIT: i32 = 1 << 30;
static TLS_CA_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static TLS_CERT_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static TLS_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static DISPATCH_QUEUE_KB: GucSetting<i32> = GucSetting::<i32>::new(16 * 1024);
static USE_DISPATCHER: GucSetting<bool> = GucSetting::<bool>::new(true);
static DISPATCH_LINGER_MS: GucSetting<i32> = GucSetting::<i32>::new(2);
static DISPATCH: GucSetting<Dispatch> = GucSetting::<Dispatch>::new(Dispatch::Commit);
static ON_ERROR: GucSetting<OnError> = GucSetting::<OnError>::new(OnError::Error);

/// Bumped whenever `gearman.servers` or `pggearman.default_servers` takes a
/// value (their assign hooks run for SET, RESET, rollback and reload), so
/// that the routing table is rebuilt only then (see
/// [`servers_generation`]).
static SERVERS_GEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The source (`GucSource`) of the value of `gearman.servers` in force.
static SERVERS_SOURCE: AtomicU32 = AtomicU32::new(pg_sys::GucSource::PGC_S_DEFAULT);
/// The source of the value of `pggearman.default_servers` in force.
static LEGACY_SOURCE: AtomicU32 = AtomicU32::new(pg_sys::GucSource::PGC_S_DEFAULT);
/// Set when a rejected value must be replaced by the configured one from
/// `ALTER DATABASE/ROLE ... SET`, which needs a transaction (done at the
/// first use, see [`servers_text`]).
static RESTORE_CATALOG: AtomicBool = AtomicBool::new(false);

const SERVERS_NAME: &CStr = c"gearman.servers";
const LEGACY_NAME: &CStr = c"pggearman.default_servers";

/// Whether a value (placeholder) for `name` exists before the library
/// defines the setting: a value given before the load.
fn placeholder_exists(name: &CStr) -> bool {
    // SAFETY: valid NUL-terminated name; missing_ok = true never raises.
    unsafe { !pg_sys::GetConfigOption(name.as_ptr(), true, false).is_null() }
}

/// Registers every setting. Call once, from `_PG_init`.
pub fn init() {
    let had_servers = placeholder_exists(SERVERS_NAME);
    let had_legacy = placeholder_exists(LEGACY_NAME);
    // SAFETY: the hooks are #[pg_guard] functions that do not panic for
    // any input; the settings are 'static GucSettings.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"gearman.servers",
            c"Gearman job servers: host[:port],tls://host[:port] (port defaults to 4730; tls:// is verified TLS).",
            c"Background and foreground jobs go to these servers unless gman_servers_set() \
              overrides them for the session or one function. Changing it needs superuser \
              or GRANT SET ON PARAMETER gearman.servers.",
            &SERVERS,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_servers),
            Some(assign_servers),
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"pggearman.default_servers",
            c"Deprecated: pggearman's server list, used when gearman.servers is left at its default.",
            c"Kept so that existing pggearman installations keep working; set gearman.servers instead.",
            &LEGACY_SERVERS,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_servers),
            Some(assign_legacy),
            None,
        );
    }
    // A value given before the load that PostgreSQL rejected leaves the
    // built-in default (source: default) in force: put the configured
    // value back.
    let lost = |had: bool, source: &AtomicU32| {
        had && source.load(Ordering::Relaxed) == pg_sys::GucSource::PGC_S_DEFAULT
    };
    if lost(had_servers, &SERVERS_SOURCE) || lost(had_legacy, &LEGACY_SOURCE) {
        restore_configured();
    }
    for (name, short, long, setting) in [
        (
            c"gearman.tls_ca_file",
            c"PEM file of the CAs that tls:// job servers are verified against (empty: the system's roots).",
            c"The server's certificate chain must lead to one of these CAs, be within its \
              validity dates and name the tls:// entry's host or IP address; this cannot be \
              turned off. Read by the backend when first needed after a change. Changing it \
              needs superuser or GRANT SET ON PARAMETER.",
            &TLS_CA_FILE,
        ),
        (
            c"gearman.tls_cert_file",
            c"PEM client certificate presented to tls:// job servers that ask for one (empty: none).",
            c"Set together with gearman.tls_key_file. Changing it needs superuser or GRANT SET \
              ON PARAMETER.",
            &TLS_CERT_FILE,
        ),
        (
            c"gearman.tls_key_file",
            c"PEM private key (unencrypted) of gearman.tls_cert_file (empty: none).",
            c"Must be readable by the PostgreSQL server's operating-system user. Changing it \
              needs superuser or GRANT SET ON PARAMETER.",
            &TLS_KEY_FILE,
        ),
    ] {
        GucRegistry::define_string_guc(
            name,
            short,
            long,
            setting,
            GucContext::Suset,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"gearman.connect_timeout",
        c"Bound on one TCP connect to a job server (milliseconds).",
        c"A server that does not accept within this time is skipped for a back-off period.",
        &CONNECT_TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"gearman.timeout",
        c"Bound on each call as a whole: a foreground job from its start to its result, a status call over every server (milliseconds).",
        c"Connecting, failing over to the next server and waiting all draw from this one \
          deadline, taken at the start of the call (gman_do*, gman_do_many, gman_sum, \
          gman_job_status, gman_server_status). Query cancel and statement_timeout also end \
          the wait.",
        &TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"gearman.max_result_size",
        c"Largest result of one foreground job (bytes; default 16MB, at most 1GB).",
        c"Applies to each job of gman_do*, gman_do_many and gman_sum: the worker's \
          WORK_DATA chunks and WORK_COMPLETE data together. A larger result fails that job \
          (SQLSTATE 54000); the rest of it is read and dropped, never kept in memory.",
        &MAX_RESULT_SIZE,
        1,
        MAX_RESULT_SIZE_LIMIT,
        GucContext::Userset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"gearman.commit_send_timeout",
        c"Bound on sending a committed transaction's background jobs, as a whole (milliseconds).",
        c"With gearman.dispatch = commit, the jobs are written after COMMIT, once the \
          transaction's locks are released, without waiting for confirmations. Jobs not \
          written by then (job server not reading, query cancel, statement_timeout) are \
          reported in a WARNING and counted as failed in gman_dispatch_status().",
        &COMMIT_SEND_TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_enum_guc(
        c"gearman.dispatch",
        c"When background jobs are sent: commit, immediate or outbox.",
        c"commit: held per transaction and sent after COMMIT; immediate: sent at call time; \
          outbox: written to gearman.outbox in the transaction for a relay to send.",
        &DISPATCH,
        GucContext::Userset,
        GucFlags::default(),
    );
    // A server-start setting can only be defined while
    // shared_preload_libraries is loaded (PostgreSQL refuses it later).
    // SAFETY: plain read of a flag PostgreSQL sets in the postmaster.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_int_guc(
            c"gearman.dispatch_queue_size",
            c"Shared memory for background jobs handed to the dispatcher at COMMIT (kilobytes; default 16MB).",
            c"Exists only with gearman in shared_preload_libraries; set at server start. A \
              transaction whose jobs need more than this is sent by its own backend instead. \
              When the queue is full, a committing transaction waits for room for at most \
              gearman.commit_send_timeout, then fails per gearman.on_error.",
            &DISPATCH_QUEUE_KB,
            64,
            1024 * 1024,
            GucContext::Postmaster,
            GucFlags::UNIT_KB,
        );
    }
    GucRegistry::define_int_guc(
        c"gearman.dispatch_linger",
        c"How long the dispatcher lets jobs gather before a write while commits keep coming (milliseconds; default 2).",
        c"Used only with gearman in shared_preload_libraries; set in postgresql.conf (reload). \
          Longer: fewer, larger writes (less CPU in the dispatcher and in gearmand per \
          job), each job sent up to that much later. 0: every round writes at once.",
        &DISPATCH_LINGER_MS,
        0,
        1000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"gearman.use_dispatcher",
        c"With gearman in shared_preload_libraries, commit-mode jobs go through the dispatcher background worker.",
        c"on (the default): at COMMIT the backend copies its jobs into shared memory and the \
          dispatcher writes them, pipelined, one connection per job server for the whole \
          server. off: this session writes its own jobs after COMMIT, as without the preload.",
        &USE_DISPATCHER,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"gearman.on_error",
        c"What a Gearman failure does: error (raise) or warning (WARNING and NULL).",
        c"",
        &ON_ERROR,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// Rejects a server list that does not parse, with the parser's message.
/// Stores the value's source as its `extra`, which PostgreSQL hands to the
/// assign hook whenever this value comes into force again.
#[pg_guard]
unsafe extern "C-unwind" fn check_servers(
    newval: *mut *mut std::ffi::c_char,
    extra: *mut *mut std::ffi::c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the candidate value,
    // which is NULL or a NUL-terminated string.
    let value = unsafe {
        if newval.is_null() || (*newval).is_null() {
            None
        } else {
            Some(CStr::from_ptr(*newval).to_string_lossy().into_owned())
        }
    };
    let ok = match value.as_deref().map(str::trim) {
        None | Some("") => true,
        Some(v) => check_list(v),
    };
    if ok && !extra.is_null() {
        // SAFETY: `extra` must come from the allocator PostgreSQL frees it
        // with: free() up to 15, guc_free() (pfree in the GUC memory
        // context) from 16 on, which fails with "pfree called with invalid
        // pointer" for a malloc'd block; a u32 is written into it.
        unsafe {
            let p = guc_extra_alloc(std::mem::size_of::<u32>()).cast::<u32>();
            if !p.is_null() {
                p.write(source);
                *extra = p.cast();
            }
        }
    }
    ok
}

/// Allocates a check hook's `extra` as PostgreSQL 16 and later free it
/// (guc_malloc; LOG: NULL instead of an error when out of memory).
#[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
unsafe fn guc_extra_alloc(size: usize) -> *mut std::ffi::c_void {
    // SAFETY: plain allocation in PostgreSQL's GUC memory context.
    unsafe { pg_sys::guc_malloc(pg_sys::LOG as i32, size) }
}

/// Allocates a check hook's `extra` as PostgreSQL 15 and earlier free it
/// (free()).
#[cfg(not(any(feature = "pg16", feature = "pg17", feature = "pg18")))]
unsafe fn guc_extra_alloc(size: usize) -> *mut std::ffi::c_void {
    // SAFETY: plain allocation.
    unsafe { libc::malloc(size) }
}

/// Records the source of the value now in force (from the check hook's
/// `extra`).
#[pg_guard]
unsafe extern "C-unwind" fn assign_servers(
    _newval: *const std::ffi::c_char,
    extra: *mut std::ffi::c_void,
) {
    SERVERS_GEN.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `extra` is NULL or the u32 written by check_servers.
    if let Some(source) = unsafe { extra.cast::<u32>().as_ref() } {
        SERVERS_SOURCE.store(*source, Ordering::Relaxed);
    }
}

/// As [`assign_servers`], for `pggearman.default_servers`.
#[pg_guard]
unsafe extern "C-unwind" fn assign_legacy(
    _newval: *const std::ffi::c_char,
    extra: *mut std::ffi::c_void,
) {
    SERVERS_GEN.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `extra` is NULL or the u32 written by check_servers.
    if let Some(source) = unsafe { extra.cast::<u32>().as_ref() } {
        LEGACY_SOURCE.store(*source, Ordering::Relaxed);
    }
}

/// Whether `value` parses as a server list; if not, sets the check hook's
/// error detail to the parser's message.
fn check_list(value: &str) -> bool {
    match ServerList::parse(value) {
        Ok(_) => true,
        Err(e) => {
            let msg = CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
            // SAFETY: GUC_check_errdetail_string takes a palloc'd string.
            unsafe {
                pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(msg.as_ptr());
            }
            false
        }
    }
}

/// The configured server list text: `gearman.servers`, or
/// `pggearman.default_servers` when `gearman.servers` was not set anywhere
/// (its source is the built-in default, whatever its value) or is empty,
/// and the legacy setting is set.
pub fn servers_text() -> String {
    if RESTORE_CATALOG.load(Ordering::Relaxed) && catalog_readable() {
        RESTORE_CATALOG.store(false, Ordering::Relaxed);
        restore_from_catalog();
    }
    let current = SERVERS
        .get()
        .map(|c| c.to_string_lossy().trim().to_string())
        .unwrap_or_default();
    let defaulted = SERVERS_SOURCE.load(Ordering::Relaxed) == pg_sys::GucSource::PGC_S_DEFAULT;
    if current.is_empty() || defaulted {
        if let Some(legacy) = LEGACY_SERVERS.get() {
            let legacy = legacy.to_string_lossy().trim().to_string();
            if !legacy.is_empty() {
                return legacy;
            }
        }
    }
    if current.is_empty() {
        DEFAULT_SERVERS.to_string()
    } else {
        current
    }
}

/// A number that changes whenever the server list settings take a value;
/// 0 (never a generation) while a configured value still has to be
/// restored from the catalog (see [`servers_text`]).
pub fn servers_generation() -> u64 {
    if RESTORE_CATALOG.load(Ordering::Relaxed) {
        0
    } else {
        SERVERS_GEN.load(Ordering::Relaxed)
    }
}

/// `gearman.tls_ca_file`, `gearman.tls_cert_file`, `gearman.tls_key_file`
/// (trimmed; empty when unset).
pub fn tls_files() -> (String, String, String) {
    let get = |s: &GucSetting<Option<CString>>| {
        s.get()
            .map(|c| c.to_string_lossy().trim().to_string())
            .unwrap_or_default()
    };
    (get(&TLS_CA_FILE), get(&TLS_CERT_FILE), get(&TLS_KEY_FILE))
}

/// `gearman.connect_timeout`.
pub fn connect_timeout() -> Duration {
    Duration::from_millis(CONNECT_TIMEOUT_MS.get().max(1) as u64)
}

/// `gearman.timeout`.
pub fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.get().max(1) as u64)
}

/// `gearman.max_result_size` in bytes.
pub fn max_result_size() -> usize {
    usize::try_from(MAX_RESULT_SIZE.get().max(1)).unwrap_or(16 << 20)
}

/// `gearman.commit_send_timeout`.
pub fn commit_send_timeout() -> Duration {
    Duration::from_millis(COMMIT_SEND_TIMEOUT_MS.get().max(1) as u64)
}

/// `gearman.timeout` in milliseconds, for messages.
pub fn timeout_ms() -> i32 {
    TIMEOUT_MS.get()
}

/// `gearman.dispatch_queue_size` in bytes.
pub fn dispatch_queue_bytes() -> u64 {
    DISPATCH_QUEUE_KB.get().max(64) as u64 * 1024
}

/// `gearman.dispatch_linger`.
pub fn dispatch_linger() -> Duration {
    Duration::from_millis(DISPATCH_LINGER_MS.get().max(0) as u64)
}

/// `gearman.use_dispatcher`.
pub fn use_dispatcher() -> bool {
    USE_DISPATCHER.get()
}

/// `gearman.dispatch`.
pub fn dispatch() -> Dispatch {
    DISPATCH.get()
}

/// `gearman.on_error`.
pub fn on_error() -> OnError {
    ON_ERROR.get()
}

/// Where a configured value comes from, in PostgreSQL's order of
/// precedence (later wins).
struct Configured {
    name: &'static CStr,
    value: String,
    context: pg_sys::GucContext::Type,
    source: pg_sys::GucSource::Type,
}

/// Re-applies the configured values of `gearman.servers` and
/// `pggearman.default_servers`, each with its own source, as PostgreSQL
/// would have at session start had the library been loaded then: the
/// configuration files (`postgresql.conf` with its includes, then
/// `postgresql.auto.conf` from `ALTER SYSTEM`), the server's command line
/// (`-c name=value`, `--name=value`), then `ALTER DATABASE/ROLE ... SET`
/// (when the catalog can be read; otherwise at the first use). Values are applied
/// with the privilege of the configuration they come from, never with the
/// session's.
fn restore_configured() {
    let mut found: Vec<Configured> = Vec::new();
    for name in [SERVERS_NAME, LEGACY_NAME] {
        let key = name.to_string_lossy().into_owned();
        if let Some(v) = from_files(&key) {
            found.push(Configured {
                name,
                value: v,
                context: pg_sys::GucContext::PGC_SIGHUP,
                source: pg_sys::GucSource::PGC_S_FILE,
            });
        }
        if let Some(v) = from_command_line(&key) {
            found.push(Configured {
                name,
                value: v,
                context: pg_sys::GucContext::PGC_POSTMASTER,
                source: pg_sys::GucSource::PGC_S_ARGV,
            });
        }
    }
    apply(&found);
    if catalog_readable() {
        restore_from_catalog();
    } else {
        RESTORE_CATALOG.store(true, Ordering::Relaxed);
    }
}

/// Whether SQL can read the catalog now: inside a transaction with an
/// active snapshot (not so while `session_preload_libraries` load, nor for
/// `LOAD`).
fn catalog_readable() -> bool {
    // SAFETY: plain queries of the transaction and snapshot state.
    unsafe { pg_sys::IsTransactionState() && pg_sys::ActiveSnapshotSet() }
}

fn apply(values: &[Configured]) {
    for c in values {
        let Ok(value) = CString::new(c.value.as_str()) else {
            continue;
        };
        // SAFETY: valid NUL-terminated strings; elevel WARNING never
        // raises (a value that does not parse is reported and skipped).
        unsafe {
            pg_sys::set_config_option(
                c.name.as_ptr(),
                value.as_ptr(),
                c.context,
                c.source,
                pg_sys::GucAction::GUC_ACTION_SET,
                true,
                pg_sys::WARNING as i32,
                false,
            );
        }
    }
}

/// The last value of `name` in the configuration files, as PostgreSQL
/// reads them (`postgresql.conf` and its includes, then
/// `postgresql.auto.conf` in the data directory).
fn from_files(name: &str) -> Option<String> {
    let mut out = None;
    // SAFETY: ConfigFileName is NULL or the server's configuration file
    // path; ParseConfigFile reports problems at DEBUG1 (never raises at that
    // level) and returns a palloc'd list that FreeConfigVariables frees.
    unsafe {
        let mut files: Vec<(*const std::ffi::c_char, bool)> = Vec::new();
        if !pg_sys::ConfigFileName.is_null() {
            files.push((pg_sys::ConfigFileName, true));
        }
        files.push((c"postgresql.auto.conf".as_ptr(), false));
        for (file, strict) in files {
            let mut head: *mut pg_sys::ConfigVariable = std::ptr::null_mut();
            let mut tail: *mut pg_sys::ConfigVariable = std::ptr::null_mut();
            pg_sys::ParseConfigFile(
                file,
                strict,
                std::ptr::null(),
                0,
                0,
                pg_sys::DEBUG1 as i32,
                &mut head,
                &mut tail,
            );
            let mut item = head;
            while !item.is_null() {
                let v = &*item;
                if !v.ignore && !v.name.is_null() && !v.value.is_null() {
                    let n = CStr::from_ptr(v.name).to_string_lossy();
                    if n.eq_ignore_ascii_case(name) {
                        out = Some(CStr::from_ptr(v.value).to_string_lossy().into_owned());
                    }
                }
                item = v.next;
            }
            if !head.is_null() {
                pg_sys::FreeConfigVariables(head);
            }
        }
    }
    out
}

/// The last `-c name=value` or `--name=value` of `name` on the command line
/// of the postmaster (read from `/proc`, where available).
fn from_command_line(name: &str) -> Option<String> {
    // SAFETY: plain read of a global set at postmaster start.
    let pid = unsafe { pg_sys::PostmasterPid };
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    command_line_value(&args, name)
}

/// The last value of `name` in a postgres command line.
pub(crate) fn command_line_value(args: &[String], name: &str) -> Option<String> {
    let mut out = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let setting = if a == "-c" {
            i += 1;
            args.get(i).map(String::as_str)
        } else if let Some(rest) = a.strip_prefix("-c") {
            Some(rest)
        } else {
            a.strip_prefix("--")
        };
        if let Some((n, v)) = setting.and_then(|s| s.split_once('=')) {
            if n.replace('-', "_").eq_ignore_ascii_case(name) {
                out = Some(v.to_string());
            }
        }
        i += 1;
    }
    out
}

/// Re-applies `ALTER ROLE/DATABASE ... SET` values of the two server
/// settings for this session's database and user, with their sources
/// (global, database, user, database and user). Needs a transaction.
fn restore_from_catalog() {
    // SAFETY: plain reads of the session's database and user.
    let (db, role) = unsafe { (pg_sys::MyDatabaseId, pg_sys::GetSessionUserId()) };
    let rows: Vec<(bool, bool, String)> = match Spi::connect(|c| {
        let r = c.select(
            "SELECT s.setdatabase <> 0, s.setrole <> 0, cfg \
             FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) cfg \
             WHERE s.setdatabase IN (0, $1) AND s.setrole IN (0, $2)",
            None,
            &[db.into(), role.into()],
        )?;
        let mut out = Vec::new();
        for row in r {
            out.push((
                row.get::<bool>(1)?.unwrap_or(false),
                row.get::<bool>(2)?.unwrap_or(false),
                row.get::<String>(3)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    }) {
        Ok(r) => r,
        Err(_) => return,
    };
    let mut found: Vec<Configured> = Vec::new();
    for (has_db, has_role, cfg) in rows {
        let Some((n, v)) = cfg.split_once('=') else {
            continue;
        };
        let name = if n.eq_ignore_ascii_case("gearman.servers") {
            SERVERS_NAME
        } else if n.eq_ignore_ascii_case("pggearman.default_servers") {
            LEGACY_NAME
        } else {
            continue;
        };
        let source = match (has_db, has_role) {
            (false, false) => pg_sys::GucSource::PGC_S_GLOBAL,
            (true, false) => pg_sys::GucSource::PGC_S_DATABASE,
            (false, true) => pg_sys::GucSource::PGC_S_USER,
            (true, true) => pg_sys::GucSource::PGC_S_DATABASE_USER,
        };
        found.push(Configured {
            name,
            value: v.to_string(),
            context: pg_sys::GucContext::PGC_SUSET,
            source,
        });
    }
    found.sort_by_key(|c| c.source);
    apply(&found);
}
