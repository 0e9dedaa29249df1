//! Benchmark of pipelined dispatch through the process-wide sender thread
//! (issue 15): 8 concurrent sessions of single-row trigger INSERTs
//! (autocommit) inside a private MariaDB (`background_dispatch =
//! "pipelined"`) against a private gearmand, side by side in one run with
//! the same table whose trigger does the same work without dispatching
//! (`SET @ret = CONCAT(...)`) and a table without trigger. Not a test.
//!
//! Run: `scripts/bench mysql-dispatch` or `cargo bench -p gearman-mysql
//! --bench dispatch -- [--sessions N] [--inserts N] [--rounds N]
//! [--linger-ms N]`
//! (`--inserts`: per session and round; `--linger-ms`: `dispatch_linger_ms`
//! in the library's configuration, default unset). Prints one line per figure:
//! statements/s of each table (the phases alternate for `--rounds`
//! rounds, so drift hits them alike), the ratio of the dispatching
//! trigger's rate to the `CONCAT` trigger's, gearmand's CPU time per job
//! (utime + stime from `/proc/<pid>/stat` over the dispatching phases), the
//! gearmand connections of the sender, and whether every job arrived.

mod common;

use common::{arg, udf_library};
use gearman_core::admin::Admin;
use gearman_core::ServerAddr;
use gearman_testkit::{cpu_seconds, Gearmand, MariaDb, MariaDbOptions};
use mysql::prelude::Queryable;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `sessions` threads, each `inserts` single-row INSERTs into `table`;
/// returns the wall time.
fn run_phase(db: &MariaDb, table: &str, sessions: usize, inserts: usize, round: usize) -> Duration {
    let conns: Vec<mysql::Conn> = (0..sessions)
        .map(|_| mysql::Conn::new(mysql::Opts::from_url(&db.url()).unwrap()).unwrap())
        .collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(sessions + 1));
    let threads: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, mut c)| {
            let b = barrier.clone();
            let sql = format!("INSERT INTO {table} (title, url) VALUES (?, ?)");
            std::thread::spawn(move || {
                let stmt = c.prep(&sql).unwrap();
                b.wait();
                for i in 0..inserts {
                    c.exec_drop(&stmt, (format!("r{round}s{k}i{i}"), "http://example.com/"))
                        .unwrap();
                }
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    t0.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("bench-dispatch: run with `cargo bench -p gearman-mysql --bench dispatch`");
        return;
    }
    let sessions = arg(&args, "--sessions", 8);
    let inserts = arg(&args, "--inserts", 1000);
    let rounds = arg(&args, "--rounds", 2);
    // 0: the library's default (`dispatch_linger_ms` not set).
    let linger = arg(&args, "--linger-ms", 0);
    let g = Gearmand::start_with(&["--hashtable-buckets", "1000003"]);
    let conf_dir = tempfile::Builder::new()
        .prefix("bench-dispatch-conf-")
        .tempdir()
        .expect("tempdir");
    let conf = conf_dir.path().join("pipelined.toml");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(conf_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            &conf,
            format!(
                "servers = \"{}\"\nbackground_dispatch = \"pipelined\"\n{}",
                g.addr(),
                if linger > 0 {
                    format!("dispatch_linger_ms = {linger}\n")
                } else {
                    String::new()
                }
            ),
        )
        .unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
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
    let mut c = mysql::Conn::new(mysql::Opts::from_url(&db.url()).unwrap()).unwrap();
    for t in ["plain", "concat_t", "dispatch_t"] {
        c.query_drop(format!(
            "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, title VARCHAR(100), url VARCHAR(100))"
        ))
        .unwrap();
    }
    c.query_drop(r#"CREATE TRIGGER concat_bi BEFORE INSERT ON concat_t FOR EACH ROW SET @ret=CONCAT(NEW.title, " - ", NEW.url);"#).unwrap();
    c.query_drop(r#"CREATE TRIGGER tweet_blog BEFORE INSERT ON dispatch_t FOR EACH ROW SET @ret=gman_do_background('send_tweet', CONCAT(NEW.title, " - ", NEW.url));"#).unwrap();
    let pid = g.pid().expect("gearmand pid");
    println!(
        "bench-dispatch: MariaDB {} / gearmand {} (hashtable-buckets 1000003), {sessions} sessions x \
         {inserts} single-row INSERTs (autocommit) x {rounds} rounds per table, one run, \
         dispatch_linger_ms {}",
        c.query_first::<String, _>("SELECT VERSION()")
            .unwrap()
            .unwrap_or_default(),
        g.addr(),
        if linger > 0 {
            linger.to_string()
        } else {
            "unset (the default)".into()
        }
    );
    let mut per = [Duration::ZERO; 3];
    let mut cpu = 0.0;
    for r in 0..rounds {
        per[0] += run_phase(&db, "plain", sessions, inserts, r);
        per[1] += run_phase(&db, "concat_t", sessions, inserts, r);
        let c0 = cpu_seconds(pid);
        per[2] += run_phase(&db, "dispatch_t", sessions, inserts, r);
        // Wait for the sender to have written and gearmand to have queued
        // every job of the phase before reading gearmand's CPU time.
        let want = ((r + 1) * sessions * inserts) as u64;
        let t = Instant::now();
        while queued(&g) < want && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
        cpu += cpu_seconds(pid) - c0;
    }
    let n = sessions * inserts * rounds;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "  no trigger:                        {:>9.0} INSERTs/s",
        rate(per[0])
    );
    println!(
        "  trigger SET @ret = CONCAT(...):    {:>9.0} INSERTs/s",
        rate(per[1])
    );
    println!(
        "  trigger gman_do_background (pipelined, one sender): {:>9.0} INSERTs/s = {:.2} of the CONCAT trigger",
        rate(per[2]),
        per[1].as_secs_f64() / per[2].as_secs_f64()
    );
    println!(
        "  gearmand CPU per job (utime+stime over the dispatching phases): {:.1} us",
        cpu * 1e6 / n as f64
    );
    let st: String = c
        .query_first("SELECT gman_dispatch_status()")
        .unwrap()
        .unwrap_or_default();
    println!("  gman_dispatch_status(): {st}");
    let conns = Admin::connect(&addr(&g), Duration::from_secs(5))
        .and_then(|mut a| a.workers())
        .map(|w| {
            w.iter()
                .filter(|w| w.client_id == "gearman-mysql-udf-dispatcher")
                .count()
        })
        .unwrap_or(0);
    println!("  gearmand connections of the sender: {conns}");
    println!("  jobs at gearmand: {} of {n}", queued(&g));
}

fn addr(g: &Gearmand) -> ServerAddr {
    ServerAddr::parse(&g.addr()).unwrap()
}

fn queued(g: &Gearmand) -> u64 {
    Admin::connect(&addr(g), Duration::from_secs(5))
        .and_then(|mut a| a.status())
        .map(|s| {
            s.iter()
                .find(|f| f.function == "send_tweet")
                .map_or(0, |f| f.total)
        })
        .unwrap_or(0)
}
