//! Benchmark of the PostgreSQL extension (issue 4), one run, one private
//! gearmand and one private PostgreSQL (15, or the installation
//! whose `bin` directory `GEARMAN_TEST_PG_BINDIR` names). Prints figures;
//! asserts nothing.
//!
//! Run with `gearman-pg/bench.sh` (installs the release build of the
//! extension first), or by hand:
//!
//! ```text
//! cd gearman-pg
//! cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config
//! cargo run --release --example bench [-- --jobs 100000 --calls 1000000 --many 1000 --hashtable-buckets 0]
//! ```
//!
//! Items:
//! 1. background dispatch: `SELECT count(gman_do_background('f', 'p'||i))
//!    FROM generate_series(1, N) i` in `immediate` and `commit` modes, next to
//!    the core client's own rate (one round trip per job, and pipelined);
//! 2. `gman_do` round trips per second (one statement, one job per row), next
//!    to the core client's `run`;
//! 3. `gman_do_many` over `--many` workloads (default 1,000) vs as many
//!    sequential `gman_do`;
//! 4. backend memory (VmRSS of the backend process) before and after
//!    1,000,000 calls;
//! 5. single-row INSERTs in autocommit (`--inserts`, default 10,000 per
//!    round, 3 rounds, variants interleaved): without trigger, with a no-op
//!    plpgsql trigger (the trigger's own cost), with an AFTER INSERT trigger
//!    calling `gman_do_background` in `commit` mode, and in `immediate` mode; µs per INSERT (median of the rounds) and the
//!    difference to the plain INSERT, next to the core client's round trip
//!    (`submit_background`, serial).

mod common;

use common::{arg, create_extension, server_version, start_echo_workers};
use gearman_core::{Client, Job, Options, ServerList};
use gearman_testkit::{Gearmand, Postgres};
use std::time::{Duration, Instant};

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

fn main() {
    let jobs = arg("--jobs", 100_000);
    let calls = arg("--calls", 1_000_000);
    let inserts = arg("--inserts", 10_000);
    // gearmand keeps jobs with unique keys (commit mode sends only those)
    // in a hash table of --hashtable-buckets buckets, 991 by default.
    let buckets = arg("--hashtable-buckets", 0);
    let many = arg("--many", 1_000);
    let g = if buckets > 0 {
        Gearmand::start_with(&["--hashtable-buckets", &buckets.to_string()])
    } else {
        Gearmand::start()
    };
    let pg = Postgres::start_with(&[&format!("gearman.servers={}", g.addr())]);
    create_extension(&pg);
    let mut db = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect");
    let servers = ServerList::parse(&g.addr()).unwrap();
    println!(
        "gearmand {} (--hashtable-buckets {}) / PostgreSQL {} on port {}",
        g.addr(),
        if buckets > 0 {
            buckets.to_string()
        } else {
            "991, the default".into()
        },
        server_version(&mut db),
        pg.port()
    );

    // The core's serial round trip, for items 5 and 1.
    let mut core = Client::new(servers.clone(), Options::default());
    let (_, d) = timed(|| {
        for i in 0..jobs {
            core.submit_background(&Job::new("core_seq", format!("p{i}")))
                .expect("submit");
        }
    });
    let core_seq = jobs as f64 / d.as_secs_f64();

    // 5 first, while gearmand's queue is small: gearmand's own cost per job
    // with a unique key grows with the number of queued jobs, and it shares
    // the CPUs with the backend.
    insert_bench(&mut db, inserts, core_seq);

    // 1. Background dispatch.
    println!("\n1. background jobs, {jobs} per run (no worker; jobs stay queued)");
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
    // What commit mode sends: deferred, each job with a (UUID-like) unique key.
    let keyed: Vec<Job> = (0..jobs)
        .map(|i| Job::new("core_keyed", format!("p{i}")).with_unique(format!("k-{i:032}")))
        .collect();
    let (_, d) = timed(|| {
        core.submit_background_deferred(&keyed).expect("submit");
        let r = core.collect_deferred(true);
        assert!(r.failed.is_empty() && r.pending == 0, "{r:?}");
    });
    println!(
        "   core deferred, unique keys (as commit)    {}",
        rate(jobs, d)
    );
    println!(
        "   ratio: immediate {:.0}% of core 1-RTT; commit {:.0}% of core pipelined, {:.0}% of core 1-RTT",
        100.0 * imm / core_seq,
        100.0 * com / core_pipe,
        100.0 * com / core_seq
    );

    // 2. Foreground round trips.
    let stops = start_echo_workers(&g.addr(), "echo", 4);
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
    println!("\n3. {many} workloads: gman_do_many vs sequential gman_do (4 echo workers)");
    let q = format!(
        "SELECT count(*) FROM gman_do_many('echo', ARRAY(SELECT 'p'||i FROM generate_series(1, {many}) i))"
    );
    let q = q.as_str();
    let (_, d) = timed(|| db.query_one(q, &[]).unwrap());
    println!(
        "   gman_do_many                              {}",
        rate(many, d)
    );
    let q = format!("SELECT count(gman_do('echo', 'p'||i)) FROM generate_series(1, {many}) i");
    let q = q.as_str();
    let (_, d) = timed(|| db.query_one(q, &[]).unwrap());
    println!(
        "   {many} x gman_do{:pad$}{}",
        "",
        rate(many, d),
        pad = 28usize.saturating_sub(many.to_string().len())
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

/// Item 5: single-row INSERTs in autocommit, one prepared statement each.
fn insert_bench(db: &mut postgres::Client, n: usize, core_seq: f64) {
    const ROUNDS: usize = 3;
    println!(
        "\n5. single-row INSERTs in autocommit, {n} per variant and round, {ROUNDS} rounds \
         (median), no worker"
    );
    db.batch_execute(
        "CREATE TABLE bench_plain (id int);
         CREATE TABLE bench_noop (id int);
         CREATE FUNCTION bench_noop() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM length(NEW.id::text); RETURN NEW; END $$;
         CREATE TRIGGER bench_noop AFTER INSERT ON bench_noop
             FOR EACH ROW EXECUTE FUNCTION bench_noop();
         CREATE TABLE bench_trig (id int);
         CREATE FUNCTION bench_job() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM gman_do_background('ins', NEW.id::text); RETURN NEW; END $$;
         CREATE TRIGGER bench_job AFTER INSERT ON bench_trig
             FOR EACH ROW EXECUTE FUNCTION bench_job();",
    )
    .expect("bench tables");
    let plain = db.prepare("INSERT INTO bench_plain VALUES ($1)").unwrap();
    let noop = db.prepare("INSERT INTO bench_noop VALUES ($1)").unwrap();
    let trig = db.prepare("INSERT INTO bench_trig VALUES ($1)").unwrap();
    let variants: [(&str, &postgres::Statement, &str); 4] = [
        ("no trigger", &plain, "commit"),
        ("no-op plpgsql trigger", &noop, "commit"),
        ("trigger, commit mode", &trig, "commit"),
        ("trigger, immediate mode", &trig, "immediate"),
    ];
    let mut us: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..=ROUNDS {
        for (k, (_, stmt, mode)) in variants.iter().enumerate() {
            db.batch_execute(&format!("SET gearman.dispatch = '{mode}'"))
                .unwrap();
            // Round 0 warms up (1,000 each) and is not counted.
            let count = if round == 0 { n.min(1000) } else { n };
            let t = Instant::now();
            for i in 0..count {
                db.execute(*stmt, &[&(i as i32)]).unwrap();
            }
            if round > 0 {
                us[k].push(t.elapsed().as_secs_f64() * 1e6 / count as f64);
            }
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let base = median(&us[0]);
    let noop_base = median(&us[1]);
    for (k, (name, _, _)) in variants.iter().enumerate() {
        let m = median(&us[k]);
        let rounds: Vec<String> = us[k].iter().map(|x| format!("{x:.1}")).collect();
        println!(
            "   {name:<24} {m:>7.1} µs/INSERT  ({:+.1} µs vs no trigger, {:+.1} µs vs no-op \
             trigger; rounds: {})",
            m - base,
            m - noop_base,
            rounds.join(", ")
        );
    }
    println!(
        "   core submit_background, serial: {:.1} µs/job (one gearmand round trip)",
        1e6 / core_seq
    );
    db.batch_execute("SET gearman.dispatch = 'commit'").unwrap();
    let r = db
        .query_one(
            "SELECT sent, confirmed, failed, pending FROM gman_dispatch_status()",
            &[],
        )
        .unwrap();
    let (sent, confirmed, failed, pending): (i64, i64, i64, i64) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    println!(
        "   gman_dispatch_status() of this session: sent {sent}, confirmed {confirmed}, \
         failed {failed}, pending {pending}"
    );
}
