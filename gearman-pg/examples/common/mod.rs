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

/// utime + stime of process `pid` from `/proc/<pid>/stat`, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The fields after the command (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
