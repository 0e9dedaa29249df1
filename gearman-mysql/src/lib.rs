//! `libgearman_mysql_udf.so`: Gearman user-defined functions for MariaDB
//! 10.11 (tested) and MySQL 8 (same UDF ABI, not tested here), a drop-in
//! replacement for gearman-mysql-udf built on `gearman-core`.
//!
//! Install with `sql/mysql/install.sql` after copying the library into the
//! server's `plugin_dir` (as a new file: `install -m 0644`, never `cp` over a
//! loaded library).
//!
//! | SQL function | returns |
//! |---|---|
//! | `gman_do(function, workload [, unique])`, `gman_do_high`, `gman_do_low` | the worker's result (binary string), at most `max_result_bytes` (16 MiB; a longer one fails that row) |
//! | `gman_do_background(...)`, `gman_do_high_background`, `gman_do_low_background` | the job handle; with `background_dispatch = "pipelined"`: the job's unique key (the caller's, or a generated 36-character one) |
//! | `gman_do_epoch(function, workload, unix_seconds [, unique])` | the job handle of a scheduled job (pipelined: its unique key) |
//! | `gman_sum(function, workload)` (AGGREGATE) | sum of the integer results, jobs run concurrently; NULL for no rows. Not with `GROUP BY ... WITH ROLLUP`: MariaDB gives a UDF aggregate's rollup rows one shared state, so their totals are wrong (a plain C aggregate UDF shows the same) |
//! | `gman_servers_set(servers [, function])` | its `servers` argument as given (`'127.0.0.1'`, not `'127.0.0.1:4730'`), as gearman-mysql-udf returned; NULL or `''` with a `function` clears that function's own list (returns the argument: NULL or `''`). Refused unless `allow_servers_set = true` |
//! | `gman_job_status(handle_or_unique)` | JSON `{"known","running","numerator","denominator"}` (+ `"waiting"` for a unique key, e.g. the value a pipelined background call returned; a unique key is looked up on the default server list, then on each function's own list) |
//! | `gman_server_status()` | JSON array, one object per server and function: `server, function, total, queued, running, workers`; `total` is every job gearmand holds for the function, `queued` the jobs waiting for a worker (`total - running`, as in PostgreSQL), `running` those a worker has taken; a server that cannot be asked has one object `{"server", "error"}` |
//! | `gman_last_error()` | the last error of this connection's latest statement that called another `gman_*` function, or NULL (see [`session`]) |
//!
//! Errors: a wrong argument count or a row-valued argument fails the
//! statement at `_init` with a message naming the function and its arguments.
//! Every failure at run time returns NULL for that row only (never the
//! UDF error flag, after which MariaDB would return NULL for every later row
//! of the statement without calling the function: later rows are still
//! evaluated and their jobs sent), records the message for
//! `gman_last_error()` of that connection (see [`session`]), and writes one
//! `[ERROR] gearman-mysql-udf:` line to the server's error log per failing
//! call-site and statement (identical lines within one second are folded
//! into a count).
//!
//! Pipelined background dispatch (opt-in, see [`config`]): a job that
//! gearmand refuses after its call returned its key, or whose confirmation
//! does not arrive within `io_timeout_ms` of its write (unknown fate: it may
//! have been queued), is reported when some thread collects the confirmation:
//! one `pipelined background dispatch: N jobs not confirmed ...` error-log line
//! per statement, and the `gman_last_error()` of the connection that
//! submitted the job.
//!
//! Configuration: see [`config`]; defaults: servers `127.0.0.1:4730`, connect
//! timeout 2 s, I/O timeout 5 s, foreground timeout 30 s, background
//! dispatch `round_trip`, `gman_servers_set` disabled, results up to 16 MiB,
//! at most 64 idle pooled clients. Every call has one deadline from its
//! start, connecting and failing over included (see [`config`]); a
//! background call that timed out waiting for JOB_CREATED may still have
//! been queued.

pub mod abi;
pub mod config;
pub mod ffi;
pub mod funcs;
pub mod runtime;
pub mod session;

use abi::{UdfArgs, UdfInit};
use funcs::Kind;
use gearman_core::Priority;
use std::os::raw::{c_char, c_ulong};

macro_rules! string_udf {
    ($name:ident, $init:ident, $deinit:ident, $kind:expr) => {
        #[doc = concat!("`", stringify!($init), "`: checks the arguments of `", stringify!($name), "`.")]
        ///
        /// # Safety
        /// Called by the server with its `UDF_INIT`, `UDF_ARGS` and message buffer.
        #[no_mangle]
        pub unsafe extern "C" fn $init(
            initid: *mut UdfInit,
            args: *mut UdfArgs,
            message: *mut c_char,
        ) -> c_char {
            // SAFETY: server pointers forwarded unchanged.
            unsafe { ffi::init(stringify!($name), $kind, initid, args, message) }
        }

        #[doc = concat!("`", stringify!($deinit), "`: frees the state of `", stringify!($name), "`.")]
        ///
        /// # Safety
        /// Called by the server with the `UDF_INIT` given to `_init`.
        #[no_mangle]
        pub unsafe extern "C" fn $deinit(initid: *mut UdfInit) {
            // SAFETY: server pointer forwarded unchanged.
            unsafe { ffi::deinit(initid) }
        }

        #[doc = concat!("The SQL function `", stringify!($name), "` (one row).")]
        ///
        /// # Safety
        /// Called by the server with the pointers of a string UDF call.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            initid: *mut UdfInit,
            args: *mut UdfArgs,
            result: *mut c_char,
            length: *mut c_ulong,
            is_null: *mut c_char,
            error: *mut c_char,
        ) -> *mut c_char {
            // SAFETY: server pointers forwarded unchanged.
            unsafe { ffi::call_string(initid, args, result, length, is_null, error) }
        }
    };
}

string_udf!(
    gman_do,
    gman_do_init,
    gman_do_deinit,
    Kind::Do(Priority::Normal)
);
string_udf!(
    gman_do_high,
    gman_do_high_init,
    gman_do_high_deinit,
    Kind::Do(Priority::High)
);
string_udf!(
    gman_do_low,
    gman_do_low_init,
    gman_do_low_deinit,
    Kind::Do(Priority::Low)
);
string_udf!(
    gman_do_background,
    gman_do_background_init,
    gman_do_background_deinit,
    Kind::Background(Priority::Normal)
);
string_udf!(
    gman_do_high_background,
    gman_do_high_background_init,
    gman_do_high_background_deinit,
    Kind::Background(Priority::High)
);
string_udf!(
    gman_do_low_background,
    gman_do_low_background_init,
    gman_do_low_background_deinit,
    Kind::Background(Priority::Low)
);
string_udf!(
    gman_do_epoch,
    gman_do_epoch_init,
    gman_do_epoch_deinit,
    Kind::Epoch
);
string_udf!(
    gman_servers_set,
    gman_servers_set_init,
    gman_servers_set_deinit,
    Kind::ServersSet
);
string_udf!(
    gman_job_status,
    gman_job_status_init,
    gman_job_status_deinit,
    Kind::JobStatus
);
string_udf!(
    gman_server_status,
    gman_server_status_init,
    gman_server_status_deinit,
    Kind::ServerStatus
);
string_udf!(
    gman_last_error,
    gman_last_error_init,
    gman_last_error_deinit,
    Kind::LastError
);

/// `gman_sum_init`: checks the arguments of the aggregate `gman_sum`.
///
/// # Safety
/// Called by the server with its `UDF_INIT`, `UDF_ARGS` and message buffer.
#[no_mangle]
pub unsafe extern "C" fn gman_sum_init(
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    message: *mut c_char,
) -> c_char {
    // SAFETY: server pointers forwarded unchanged.
    unsafe { ffi::init("gman_sum", Kind::Sum, initid, args, message) }
}

/// `gman_sum_deinit`.
///
/// # Safety
/// Called by the server with the `UDF_INIT` given to `_init`.
#[no_mangle]
pub unsafe extern "C" fn gman_sum_deinit(initid: *mut UdfInit) {
    // SAFETY: server pointer forwarded unchanged.
    unsafe { ffi::deinit(initid) }
}

/// `gman_sum_clear`: starts a group.
///
/// # Safety
/// Called by the server.
#[no_mangle]
pub unsafe extern "C" fn gman_sum_clear(
    initid: *mut UdfInit,
    is_null: *mut c_char,
    error: *mut c_char,
) {
    // SAFETY: server pointers forwarded unchanged.
    unsafe { ffi::sum_clear(initid, is_null, error) }
}

/// `gman_sum_add`: collects one row's job.
///
/// # Safety
/// Called by the server.
#[no_mangle]
pub unsafe extern "C" fn gman_sum_add(
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    is_null: *mut c_char,
    error: *mut c_char,
) {
    // SAFETY: server pointers forwarded unchanged.
    unsafe { ffi::sum_add(initid, args, is_null, error) }
}

/// `gman_sum_reset` (servers before 4.1 semantics): clear + add.
///
/// # Safety
/// Called by the server.
#[no_mangle]
pub unsafe extern "C" fn gman_sum_reset(
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    is_null: *mut c_char,
    error: *mut c_char,
) {
    // SAFETY: server pointers forwarded unchanged.
    unsafe { ffi::sum_reset(initid, args, is_null, error) }
}

/// `gman_sum`: runs the group's jobs concurrently and returns the sum.
///
/// # Safety
/// Called by the server.
#[no_mangle]
pub unsafe extern "C" fn gman_sum(
    initid: *mut UdfInit,
    args: *mut UdfArgs,
    is_null: *mut c_char,
    error: *mut c_char,
) -> i64 {
    // SAFETY: server pointers forwarded unchanged.
    unsafe { ffi::sum_value(initid, args, is_null, error) }
}

/// Reads the configuration file when the server loads the library (dlopen at
/// `CREATE FUNCTION` or at server start), so a broken file is reported in the
/// error log right away. Not in test builds of this crate.
#[cfg(all(target_os = "linux", not(test)))]
#[used]
#[link_section = ".init_array"]
static READ_CONFIG_AT_LOAD: extern "C" fn() = {
    extern "C" fn read_config_at_load() {
        let _ = std::panic::catch_unwind(|| {
            let _ = runtime::runtime();
        });
    }
    read_config_at_load
};
