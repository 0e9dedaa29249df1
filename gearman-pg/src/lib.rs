//! `CREATE EXTENSION gearman`: Gearman jobs from SQL, compatible with
//! pggearman's functions, with background jobs sent only when the
//! transaction commits.
//!
//! Modules: [`gucs`] (settings), [`backend`] (per-backend client cache and
//! interrupt hook), [`xact`] (commit dispatch and the outbox), [`functions`]
//! (`gman_do*`, `gman_do_background*`, `gman_do_many`, `gman_servers_set`),
//! [`status`] (`gman_job_status`, `gman_server_status`), [`aggregate`]
//! (`gman_sum`), [`trigger`] (`gman_trigger`), [`error`] (SQLSTATE mapping),
//! [`shmq`] and [`dispatcher`] (with `shared_preload_libraries`: the
//! shared-memory hand-off at COMMIT and the background worker that sends).
//!
//! SQL-only parts (the `gearman.outbox` and `gearman.dead_letter` tables,
//! the `gman_sum` aggregate and the `jsonb` overloads) are in `sql/*.sql`.

use pgrx::prelude::*;

pub mod aggregate;
pub mod backend;
pub mod dispatcher;
pub mod error;
pub mod functions;
pub mod gucs;
pub mod shmq;
pub mod status;
pub mod tls;
pub mod trigger;
pub mod xact;

::pgrx::pg_module_magic!(name, version);

/// Registers the settings and the transaction callbacks; when loaded by
/// `shared_preload_libraries`, also the shared queue and the dispatcher
/// background worker ([`dispatcher`]).
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    xact::init();
    // SAFETY: plain read of a flag PostgreSQL sets while it loads
    // shared_preload_libraries in the postmaster.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        shmq::request(gucs::dispatch_queue_bytes());
        dispatcher::register();
    }
}

extension_sql_file!("../sql/outbox.sql", name = "outbox", bootstrap);
extension_sql_file!(
    "../sql/dead_letter.sql",
    name = "dead_letter",
    requires = ["outbox"]
);
extension_sql_file!(
    "../sql/gman_sum.sql",
    name = "gman_sum",
    requires = [aggregate::gman_sum_state, aggregate::gman_sum_final]
);
extension_sql_file!(
    "../sql/jsonb.sql",
    name = "jsonb_overloads",
    requires = [
        functions::gman_do_text,
        functions::gman_do_high_text,
        functions::gman_do_low_text,
        functions::gman_do_background_text,
        functions::gman_do_high_background_text,
        functions::gman_do_low_background_text,
        functions::gman_do_background_at_text,
    ]
);

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
