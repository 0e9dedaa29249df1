//! Benchmark of the UDFs inside a private MariaDB against a private gearmand
//! (one run, same gearmand for every figure). Not a test.
//!
//! Run: `cargo bench -p gearman-mysql --bench mysql` (optionally
//! `-- --rows N --inserts N --foreground N --hashtable-buckets N`, the last
//! passed to gearmand). Prints one line per figure.
//!
//! Figures:
//! - core: `Client::submit_background`, one round trip per job (jobs/s);
//! - SQL: `SELECT COUNT(gman_do_background('f', CONCAT('p', seq))) FROM seq_1_to_N` (jobs/s);
//! - single-row INSERTs without and with the cookbook trigger (statements/s);
//! - foreground: core `Client::run` and `SELECT COUNT(gman_do('echo', seq))` (calls/s)
//!   with one in-process echo worker;
//! - pipelined (`background_dispatch = "pipelined"`, a second private MariaDB
//!   started with that configuration file, same gearmand): core
//!   `Client::submit_background_deferred` over the jobs + `collect_deferred(true)`,
//!   the same SELECT, and the single-row INSERTs without and with the trigger.

mod common;

use common::{arg, udf_library};
use gearman_core::worker::{Worker, WorkerOptions};
use gearman_core::{Client, Job, Options, ServerList};
use gearman_testkit::{Gearmand, MariaDb, MariaDbOptions};
use mysql::prelude::Queryable;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A private MariaDB whose UDF configuration file is `name` in `dir`.
fn start_db(dir: &tempfile::TempDir, name: &str, servers: &str, extra: &str) -> MariaDb {
    use std::os::unix::fs::PermissionsExt;
    let conf = dir.path().join(name);
    std::fs::write(&conf, format!("servers = \"{servers}\"\n{extra}")).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let db = MariaDb::start_with(MariaDbOptions {
        args: vec![],
        env: vec![("GEARMAN_UDF_CONFIG".into(), conf.display().to_string())],
        plugins: vec![udf_library()],
    });
    let install = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sql/mysql/install.sql"),
    )
    .unwrap();
    db.sql(&install).expect("install.sql");
    db
}

/// Single-row INSERTs into `plain` and (trigger) `blog_entries`, alternating
/// chunks; returns the time of each kind and the statement count.
fn inserts_with_and_without_trigger(
    conn: &mut mysql::Conn,
    inserts: usize,
    rounds: usize,
) -> ([Duration; 2], usize) {
    conn.query_drop(
        "CREATE TABLE plain (id INT AUTO_INCREMENT PRIMARY KEY, title VARCHAR(100), url VARCHAR(100))",
    )
    .unwrap();
    conn.query_drop(
        "CREATE TABLE blog_entries (id INT AUTO_INCREMENT PRIMARY KEY, title VARCHAR(100), url VARCHAR(100))",
    )
    .unwrap();
    conn.query_drop(r#"CREATE TRIGGER tweet_blog BEFORE INSERT ON blog_entries FOR EACH ROW SET @ret=gman_do_background('send_tweet', CONCAT(NEW.title, " - ", NEW.url));"#).unwrap();
    let plain = conn
        .prep("INSERT INTO plain (title, url) VALUES (?, ?)")
        .unwrap();
    let trig = conn
        .prep("INSERT INTO blog_entries (title, url) VALUES (?, ?)")
        .unwrap();
    let mut per = [Duration::ZERO; 2];
    let chunk = (inserts / rounds).max(1);
    for r in 0..rounds {
        for (k, stmt) in [&plain, &trig].into_iter().enumerate() {
            let t0 = Instant::now();
            for i in 0..chunk {
                conn.exec_drop(stmt, (format!("t{}", r * chunk + i), "http://example.com/"))
                    .unwrap();
            }
            per[k] += t0.elapsed();
        }
    }
    (per, chunk * rounds)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --all-targets` runs bench binaries without `--bench`: do nothing then.
    if !args.iter().any(|a| a == "--bench") {
        println!("bench-mysql: run with `cargo bench -p gearman-mysql --bench mysql`");
        return;
    }
    let rows = arg(&args, "--rows", 100_000);
    let inserts = arg(&args, "--inserts", 10_000);
    let fg = arg(&args, "--foreground", 5_000);

    // gearmand keeps its jobs in hash tables of `--hashtable-buckets` (991 by
    // default) buckets; jobs with a unique key (every pipelined job) cost
    // more the longer the queue, and nothing drains the queue here.
    let buckets = arg(&args, "--hashtable-buckets", 0);
    let g = if buckets > 0 {
        Gearmand::start_with(&["--hashtable-buckets", &buckets.to_string()])
    } else {
        Gearmand::start()
    };
    let conf_dir = tempfile::Builder::new()
        .prefix("bench-udf-conf-")
        .tempdir()
        .expect("tempdir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(conf_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let db = start_db(&conf_dir, "round_trip.toml", &g.addr(), "");
    let servers = ServerList::parse(&g.addr()).unwrap();
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(&db.url()).unwrap()).unwrap();
    println!(
        "bench-mysql: MariaDB {} / gearmand {} on 127.0.0.1 (hashtable-buckets {}), one run",
        conn.query_first::<String, _>("SELECT VERSION()")
            .unwrap()
            .unwrap_or_default(),
        g.addr(),
        if buckets > 0 {
            buckets.to_string()
        } else {
            "default 991".into()
        }
    );

    // 1 + 2. Background dispatch: the core client (one round trip per job)
    // and the SQL statement, in alternating chunks so that both see the same
    // gearmand queue length (gearmand keeps every queued job in memory).
    let mut client = Client::new(servers.clone(), Options::default());
    let rounds = 10usize;
    let chunk = rows / rounds;
    let (mut core_t, mut sql_t) = (Duration::ZERO, Duration::ZERO);
    for r in 0..rounds {
        let t0 = Instant::now();
        for i in 0..chunk {
            client
                .submit_background(&Job::new("bench_core", format!("p{}", r * chunk + i)))
                .expect("core submit");
        }
        core_t += t0.elapsed();
        let (a, b) = (r * chunk + 1, (r + 1) * chunk);
        let t0 = Instant::now();
        let n: Option<u64> = conn
            .query_first(format!(
                "SELECT COUNT(gman_do_background('bench_sql', CONCAT('p', seq))) FROM seq_{a}_to_{b}"
            ))
            .unwrap();
        sql_t += t0.elapsed();
        assert_eq!(n, Some(chunk as u64), "every row must have a handle");
    }
    let total = chunk * rounds;
    let core_bg = rate(total, core_t);
    let sql_bg = rate(total, sql_t);
    println!("core submit_background (1 round trip/job): {total} jobs, {core_bg:.0} jobs/s");
    println!(
        "SQL SELECT COUNT(gman_do_background('f', CONCAT('p', seq))) FROM seq_1_to_N: {total} jobs, \
         {sql_bg:.0} jobs/s ({:.0}% of core)",
        100.0 * sql_bg / core_bg
    );

    // 3. Single-row INSERTs, without and with the trigger (alternating chunks).
    let (per, total) = inserts_with_and_without_trigger(&mut conn, inserts, rounds);
    println!(
        "{total} single-row INSERTs (autocommit), no trigger: {:.0} statements/s",
        rate(total, per[0])
    );
    println!(
        "{total} single-row INSERTs (autocommit), cookbook trigger: {:.0} statements/s",
        rate(total, per[1])
    );
    let extra_us = (per[1].as_secs_f64() - per[0].as_secs_f64()) * 1e6 / total as f64;
    let rtt_us = 1e6 / core_bg;
    println!("trigger cost per INSERT: {extra_us:.1} us (one core round trip: {rtt_us:.1} us)");

    // 4. Foreground.
    let mut w = Worker::new(servers.clone(), WorkerOptions::default());
    w.register("echo", |ctx| Ok(ctx.workload().to_vec()));
    let stop = w.stop_handle();
    let wt = std::thread::spawn(move || w.run());
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    for i in 0..fg {
        client
            .run(&Job::new("echo", format!("p{i}")))
            .expect("core run");
    }
    let core_fg = rate(fg, t0.elapsed());
    println!("core run (foreground, 1 worker): {fg} calls, {core_fg:.0} calls/s");
    let t0 = Instant::now();
    let n: Option<u64> = conn
        .query_first(format!(
            "SELECT COUNT(gman_do('echo', seq)) FROM seq_1_to_{fg}"
        ))
        .unwrap();
    let sql_fg = rate(fg, t0.elapsed());
    assert_eq!(n, Some(fg as u64));
    println!(
        "SQL gman_do (foreground, 1 worker): {fg} calls, {sql_fg:.0} calls/s ({:.0}% of core)",
        100.0 * sql_fg / core_fg
    );
    stop.stop();
    let _ = wt.join();
    drop(conn);
    drop(db);

    // 5. Pipelined: a second MariaDB whose configuration file says
    // background_dispatch = "pipelined" (read once when the library loads).
    let db = start_db(
        &conf_dir,
        "pipelined.toml",
        &g.addr(),
        "background_dispatch = \"pipelined\"\n",
    );
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(&db.url()).unwrap()).unwrap();
    let mut client = Client::new(servers.clone(), Options::default());
    let chunk = rows / rounds;
    let (mut core_t, mut sql_t) = (Duration::ZERO, Duration::ZERO);
    let mut not_confirmed = 0usize;
    for r in 0..rounds {
        let jobs: Vec<Job> = (0..chunk)
            .map(|i| Job::new("bench_core_pipe", format!("p{}", r * chunk + i)))
            .collect();
        let t0 = Instant::now();
        client
            .submit_background_deferred(&jobs)
            .expect("core deferred submit");
        let rep = client.collect_deferred(true);
        core_t += t0.elapsed();
        not_confirmed += rep.failed.len() + rep.pending;
        let (a, b) = (r * chunk + 1, (r + 1) * chunk);
        let t0 = Instant::now();
        let n: Option<u64> = conn
            .query_first(format!(
                "SELECT COUNT(gman_do_background('bench_sql_pipe', CONCAT('p', seq))) FROM seq_{a}_to_{b}"
            ))
            .unwrap();
        sql_t += t0.elapsed();
        assert_eq!(n, Some(chunk as u64), "every row must have a key");
    }
    assert_eq!(not_confirmed, 0, "core: every deferred job confirmed");
    // The UDF's pattern: one submit_background_deferred call per job, with
    // a generated unique key per job, collecting without waiting after each.
    let mut per_job = [Duration::ZERO; 2];
    for (k, with_unique) in [false, true].into_iter().enumerate() {
        let t0 = Instant::now();
        for i in 0..rows {
            let mut job = Job::new(format!("bench_core_1by1_{k}"), format!("p{i}"));
            if with_unique {
                job = job.with_unique(gearman_core::new_unique_key());
            }
            client
                .submit_background_deferred(std::slice::from_ref(&job))
                .expect("core deferred submit");
            not_confirmed += client.collect_deferred(false).failed.len();
        }
        let rep = client.collect_deferred(true);
        per_job[k] = t0.elapsed();
        not_confirmed += rep.failed.len() + rep.pending;
    }
    assert_eq!(not_confirmed, 0, "core: every deferred job confirmed");
    println!(
        "core submit_background_deferred, one call per job (the UDF's pattern): {rows} jobs, \
         {:.0} jobs/s without unique key, {:.0} jobs/s with a generated unique key",
        rate(rows, per_job[0]),
        rate(rows, per_job[1])
    );
    let total = chunk * rounds;
    let core_pipe = rate(total, core_t);
    let sql_pipe = rate(total, sql_t);
    println!(
        "core submit_background_deferred + collect_deferred(true): {total} jobs, {core_pipe:.0} jobs/s"
    );
    println!(
        "pipelined: SQL SELECT COUNT(gman_do_background('f', CONCAT('p', seq))) FROM seq_1_to_N: \
         {total} jobs, {sql_pipe:.0} jobs/s ({:.0}% of pipelined core, {:.1}x round-trip SQL)",
        100.0 * sql_pipe / core_pipe,
        sql_pipe / sql_bg
    );
    let (per, total) = inserts_with_and_without_trigger(&mut conn, inserts, rounds);
    println!(
        "pipelined: {total} single-row INSERTs (autocommit), no trigger: {:.0} statements/s",
        rate(total, per[0])
    );
    println!(
        "pipelined: {total} single-row INSERTs (autocommit), cookbook trigger: {:.0} statements/s",
        rate(total, per[1])
    );
    let extra_us = (per[1].as_secs_f64() - per[0].as_secs_f64()) * 1e6 / total as f64;
    println!("pipelined: trigger cost per INSERT: {extra_us:.1} us");
    // Every pipelined job must have been queued: count them on gearmand.
    std::thread::sleep(Duration::from_millis(500));
    let _ = conn.query_drop("SELECT gman_job_status('flush')");
    let refused = db
        .error_log()
        .lines()
        .filter(|l| l.contains("pipelined background dispatch:"))
        .count();
    let addr = gearman_core::ServerAddr::parse(&g.addr()).unwrap();
    let st = gearman_core::admin::Admin::connect(&addr, Duration::from_secs(5))
        .and_then(|mut a| a.status())
        .unwrap_or_default();
    let queued = |f: &str| st.iter().find(|s| s.function == f).map_or(0, |s| s.total);
    println!(
        "pipelined check: gearmand holds {} bench_sql_pipe jobs, {} send_tweet jobs (both modes); \
         error-log lines about unqueued jobs: {refused}",
        queued("bench_sql_pipe"),
        queued("send_tweet")
    );
    drop(conn);
    drop(db);
}
