//! Helpers shared by the benchmark examples (`mod common;`); not an example
//! itself. Each example uses a subset.
#![allow(dead_code)]

use gearman_core::worker::{StopHandle, Worker, WorkerOptions};
use gearman_core::ServerList;
use gearman_testkit::pg::pg_binary;
use gearman_testkit::Postgres;

/// The value after `name` on the command line, else `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `CREATE EXTENSION gearman`; panics with the command that installs the
/// release build into the PostgreSQL in use (15, or the one
/// `GEARMAN_TEST_PG_BINDIR` names).
pub fn create_extension(pg: &Postgres) {
    if let Err(e) = pg.try_psql("CREATE EXTENSION gearman") {
        panic!(
            "CREATE EXTENSION gearman failed: {e}\nrun `cargo pgrx install --release \
             --pg-config {}` in gearman-pg first",
            pg_binary("pg_config").display()
        );
    }
}

/// `SHOW server_version`.
pub fn server_version(db: &mut postgres::Client) -> String {
    db.query_one("SHOW server_version", &[])
        .map(|r| r.get(0))
        .unwrap_or_else(|e| format!("? ({e})"))
}

/// `n` echo workers for `function` (gearman-core's worker), each on its
/// own thread; stop them with the returned handles.
pub fn start_echo_workers(addr: &str, function: &str, n: usize) -> Vec<StopHandle> {
    (0..n)
        .map(|_| {
            let mut w = Worker::new(ServerList::parse(addr).unwrap(), WorkerOptions::default());
            w.register(function, |j| Ok(j.workload().to_vec()));
            let stop = w.stop_handle();
            std::thread::spawn(move || {
                let _ = w.run();
            });
            stop
        })
        .collect()
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
