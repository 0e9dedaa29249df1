//! Relay drain benchmark (issue 7): how fast `gearman-worker relay` empties a
//! PostgreSQL and a MariaDB outbox of N committed rows into a private
//! gearmand, next to the core's own pipelined submission of N jobs (the
//! ceiling) in the same run. Prints figures; asserts nothing.
//!
//! Run: `cargo run --release -p gearman-worker --example relay_bench -- [ROWS] [BATCH]`
//! (defaults 100000 rows, batch 1000; `scripts/bench relay` does this).

use gearman_core::{Client, Job, Options, ServerList};
use gearman_testkit::{Gearmand, MariaDb, Postgres};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The extension's outbox SQL without the calls only an extension script
/// may make (the relay needs the table's current columns).
fn pg_outbox_ddl() -> String {
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../gearman-pg/sql/outbox.sql"
    ))
    .expect("gearman-pg/sql/outbox.sql");
    sql.lines()
        .filter(|l| !l.contains("pg_extension_config_dump"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn relay_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/examples/relay_bench -> target/<profile>/gearman-worker
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("gearman-worker");
    assert!(
        bin.is_file(),
        "{} missing: cargo build --release -p gearman-worker",
        bin.display()
    );
    bin
}

/// Jobs gearmand holds for `function` (total column of `status`).
fn queued(addr: &str, function: &str) -> u64 {
    let list = ServerList::parse(addr).expect("addr");
    let a = list.iter().next().expect("one server");
    gearman_core::admin::Admin::connect(a, Duration::from_secs(2))
        .and_then(|mut a| a.status())
        .map(|rows| {
            rows.iter()
                .find(|r| r.function == function)
                .map_or(0, |r| r.total)
        })
        .unwrap_or(0)
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "{what}: not done after {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    t.elapsed()
}

fn relay(args: &[&str]) -> Child {
    Command::new(relay_binary())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn relay")
}

fn stop(mut c: Child) {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = c.wait();
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rows: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let batch: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let pg = Postgres::start();
    pg.psql(&pg_outbox_ddl());
    let my = MariaDb::start();
    let ddl = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sql/mysql/outbox.sql"),
    )
    .expect("sql/mysql/outbox.sql");
    my.sql(&ddl).expect("outbox.sql");
    // Every relayed job carries a unique key (so that a row sent twice
    // coalesces); gearmand keeps keyed jobs in a hash table of
    // --hashtable-buckets buckets (default 991), which slows it down once
    // many keyed jobs are queued. Both settings, side by side.
    for buckets in [None, Some("1000003")] {
        let g = match buckets {
            None => Gearmand::start(),
            Some(b) => Gearmand::start_with(&["--hashtable-buckets", b]),
        };
        run(
            &g,
            &pg,
            &my,
            rows,
            batch,
            buckets.unwrap_or("991 (default)"),
        );
    }
}

fn run(g: &Gearmand, pg: &Postgres, my: &MariaDb, rows: u64, batch: u64, buckets: &str) {
    let addr = g.addr();
    println!("\nrelay drain, {rows} rows, batch {batch}, gearmand --hashtable-buckets {buckets}");
    println!("| what | jobs | rate |\n|---|---:|---:|");

    // Reference: the core submitting as many keyed jobs, pipelined.
    let jobs: Vec<Job> = (0..rows)
        .map(|i| Job::new("ref_bg", format!("p{i}")).with_unique(format!("ref-{i}")))
        .collect();
    let mut c = Client::new(ServerList::parse(&addr).unwrap(), Options::default());
    let t = Instant::now();
    for chunk in jobs.chunks(batch as usize) {
        for r in c.submit_background_all(chunk) {
            r.expect("reference submit");
        }
    }
    let d = t.elapsed();
    println!(
        "| core submit_background_all, keyed, batches of {batch} | {rows} | {:.0} jobs/s |",
        rows as f64 / d.as_secs_f64()
    );

    // PostgreSQL outbox.
    pg.psql(&format!(
        "INSERT INTO gearman.outbox (function, workload) \
         SELECT 'pg_bg', convert_to('p' || i, 'UTF8') FROM generate_series(1, {rows}) i"
    ));
    let batch_s = batch.to_string();
    let r = relay(&[
        "relay",
        "--postgres",
        &pg.url(),
        "-s",
        &addr,
        "--batch-size",
        &batch_s,
        "--poll-interval-ms",
        "50",
    ]);
    let d = wait_for("postgres relay", Duration::from_secs(600), || {
        queued(&addr, "pg_bg") >= rows
    });
    stop(r);
    let left = pg.psql("SELECT count(*) FROM gearman.outbox");
    println!(
        "| relay, PostgreSQL gearman.outbox (left: {}) | {rows} | {:.0} rows/s |",
        left.trim(),
        rows as f64 / d.as_secs_f64()
    );

    // MariaDB outbox.
    my.sql(&format!(
        "INSERT INTO gearman_outbox (`function`, workload) \
         SELECT 'my_bg', CONCAT('p', seq) FROM seq_1_to_{rows}"
    ))
    .expect("insert rows");
    let r = relay(&[
        "relay",
        "--mysql",
        &my.url(),
        "-s",
        &addr,
        "--batch-size",
        &batch_s,
        "--poll-interval-ms",
        "50",
    ]);
    let d = wait_for("mysql relay", Duration::from_secs(600), || {
        queued(&addr, "my_bg") >= rows
    });
    stop(r);
    let left = my
        .sql("SELECT COUNT(*) FROM gearman_outbox")
        .unwrap_or_default();
    println!(
        "| relay, MariaDB gearman_outbox (left: {}) | {rows} | {:.0} rows/s |",
        left.trim(),
        rows as f64 / d.as_secs_f64()
    );
}
