//! The `gearman.*` settings (GUCs), one getter each.
//!
//! All of them work in `postgresql.conf`, `ALTER DATABASE/ROLE ... SET` and
//! `SET`. [`init`] must be called exactly once, from `_PG_init`.

use gearman_core::ServerList;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::{CStr, CString};
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
static DISPATCH: GucSetting<Dispatch> = GucSetting::<Dispatch>::new(Dispatch::Commit);
static ON_ERROR: GucSetting<OnError> = GucSetting::<OnError>::new(OnError::Error);

/// Registers every setting. Call once, from `_PG_init`.
pub fn init() {
    // SAFETY: the check hook is a #[pg_guard] function that does not panic
    // for any input; the setting is a 'static GucSetting.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"gearman.servers",
            c"Gearman job servers: host[:port],host[:port] (port defaults to 4730).",
            c"Background and foreground jobs go to these servers unless gman_servers_set() \
              overrides them for the session or one function. Changing it needs superuser \
              or GRANT SET ON PARAMETER gearman.servers.",
            &SERVERS,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_servers),
            None,
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
            None,
            None,
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
        c"Bound on a foreground job (gman_do and friends), from submission to result (milliseconds).",
        c"Query cancel and statement_timeout also end the wait.",
        &TIMEOUT_MS,
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
#[pg_guard]
unsafe extern "C-unwind" fn check_servers(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the candidate value,
    // which is NULL or a NUL-terminated string.
    let value = unsafe {
        if newval.is_null() || (*newval).is_null() {
            return true;
        }
        CStr::from_ptr(*newval).to_string_lossy().into_owned()
    };
    if value.trim().is_empty() {
        return true;
    }
    match ServerList::parse(&value) {
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
/// `pggearman.default_servers` when `gearman.servers` is at its default
/// (or empty) and the legacy setting is set.
pub fn servers_text() -> String {
    let current = SERVERS
        .get()
        .map(|c| c.to_string_lossy().trim().to_string())
        .unwrap_or_default();
    if current.is_empty() || current == DEFAULT_SERVERS {
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

/// `gearman.connect_timeout`.
pub fn connect_timeout() -> Duration {
    Duration::from_millis(CONNECT_TIMEOUT_MS.get().max(1) as u64)
}

/// `gearman.timeout`.
pub fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.get().max(1) as u64)
}

/// `gearman.timeout` in milliseconds, for messages.
pub fn timeout_ms() -> i32 {
    TIMEOUT_MS.get()
}

/// `gearman.dispatch`.
pub fn dispatch() -> Dispatch {
    DISPATCH.get()
}

/// `gearman.on_error`.
pub fn on_error() -> OnError {
    ON_ERROR.get()
}
