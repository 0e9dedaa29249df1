//! Benchmark of the PostgreSQL extension (issue 4), one run, one private
//! gearmand and one private PostgreSQL 15. Prints figures; asserts nothing.
//!
//! Run with `gearman-pg/bench.sh` (installs the release build of the
//! extension first), or by hand:
//!
//! ```text
//! cd gearman-pg
//! cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config
//! cargo run --release --example bench [-- --jobs 100000 --calls 1000000]
//! ```
//!
//! Items:
//! 1. background dispatch: `SELECT count(gman_do_background('f', 'p'||i))
//!    FROM generate_series(1, N) i` in `immediate` and `commit` modes, next to
//!    the core client's own rate (one round trip per job, and pipelined);
//! 2. `gman_do` round trips per second (one statement, one job per row), next
//!    to the core client's `run`;
//! 3. `gman_do_many` over 1,000 workloads vs 1,000 sequential `gman_do`;
//! 4. backend memory (VmRSS of the backend process) before and after
//!    1,000,000 calls.

use gearman_core::worker::{Worker, WorkerOptions};
use gearman_core::{Client, Job, Options, ServerList};
use gearman_testkit::{Gearmand, Postgres};
use std::time::{Duration, Instant};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rate(n: usize, d: Duration) -> String {
    format!(
        "{:>10.0}/s  ({n} in {:.3} s)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64()
    )
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn vm_rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn start_workers(addr: &str, function: &str, n: usize) -> Vec<gearman_core::worker::StopHandle> {
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

fn main() {
    let jobs = arg("--jobs", 100_000);
    let calls = arg("--calls", 1_000_000);
    let g = Gearmand::start();
    let pg = Postgres::start_with(&[&format!("gearman.servers={}", g.addr())]);
    if let Err(e) = pg.try_psql("CREATE EXTENSION gearman") {
        panic!(
            "CREATE EXTENSION gearman failed: {e}\nrun `cargo pgrx install --release \
             --pg-config /usr/lib/postgresql/15/bin/pg_config` in gearman-pg first"
        );
    }
    let mut db = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect");
    let servers = ServerList::parse(&g.addr()).unwrap();
    println!(
        "gearmand {} / PostgreSQL 15 on port {}",
        g.addr(),
        pg.port()
    );

    // 1. Background dispatch.
    println!("\n1. background jobs, {jobs} per run (no worker; jobs stay queued)");
    let mut core = Client::new(servers.clone(), Options::default());
    let (_, d) = timed(|| {
        for i in 0..jobs {
            core.submit_background(&Job::new("core_seq", format!("p{i}")))
                .expect("submit");
        }
    });
    let core_seq = jobs as f64 / d.as_secs_f64();
    println!(
        "   core submit_background (1 round trip/job) {}",
        rate(jobs, d)
    );
    let batch: Vec<Job> = (0..jobs)
        .map(|i| Job::new("core_pipe", format!("p{i}")))
        .collect();
    let (_, d) = timed(|| {
        for r in core.submit_background_all(&batch) {
            r.expect("submit");
        }
    });
    let core_pipe = jobs as f64 / d.as_secs_f64();
    println!(
        "   core submit_background_all (pipelined)   {}",
        rate(jobs, d)
    );
    db.batch_execute("SET gearman.dispatch = 'immediate'")
        .unwrap();
    db.query_one("SELECT gman_do_background('warm', 'x')", &[])
        .unwrap();
    let q = format!(
        "SELECT count(gman_do_background('f_imm', 'p'||i)) FROM generate_series(1, {jobs}) i"
    );
    let (_, d) = timed(|| db.query_one(q.as_str(), &[]).unwrap());
    let imm = jobs as f64 / d.as_secs_f64();
    println!(
        "   SQL immediate                             {}",
        rate(jobs, d)
    );
    db.batch_execute("SET gearman.dispatch = 'commit'").unwrap();
    let q = format!(
        "SELECT count(gman_do_background('f_commit', 'p'||i)) FROM generate_series(1, {jobs}) i"
    );
    let (_, d) = timed(|| db.query_one(q.as_str(), &[]).unwrap());
    let com = jobs as f64 / d.as_secs_f64();
    println!(
        "   SQL commit (statement + COMMIT send)      {}",
        rate(jobs, d)
    );
    println!(
        "   ratio: immediate {:.0}% of core 1-RTT; commit {:.0}% of core pipelined, {:.0}% of core 1-RTT",
        100.0 * imm / core_seq,
        100.0 * com / core_pipe,
        100.0 * com / core_seq
    );

    // 2. Foreground round trips.
    let stops = start_workers(&g.addr(), "echo", 4);
    std::thread::sleep(Duration::from_millis(300));
    let n = jobs / 10;
    println!("\n2. foreground round trips, {n} jobs, 4 echo workers");
    let (_, d) = timed(|| {
        for i in 0..n {
            core.run(&Job::new("echo", format!("p{i}"))).expect("run");
        }
    });
    println!(
        "   core run (sequential)                     {}",
        rate(n, d)
    );
    let q = format!("SELECT count(gman_do('echo', 'p'||i)) FROM generate_series(1, {n}) i");
    let (_, d) = timed(|| db.query_one(q.as_str(), &[]).unwrap());
    println!(
        "   SQL gman_do, one job per row              {}",
        rate(n, d)
    );

    // 3. Scatter/gather.
    println!("\n3. 1,000 workloads: gman_do_many vs sequential gman_do (4 echo workers)");
    let q = "SELECT count(*) FROM gman_do_many('echo', ARRAY(SELECT 'p'||i FROM generate_series(1, 1000) i))";
    let (_, d) = timed(|| db.query_one(q, &[]).unwrap());
    println!(
        "   gman_do_many                              {}",
        rate(1000, d)
    );
    let q = "SELECT count(gman_do('echo', 'p'||i)) FROM generate_series(1, 1000) i";
    let (_, d) = timed(|| db.query_one(q, &[]).unwrap());
    println!(
        "   1,000 x gman_do                           {}",
        rate(1000, d)
    );
    for s in &stops {
        s.stop();
    }

    // 4. Backend memory.
    println!(
        "\n4. backend memory over {calls} calls (immediate, then commit; 100,000 per statement)"
    );
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    for mode in ["immediate", "commit"] {
        db.batch_execute(&format!("SET gearman.dispatch = '{mode}'"))
            .unwrap();
        db.query_one("SELECT gman_do_background('mem', 'x')", &[])
            .unwrap();
        let before = vm_rss_kib(pid);
        let per = 100_000.min(calls.max(1));
        let mut done = 0;
        let t = Instant::now();
        while done < calls {
            let q = format!("SELECT count(gman_do_background('mem_{mode}', 'p'||i)) FROM generate_series(1, {per}) i");
            db.query_one(q.as_str(), &[]).unwrap();
            done += per;
        }
        let after = vm_rss_kib(pid);
        println!(
            "   {mode:<9}: VmRSS {} KiB before, {} KiB after ({:+} KiB), {}",
            before,
            after,
            after as i64 - before as i64,
            rate(done, t.elapsed())
        );
    }
}
