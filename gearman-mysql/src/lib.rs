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
//! | `gman_do_background_at(function, workload, run_at [, unique])`, older name `gman_do_epoch` | the job handle of a scheduled job (pipelined: its unique key); `run_at` is Unix seconds, or RFC 3339 text with `Z` or an offset; a DATETIME (no time zone) is refused: pass `UNIX_TIMESTAMP(x)` |
//! | `gman_do_many(function, json_array)` | JSON array of the results (JSON strings) in input order, one foreground job per element, all submitted before any result is awaited; a failed job is `null` in its place and named by `gman_last_error()`; a string element is its text, `null` an empty workload, any other element its JSON text; NULL array: NULL; one `foreground_timeout_ms` for the call; each result and the whole output at most `max_result_bytes`; at most `max_sum_rows` elements |
//! | `gman_sum(function, workload)` (AGGREGATE) | sum of the integer results, jobs run concurrently; NULL for no rows. Not with `GROUP BY ... WITH ROLLUP`: MariaDB gives a UDF aggregate's rollup rows one shared state, so their totals are wrong (a plain C aggregate UDF shows the same) |
//! | `gman_servers_set(servers [, function])` | its `servers` argument as given (`'127.0.0.1'`, not `'127.0.0.1:4730'`), as gearman-mysql-udf returned; NULL or `''` with a `function` clears that function's own list (returns the argument: NULL or `''`). Refused unless `allow_servers_set = true` |
//! | `gman_job_status(handle_or_unique)` | JSON `{"known","running","numerator","denominator"}` (+ `"waiting"` for a unique key, e.g. the value a pipelined background call returned); a handle is asked of every server, a unique key of the server it routes to in the default list, then in each function's own list (gearman-core's `Client::job_status`); the key must be valid UTF-8 |
//! | `gman_server_status()` | JSON array, one object per server and function: `server, function, total, queued, running, workers`; `total` is every job gearmand holds for the function, `queued` the jobs waiting for a worker (`total - running`, as in PostgreSQL), `running` those a worker has taken; a server that cannot be asked has one object `{"server", "error"}` |
//! | `gman_dispatch_status()` | JSON `{"dispatch","sent","confirmed","failed","refused","unknown","pending"}`: the pipelined background jobs of this server process (all connections) since the library was loaded (`sent`: handed to the sender; `pending` includes those still queued); `sent = confirmed + failed + pending`, `failed = refused + unknown`; once the sender has started, also `"sender": {"queued","queued_bytes","oldest_age_ms","written","unsent","panics","servers": {"host:port": "up"/"down"/"unknown"}}` |
//! | `gman_last_error()` | the last error of this connection's latest statement that called another `gman_*` function, or NULL (see [`runtime::session`]) |
//!
//! Errors: a wrong argument count or a row-valued argument fails the
//! statement at `_init` with a message naming the function and its arguments.
//! Every failure at run time returns NULL for that row only (never the
//! UDF error flag, after which MariaDB would return NULL for every later row
//! of the statement without calling the function: later rows are still
//! evaluated and their jobs sent), records the message for
//! `gman_last_error()` of that connection (see [`runtime::session`]), and writes one
//! `[ERROR] gearman-mysql-udf:` line to the server's error log per failing
//! call-site and statement (identical lines within one second are folded
//! into a count).
//!
//! Pipelined background dispatch (opt-in, see [`config`]): calls hand their
//! jobs to one sender thread per process ([`runtime::dispatch`]) that
//! writes them pipelined, one connection per job server. A job that
//! gearmand refuses after its call returned its key, or whose confirmation
//! does not arrive within `io_timeout_ms` of its write (unknown fate: it may
//! have been queued), is reported by the sender: one `pipelined background
//! dispatch: N jobs not confirmed ...` error-log line per batch, and the
//! `gman_last_error()` of the connection that submitted the job.
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
pub mod runtime;
pub mod udf;

use gearman_core::Priority;
use udf::gman_dispatch_status::DispatchStatus;
use udf::gman_do::Do;
use udf::gman_do_background::Background;
use udf::gman_do_background_at::At;
use udf::gman_do_many::DoMany;
use udf::gman_job_status::JobStatus;
use udf::gman_last_error::LastError;
use udf::gman_server_status::ServerStatus;
use udf::gman_servers_set::ServersSet;
use udf::gman_sum::Sum;

// The exported functions, one line each (see `udf` for adding one):
// `name, name_init, name_deinit: Type = value made for each call-site`.
export_udf! {
    gman_do, gman_do_init, gman_do_deinit: Do = Do(Priority::Normal);
    gman_do_high, gman_do_high_init, gman_do_high_deinit: Do = Do(Priority::High);
    gman_do_low, gman_do_low_init, gman_do_low_deinit: Do = Do(Priority::Low);
    gman_do_background, gman_do_background_init, gman_do_background_deinit: Background = Background(Priority::Normal);
    gman_do_high_background, gman_do_high_background_init, gman_do_high_background_deinit: Background = Background(Priority::High);
    gman_do_low_background, gman_do_low_background_init, gman_do_low_background_deinit: Background = Background(Priority::Low);
    gman_do_background_at, gman_do_background_at_init, gman_do_background_at_deinit: At = At::RUN_AT;
    gman_do_epoch, gman_do_epoch_init, gman_do_epoch_deinit: At = At::EPOCH;
    gman_do_many, gman_do_many_init, gman_do_many_deinit: DoMany = DoMany;
    gman_servers_set, gman_servers_set_init, gman_servers_set_deinit: ServersSet = ServersSet;
    gman_job_status, gman_job_status_init, gman_job_status_deinit: JobStatus = JobStatus;
    gman_server_status, gman_server_status_init, gman_server_status_deinit: ServerStatus = ServerStatus;
    gman_dispatch_status, gman_dispatch_status_init, gman_dispatch_status_deinit: DispatchStatus = DispatchStatus;
    gman_last_error, gman_last_error_init, gman_last_error_deinit: LastError = LastError;
}
// `name, name_init, name_deinit, name_clear, name_add, name_reset: Type = value`.
export_aggregate! {
    gman_sum, gman_sum_init, gman_sum_deinit, gman_sum_clear, gman_sum_add, gman_sum_reset: Sum = Sum::default();
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

/// Stops and joins the pipelined-dispatch sender thread when the library is
/// unloaded (`dlclose()` after `DROP FUNCTION` of its last UDF, or at server
/// shutdown): a thread left running in an unmapped library would crash
/// mariadbd. Bounded: see [`runtime::dispatch::shutdown`]. Not in test
/// builds of this crate.
#[cfg(all(target_os = "linux", not(test)))]
#[used]
#[link_section = ".fini_array"]
static STOP_DISPATCHER_AT_UNLOAD: extern "C" fn() = {
    extern "C" fn stop_dispatcher_at_unload() {
        let _ = std::panic::catch_unwind(runtime::dispatch::shutdown);
    }
    stop_dispatcher_at_unload
};
