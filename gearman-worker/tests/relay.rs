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

/// The gearman-pg extension's own outbox SQL (gearman-pg/sql/outbox.sql),
/// without the calls only an extension script may make, so these tests use
/// the real table and grants without the extension being installed.
fn pg_outbox_ddl() -> String {
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../gearman-pg/sql/outbox.sql"
    ))
    .unwrap();
    sql.lines()
        .filter(|l| !l.contains("pg_extension_config_dump"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn postgres_with_outbox() -> Postgres {
    let pg = Postgres::start();
    pg.psql(&pg_outbox_ddl());
    pg
}

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

/// Lines of `log` that contain `needle`.
fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Makes gearmand refuse every new job of `function` with QUEUE_ERROR: one
/// queued job makes the function known, then `maxqueue function 1`.
fn refusing_function(g: &Gearmand, function: &str) {
    let mut c = client(&g.addr());
    c.submit_background(&gearman_core::Job::new(function, "filler"))
        .unwrap();
    let addr = ServerList::parse(&g.addr()).unwrap();
    gearman_core::admin::Admin::connect(addr.get(0).unwrap(), Duration::from_secs(5))
        .unwrap()
        .maxqueue(function, Some(1))
        .unwrap();
    let e = c
        .submit_background(&gearman_core::Job::new(function, "probe"))
        .unwrap_err();
    assert!(e.to_string().contains("QUEUE_ERROR"), "{e}");
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
    let pg = postgres_with_outbox();
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
    // gearmand is down: nothing can be sent, nothing is deleted, and a
    // lost connection is not held against the rows.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        pg.psql(
            "SELECT count(*) FROM gearman.outbox WHERE failed_at IS NULL AND attempts = 0 \
             AND last_error IS NULL"
        ),
        "1000",
        "{}",
        r.log()
    );
    // About 7 batches failed; the same line is written once.
    assert_eq!(
        count_lines(&r.log(), "not sent, retrying later"),
        1,
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
    let pg = postgres_with_outbox();
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
    let pg = postgres_with_outbox();
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
        db.sql(
            "SELECT COUNT(*) FROM gearman_outbox WHERE failed_at IS NULL AND attempts = 0 \
             AND last_error IS NULL"
        )
        .unwrap()
        .trim(),
        "1000",
        "{}",
        r.log()
    );
    assert_eq!(
        count_lines(&r.log(), "not sent, retrying later"),
        1,
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

/// The rows of the set-aside tests: 12 that cannot be sent (64-byte unique
/// keys), 3 the job server refuses (QUEUE_ERROR), then 2 good ones; with
/// batches of 5 the good rows are behind three full batches of bad ones.
const BAD_THEN_GOOD: usize = 17;

/// Checks what the relay made of [`BAD_THEN_GOOD`]: `rows` is
/// `id_order, attempts, failed_at set, last_error` per remaining row.
fn assert_set_aside(rows: &str, log: &str) {
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 15, "rows left: {rows:?}\n{log}");
    for r in &rows[..12] {
        assert_eq!((r[1], r[2]), ("1", "t"), "{r:?}");
        assert!(r[3].contains("unique key is 64 bytes"), "{r:?}");
    }
    for r in &rows[12..] {
        assert_eq!((r[1], r[2]), ("2", "t"), "{r:?}");
        assert!(r[3].contains("QUEUE_ERROR"), "{r:?}");
    }
    // Each kind of line once (rate-limited), not once per row or batch.
    assert_eq!(count_lines(log, "set aside"), 1, "{log}");
    assert_eq!(count_lines(log, "refused, tried again later"), 1, "{log}");
}

#[test]
fn postgres_rows_that_cannot_be_sent_are_set_aside_and_never_block_the_rows_behind() {
    let g = Gearmand::start();
    refusing_function(&g, "refused_pg");
    let pg = postgres_with_outbox();
    let counter = Counter::start(&g.addr(), "count_good_pg");
    pg.psql(&format!(
        "INSERT INTO gearman.outbox (function, workload, unique_key)
           SELECT 'count_good_pg', 'never', repeat('k', 63) || i % 10 FROM generate_series(1, 12) i;
         INSERT INTO gearman.outbox (function, workload)
           SELECT 'refused_pg', 'full' FROM generate_series(1, 3);
         INSERT INTO gearman.outbox (function, workload) VALUES
           ('count_good_pg', 'good1'), ('count_good_pg', 'good2');
         SELECT count(*) FROM gearman.outbox HAVING count(*) = {BAD_THEN_GOOD};"
    ));
    let r = relay(&[
        "--postgres",
        &pg.url(),
        "-s",
        &g.addr(),
        "--batch-size",
        "5",
        "--max-attempts",
        "2",
    ]);
    assert!(
        wait_until(Duration::from_secs(30), || counter.count() >= 2
            && pg.psql(
                "SELECT count(*) FROM gearman.outbox WHERE failed_at IS NULL"
            ) == "0"),
        "delivered {}; outbox:\n{}\nrelay log:\n{}",
        counter.count(),
        pg.psql("SELECT id, attempts, failed_at, last_error FROM gearman.outbox ORDER BY id"),
        r.log()
    );
    counter.assert_exactly("good", 2);
    let rows = pg.psql(
        "SELECT concat_ws(E'\\t', id, attempts, (failed_at IS NOT NULL)::text::char, \
                last_error) FROM gearman.outbox ORDER BY id",
    );
    let log = stop_relay(r);
    assert_set_aside(&rows, &log);
    assert_eq!(relayed_total(&log), 2, "{log}");
}

#[test]
fn mysql_rows_that_cannot_be_sent_are_set_aside_and_never_block_the_rows_behind() {
    let g = Gearmand::start();
    refusing_function(&g, "refused_my");
    let db = mariadb_with_outbox();
    let counter = Counter::start(&g.addr(), "count_good_my");
    // A 64-byte unique key does not fit the column: that column was made
    // longer by an older schema or by hand; the relay must cope either way.
    db.sql(
        "ALTER TABLE gearman_outbox MODIFY unique_key VARBINARY(255) NULL;
         INSERT INTO gearman_outbox (`function`, workload, unique_key)
           SELECT 'count_good_my', 'never', CONCAT(REPEAT('k', 63), seq % 10) FROM seq_1_to_12;
         INSERT INTO gearman_outbox (`function`, workload)
           SELECT 'refused_my', 'full' FROM seq_1_to_3;
         INSERT INTO gearman_outbox (`function`, workload) VALUES
           ('count_good_my', 'good1'), ('count_good_my', 'good2');",
    )
    .unwrap();
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM gearman_outbox")
            .unwrap()
            .trim(),
        BAD_THEN_GOOD.to_string()
    );
    let r = relay(&[
        "--mysql",
        &db.url(),
        "-s",
        &g.addr(),
        "--batch-size",
        "5",
        "--max-attempts",
        "2",
    ]);
    let pending = || {
        db.sql("SELECT COUNT(*) FROM gearman_outbox WHERE failed_at IS NULL")
            .unwrap()
            .trim()
            .to_string()
    };
    assert!(
        wait_until(Duration::from_secs(30), || counter.count() >= 2
            && pending() == "0"),
        "delivered {}; relay log:\n{}",
        counter.count(),
        r.log()
    );
    counter.assert_exactly("good", 2);
    let rows = db
        .sql(
            "SELECT id, attempts, IF(failed_at IS NOT NULL, 't', 'f'), last_error \
             FROM gearman_outbox ORDER BY id",
        )
        .unwrap();
    let log = stop_relay(r);
    assert_set_aside(&rows, &log);
    assert_eq!(relayed_total(&log), 2, "{log}");
}

#[test]
fn postgres_outbox_is_not_writable_by_public() {
    let pg = postgres_with_outbox();
    pg.psql("CREATE ROLE app LOGIN; CREATE ROLE other LOGIN;");
    let e = pg
        .try_psql(
            "SET ROLE other; INSERT INTO gearman.outbox (function, workload) VALUES ('f', 'x');",
        )
        .unwrap_err();
    assert!(e.contains("permission denied for table outbox"), "{e}");
    // The documented grant lets a chosen role write the job columns only.
    pg.psql(
        "CREATE ROLE gearman_writer NOLOGIN;
         GRANT INSERT (function, workload, unique_key, priority, run_at)
           ON gearman.outbox TO gearman_writer;
         GRANT USAGE ON SEQUENCE gearman.outbox_id_seq TO gearman_writer;
         GRANT gearman_writer TO app;",
    );
    pg.psql("SET ROLE app; INSERT INTO gearman.outbox (function, workload) VALUES ('f', 'x');");
    let e = pg
        .try_psql(
            "SET ROLE app; INSERT INTO gearman.outbox (function, workload, failed_at) \
             VALUES ('f', 'x', now());",
        )
        .unwrap_err();
    assert!(e.contains("permission denied"), "{e}");
    let e = pg
        .try_psql(
            "SET ROLE other; INSERT INTO gearman.outbox (function, workload) VALUES ('f', 'x');",
        )
        .unwrap_err();
    assert!(e.contains("permission denied"), "{e}");
    assert_eq!(pg.psql("SELECT count(*) FROM gearman.outbox"), "1");
}

#[test]
fn mysql_outbox_writers_need_a_grant_and_the_procedure_runs_as_its_definer() {
    use mysql::prelude::Queryable;
    let db = mariadb_with_outbox();
    db.sql(
        "CREATE USER 'app'@'%' IDENTIFIED BY 'pw';
         GRANT EXECUTE ON PROCEDURE test.gearman_outbox_enqueue TO 'app'@'%';",
    )
    .unwrap();
    let mut c = mysql::Conn::new(
        mysql::Opts::from_url(&format!("mysql://app:pw@127.0.0.1:{}/test", db.port())).unwrap(),
    )
    .unwrap();
    let e = c
        .query_drop("INSERT INTO gearman_outbox (`function`, workload) VALUES ('f', 'x')")
        .unwrap_err();
    assert!(e.to_string().contains("denied"), "{e}");
    c.query_drop("CALL gearman_outbox_enqueue('f', 'x', NULL, NULL, NULL)")
        .unwrap();
    assert_eq!(
        db.sql("SELECT `function`, workload FROM gearman_outbox")
            .unwrap()
            .trim(),
        "f\tx"
    );
}

#[test]
fn mysql_outbox_sql_upgrades_an_older_table_and_keeps_its_rows() {
    let db = MariaDb::start();
    db.sql(
        "CREATE TABLE gearman_outbox (
           id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
           `function` VARCHAR(512) NOT NULL, workload LONGBLOB NOT NULL,
           unique_key VARBINARY(63) NULL,
           priority ENUM('high', 'normal', 'low') NOT NULL DEFAULT 'normal',
           run_at DATETIME NULL, created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
         ) ENGINE = InnoDB;
         INSERT INTO gearman_outbox (`function`, workload) VALUES ('old', 'kept');",
    )
    .unwrap();
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sql/mysql/outbox.sql"
    ))
    .unwrap();
    db.sql(&sql).unwrap();
    db.sql(&sql).unwrap(); // and again: idempotent
    assert_eq!(
        db.sql("SELECT `function`, workload, attempts, last_error, failed_at FROM gearman_outbox")
            .unwrap()
            .trim(),
        "old\tkept\t0\tNULL\tNULL"
    );
}

#[test]
fn a_relay_on_an_outbox_without_the_set_aside_columns_says_what_to_do() {
    let g = Gearmand::start();
    let pg = Postgres::start();
    pg.psql(
        "CREATE SCHEMA gearman; CREATE TABLE gearman.outbox (id bigserial primary key, \
         function text not null, workload bytea not null, unique_key text, \
         priority text not null default 'normal', run_at timestamptz, \
         created_at timestamptz default now());",
    );
    let r = relay(&["--postgres", &pg.url(), "-s", &g.addr()]);
    assert!(
        wait_until(Duration::from_secs(10), || r
            .log()
            .contains("ALTER TABLE gearman.outbox")),
        "{}",
        r.log()
    );
    let log = stop_relay(r);
    assert!(log.contains("failed_at"), "{log}");
    // A table made by extension 0.1.0 is upgraded with the extension, not by
    // hand (ALTER EXTENSION UPDATE would then fail on the existing columns).
    assert!(log.contains("ALTER EXTENSION gearman UPDATE"), "{log}");
}
