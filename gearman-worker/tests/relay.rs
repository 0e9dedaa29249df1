//! Relay mode: outbox tables of a private PostgreSQL and a private MariaDB
//! drained into a private gearmand, jobs counted at a worker.

mod common;

use common::*;
use gearman_core::worker::{StopHandle, Worker, WorkerOptions};
use gearman_core::ServerList;
use gearman_testkit::{Gearmand, MariaDb, Postgres};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The table the gearman-pg extension creates (same DDL), so these tests do
/// not depend on the extension being installed.
const PG_OUTBOX_DDL: &str = "CREATE SCHEMA gearman;
CREATE TABLE gearman.outbox (id bigserial primary key, function text not null, workload bytea not null, unique_key text, priority text not null default 'normal', run_at timestamptz, created_at timestamptz default now());";

/// A worker that records every workload of `function` it gets.
struct Counter {
    seen: Arc<Mutex<Vec<String>>>,
    /// When each workload in `seen` arrived, in the same order.
    arrived: Arc<Mutex<Vec<std::time::SystemTime>>>,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl Counter {
    fn start(addr: &str, function: &str) -> Counter {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut w = Worker::new(ServerList::parse(addr).unwrap(), WorkerOptions::default());
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (seen.clone(), arrived.clone());
        w.register(function, move |ctx| {
            let mut s = s.lock().unwrap();
            s.push(String::from_utf8_lossy(ctx.workload()).into_owned());
            a.lock().unwrap().push(std::time::SystemTime::now());
            Ok(Vec::new())
        });
        let stop = w.stop_handle();
        let thread = Some(std::thread::spawn(move || w.run().unwrap()));
        Counter {
            seen,
            arrived,
            stop,
            thread,
        }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Asserts every expected workload arrived exactly once and nothing else.
    fn assert_exactly(&self, prefix: &str, n: usize) {
        let seen = self.seen.lock().unwrap();
        let mut by: HashMap<&str, usize> = HashMap::new();
        for w in seen.iter() {
            *by.entry(w.as_str()).or_default() += 1;
        }
        let dups: Vec<_> = by.iter().filter(|(_, c)| **c > 1).collect();
        assert!(dups.is_empty(), "delivered more than once: {dups:?}");
        assert_eq!(seen.len(), n, "jobs delivered");
        for i in 1..=n {
            let key = format!("{prefix}{i}");
            assert!(by.contains_key(key.as_str()), "{key} never arrived");
        }
    }
}

impl Counter {
    /// Asserts the delivered workloads are exactly `want` (any order).
    fn assert_exactly_set(&self, want: &[&str]) {
        let mut seen = self.seen.lock().unwrap().clone();
        seen.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(seen, want);
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(args: &[&str]) -> WorkerProc {
    let mut v = vec!["relay", "--poll-interval-ms", "200", "-v"];
    v.extend_from_slice(args);
    WorkerProc::spawn(&v, &[])
}

/// Sum of the relays' "relayed N row(s)" summary lines.
fn relayed_total(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split("summary: relayed ").nth(1))
        .filter_map(|r| r.split(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn stop_relay(mut r: WorkerProc) -> String {
    r.signal(libc::SIGTERM);
    let st = r
        .wait_exit(Duration::from_secs(15))
        .expect("relay did not exit");
    assert_eq!(st.code(), Some(0), "{}", r.log());
    r.log()
}

#[test]
fn postgres_outbox_committed_rows_arrive_once_after_gearmand_starts() {
    let mut g = Gearmand::start();
    let addr = g.addr();
    g.kill();
    let pg = Postgres::start();
    pg.psql(PG_OUTBOX_DDL);
    // 1,000 committed rows in 10 transactions, 100 rolled back.
    for t in 0..10 {
        pg.psql(&format!(
            "BEGIN; INSERT INTO gearman.outbox (function, workload)
               SELECT 'count_pg', convert_to('row-' || i, 'UTF8') FROM generate_series({}, {}) i;
             SELECT pg_notify('gearman_outbox', ''); COMMIT;",
            t * 100 + 1,
            t * 100 + 100
        ));
    }
    pg.psql(
        "BEGIN; INSERT INTO gearman.outbox (function, workload)
           SELECT 'count_pg', convert_to('rolledback-' || i, 'UTF8') FROM generate_series(1, 100) i;
         ROLLBACK;",
    );
    let r = relay(&["--postgres", &pg.url(), "-s", &addr]);
    // gearmand is down: nothing can be sent, nothing is deleted.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        pg.psql("SELECT count(*) FROM gearman.outbox"),
        "1000",
        "{}",
        r.log()
    );
    g.restart();
    let counter = Counter::start(&addr, "count_pg");
    assert!(
        wait_until(Duration::from_secs(60), || counter.count() >= 1000
            && pg.psql("SELECT count(*) FROM gearman.outbox") == "0"),
        "delivered {}, relay log:\n{}",
        counter.count(),
        r.log()
    );
    // Nothing more arrives afterwards.
    std::thread::sleep(Duration::from_millis(1000));
    counter.assert_exactly("row-", 1000);
    let log = stop_relay(r);
    assert_eq!(relayed_total(&log), 1000, "{log}");
}

#[test]
fn two_postgres_relays_deliver_each_row_once() {
    let g = Gearmand::start();
    let pg = Postgres::start();
    pg.psql(PG_OUTBOX_DDL);
    let counter = Counter::start(&g.addr(), "count_two");
    let r1 = relay(&[
        "--postgres",
        &pg.url(),
        "-s",
        &g.addr(),
        "--batch-size",
        "7",
    ]);
    let r2 = relay(&[
        "--postgres",
        &pg.url(),
        "-s",
        &g.addr(),
        "--batch-size",
        "7",
    ]);
    // Rows committed while both relays run (woken by NOTIFY).
    for t in 0..20 {
        pg.psql(&format!(
            "BEGIN; INSERT INTO gearman.outbox (function, workload, priority)
               SELECT 'count_two', convert_to('r' || i, 'UTF8'), 'low' FROM generate_series({}, {}) i;
             SELECT pg_notify('gearman_outbox', ''); COMMIT;",
            t * 100 + 1,
            t * 100 + 100
        ));
    }
    assert!(
        wait_until(Duration::from_secs(60), || counter.count() >= 2000
            && pg.psql("SELECT count(*) FROM gearman.outbox") == "0"),
        "delivered {}:\n{}\n{}",
        counter.count(),
        r1.log(),
        r2.log()
    );
    std::thread::sleep(Duration::from_millis(1000));
    counter.assert_exactly("r", 2000);
    let total = relayed_total(&stop_relay(r1)) + relayed_total(&stop_relay(r2));
    assert_eq!(total, 2000);
}

#[test]
fn postgres_outbox_run_at_in_the_future_becomes_a_scheduled_job() {
    let g = Gearmand::start();
    let pg = Postgres::start();
    pg.psql(PG_OUTBOX_DDL);
    let counter = Counter::start(&g.addr(), "count_later");
    pg.psql(
        "INSERT INTO gearman.outbox (function, workload, unique_key, run_at)
         VALUES ('count_later', 'later1', 'later-key', now() + interval '3 seconds'),
                ('count_later', 'now1', NULL, now() - interval '1 hour');",
    );
    let run_at: f64 = pg
        .psql(
            "SELECT extract(epoch FROM run_at) FROM gearman.outbox WHERE unique_key = 'later-key'",
        )
        .parse()
        .unwrap();
    let run_at = std::time::UNIX_EPOCH + Duration::from_secs_f64(run_at);
    let r = relay(&["--postgres", &pg.url(), "-s", &g.addr()]);
    // Both rows leave the outbox at once; the past-due one runs now.
    assert!(
        wait_until(Duration::from_secs(10), || pg
            .psql("SELECT count(*) FROM gearman.outbox")
            == "0"),
        "{}",
        r.log()
    );
    assert!(wait_until(Duration::from_secs(5), || counter
        .seen
        .lock()
        .unwrap()
        .contains(&"now1".to_string())));
    // The scheduled one arrives, not before its time (gearmand schedules
    // by whole seconds; the core worker re-grabs every 5 s while idle, as
    // gearmand 1.1.20 announces no epoch job).
    assert!(
        wait_until(Duration::from_secs(20), || counter.count() >= 2),
        "scheduled job never arrived"
    );
    let i = counter
        .seen
        .lock()
        .unwrap()
        .iter()
        .position(|w| w == "later1");
    let at = counter.arrived.lock().unwrap()[i.expect("later1 arrived")];
    assert!(
        at + Duration::from_secs(1) >= run_at,
        "later1 ran {:?} before its run_at",
        run_at.duration_since(at).unwrap_or_default()
    );
    counter.assert_exactly_set(&["now1", "later1"]);
    stop_relay(r);
}

fn mariadb_with_outbox() -> MariaDb {
    let db = MariaDb::start();
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sql/mysql/outbox.sql"
    ))
    .unwrap();
    db.sql(&sql).unwrap();
    db
}

#[test]
fn mysql_outbox_committed_rows_arrive_once_after_gearmand_starts() {
    let mut g = Gearmand::start();
    let addr = g.addr();
    g.kill();
    let db = mariadb_with_outbox();
    // 500 rows through the procedure (unique key NULL -> UUID), 500 inserted
    // directly (unique key NULL -> generated by the relay), 100 rolled back.
    db.sql(
        "START TRANSACTION;
         INSERT INTO gearman_outbox (`function`, workload)
           SELECT 'count_my', CONCAT('row-', seq) FROM seq_501_to_1000;
         COMMIT;",
    )
    .unwrap();
    let mut calls = String::from("START TRANSACTION;");
    for i in 1..=500 {
        calls.push_str(&format!(
            "CALL gearman_outbox_enqueue('count_my', 'row-{i}', NULL, 'high', NULL);"
        ));
    }
    calls.push_str("COMMIT;");
    db.sql(&calls).unwrap();
    db.sql(
        "START TRANSACTION;
         INSERT INTO gearman_outbox (`function`, workload)
           SELECT 'count_my', CONCAT('rolledback-', seq) FROM seq_1_to_100;
         ROLLBACK;",
    )
    .unwrap();
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM gearman_outbox")
            .unwrap()
            .trim(),
        "1000"
    );
    let r = relay(&["--mysql", &db.url(), "-s", &addr]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM gearman_outbox")
            .unwrap()
            .trim(),
        "1000",
        "{}",
        r.log()
    );
    g.restart();
    let counter = Counter::start(&addr, "count_my");
    assert!(
        wait_until(Duration::from_secs(60), || counter.count() >= 1000
            && db
                .sql("SELECT COUNT(*) FROM gearman_outbox")
                .unwrap()
                .trim()
                == "0"),
        "delivered {}, relay log:\n{}",
        counter.count(),
        r.log()
    );
    std::thread::sleep(Duration::from_millis(1000));
    counter.assert_exactly("row-", 1000);
    let log = stop_relay(r);
    assert_eq!(relayed_total(&log), 1000, "{log}");
}

#[test]
fn two_mysql_relays_deliver_each_row_once() {
    let g = Gearmand::start();
    let db = mariadb_with_outbox();
    let counter = Counter::start(&g.addr(), "count_my2");
    let r1 = relay(&["--mysql", &db.url(), "-s", &g.addr(), "--batch-size", "7"]);
    let r2 = relay(&["--mysql", &db.url(), "-s", &g.addr(), "--batch-size", "7"]);
    for t in 0..10 {
        db.sql(&format!(
            "INSERT INTO gearman_outbox (`function`, workload)
               SELECT 'count_my2', CONCAT('r', seq) FROM seq_{}_to_{};",
            t * 100 + 1,
            t * 100 + 100
        ))
        .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(60), || counter.count() >= 1000
            && db
                .sql("SELECT COUNT(*) FROM gearman_outbox")
                .unwrap()
                .trim()
                == "0"),
        "delivered {}:\n{}\n{}",
        counter.count(),
        r1.log(),
        r2.log()
    );
    std::thread::sleep(Duration::from_millis(1000));
    if counter.count() != 1000 {
        eprintln!("relay 1:\n{}\nrelay 2:\n{}", r1.log(), r2.log());
    }
    counter.assert_exactly("r", 1000);
    let (l1, l2) = (stop_relay(r1), stop_relay(r2));
    let total = relayed_total(&l1) + relayed_total(&l2);
    assert_eq!(total, 1000, "relay 1:\n{l1}\nrelay 2:\n{l2}");
}

#[test]
fn mysql_enqueue_procedure_rejects_bad_input() {
    let db = mariadb_with_outbox();
    let e = db
        .sql("CALL gearman_outbox_enqueue('', 'w', NULL, NULL, NULL)")
        .unwrap_err();
    assert!(e.contains("function name is empty"), "{e}");
    let e = db
        .sql(&format!(
            "CALL gearman_outbox_enqueue('f', 'w', '{}', NULL, NULL)",
            "u".repeat(64)
        ))
        .unwrap_err();
    assert!(e.contains("longer than 63 bytes"), "{e}");
    let e = db
        .sql("CALL gearman_outbox_enqueue('f', 'w', NULL, 'urgent', NULL)")
        .unwrap_err();
    assert!(e.contains("priority"), "{e}");
    db.sql("CALL gearman_outbox_enqueue('f', NULL, 'k1', NULL, NULL)")
        .unwrap();
    assert_eq!(
        db.sql("SELECT `function`, LENGTH(workload), unique_key, priority FROM gearman_outbox")
            .unwrap()
            .trim(),
        "f\t0\tk1\tnormal"
    );
    // A NULL unique key gets a UUID.
    db.sql("CALL gearman_outbox_enqueue('f', 'w2', NULL, 'LOW', NULL)")
        .unwrap();
    assert_eq!(
        db.sql("SELECT LENGTH(unique_key), priority FROM gearman_outbox WHERE workload = 'w2'")
            .unwrap()
            .trim(),
        "36\tlow"
    );
}

#[test]
fn relay_without_sources_is_a_usage_error() {
    let (st, _, err) = run_to_end(&["relay", "-s", "127.0.0.1:1"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("--postgres"), "{err}");
}
