//! SQL-level tests of the installed extension over real connections: a
//! private PostgreSQL 15 (testkit), a private gearmand, and a worker built
//! from `gearman_core::worker` on a thread. These cover what `#[pg_test]`
//! cannot: COMMIT (a `#[pg_test]` always rolls back), several sessions,
//! cancel from another connection.
//!
//! Needs the extension installed first:
//! `cargo pgrx install -p gearman-pg --pg-config /usr/lib/postgresql/15/bin/pg_config`.

mod support;

use postgres::fallible_iterator::FallibleIterator;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Env, Session, TestWorker};

const WAIT: Duration = Duration::from_secs(10);

/// Sends `marker` for `function` from another session with immediate
/// dispatch and waits until the worker has it. Jobs of one function reach
/// a single worker in queue order, so anything queued before the marker
/// has arrived by then: a job that is still missing was never sent.
fn barrier(env: &Env, worker: &TestWorker, function: &str, marker: &str) {
    let mut s = env.connect();
    s.exec("SET gearman.dispatch = 'immediate'");
    let h = s.one(&format!(
        "SELECT gman_do_background('{function}', '{marker}')"
    ));
    assert!(h.unwrap_or_default().starts_with("H:"));
    worker.wait_for_workload(marker);
}

#[test]
fn commit_sends_after_commit_and_worker_reads_the_row() {
    let env = Env::start();
    let url = env.pg.url();
    // The worker looks the row up in PostgreSQL when the job arrives.
    let worker = TestWorker::start(&env.addr(), &["row_check", "f"], move |job| {
        if job.function() != "row_check" {
            return Ok(job.workload().to_vec());
        }
        let id: i32 = String::from_utf8_lossy(job.workload())
            .parse()
            .unwrap_or(-1);
        let mut c = postgres::Client::connect(&url, postgres::NoTls)
            .map_err(|_| gearman_core::worker::WorkError::Fail)?;
        let n: i64 = c
            .query_one("SELECT count(*) FROM items WHERE id = $1", &[&id])
            .map(|r| r.get(0))
            .unwrap_or(-1);
        Ok(n.to_string().into_bytes())
    });
    let mut s = env.connect();
    s.exec("CREATE TABLE items (id int PRIMARY KEY, name text)");
    s.exec("BEGIN");
    s.exec("INSERT INTO items VALUES (1, 'one')");
    let key = s
        .one("SELECT gman_do_background('row_check', '1')")
        .expect("a unique key");
    assert_eq!(key.len(), 36, "commit mode returns a generated UUID: {key}");
    let key2 = s
        .one("SELECT gman_do_background('f', 'held', 'my-key-1')")
        .unwrap();
    assert_eq!(
        key2, "my-key-1",
        "commit mode returns the caller's unique key"
    );
    barrier(&env, &worker, "f", "barrier-before-commit");
    assert!(
        !worker.workloads().iter().any(|w| w == "held" || w == "1"),
        "a job was sent before COMMIT: {:?}",
        worker.workloads()
    );
    s.exec("COMMIT");
    let seen = worker.wait_for(3, WAIT);
    let row_job = seen
        .iter()
        .find(|j| j.function == "row_check")
        .expect("row_check job after COMMIT");
    assert_eq!(
        row_job.unique,
        key.as_bytes(),
        "the job carries the returned unique key"
    );
    let held = seen
        .iter()
        .find(|j| j.workload == b"held")
        .expect("held job after COMMIT");
    assert_eq!(held.unique, b"my-key-1");
    // The worker saw the committed row: run a foreground check job, whose
    // handler is the same; its answer for id 1 must be 1.
    assert_eq!(
        s.one("SELECT gman_do('row_check', '1')").as_deref(),
        Some("1")
    );
    assert_eq!(
        s.one("SELECT gman_do('row_check', '2')").as_deref(),
        Some("0")
    );
}

#[test]
fn worker_sees_row_inserted_in_the_committing_transaction() {
    let env = Env::start();
    let url = env.pg.url();
    let (tx, rx) = std::sync::mpsc::channel::<i64>();
    let tx = std::sync::Mutex::new(tx);
    let _worker = TestWorker::start(&env.addr(), &["lookup"], move |job| {
        let id: i32 = String::from_utf8_lossy(job.workload())
            .parse()
            .unwrap_or(-1);
        let n: i64 = postgres::Client::connect(&url, postgres::NoTls)
            .and_then(|mut c| c.query_one("SELECT count(*) FROM docs WHERE id = $1", &[&id]))
            .map(|r| r.get(0))
            .unwrap_or(-1);
        let _ = tx.lock().unwrap().send(n);
        Ok(Vec::new())
    });
    let mut s = env.connect();
    s.exec("CREATE TABLE docs (id int PRIMARY KEY)");
    s.exec(
        "BEGIN; INSERT INTO docs VALUES (42); SELECT gman_do_background('lookup', '42'); COMMIT",
    );
    let n = rx.recv_timeout(WAIT).expect("the job arrives after COMMIT");
    assert_eq!(
        n, 1,
        "when the job arrives the worker can read the committed row"
    );
}

#[test]
fn rollback_sends_nothing() {
    let env = Env::start();
    let worker = env.worker(&["f"]);
    let mut s = env.connect();
    s.exec("BEGIN");
    s.exec("SELECT gman_do_background('f', 'rolled-back-1')");
    s.exec("SELECT gman_do_high_background('f', 'rolled-back-2')");
    s.exec("SELECT gman_do_low_background('f', convert_to('rolled-back-3', 'UTF8'))");
    s.exec("ROLLBACK");
    // A failing statement aborts the transaction too.
    s.exec("BEGIN");
    s.exec("SELECT gman_do_background('f', 'aborted-by-error')");
    let e = s.exec_err("SELECT 1/0");
    assert_eq!(e.code, "22012");
    s.exec("ROLLBACK");
    barrier(&env, &worker, "f", "barrier");
    assert_eq!(worker.workloads(), vec!["barrier".to_string()]);
}

#[test]
fn rollback_to_savepoint_sends_only_jobs_outside_it() {
    let env = Env::start();
    let worker = env.worker(&["f"]);
    let mut s = env.connect();
    s.exec("BEGIN");
    s.exec("SELECT gman_do_background('f', 'a')");
    s.exec("SAVEPOINT s1");
    s.exec("SELECT gman_do_background('f', 'b')");
    s.exec("SAVEPOINT s2");
    s.exec("SELECT gman_do_background('f', 'c')");
    s.exec("ROLLBACK TO SAVEPOINT s1");
    s.exec("SELECT gman_do_background('f', 'd')");
    s.exec("SAVEPOINT s3");
    s.exec("SELECT gman_do_background('f', 'e')");
    s.exec("RELEASE SAVEPOINT s3");
    // A PL/pgSQL exception block is a subtransaction as well.
    s.exec(
        "DO $$ BEGIN
            BEGIN
              PERFORM gman_do_background('f', 'in-failed-block');
              RAISE EXCEPTION 'boom';
            EXCEPTION WHEN others THEN
              PERFORM gman_do_background('f', 'in-handler');
            END;
          END $$",
    );
    s.exec("COMMIT");
    worker.wait_for(4, WAIT);
    barrier(&env, &worker, "f", "barrier");
    let mut got = worker.workloads();
    got.retain(|w| w != "barrier");
    assert_eq!(got, vec!["a", "d", "e", "in-handler"]);
}

#[test]
fn held_jobs_go_to_the_servers_configured_at_call_time() {
    let env = Env::start();
    let other = gearman_testkit::Gearmand::start();
    let w1 = env.worker(&["f"]);
    let w2 = TestWorker::start(&other.addr(), &["f"], support::handlers::echo);
    let mut s = env.connect();
    s.exec("BEGIN");
    s.exec("SELECT gman_do_background('f', 'to-first')");
    s.exec(&format!("SELECT gman_servers_set('{}')", other.addr()));
    s.exec("SELECT gman_do_background('f', 'to-second')");
    s.exec("COMMIT");
    w1.wait_for_workload("to-first");
    w2.wait_for_workload("to-second");
    assert_eq!(w1.workloads(), vec!["to-first"]);
    assert_eq!(w2.workloads(), vec!["to-second"]);
}

#[test]
fn commit_with_gearmand_down_fails_or_warns() {
    let mut env = Env::start();
    let mut s = env.connect();
    s.exec("CREATE TABLE t (x int)");
    env.gearmand.kill();
    s.exec("BEGIN");
    s.exec("INSERT INTO t VALUES (1)");
    s.exec("SELECT gman_do_background('f', 'x')");
    let started = Instant::now();
    let e = s.exec_err("COMMIT");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "COMMIT took {:?}",
        started.elapsed()
    );
    assert_eq!(e.code, "08001", "{e:?}");
    assert!(e.message.contains("rolled back"), "{e:?}");
    assert!(e.hint.as_deref().unwrap_or("").contains("outbox"), "{e:?}");
    assert_eq!(
        s.one("SELECT count(*) FROM t").as_deref(),
        Some("0"),
        "the transaction failed"
    );

    // on_error = warning: the transaction commits, the jobs are reported lost.
    s.exec("SET gearman.on_error = 'warning'");
    s.exec("BEGIN; INSERT INTO t VALUES (2); SELECT gman_do_background('f', 'y'); COMMIT");
    assert_eq!(s.one("SELECT count(*) FROM t").as_deref(), Some("1"));
    let notices = s.take_notices();
    assert!(
        notices
            .iter()
            .any(|n| n.starts_with("WARNING") && n.contains("dropped")),
        "{notices:?}"
    );

    // gearmand back: the next transaction's jobs arrive.
    env.gearmand.restart();
    let worker = env.worker(&["f"]);
    s.exec("RESET gearman.on_error");
    s.exec("BEGIN; SELECT gman_do_background('f', 'after-restart'); COMMIT");
    worker.wait_for_workload("after-restart");
}

#[test]
fn prepare_transaction_with_held_jobs_is_an_error_naming_outbox() {
    let env = Env::start_with(&["max_prepared_transactions=4"]);
    let worker = env.worker(&["f"]);
    let mut s = env.connect();
    s.exec("BEGIN; SELECT gman_do_background('f', 'prepared')");
    let e = s.exec_err("PREPARE TRANSACTION 'p1'");
    assert!(e.message.contains("PREPARE"), "{e:?}");
    assert!(e.hint.as_deref().unwrap_or("").contains("outbox"), "{e:?}");
    s.exec("ROLLBACK");
    // With outbox dispatch two-phase commit works.
    s.exec("SET gearman.dispatch = 'outbox'");
    s.exec("BEGIN; SELECT gman_do_background('f', 'via-outbox'); PREPARE TRANSACTION 'p2'");
    s.exec("COMMIT PREPARED 'p2'");
    assert_eq!(
        s.one("SELECT convert_from(workload, 'UTF8') FROM gearman.outbox")
            .as_deref(),
        Some("via-outbox")
    );
    barrier(&env, &worker, "f", "barrier");
    assert_eq!(worker.workloads(), vec!["barrier"]);
}

#[test]
fn outbox_rows_are_written_in_the_transaction_with_notify() {
    let env = Env::start();
    let mut listener = env.connect();
    listener.exec("LISTEN gearman_outbox");
    let mut s = env.connect();
    s.exec("SET gearman.dispatch = 'outbox'");
    s.exec("BEGIN; SELECT gman_do_background('f', 'rolled-back'); ROLLBACK");
    s.exec("BEGIN");
    let key = s
        .one("SELECT gman_do_high_background('mail', 'hello')")
        .unwrap();
    assert_eq!(key.len(), 36);
    let key2 = s
        .one("SELECT gman_do_background_at('mail', '\\x00ff'::bytea, '2030-01-01 00:00:00+00', 'k2')")
        .unwrap();
    assert_eq!(key2, "k2");
    s.exec("COMMIT");
    let rows = s.rows(
        "SELECT function, encode(workload, 'hex'), unique_key, priority, \
         extract(epoch from run_at)::bigint FROM gearman.outbox ORDER BY id",
    );
    assert_eq!(
        rows,
        vec![
            vec![
                Some("mail".into()),
                Some(hex("hello")),
                Some(key),
                Some("high".into()),
                None
            ],
            vec![
                Some("mail".into()),
                Some("00ff".into()),
                Some("k2".into()),
                Some("normal".into()),
                Some("1893456000".into())
            ],
        ]
    );
    // The NOTIFY is delivered to the listener after COMMIT.
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        listener.exec("SELECT 1");
        let mut n = listener.client.notifications();
        let mut it = n.timeout_iter(Duration::from_millis(200));
        while let Ok(Some(x)) = it.next() {
            got.push((x.channel().to_string(), x.payload().to_string()));
        }
    }
    assert_eq!(
        got,
        vec![("gearman_outbox".to_string(), "mail".to_string())]
    );
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn immediate_dispatch_returns_handles_and_status() {
    let env = Env::start();
    let mut s = env.connect();
    s.exec("SET gearman.dispatch = 'immediate'");
    // No worker yet: the job stays queued and its status is known.
    let h = s
        .one("SELECT gman_do_background('later', 'x', 'u-1')")
        .unwrap();
    assert!(h.starts_with("H:"), "{h}");
    let row = s.rows(&format!("SELECT * FROM gman_job_status('{h}')"));
    assert_eq!(
        row,
        vec![vec![
            Some("t".into()),
            Some("f".into()),
            Some("0".into()),
            Some("0".into())
        ]]
    );
    // By unique key (GET_STATUS_UNIQUE).
    let row = s.rows("SELECT known, running FROM gman_job_status('u-1')");
    assert_eq!(row, vec![vec![Some("t".into()), Some("f".into())]]);
    // Unknown handle and unknown key.
    let row = s.rows("SELECT known FROM gman_job_status('H:nowhere:1')");
    assert_eq!(row, vec![vec![Some("f".into())]]);
    let row = s.rows("SELECT known FROM gman_job_status('no-such-key')");
    assert_eq!(row, vec![vec![Some("f".into())]]);
    // The server status lists the queued job.
    let rows = s.rows("SELECT server, function, queued, running, workers FROM gman_server_status() WHERE function = 'later'");
    assert_eq!(
        rows,
        vec![vec![
            Some(env.addr()),
            Some("later".into()),
            Some("1".into()),
            Some("0".into()),
            Some("0".into())
        ]]
    );
    // Once served, the job is no longer known.
    let worker = env.worker(&["later"]);
    worker.wait_for_workload("x");
    let deadline = Instant::now() + WAIT;
    loop {
        let known = s.one(&format!("SELECT known FROM gman_job_status('{h}')"));
        if known.as_deref() == Some("f") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job still known after it was served"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn job_status_looks_on_per_function_server_lists() {
    // A job sent to a function's own server list (gman_servers_set) is found
    // there by unique key, and by handle from another session with the same
    // list. (gearmand numbers handles per server, H:host:1, 2, ...: the
    // default server here holds no job, so no handle is known there.)
    let env = Env::start();
    let other = gearman_testkit::Gearmand::start();
    let mut s = env.connect();
    s.exec("SET gearman.dispatch = 'immediate'");
    let set = format!("SELECT gman_servers_set('{}', 'routed')", other.addr());
    s.exec(&set);
    let h = s
        .one("SELECT gman_do_background('routed', 'x', 'routed-key')")
        .unwrap();
    let row = s.rows("SELECT known FROM gman_job_status('routed-key')");
    assert_eq!(row, vec![vec![Some("t".into())]]);
    let mut s2 = env.connect();
    let row = s2.rows("SELECT known FROM gman_job_status('routed-key')");
    assert_eq!(row, vec![vec![Some("f".into())]], "not on the default list");
    let row = s2.rows(&format!("SELECT known FROM gman_job_status('{h}')"));
    assert_eq!(row, vec![vec![Some("f".into())]], "not on the default list");
    s2.exec(&set);
    let row = s2.rows("SELECT known FROM gman_job_status('routed-key')");
    assert_eq!(row, vec![vec![Some("t".into())]]);
    let row = s2.rows(&format!("SELECT known FROM gman_job_status('{h}')"));
    assert_eq!(row, vec![vec![Some("t".into())]]);
}

#[test]
fn statement_timeout_ends_a_waiting_gman_do_and_the_session_still_works() {
    let env = Env::start();
    let mut s = env.connect();
    s.exec("SET statement_timeout = '300ms'");
    let started = Instant::now();
    let e = s.exec_err("SELECT gman_do('nobody_serves_this', 'x')");
    let took = started.elapsed();
    assert_eq!(e.code, "57014", "{e:?}");
    assert!(e.message.contains("statement timeout"), "{e:?}");
    // Well before gearman.timeout's default (the wait it cut short).
    assert!(took < Duration::from_secs(5), "took {took:?}");
    s.exec("RESET statement_timeout");
    assert_eq!(s.one("SELECT 1").as_deref(), Some("1"));
    let _w = env.worker(&["echo"]);
    assert_eq!(
        s.one("SELECT gman_do('echo', 'still works')").as_deref(),
        Some("still works")
    );
}

#[test]
fn gearman_timeout_ends_a_waiting_gman_do() {
    let env = Env::start();
    let mut s = env.connect();
    s.exec("SET gearman.timeout = '400ms'");
    assert_eq!(s.one("SHOW gearman.timeout").as_deref(), Some("400ms"));
    let started = Instant::now();
    let e = s.exec_err("SELECT gman_do('nobody_serves_this', 'x')");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(e.code, "57014", "{e:?}");
    assert!(
        e.hint.as_deref().unwrap_or("").contains("gearman.timeout"),
        "{e:?}"
    );
    assert!(
        e.detail
            .as_deref()
            .unwrap_or("")
            .contains("nobody_serves_this"),
        "{e:?}"
    );
    s.exec("SET gearman.on_error = 'warning'");
    assert_eq!(s.one("SELECT gman_do('nobody_serves_this', 'x')"), None);
    assert!(s.take_notices().iter().any(|n| n.starts_with("WARNING")));
}

#[test]
fn pg_cancel_backend_ends_a_waiting_gman_do() {
    let env = Env::start();
    let mut s = env.connect();
    let pid = s.one("SELECT pg_backend_pid()").unwrap();
    let url = env.pg.url();
    let canceller = std::thread::spawn(move || {
        // Cancel once the backend is waiting in gman_do (a cancel that comes
        // before the statement starts is lost).
        let mut c = Session::connect(&url);
        let t = Instant::now();
        while c
            .one(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active' \
                 AND query LIKE '%gman_do(%'"
            ))
            .as_deref()
            != Some("1")
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "gman_do never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let at = Instant::now();
        c.exec(&format!("SELECT pg_cancel_backend({pid})"));
        at
    });
    let e = s.exec_err("SELECT gman_do('nobody_serves_this', 'x')");
    let ended = Instant::now();
    let cancelled_at = canceller.join().unwrap();
    assert_eq!(e.code, "57014", "{e:?}");
    assert!(e.message.contains("cancel"), "{e:?}");
    assert!(
        ended.duration_since(cancelled_at) < Duration::from_secs(5),
        "returned {:?} after the cancel",
        ended.duration_since(cancelled_at)
    );
    assert_eq!(s.one("SELECT 1").as_deref(), Some("1"));
    let _w = env.worker(&["echo"]);
    assert_eq!(
        s.one("SELECT gman_do('echo', 'after cancel')").as_deref(),
        Some("after cancel")
    );
}

#[test]
fn gearmand_stopped_gives_clear_error_or_warning_and_restart_recovers() {
    let mut env = Env::start();
    let _w = env.worker(&["echo"]);
    let mut s = env.connect();
    assert_eq!(s.one("SELECT gman_do('echo', 'up')").as_deref(), Some("up"));
    env.gearmand.kill();
    let started = Instant::now();
    let e = s.exec_err("SELECT gman_do('echo', 'down')");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(e.code.starts_with("08"), "{e:?}");
    assert!(e.message.starts_with("gearman:"), "{e:?}");
    let detail = e.detail.clone().unwrap_or_default();
    assert!(
        detail.contains(&env.addr()) && detail.contains("echo"),
        "{e:?}"
    );
    assert!(
        e.hint.as_deref().unwrap_or("").contains("gearmand"),
        "{e:?}"
    );
    s.exec("SET gearman.dispatch = 'immediate'");
    let e = s.exec_err("SELECT gman_do_background('echo', 'down')");
    assert!(e.code.starts_with("08"), "{e:?}");

    s.exec("SET gearman.on_error = 'warning'");
    assert_eq!(s.one("SELECT gman_do('echo', 'down')"), None);
    assert_eq!(s.one("SELECT gman_do_background('echo', 'down')"), None);
    let notices = s.take_notices();
    assert_eq!(
        notices.iter().filter(|n| n.starts_with("WARNING")).count(),
        2,
        "{notices:?}"
    );

    env.gearmand.restart();
    let _w2 = env.worker(&["echo"]);
    s.exec("RESET gearman.on_error");
    assert_eq!(
        s.one("SELECT gman_do('echo', 'back')").as_deref(),
        Some("back")
    );
}

#[test]
fn big_bytea_round_trip_and_binary_results() {
    let env = Env::start();
    let _w = env.worker(&["echo"]);
    let mut s = env.connect();
    // 16 MiB of all byte values.
    let ok = s.one(
        "WITH w AS (SELECT decode(repeat('000102030405060708090a0b0c0d0e0f', 1048576), 'hex') AS b)
         SELECT gman_do('echo', b) = b AND length(gman_do('echo', b)) = 16777216 FROM w",
    );
    assert_eq!(ok.as_deref(), Some("t"));
    // A result with a NUL byte cannot be text; bytea returns it as is.
    let e = s.exec_err("SELECT gman_do('echo', convert_from('\\x610062'::bytea, 'SQL_ASCII'))");
    assert!(!e.message.is_empty());
    assert_eq!(
        s.one("SELECT encode(gman_do('echo', '\\x610062'::bytea), 'hex')")
            .as_deref(),
        Some("610062")
    );
}

#[test]
fn unique_over_63_bytes_is_rejected() {
    let env = Env::start();
    let mut s = env.connect();
    let e = s.exec_err("SELECT gman_do_background('f', 'x', repeat('u', 64))");
    assert_eq!(e.code, "22023");
    assert!(
        e.message.contains("64 bytes") && e.message.contains("63"),
        "{e:?}"
    );
    let e = s.exec_err("SELECT gman_do('f', 'x', repeat('u', 64))");
    assert_eq!(e.code, "22023");
    // 63 is fine.
    s.exec("SET gearman.dispatch = 'immediate'");
    let h = s
        .one("SELECT gman_do_background('f', 'x', repeat('u', 63))")
        .unwrap();
    assert!(h.starts_with("H:"));
}

#[test]
fn trigger_and_cookbook_trigger_deliver_exact_payloads() {
    let env = Env::start();
    let worker = env.worker(&["send_tweet", "row_events"]);
    let mut s = env.connect();
    // The cookbook's tweet_blog trigger, ported to PostgreSQL.
    s.exec(
        "CREATE TABLE blog_entries (id serial PRIMARY KEY, title text, url text);
         CREATE FUNCTION tweet_blog() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           PERFORM gman_do_background('send_tweet', NEW.title || ' - ' || NEW.url);
           RETURN NEW;
         END $$;
         CREATE TRIGGER tweet_blog BEFORE INSERT ON blog_entries
           FOR EACH ROW EXECUTE FUNCTION tweet_blog();
         CREATE TRIGGER row_events AFTER INSERT OR UPDATE OR DELETE ON blog_entries
           FOR EACH ROW EXECUTE FUNCTION gman_trigger('row_events', 'high');",
    );
    s.exec("INSERT INTO blog_entries (title, url) VALUES ('Hello', 'http://a.example/1')");
    s.exec(
        "INSERT INTO blog_entries (title, url) VALUES ('Quote \"q\" and ü', 'http://a.example/2')",
    );
    s.exec("UPDATE blog_entries SET title = 'Hi' WHERE id = 1");
    s.exec("DELETE FROM blog_entries WHERE id = 2");
    s.exec("BEGIN; INSERT INTO blog_entries (title, url) VALUES ('never', 'x'); ROLLBACK");
    assert_eq!(
        s.one("SELECT count(*) FROM blog_entries").as_deref(),
        Some("1")
    );
    let seen = worker.wait_for(6, WAIT);
    barrier(&env, &worker, "send_tweet", "barrier");
    let tweets: Vec<String> = worker
        .seen()
        .iter()
        .filter(|j| j.function == "send_tweet")
        .map(|j| String::from_utf8_lossy(&j.workload).into_owned())
        .collect();
    assert_eq!(
        tweets,
        vec![
            "Hello - http://a.example/1",
            "Quote \"q\" and ü - http://a.example/2",
            "barrier"
        ]
    );
    let events: Vec<serde_json::Value> = worker
        .seen()
        .iter()
        .filter(|j| j.function == "row_events")
        .map(|j| serde_json::from_slice(&j.workload).expect("valid JSON"))
        .collect();
    let expected: Vec<serde_json::Value> = vec![
        serde_json::json!({"schema":"public","table":"blog_entries","op":"INSERT",
            "new":{"id":1,"title":"Hello","url":"http://a.example/1"},"old":null}),
        serde_json::json!({"schema":"public","table":"blog_entries","op":"INSERT",
            "new":{"id":2,"title":"Quote \"q\" and ü","url":"http://a.example/2"},"old":null}),
        serde_json::json!({"schema":"public","table":"blog_entries","op":"UPDATE",
            "new":{"id":1,"title":"Hi","url":"http://a.example/1"},
            "old":{"id":1,"title":"Hello","url":"http://a.example/1"}}),
        serde_json::json!({"schema":"public","table":"blog_entries","op":"DELETE",
            "new":null,"old":{"id":2,"title":"Quote \"q\" and ü","url":"http://a.example/2"}}),
    ];
    assert_eq!(events, expected);
    let _ = seen;
    // A BEFORE row trigger passes the row through unchanged.
    s.exec(
        "CREATE TABLE b (x int);
         CREATE TRIGGER b_ev BEFORE INSERT OR DELETE ON b FOR EACH ROW EXECUTE FUNCTION gman_trigger('row_events');
         INSERT INTO b VALUES (7); DELETE FROM b;",
    );
    assert_eq!(s.one("SELECT count(*) FROM b").as_deref(), Some("0"));
    // Missing or bad trigger arguments are clear errors.
    s.exec("CREATE TABLE c (x int); CREATE TRIGGER c_ev AFTER INSERT ON c FOR EACH ROW EXECUTE FUNCTION gman_trigger()");
    let e = s.exec_err("INSERT INTO c VALUES (1)");
    assert!(e.message.contains("function name"), "{e:?}");
    s.exec("DROP TRIGGER c_ev ON c; CREATE TRIGGER c_ev AFTER INSERT ON c FOR EACH ROW EXECUTE FUNCTION gman_trigger('f', 'urgent')");
    let e = s.exec_err("INSERT INTO c VALUES (1)");
    assert!(e.message.contains("priority"), "{e:?}");
}

#[test]
fn foreground_functions_many_sum_and_overloads() {
    let env = Env::start();
    let _w = env.worker(&["echo"]);
    let mut s = env.connect();
    assert_eq!(s.one("SELECT gman_do('echo', 'a')").as_deref(), Some("a"));
    assert_eq!(
        s.one("SELECT gman_do_high('echo', 'b')").as_deref(),
        Some("b")
    );
    assert_eq!(
        s.one("SELECT gman_do_low('echo', 'c', 'uniq')").as_deref(),
        Some("c")
    );
    assert_eq!(s.one("SELECT gman_do('echo', NULL)").as_deref(), Some(""));
    assert_eq!(s.one("SELECT gman_do(NULL, 'x')"), None);
    assert_eq!(
        s.one("SELECT gman_do('echo', '{\"a\": [1, 2]}'::jsonb)")
            .as_deref(),
        Some("{\"a\": [1, 2]}")
    );
    assert_eq!(
        s.one("SELECT gman_do('echo', 42::text)").as_deref(),
        Some("42")
    );
    let rows = s.rows("SELECT ordinality, result FROM gman_do_many('echo', ARRAY['x', NULL, 'z'])");
    assert_eq!(
        rows,
        vec![
            vec![Some("1".into()), Some("x".into())],
            vec![Some("2".into()), Some("".into())],
            vec![Some("3".into()), Some("z".into())],
        ]
    );
    assert_eq!(
        s.one("SELECT gman_sum('echo', i::text) FROM generate_series(1, 100) i")
            .as_deref(),
        Some("5050")
    );
    assert_eq!(
        s.one("SELECT gman_sum('echo', i::text) FROM generate_series(1, 0) i"),
        None
    );
    let e = s.exec_err("SELECT gman_sum('echo', 'not a number')");
    assert_eq!(e.code, "22P02", "{e:?}");
}

#[test]
fn gman_sum_and_gman_do_many_run_concurrently() {
    let env = Env::start();
    let n = 8;
    // Each job waits until all eight run at once (gearman_testkit::Overlap);
    // the probe is swapped between the two statements to check each.
    let probe = Arc::new(Mutex::new(gearman_testkit::Overlap::new(n)));
    let workers: Vec<TestWorker> = (0..n)
        .map(|_| {
            let probe = probe.clone();
            TestWorker::start(&env.addr(), &["slow"], move |job| {
                let o = probe.lock().unwrap().clone();
                o.run(|| std::thread::sleep(Duration::from_millis(20)));
                Ok(job.workload().to_vec())
            })
        })
        .collect();
    let mut s = env.connect();
    assert_eq!(
        s.one("SELECT gman_sum('slow', i::text) FROM generate_series(1, 8) i")
            .as_deref(),
        Some("36")
    );
    let peak = std::mem::replace(
        &mut *probe.lock().unwrap(),
        gearman_testkit::Overlap::new(n),
    );
    assert_eq!(peak.peak(), n, "gman_sum's 8 jobs did not run at once");
    let rows =
        s.rows("SELECT result FROM gman_do_many('slow', ARRAY['1','2','3','4','5','6','7','8'])");
    assert_eq!(rows.len(), 8);
    assert_eq!(
        probe.lock().unwrap().peak(),
        n,
        "gman_do_many's 8 jobs did not run at once"
    );
    // Several functions in one call: element i goes to functions[i], rows
    // come back in input order.
    let _upper = TestWorker::start(&env.addr(), &["upper"], |job| {
        Ok(job.workload().to_ascii_uppercase())
    });
    let rows = s.rows(
        "SELECT ordinality, result FROM gman_do_many(ARRAY['slow', 'upper', 'slow', 'upper'], \
         ARRAY['a', 'b', 'c', NULL])",
    );
    assert_eq!(
        rows,
        vec![
            vec![Some("1".into()), Some("a".into())],
            vec![Some("2".into()), Some("B".into())],
            vec![Some("3".into()), Some("c".into())],
            vec![Some("4".into()), Some("".into())],
        ]
    );
    let e = s.exec_err("SELECT * FROM gman_do_many(ARRAY['slow', 'upper'], ARRAY['a'])");
    assert_eq!(e.code, "22023", "{e:?}");
    assert!(e.message.contains("same length"), "{e:?}");
    let e = s.exec_err("SELECT * FROM gman_do_many(ARRAY['slow', NULL], ARRAY['a', 'b'])");
    assert!(e.message.contains("function 2 of 2 is NULL"), "{e:?}");
    drop(workers);
}

#[test]
fn settings_servers_set_and_privileges() {
    let env = Env::start();
    let other = gearman_testkit::Gearmand::start();
    let _w1 = env.worker(&["echo"]);
    let _w2 = TestWorker::start(&other.addr(), &["echo"], |_job| Ok(b"other".to_vec()));
    let mut s = env.connect();
    // The settings are defined when the library loads (first gman_* call,
    // LOAD, or *_preload_libraries).
    s.exec("LOAD 'gearman'");
    assert_eq!(s.one("SHOW gearman.servers"), Some(env.addr()));
    assert_eq!(s.one("SHOW gearman.dispatch").as_deref(), Some("commit"));
    assert_eq!(s.one("SHOW gearman.on_error").as_deref(), Some("error"));
    s.exec("SET gearman.connect_timeout = '1s'");
    assert_eq!(s.one("SHOW gearman.connect_timeout").as_deref(), Some("1s"));
    let e = s.exec_err("SET gearman.servers = 'host:notaport'");
    assert_eq!(e.code, "22023", "{e:?}");
    let e = s.exec_err("SET gearman.dispatch = 'later'");
    assert_eq!(e.code, "22023", "{e:?}");
    // Per function override.
    assert_eq!(
        s.one(&format!(
            "SELECT gman_servers_set('{}', 'echo')",
            other.addr()
        ))
        .as_deref(),
        Some("t")
    );
    assert_eq!(
        s.one("SELECT gman_do('echo', 'x')").as_deref(),
        Some("other")
    );
    assert_eq!(
        s.one("SELECT gman_servers_set('', 'echo')").as_deref(),
        Some("t")
    );
    assert_eq!(s.one("SELECT gman_do('echo', 'x')").as_deref(), Some("x"));
    // Session list.
    assert_eq!(
        s.one(&format!("SELECT gman_servers_set('{}')", other.addr()))
            .as_deref(),
        Some("t")
    );
    assert_eq!(s.one("SHOW gearman.servers"), Some(other.addr()));
    assert_eq!(
        s.one("SELECT gman_do('echo', 'x')").as_deref(),
        Some("other")
    );
    let e = s.exec_err("SELECT gman_servers_set('host:notaport')");
    assert_eq!(e.code, "22023", "{e:?}");
    // A plain role may not change the server list (neither way).
    s.exec("CREATE ROLE app LOGIN; GRANT USAGE ON SCHEMA public TO app");
    s.exec("SET ROLE app");
    let e = s.exec_err("SET gearman.servers = '127.0.0.1:1'");
    assert_eq!(e.code, "42501", "{e:?}");
    let e = s.exec_err("SELECT gman_servers_set('127.0.0.1:1')");
    assert_eq!(e.code, "42501", "{e:?}");
    let e = s.exec_err("SELECT gman_servers_set('127.0.0.1:1', 'echo')");
    assert_eq!(e.code, "42501", "{e:?}");
    s.exec("RESET ROLE");
    s.exec("GRANT SET ON PARAMETER gearman.servers TO app");
    s.exec("SET ROLE app");
    s.exec(&format!("SET gearman.servers = '{}'", env.addr()));
    assert_eq!(
        s.one("SELECT gman_do('echo', 'granted')").as_deref(),
        Some("granted")
    );
    s.exec("RESET ROLE");
}

#[test]
fn pggearman_default_servers_is_a_fallback() {
    // session_preload_libraries loads the library at connection start, so
    // the settings exist before the first gman_* call (SHOW works).
    let env = Env::start_raw(&["session_preload_libraries=gearman"]);
    let _w = env.worker(&["echo"]);
    let mut s = env.connect();
    assert_eq!(
        s.one("SHOW gearman.servers").as_deref(),
        Some("127.0.0.1:4730")
    );
    s.exec(&format!("SET pggearman.default_servers = '{}'", env.addr()));
    assert_eq!(
        s.one("SELECT gman_do('echo', 'legacy')").as_deref(),
        Some("legacy")
    );
    // gearman.servers, once set, wins.
    s.exec("SET gearman.servers = '127.0.0.1:1'");
    s.exec("SET gearman.on_error = 'warning'");
    assert_eq!(s.one("SELECT gman_do('echo', 'x')"), None);
}

#[test]
fn every_function_states_volatility_strictness_and_parallel_safety() {
    let env = Env::start();
    let mut s = env.connect();
    let rows = s.rows(
        "SELECT p.proname, pg_get_function_identity_arguments(p.oid), p.provolatile, \
                p.proisstrict, p.proparallel, p.prokind
         FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
         JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'gearman'
         JOIN pg_namespace n ON n.oid = p.pronamespace
         -- not the #[pg_test] functions (schema tests) of a `cargo pgrx test` build
         WHERE p.proname LIKE 'gman\\_%' AND n.nspname <> 'tests'
         ORDER BY 1, 2",
    );
    assert!(rows.len() >= 30, "{rows:?}");
    for r in &rows {
        let name = r[0].clone().unwrap();
        let vol = r[2].clone().unwrap();
        let strict = r[3].clone().unwrap();
        let par = r[4].clone().unwrap();
        // An aggregate's own volatility is not declarable (PostgreSQL stores
        // 'i'); its state and final functions are checked as functions.
        if r[5].as_deref() != Some("a") {
            assert_eq!(vol, "v", "{name} must be VOLATILE");
        }
        let expect_par = if matches!(
            name.as_str(),
            "gman_job_status" | "gman_server_status" | "gman_dispatch_status"
        ) {
            "r"
        } else {
            "u"
        };
        assert_eq!(par, expect_par, "{name}: parallel");
        // Strict where declared so; functions without arguments
        // (gman_server_status, gman_dispatch_status) are STRICT trivially;
        // the trigger function is not.
        let expect_strict = matches!(
            name.as_str(),
            "gman_servers_set" | "gman_job_status" | "gman_server_status" | "gman_dispatch_status"
        );
        if name != "gman_sum_final" {
            assert_eq!(strict == "t", expect_strict, "{name}: strict = {strict}");
        }
    }
    let names: std::collections::BTreeSet<String> =
        rows.iter().map(|r| r[0].clone().unwrap()).collect();
    for f in [
        "gman_do",
        "gman_do_high",
        "gman_do_low",
        "gman_do_background",
        "gman_do_high_background",
        "gman_do_low_background",
        "gman_do_background_at",
        "gman_do_many",
        "gman_servers_set",
        "gman_sum",
        "gman_job_status",
        "gman_server_status",
        "gman_dispatch_status",
        "gman_trigger",
    ] {
        assert!(names.contains(f), "{f} missing from {names:?}");
    }
}

/// `gman_dispatch_status()` as (sent, confirmed, failed, pending).
fn dispatch_status(s: &mut Session) -> (i64, i64, i64, i64) {
    let r = s.rows("SELECT sent, confirmed, failed, pending FROM gman_dispatch_status()");
    assert_eq!(r.len(), 1, "{r:?}");
    let n = |i: usize| r[0][i].as_deref().unwrap().parse::<i64>().unwrap();
    (n(0), n(1), n(2), n(3))
}

fn admin(env: &Env) -> gearman_core::admin::Admin {
    gearman_core::admin::Admin::connect(
        &gearman_core::ServerAddr::parse(&env.addr()).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap()
}

#[test]
fn commit_jobs_refused_by_gearmand_are_counted_and_warned_on_a_later_statement() {
    let env = Env::start();
    let mut s = env.connect();
    assert_eq!(dispatch_status(&mut s), (0, 0, 0, 0));
    // gearmand ignores maxqueue for a function it does not know yet: queue
    // one job (no worker) to create it, then cap it at 3 (queued + running),
    // so two more are taken and the rest refused with QUEUE_ERROR.
    s.exec("SET gearman.dispatch = 'immediate'");
    s.one("SELECT gman_do_background('capped', 'first')");
    admin(&env).maxqueue("capped", Some(3)).unwrap();
    s.exec("RESET gearman.dispatch");
    assert_eq!(s.one("SHOW gearman.dispatch").as_deref(), Some("commit"));

    s.exec("BEGIN");
    for i in 0..5 {
        let key = s.one(&format!(
            "SELECT gman_do_background('capped', 'j{i}', 'k{i}')"
        ));
        assert_eq!(key.as_deref(), Some(format!("k{i}").as_str()));
    }
    s.exec("COMMIT");
    let notices = s.take_notices();
    assert!(
        notices.is_empty(),
        "COMMIT itself does not wait: {notices:?}"
    );

    // A later statement that uses the connection reads the confirmations
    // (waiting for those still owed before its own exchange) and reports
    // the refusals as one WARNING.
    let st = s.rows("SELECT known FROM gman_job_status('k0')");
    assert_eq!(st, vec![vec![Some("t".to_string())]]);
    let full = s.take_full_notices();
    let notices: Vec<String> = full
        .iter()
        .map(|n| format!("{}: {}", n.severity, n.message))
        .collect();
    let warnings: Vec<&String> = notices
        .iter()
        .filter(|n| n.starts_with("WARNING"))
        .collect();
    assert_eq!(warnings.len(), 1, "{notices:?}");
    // The texts are single-spaced prose (no lost line continuation).
    for n in &full {
        for text in [Some(&n.message), n.detail.as_ref(), n.hint.as_ref()]
            .into_iter()
            .flatten()
        {
            assert!(!text.contains("  "), "run of spaces in {text:?}");
        }
    }
    assert!(full[0].hint.is_some(), "{full:?}");
    let w = warnings[0];
    assert!(w.contains("3 background job(s)"), "{w}");
    assert!(w.contains("3 refused"), "{w}");
    assert!(w.contains("capped"), "{w}");
    assert!(w.contains("k2, k3, k4"), "{w}");
    assert!(!w.contains("k0") && !w.contains("k1"), "{w}");

    assert_eq!(dispatch_status(&mut s), (5, 2, 3, 0));
    assert!(s.take_notices().is_empty(), "reported once");
    // gearmand holds exactly the first job and the two it took.
    let st = admin(&env).status().unwrap();
    let capped = st.iter().find(|f| f.function == "capped").unwrap();
    assert_eq!(capped.total, 3, "{st:?}");
    for k in ["k2", "k3", "k4"] {
        let known = s.one(&format!("SELECT known FROM gman_job_status('{k}')"));
        assert_eq!(known.as_deref(), Some("f"), "{k} was refused");
    }
}

#[test]
fn commit_jobs_lost_with_gearmand_before_confirmation_are_failed_not_confirmed() {
    let mut env = Env::start();
    let mut s = env.connect();
    // Open the backend's connection to gearmand.
    s.exec("SET gearman.dispatch = 'immediate'");
    s.one("SELECT gman_do_background('lost', 'warm')");
    s.exec("RESET gearman.dispatch");

    // A stopped gearmand still has its connections held by the kernel: the
    // commit passes its reachability check and writes the jobs, which
    // nobody reads.
    env.gearmand.pause();
    s.exec("BEGIN");
    for i in 0..3 {
        s.one(&format!(
            "SELECT gman_do_background('lost', 'j{i}', 'c{i}')"
        ));
    }
    s.exec("COMMIT");
    assert!(s.take_notices().is_empty());
    // Killed before it read them.
    env.gearmand.kill();

    // The next use of the connection finds it reset: the three jobs are
    // failures of unknown fate (and this statement itself fails, gearmand
    // being down).
    let e = s.exec_err("SELECT * FROM gman_job_status('c0')");
    assert!(e.code.starts_with("08"), "{e:?}");
    let notices = s.take_notices();
    let warnings: Vec<&String> = notices
        .iter()
        .filter(|n| n.starts_with("WARNING"))
        .collect();
    assert_eq!(warnings.len(), 1, "{notices:?}");
    let w = warnings[0];
    assert!(w.contains("3 background job(s)"), "{w}");
    assert!(w.contains("3 of unknown fate"), "{w}");
    assert!(w.contains("c0, c1, c2"), "{w}");
    assert_eq!(dispatch_status(&mut s), (3, 0, 3, 0));
}

#[test]
fn commit_mode_insert_trigger_jobs_are_confirmed_later_without_warnings() {
    let env = Env::start();
    let worker = env.worker(&["trig"]);
    let mut s = env.connect();
    s.exec(
        "CREATE TABLE ev (id int);
         CREATE FUNCTION ev_job() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM gman_do_background('trig', NEW.id::text, 'ev-' || NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER ev_job AFTER INSERT ON ev FOR EACH ROW EXECUTE FUNCTION ev_job()",
    );
    for i in 0..20 {
        s.exec(&format!("INSERT INTO ev VALUES ({i})"));
    }
    s.exec("BEGIN; INSERT INTO ev VALUES (100); ROLLBACK");
    let seen = worker.wait_for(20, WAIT);
    assert_eq!(seen.len(), 20);
    barrier(&env, &worker, "trig", "marker");
    assert!(!worker.workloads().contains(&"100".to_string()));
    // Confirmations: read by later statements or here; wait until none is
    // owed (gearmand has answered: the worker saw every job).
    let deadline = Instant::now() + WAIT;
    let mut st = dispatch_status(&mut s);
    while st.3 > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        st = dispatch_status(&mut s);
    }
    assert_eq!(st, (20, 20, 0, 0));
    assert!(s.take_notices().is_empty());
}

#[test]
fn a_backend_exiting_with_owed_confirmations_waits_boundedly_and_logs_them() {
    let env = Env::start();
    let worker = env.worker(&["exiting"]);
    {
        // Confirmed before the session ends: nothing to log.
        let mut s = env.connect();
        s.exec("BEGIN; SELECT gman_do_background('exiting', 'ok', 'e-ok'); COMMIT");
    }
    worker.wait_for_workload("ok");
    let mut s = env.connect();
    s.exec("SET gearman.dispatch = 'immediate'");
    s.one("SELECT gman_do_background('exiting', 'warm')");
    s.exec("RESET gearman.dispatch");
    // gearmand stopped: the jobs are written but never confirmed.
    env.gearmand.pause();
    s.exec("BEGIN; SELECT gman_do_background('exiting', 'x', 'e-owed'); COMMIT");
    drop(s);
    // The backend waits at most 2 s for the confirmation, then logs it.
    let deadline = Instant::now() + WAIT;
    let mut log = env.pg.log();
    while !log.contains("e-owed") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        log = env.pg.log();
    }
    env.gearmand.resume();
    let line = log
        .lines()
        .find(|l| l.contains("e-owed"))
        .unwrap_or_else(|| panic!("no WARNING about e-owed in the log:\n{log}"));
    assert!(line.contains("WARNING"), "{line}");
    assert!(line.contains("1 background job(s)"), "{line}");
    assert!(!log.contains("e-ok"), "{log}");
}

#[test]
fn settings_from_alter_database_and_alter_role_reach_new_sessions() {
    // No gearman.servers in the server's configuration: only the catalog
    // settings below point sessions at a job server.
    let env = Env::start_raw(&[]);
    let other = gearman_testkit::Gearmand::start();
    let _w1 = TestWorker::start(&env.addr(), &["who"], |_job| Ok(b"database".to_vec()));
    let _w2 = TestWorker::start(&other.addr(), &["who"], |_job| Ok(b"role".to_vec()));
    let mut admin = env.connect();
    admin.exec(&format!(
        "ALTER DATABASE postgres SET gearman.servers = '{}';
         ALTER DATABASE postgres SET gearman.timeout = '5s';
         ALTER DATABASE postgres SET gearman.dispatch = 'immediate'",
        env.addr()
    ));
    let mut s = env.connect();
    assert_eq!(s.one("SHOW gearman.timeout").as_deref(), Some("5s"));
    assert_eq!(s.one("SHOW gearman.dispatch").as_deref(), Some("immediate"));
    assert_eq!(
        s.one("SELECT gman_do('who', '')").as_deref(),
        Some("database")
    );
    // A role's setting wins over the database's (PostgreSQL's order).
    admin.exec(&format!(
        "ALTER ROLE postgres SET gearman.servers = '{}'",
        other.addr()
    ));
    let mut s = env.connect();
    assert_eq!(s.one("SHOW gearman.servers"), Some(other.addr()));
    assert_eq!(s.one("SELECT gman_do('who', '')").as_deref(), Some("role"));
    // And SET wins over both, for this session only.
    s.exec(&format!("SET gearman.servers = '{}'", env.addr()));
    assert_eq!(
        s.one("SELECT gman_do('who', '')").as_deref(),
        Some("database")
    );
    admin.exec("ALTER ROLE postgres RESET gearman.servers");
}

#[test]
fn gman_trigger_called_as_a_plain_function_is_a_trigger_protocol_error() {
    let env = Env::start();
    let mut s = env.connect();
    // (`SELECT * FROM gman_trigger()` is refused by PostgreSQL itself.)
    for sql in [
        "SELECT gman_trigger()",
        "SELECT gman_trigger() FROM (VALUES (1)) v",
    ] {
        let e = s.exec_err(sql);
        assert_eq!(e.code, "39P01", "{e:?}");
        assert!(e.message.contains("must be called as a trigger"), "{e:?}");
        let hint = e.hint.clone().unwrap_or_default();
        assert!(
            hint.contains("CREATE TRIGGER") && hint.contains("gman_trigger('function_name'"),
            "{e:?}"
        );
    }
    // The session goes on; the function still works as a trigger.
    let worker = env.worker(&["rows"]);
    s.exec(
        "CREATE TABLE t7 (x int);
         CREATE TRIGGER t7_ev AFTER INSERT ON t7 FOR EACH ROW EXECUTE FUNCTION gman_trigger('rows');
         INSERT INTO t7 VALUES (7)",
    );
    worker.wait_for(1, WAIT);
    assert_eq!(worker.seen().len(), 1);
}

#[test]
fn gman_servers_set_returns_boolean_as_pggearman_did() {
    let env = Env::start();
    let other = gearman_testkit::Gearmand::start();
    let _w = TestWorker::start(&other.addr(), &["echo"], |_job| Ok(b"other".to_vec()));
    let mut s = env.connect();
    let types = s.rows(
        "SELECT pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid) \
         FROM pg_proc p WHERE p.proname = 'gman_servers_set' ORDER BY 1",
    );
    assert_eq!(
        types,
        vec![
            vec![Some("servers text".into()), Some("boolean".into())],
            vec![
                Some("servers text, function text".into()),
                Some("boolean".into())
            ],
        ]
    );
    // PL/pgSQL written for pggearman runs unchanged.
    s.exec(&format!(
        "DO $$ BEGIN
           IF gman_servers_set('{a}') THEN RAISE NOTICE 'session list set'; END IF;
           IF gman_servers_set('{a}', 'echo') THEN RAISE NOTICE 'function list set'; END IF;
         END $$",
        a = other.addr()
    ));
    let notices = s.take_notices();
    assert!(
        notices.iter().any(|n| n.ends_with("session list set"))
            && notices.iter().any(|n| n.ends_with("function list set")),
        "{notices:?}"
    );
    assert_eq!(
        s.one("SELECT gman_do('echo', 'x')").as_deref(),
        Some("other")
    );
    // A list that does not parse: an error, or with on_error = warning a
    // WARNING and false; the list in force is unchanged.
    let e = s.exec_err("SELECT gman_servers_set('host:notaport')");
    assert_eq!(e.code, "22023", "{e:?}");
    s.exec("SET gearman.on_error = 'warning'");
    assert_eq!(
        s.one("SELECT gman_servers_set('host:notaport')").as_deref(),
        Some("f")
    );
    assert_eq!(
        s.one("SELECT gman_servers_set('host:notaport', 'echo')")
            .as_deref(),
        Some("f")
    );
    assert!(s.take_notices().iter().any(|n| n.starts_with("WARNING")));
    assert_eq!(s.one("SHOW gearman.servers"), Some(other.addr()));
    assert_eq!(
        s.one("SELECT gman_do('echo', 'x')").as_deref(),
        Some("other")
    );
}

#[test]
fn gman_server_status_queued_counts_waiting_jobs_not_running_ones() {
    let env = Env::start();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let started_tx = Mutex::new(started_tx);
    // One worker that holds its job until released.
    let _w = TestWorker::start(&env.addr(), &["held"], move |job| {
        let _ = started_tx.lock().unwrap().send(());
        let _ = release_rx.lock().unwrap().recv_timeout(WAIT);
        Ok(job.workload().to_vec())
    });
    let mut s = env.connect();
    s.exec("SET gearman.dispatch = 'immediate'");
    s.one("SELECT gman_do_background('held', 'one')");
    started_rx
        .recv_timeout(WAIT)
        .expect("the worker took a job");
    s.one("SELECT gman_do_background('held', 'two')");
    s.one("SELECT gman_do_background('held', 'three')");
    let rows =
        s.rows("SELECT queued, running, workers FROM gman_server_status() WHERE function = 'held'");
    // gearmand's total is 3; one is running, two are waiting.
    assert_eq!(
        rows,
        vec![vec![Some("2".into()), Some("1".into()), Some("1".into())]]
    );
    for _ in 0..3 {
        let _ = release_tx.send(());
    }
}

/// Issue 11, parity with MariaDB (whose suite checks the same state and
/// texts): function `parity_f` with 3 background jobs queued and no worker
/// is `queued 3, running 0, workers 0`; validation errors carry the core's
/// one text (`Job::from_args`), here after `gearman: `.
#[test]
fn parity_server_status_and_validation_texts() {
    let env = Env::start();
    let mut s = env.connect();
    s.exec("SET gearman.dispatch = 'immediate'");
    for i in 0..3 {
        assert!(s
            .one(&format!("SELECT gman_do_background('parity_f', 'w{i}')"))
            .is_some());
    }
    let rows = s.rows(
        "SELECT queued, running, workers FROM gman_server_status() WHERE function = 'parity_f'",
    );
    assert_eq!(
        rows,
        vec![vec![Some("3".into()), Some("0".into()), Some("0".into())]]
    );
    for (sql, text) in [
        ("SELECT gman_do('', 'x')", "function name is empty"),
        (
            "SELECT gman_do('a b', 'x')",
            "function name \"a b\" contains a space at byte 1; control characters and \
             whitespace are not allowed",
        ),
        (
            "SELECT gman_do_background('f', 'x', repeat('k', 64))",
            "unique key is 64 bytes; at most 63 are allowed (gearmand mishandles longer keys)",
        ),
    ] {
        let e = s.exec_err(sql);
        assert_eq!(e.code, "22023", "{sql}: {e:?}");
        assert_eq!(e.message, format!("gearman: {text}"), "{sql}");
    }
}

/// A role's startup options (`PGOPTIONS='-c gearman.servers=...'`) that it
/// may not set: returns the error of the connection, or the session.
fn connect_with_options(env: &Env, user: &str, options: &str) -> Result<Session, support::DbErr> {
    Session::try_connect_with(&env.pg.url(), Some(user), Some(options))
        .map_err(|e| support::DbErr::from(&e))
}

/// Sessions of `app` that name other servers in their startup options keep
/// the configured servers (`who` answers `configured` there).
fn assert_options_cannot_divert(env: &Env, configured_addr: &str) {
    let evil = gearman_testkit::Gearmand::start();
    let _evil_w = TestWorker::start(&evil.addr(), &["who"], |_job| Ok(b"diverted".to_vec()));
    for name in ["gearman.servers", "pggearman.default_servers"] {
        let options = format!("-c {name}={}", evil.addr());
        let mut s = match connect_with_options(env, "app", &options) {
            Ok(s) => s,
            Err(e) => panic!("{name}: the connection was refused: {e:?}"),
        };
        // The library loads in a transaction that rolls back: the
        // configured value stays in force afterwards too.
        s.exec("BEGIN");
        assert_eq!(
            s.one("SELECT gman_do('who', '')").as_deref(),
            Some("configured"),
            "{name} from the startup options diverted the session"
        );
        s.exec("ROLLBACK");
        assert_eq!(
            s.one("SELECT gman_do('who', '')").as_deref(),
            Some("configured"),
            "{name}: after the rollback"
        );
        let notices = s.take_notices();
        assert!(
            notices
                .iter()
                .any(|n| n.starts_with("WARNING") && n.contains("permission denied")),
            "{name}: {notices:?}"
        );
        assert_eq!(
            s.one("SHOW gearman.servers").as_deref(),
            Some(configured_addr)
        );
        // A role that may set it gets its own value.
        let mut su = Session::try_connect_with(&env.pg.url(), None, Some(&options)).unwrap();
        assert_eq!(
            su.one("SELECT gman_do('who', '')").as_deref(),
            Some(if name == "gearman.servers" {
                "diverted"
            } else {
                "configured"
            }),
            "{name}: superuser"
        );
    }
}

fn create_app_role(env: &Env) {
    let mut admin = env.connect();
    admin.exec("CREATE ROLE app LOGIN; GRANT USAGE ON SCHEMA public TO app");
}

#[test]
fn startup_options_cannot_divert_a_lazily_loaded_library_configured_on_the_command_line() {
    // gearman.servers on the server's command line (-c), library loaded at
    // the first gman_* call.
    let env = Env::start();
    let _w = TestWorker::start(&env.addr(), &["who"], |_job| Ok(b"configured".to_vec()));
    create_app_role(&env);
    assert_options_cannot_divert(&env, &env.addr());
}

#[test]
fn startup_options_cannot_divert_a_lazily_loaded_library_configured_in_files_or_roles() {
    // No command-line setting: ALTER SYSTEM (postgresql.auto.conf), then
    // ALTER ROLE, which wins over the file.
    let env = Env::start_raw(&[]);
    let role_gearmand = gearman_testkit::Gearmand::start();
    let _w = TestWorker::start(&env.addr(), &["who"], |_job| Ok(b"configured".to_vec()));
    let _w2 = TestWorker::start(&role_gearmand.addr(), &["who"], |_job| {
        Ok(b"configured".to_vec())
    });
    create_app_role(&env);
    let mut admin = env.connect();
    // ALTER SYSTEM checks the value: the setting must be defined.
    admin.exec("LOAD 'gearman'");
    admin.exec(&format!(
        "ALTER SYSTEM SET gearman.servers = '{}'",
        env.addr()
    ));
    admin.exec("SELECT pg_reload_conf()");
    // The reload reaches new sessions.
    let deadline = Instant::now() + WAIT;
    while env
        .connect()
        .one("SELECT current_setting('gearman.servers', true)")
        != Some(env.addr())
    {
        assert!(Instant::now() < deadline, "ALTER SYSTEM not in force");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_options_cannot_divert(&env, &env.addr());
    admin.exec(&format!(
        "ALTER ROLE app SET gearman.servers = '{}'",
        role_gearmand.addr()
    ));
    assert_options_cannot_divert(&env, &role_gearmand.addr());
}

#[test]
fn startup_options_cannot_divert_a_preloaded_library() {
    let env = Env::start_with(&["shared_preload_libraries=gearman"]);
    let _w = TestWorker::start(&env.addr(), &["who"], |_job| Ok(b"configured".to_vec()));
    create_app_role(&env);
    let evil = gearman_testkit::Gearmand::start();
    let _evil_w = TestWorker::start(&evil.addr(), &["who"], |_job| Ok(b"diverted".to_vec()));
    for name in ["gearman.servers", "pggearman.default_servers"] {
        let options = format!("-c {name}={}", evil.addr());
        // PostgreSQL checks the privilege at connection time: refused.
        match connect_with_options(&env, "app", &options) {
            Ok(mut s) => panic!(
                "{name}: connected; gman_do answered {:?}",
                s.one("SELECT gman_do('who', '')")
            ),
            Err(e) => {
                assert_eq!(e.code, "42501", "{name}: {e:?}");
                assert!(e.message.contains("permission denied"), "{e:?}");
            }
        }
    }
    // Without the options the role is served by the configured servers.
    let mut s = connect_with_options(&env, "app", "").unwrap();
    assert_eq!(
        s.one("SELECT gman_do('who', '')").as_deref(),
        Some("configured")
    );
}

#[test]
fn commit_against_a_server_that_never_reads_is_bounded_and_releases_locks_first() {
    let env = Env::start();
    let mut s = env.connect();
    s.exec("CREATE TABLE acct (id int PRIMARY KEY, n int); INSERT INTO acct VALUES (1, 0)");
    // Open the backend's connection to gearmand, then stop gearmand: the
    // kernel still accepts what fits into the socket buffers, nobody reads
    // or confirms.
    s.exec("SET gearman.dispatch = 'immediate'");
    s.one("SELECT gman_do_background('never', 'warm')");
    s.exec("RESET gearman.dispatch");
    s.exec("SET gearman.commit_send_timeout = '3s'");
    assert_eq!(
        s.one("SHOW gearman.commit_send_timeout").as_deref(),
        Some("3s")
    );
    env.gearmand.pause();
    // 4,096 jobs of 4 KiB: more than the socket buffers take.
    s.exec(
        "BEGIN;
         UPDATE acct SET n = n + 1 WHERE id = 1;
         SELECT count(gman_do_background('never', repeat('x', 4096), 'nv-' || i))
         FROM generate_series(1, 4096) i",
    );
    // Another session waits for the row.
    let url = env.pg.url();
    let other = std::thread::spawn(move || {
        let mut o = Session::connect(&url);
        o.exec("UPDATE acct SET n = n + 10 WHERE id = 1");
        Instant::now()
    });
    let mut watch = env.connect();
    let t = Instant::now();
    while watch
        .one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE acct%'",
        )
        .as_deref()
        != Some("1")
    {
        assert!(t.elapsed() < WAIT, "the other UPDATE never waited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    s.exec("COMMIT");
    let commit_returned = Instant::now();
    let other_done = other.join().unwrap();
    // Bounded as a whole: the old code waited 5 s per 1,024 jobs (20 s).
    assert!(
        commit_returned - started < Duration::from_secs(10),
        "COMMIT took {:?}",
        commit_returned - started
    );
    // The other session got the row while COMMIT was still sending: the
    // locks were released before the write.
    assert!(
        other_done < commit_returned,
        "the other UPDATE finished {:?} after COMMIT returned",
        other_done - commit_returned
    );
    assert_eq!(
        watch.one("SELECT n FROM acct").as_deref(),
        Some("11"),
        "both updates committed"
    );
    // What was not written is counted and reported, never dropped silently.
    let notices = s.take_notices();
    // (Jobs handed to the connection whose write then timed out may have
    // partly reached the server: their fate is unknown.)
    let warning = notices
        .iter()
        .find(|n| {
            n.starts_with("WARNING")
                && (n.contains("could not be sent after commit") || n.contains("not confirmed"))
        })
        .unwrap_or_else(|| panic!("no WARNING about unsent jobs: {notices:?}"));
    let (sent, confirmed, failed, pending) = dispatch_status(&mut s);
    assert_eq!(sent, 4096, "{warning}");
    assert_eq!(confirmed, 0);
    assert!(failed > 0, "{warning}");
    assert!(warning.contains(&failed.to_string()), "{failed}: {warning}");
    assert_eq!(sent, confirmed + failed + pending);
    env.gearmand.resume();
}

#[test]
fn overdue_commit_confirmations_are_reported_as_unknown_fate_on_a_later_statement() {
    let env = Env::start();
    let mut s = env.connect();
    s.exec("SET gearman.dispatch = 'immediate'");
    s.one("SELECT gman_do_background('owed', 'warm')");
    s.exec("RESET gearman.dispatch");
    // Confirmations are due within gearman.commit_send_timeout of the write.
    s.exec("SET gearman.commit_send_timeout = '500ms'");
    // gearmand stopped: it takes the bytes (kernel) and never answers.
    env.gearmand.pause();
    s.exec(
        "BEGIN; SELECT count(gman_do_background('owed', i::text, 'ow-' || i)) \
         FROM generate_series(1, 10) i; COMMIT",
    );
    // A later statement that calls no gman_* function reports them once
    // they are overdue.
    let deadline = Instant::now() + WAIT;
    let warning = loop {
        s.exec("SELECT 1");
        let notices = s.take_notices();
        if let Some(w) = notices.into_iter().find(|n| n.starts_with("WARNING")) {
            break w;
        }
        assert!(Instant::now() < deadline, "no WARNING about overdue jobs");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(warning.contains("10 background job(s)"), "{warning}");
    assert!(warning.contains("10 of unknown fate"), "{warning}");
    assert!(warning.contains("ow-1, ow-2"), "{warning}");
    assert!(
        warning.contains("10 of them not confirmed in time"),
        "{warning}"
    );
    assert_eq!(dispatch_status(&mut s), (10, 0, 10, 0));
    env.gearmand.resume();
}

#[test]
fn foreground_results_are_capped_by_gearman_max_result_size() {
    let env = Env::start();
    // `big` answers with as many bytes as its workload says; `bignum` with
    // the integer 1 padded with spaces to that size.
    let _w = TestWorker::start(&env.addr(), &["big", "bignum"], |job| {
        let n: usize = String::from_utf8_lossy(job.workload()).parse().unwrap_or(0);
        if job.function() == "bignum" {
            let mut v = vec![b' '; n.max(1)];
            v[0] = b'1';
            return Ok(v);
        }
        Ok(vec![b'x'; n])
    });
    let mut s = env.connect();
    s.exec("LOAD 'gearman'");
    assert_eq!(
        s.one("SHOW gearman.max_result_size").as_deref(),
        Some("16MB")
    );
    let e = s.exec_err("SET gearman.max_result_size = '2GB'");
    assert_eq!(e.code, "22023", "{e:?}");
    s.exec("SET gearman.max_result_size = '1GB'");
    s.exec("SET gearman.max_result_size = '1MB'");
    assert_eq!(
        s.one("SELECT length(gman_do('big', '1048576'))").as_deref(),
        Some("1048576")
    );
    let check = |e: support::DbErr| {
        assert_eq!(e.code, "54000", "{e:?}");
        assert!(e.message.contains("1048576 bytes"), "{e:?}");
        assert!(
            e.hint
                .as_deref()
                .unwrap_or("")
                .contains("gearman.max_result_size"),
            "{e:?}"
        );
    };
    check(s.exec_err("SELECT gman_do('big', '1048577')"));
    check(s.exec_err("SELECT gman_do_high('big', convert_to('2000000', 'UTF8'))"));
    check(s.exec_err("SELECT * FROM gman_do_many('big', ARRAY['10', '2000000'])"));
    check(s.exec_err("SELECT gman_sum('bignum', x) FROM (VALUES ('10'), ('2000000')) v(x)"));
    // A worker that streams WORK_DATA (64 chunks of 1 MiB) is cut at the
    // cap as well; the rest is read and dropped, not kept.
    let _flood = TestWorker::start(&env.addr(), &["flood"], |job| {
        let chunk = vec![b'f'; 1 << 20];
        for _ in 0..64 {
            if job.send_data(&chunk).is_err() {
                break;
            }
        }
        Ok(Vec::new())
    });
    check(s.exec_err("SELECT gman_do('flood', '')"));
    assert_eq!(s.one("SELECT gman_do('big', '3')").as_deref(), Some("xxx"));
    // The session goes on; with on_error = warning only that row is NULL.
    s.exec("SET gearman.on_error = 'warning'");
    let rows = s
        .rows("SELECT ordinality, length(result) FROM gman_do_many('big', ARRAY['10', '2000000'])");
    assert_eq!(
        rows,
        vec![
            vec![Some("1".into()), Some("10".into())],
            vec![Some("2".into()), None]
        ]
    );
    assert_eq!(
        s.one("SELECT gman_sum('bignum', x) FROM (VALUES ('10'), ('2000000')) v(x)")
            .as_deref(),
        Some("1")
    );
}

#[test]
fn one_deadline_bounds_each_call_over_black_holed_servers() {
    let holes = gearman_testkit::BlackHole::many(10);
    let list = holes.iter().map(|h| h.addr()).collect::<Vec<_>>().join(",");
    let env = Env::start();
    let mut s = env.connect();
    s.exec(&format!(
        "SET gearman.servers = '{list}'; SET gearman.connect_timeout = '1s'; \
         SET gearman.timeout = '1s'"
    ));
    // Ten connect timeouts would be 10 s; one deadline is 1 s (asserted at
    // < 4 s only to rule out one connect timeout per server).
    let bound = Duration::from_secs(4);
    for sql in [
        "SELECT gman_do('f', 'x')",
        "SELECT * FROM gman_job_status('H:nowhere:1')",
        "SELECT * FROM gman_job_status('some-unique-key')",
        "SELECT * FROM gman_server_status()",
    ] {
        let t = Instant::now();
        let r = s.client.batch_execute(sql);
        let took = t.elapsed();
        assert!(took < bound, "{sql} took {took:?}");
        let e = support::DbErr::from(&r.expect_err(sql));
        assert!(
            e.code == "57014" || e.code.starts_with("08"),
            "{sql}: {e:?}"
        );
    }
    // statement_timeout ends the wait too.
    s.exec("SET gearman.timeout = '30s'; SET statement_timeout = '500ms'");
    let t = Instant::now();
    let e = s.exec_err("SELECT gman_do('f', 'x')");
    assert!(t.elapsed() < bound, "took {:?}", t.elapsed());
    assert_eq!(e.code, "57014", "{e:?}");
}

#[test]
fn server_lists_and_function_names_are_checked_when_given() {
    let env = Env::start();
    let mut s = env.connect();
    s.exec("LOAD 'gearman'");
    for bad in ["garbage:::", "a:b:c", "127.0.0.1:4731:", "10.0.0.1:1,::1"] {
        let e = s.exec_err(&format!("SET gearman.servers = '{bad}'"));
        assert_eq!(e.code, "22023", "{bad}: {e:?}");
        let text = format!("{} {}", e.message, e.detail.clone().unwrap_or_default());
        let entry = bad.rsplit(',').next().unwrap();
        assert!(text.contains(entry), "{bad}: {e:?}");
        for sql in [
            format!("SELECT gman_servers_set('{bad}')"),
            format!("SELECT gman_servers_set('{bad}', 'f')"),
        ] {
            let e = s.exec_err(&sql);
            assert_eq!(e.code, "22023", "{sql}: {e:?}");
            assert!(e.message.contains(entry), "{sql}: {e:?}");
        }
    }
    // IPv6 in brackets is fine (nothing is contacted by SET).
    s.exec("SET gearman.servers = '[::1]:4731,127.0.0.1:4732'");
    s.exec("RESET gearman.servers");
    // Function names with control characters or whitespace are refused
    // before anything is sent, in every dispatch mode.
    for sql in [
        "SELECT gman_do(E'nl\\n.\\nx', 'x')",
        "SELECT gman_do_background(E'nl\\n.\\nx', 'x')",
        "SELECT * FROM gman_do_many(E'tab\\tx', ARRAY['a'])",
        "SELECT gman_do_background('two words', 'x')",
        "SELECT gman_servers_set('127.0.0.1:4731', E'nl\\nx')",
    ] {
        let e = s.exec_err(sql);
        assert_eq!(e.code, "22023", "{sql}: {e:?}");
        assert!(e.message.contains("function name"), "{sql}: {e:?}");
    }
    s.exec("SET gearman.dispatch = 'outbox'");
    let e = s.exec_err("SELECT gman_do_background(E'nl\\nx', 'x')");
    assert_eq!(e.code, "22023", "{e:?}");
    assert_eq!(
        s.one("SELECT count(*) FROM gearman.outbox").as_deref(),
        Some("0")
    );
}

#[test]
fn gman_server_status_skips_an_admin_line_it_cannot_parse() {
    let env = Env::start();
    let mut s = env.connect();
    s.exec("SET gearman.dispatch = 'immediate'");
    s.one("SELECT gman_do_background('normal_fn', 'x')");
    // A client that is not us queues a job whose function name holds
    // newlines: gearmand's text `status` then has lines that are not
    // `function\ttotal\trunning\tworkers`.
    let mut raw = Vec::new();
    gearman_core::proto::encode(
        gearman_core::proto::Magic::Req,
        gearman_core::proto::PacketType::SubmitJobBg,
        &[b"nl\n.\nx", b"", b"w"],
        &mut raw,
    )
    .unwrap();
    let mut c = std::net::TcpStream::connect(env.addr()).unwrap();
    std::io::Write::write_all(&mut c, &raw).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut reply = [0u8; 12];
    std::io::Read::read_exact(&mut c, &mut reply).expect("JOB_CREATED");
    let rows = s.rows(
        "SELECT function, queued, running, workers FROM gman_server_status() \
         WHERE function = 'normal_fn'",
    );
    assert_eq!(
        rows,
        vec![vec![
            Some("normal_fn".into()),
            Some("1".into()),
            Some("0".into()),
            Some("0".into())
        ]]
    );
    assert!(s.take_notices().is_empty());
}

#[test]
fn startup_options_cannot_divert_a_library_loaded_at_session_start() {
    // session_preload_libraries loads the library after the startup
    // options, outside any transaction: the role's ALTER ROLE setting is put
    // back at the first use.
    let env = Env::start_raw(&["session_preload_libraries=gearman"]);
    let _w = TestWorker::start(&env.addr(), &["who"], |_job| Ok(b"configured".to_vec()));
    create_app_role(&env);
    let mut admin = env.connect();
    admin.exec(&format!(
        "ALTER ROLE app SET gearman.servers = '{}'",
        env.addr()
    ));
    let evil = gearman_testkit::Gearmand::start();
    let _evil_w = TestWorker::start(&evil.addr(), &["who"], |_job| Ok(b"diverted".to_vec()));
    let options = format!("-c gearman.servers={}", evil.addr());
    let mut s = connect_with_options(&env, "app", &options).unwrap();
    assert_eq!(
        s.one("SELECT gman_do('who', '')").as_deref(),
        Some("configured")
    );
    assert_eq!(s.one("SHOW gearman.servers"), Some(env.addr()));
}
