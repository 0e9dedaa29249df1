//! `sql` functions against a private PostgreSQL 15 and a private MariaDB,
//! served through a private gearmand.

mod common;

use common::*;
use gearman_core::Job;
use gearman_testkit::{Gearmand, MariaDb, Postgres};

fn start_daemon(g: &Gearmand, body: &str) -> (WorkerProc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "servers = [\"{}\"]\nlog_level = \"debug\"\n{body}",
        g.addr()
    );
    let cfg = write_file(dir.path(), "worker.toml", &text);
    let (st, _, err) = run_to_end(&["--config", cfg.to_str().unwrap(), "--check-config"]);
    assert!(st.success(), "{err}");
    let w = WorkerProc::spawn(&["--config", cfg.to_str().unwrap()], &[]);
    (w, dir)
}

#[test]
fn postgres_statements_serve_jobs() {
    let g = Gearmand::start();
    let pg = Postgres::start();
    pg.psql(
        "CREATE TABLE users (id int PRIMARY KEY, name text, score numeric, born date, pic bytea);
         INSERT INTO users VALUES (1, 'ada', 12.50, '1815-12-10', '\\x00ff'),
                                  (2, 'bob', NULL, NULL, NULL);",
    );
    let url = pg.url();
    let (w, _d) = start_daemon(
        &g,
        &format!(
            r#"
[function.user_name]
sql = "SELECT name FROM users WHERE id = $1::int"
database = "{url}"
concurrency = 3

[function.users_json]
sql = "SELECT id, name, score, born, pic FROM users WHERE id >= $1::int ORDER BY id"
database = "{url}"
rows = "json_lines"

[function.byte_len]
sql = "SELECT length($1)"
database = "{url}"
param = "bytea"

[function.score]
sql = "SELECT score FROM users WHERE id = $1::int"
database = "{url}"

[function.slow]
sql = "SELECT pg_sleep(5)::text || $1"
database = "{url}"
timeout_ms = 300
"#
        ),
    );
    for f in ["user_name", "users_json", "byte_len", "score", "slow"] {
        wait_workers(&g.addr(), f, 1, &|| w.log());
    }
    let mut c = client(&g.addr());
    assert_eq!(c.run(&Job::new("user_name", "1")).unwrap(), b"ada");
    // No row and NULL both give an empty result.
    assert_eq!(c.run(&Job::new("user_name", "99")).unwrap(), b"");
    // The workload is a bound parameter, never SQL text.
    let e = client(&g.addr())
        .run(&Job::new("user_name", "1; DROP TABLE users"))
        .unwrap_err();
    assert!(failure_text(&e).contains("22P02"), "{e:?}");
    assert_eq!(pg.psql("SELECT count(*) FROM users"), "2");
    assert_eq!(c.run(&Job::new("score", "1")).unwrap(), b"12.50");
    assert_eq!(
        c.run(&Job::new("byte_len", b"\x00\x01\xff".to_vec()))
            .unwrap(),
        b"3"
    );
    let lines = String::from_utf8(c.run(&Job::new("users_json", "1")).unwrap()).unwrap();
    let rows: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{lines}");
    assert_eq!(
        rows[0],
        serde_json::json!({"id": 1, "name": "ada", "score": "12.50", "born": "1815-12-10", "pic": "\\x00ff"})
    );
    assert_eq!(
        rows[1],
        serde_json::json!({"id": 2, "name": "bob", "score": null, "born": null, "pic": null})
    );
    // Statement timeout fails the job with the server's message.
    let e = client(&g.addr()).run(&Job::new("slow", "x")).unwrap_err();
    assert!(failure_text(&e).contains("57014"), "{e:?}");

    // The pool: 9 concurrent jobs on a function with concurrency 3 use at most 3 connections.
    let jobs: Vec<Job> = (0..9)
        .map(|i| Job::new("user_name", (i % 2 + 1).to_string()))
        .collect();
    for r in c.run_all(&jobs) {
        r.unwrap();
    }
    let conns: i64 = pg
        .psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'gearman-worker'")
        .parse()
        .unwrap();
    // user_name (<=3), users_json, byte_len, score, slow share one pool: at most 3 + 4 at any time.
    assert!((1..=7).contains(&conns), "{conns} connections");
}

#[test]
fn a_postgres_result_past_max_result_bytes_fails_with_memory_bounded() {
    // 300,000 rows of 1 kB: before, every row was fetched into memory
    // (hundreds of MB) before the cap was checked; now rows are read one
    // at a time and the job fails at the cap.
    let g = Gearmand::start();
    let pg = Postgres::start();
    let url = pg.url();
    let (w, _d) = start_daemon(
        &g,
        &format!(
            r#"
[function.rows]
sql = "SELECT repeat('x', 1000) AS v FROM generate_series(1, $1::int)"
database = "{url}"
rows = "json_lines"
max_result_bytes = 65536

[function.first]
sql = "SELECT repeat('y', $1::int)"
database = "{url}"
max_result_bytes = 65536
"#
        ),
    );
    for f in ["rows", "first"] {
        wait_workers(&g.addr(), f, 1, &|| w.log());
    }
    let mut c = client(&g.addr());
    assert_eq!(c.run(&Job::new("rows", "10")).unwrap().len(), 10 * 1009);
    let e = c.run(&Job::new("rows", "300000")).unwrap_err();
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(peak_kb < 100 * 1024, "worker peak RSS {peak_kb} kB");
    let m = failure_text(&e);
    assert!(
        m.contains("larger than 65536 bytes") && m.contains("max_result_bytes"),
        "{m}"
    );
    // rows = "first": one value past the cap fails too.
    assert_eq!(c.run(&Job::new("first", "65536")).unwrap().len(), 65536);
    let e = c.run(&Job::new("first", "65537")).unwrap_err();
    assert!(failure_text(&e).contains("larger than 65536 bytes"), "{e}");
    // The daemon still serves (on a new connection).
    assert_eq!(c.run(&Job::new("rows", "1")).unwrap().len(), 1009);
}

#[test]
fn postgres_restart_is_survived() {
    let g = Gearmand::start();
    let mut pg = Postgres::start();
    let (w, _d) = start_daemon(
        &g,
        &format!(
            "[function.now]\nsql = \"SELECT 'up:' || $1\"\ndatabase = \"{}\"\n",
            pg.url()
        ),
    );
    wait_workers(&g.addr(), "now", 1, &|| w.log());
    let mut c = client(&g.addr());
    assert_eq!(c.run(&Job::new("now", "1")).unwrap(), b"up:1");
    pg.restart();
    // The pooled connection is dead; the handler notices, reconnects, retries once.
    assert_eq!(c.run(&Job::new("now", "2")).unwrap(), b"up:2");
}

#[test]
fn mariadb_statements_serve_jobs() {
    let g = Gearmand::start();
    let db = MariaDb::start();
    db.sql(
        "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(20), score DECIMAL(5,2), born DATE, pic VARBINARY(10));
         INSERT INTO users VALUES (1, 'ada', 12.50, '1815-12-10', x'00ff'), (2, 'bob', NULL, NULL, NULL);",
    )
    .unwrap();
    let url = db.url();
    let (w, _d) = start_daemon(
        &g,
        &format!(
            r#"
[function.user_name]
sql = "SELECT name FROM users WHERE id = ?"
database = "{url}"
concurrency = 2

[function.users_json]
sql = "SELECT id, name, score, born, pic FROM users WHERE id >= ? ORDER BY id"
database = "{url}"
rows = "json_lines"

[function.byte_len]
sql = "SELECT LENGTH(?)"
database = "{url}"

[function.bad]
sql = "SELECT * FROM no_such_table WHERE x = ?"
database = "{url}"
"#
        ),
    );
    for f in ["user_name", "users_json", "byte_len", "bad"] {
        wait_workers(&g.addr(), f, 1, &|| w.log());
    }
    let mut c = client(&g.addr());
    assert_eq!(c.run(&Job::new("user_name", "1")).unwrap(), b"ada");
    assert_eq!(c.run(&Job::new("user_name", "99")).unwrap(), b"");
    assert_eq!(
        c.run(&Job::new("user_name", "1' OR '1'='1")).unwrap(),
        b"ada"
    ); // MySQL casts '1...' to 1, but never runs it as SQL
    assert_eq!(db.sql("SELECT COUNT(*) FROM users").unwrap().trim(), "2");
    assert_eq!(
        c.run(&Job::new("byte_len", b"\x00\x01\xff".to_vec()))
            .unwrap(),
        b"3"
    );
    let lines = String::from_utf8(c.run(&Job::new("users_json", "1")).unwrap()).unwrap();
    let rows: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"id": 1, "name": "ada", "score": "12.50", "born": "1815-12-10", "pic": "\\x00ff"}),
            serde_json::json!({"id": 2, "name": "bob", "score": null, "born": null, "pic": null}),
        ],
        "{lines}"
    );
    let e = client(&g.addr()).run(&Job::new("bad", "1")).unwrap_err();
    let m = failure_text(&e);
    assert!(m.contains("1146") && m.contains("no_such_table"), "{m}");
    // The daemon still serves after a failed statement.
    assert_eq!(c.run(&Job::new("user_name", "2")).unwrap(), b"bob");
}
