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

/// PostgreSQL result values read as PostgreSQL prints them (its binary
/// format decoded by postgres-types), including years before 1 (` BC`),
/// years past 9999, infinities, `time`, `uuid`, json text as sent, and
/// numerics past any fixed-size decimal.
#[test]
fn postgres_values_print_as_postgres_prints_them() {
    let g = Gearmand::start();
    let pg = Postgres::start();
    let url = pg.url();
    let cases: &[(&str, serde_json::Value)] = &[
        (
            "'2000-01-02 00:00:01.5'::timestamp",
            "2000-01-02 00:00:01.5".into(),
        ),
        (
            "'1999-12-31 23:59:59.999999'::timestamp",
            "1999-12-31 23:59:59.999999".into(),
        ),
        ("'infinity'::timestamp", "infinity".into()),
        ("'-infinity'::timestamptz", "-infinity".into()),
        (
            "'0044-03-15 12:00:00 BC'::timestamp",
            "0044-03-15 12:00:00 BC".into(),
        ),
        (
            "'294276-12-31 23:59:59'::timestamp",
            "294276-12-31 23:59:59".into(),
        ),
        (
            "'2026-11-29 10:47:06.123+02'::timestamptz",
            "2026-11-29 08:47:06.123+00".into(),
        ),
        ("'1815-12-10'::date", "1815-12-10".into()),
        ("'4713-01-01 BC'::date", "4713-01-01 BC".into()),
        ("'-infinity'::date", "-infinity".into()),
        ("'13:45:00.25'::time", "13:45:00.25".into()),
        (
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into(),
        ),
        ("'NaN'::numeric", "NaN".into()),
        ("'-0.0012'::numeric", "-0.0012".into()),
        (
            "1e40::numeric",
            "10000000000000000000000000000000000000000".into(),
        ),
        ("true", true.into()),
        ("42::int2", 42.into()),
        ("4000000000::oid", 4_000_000_000u64.into()),
        ("1.5::float4", 1.5.into()),
        ("'x'::\"char\"", "x".into()),
        ("'{\"a\":  [1, 2]}'::json", serde_json::json!({"a": [1, 2]})),
        ("'{\"a\":1}'::jsonb", serde_json::json!({"a": 1})),
    ];
    let columns: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (e, _))| format!("{e} AS c{i}"))
        .collect();
    let (w, _d) = start_daemon(
        &g,
        &format!(
            r#"
[function.values]
sql = '''SELECT {} WHERE $1::text IS NOT NULL'''
database = "{url}"
rows = "json_lines"

[function.json_text]
sql = '''SELECT '{{"a":  [1, 2]}}'::json WHERE $1::text IS NOT NULL'''
database = "{url}"

[function.jsonb_text]
sql = '''SELECT '{{"a":1}}'::jsonb WHERE $1::text IS NOT NULL'''
database = "{url}"

[function.bc_text]
sql = '''SELECT '0001-01-01 00:00:00+00 BC'::timestamptz WHERE $1::text IS NOT NULL'''
database = "{url}"

[function.point]
sql = "SELECT point(1, 2) WHERE $1::text IS NOT NULL"
database = "{url}"
"#,
            columns.join(", ")
        ),
    );
    for f in ["values", "json_text", "jsonb_text", "bc_text", "point"] {
        wait_workers(&g.addr(), f, 1, &|| w.log());
    }
    let mut c = client(&g.addr());
    let line = c.run(&Job::new("values", "x")).unwrap();
    let row: serde_json::Value = serde_json::from_slice(&line).unwrap();
    for (i, (expr, want)) in cases.iter().enumerate() {
        assert_eq!(&row[format!("c{i}")], want, "{expr}");
    }
    // Text results: json as sent, jsonb as the server prints it.
    assert_eq!(
        c.run(&Job::new("json_text", "x")).unwrap(),
        br#"{"a":  [1, 2]}"#
    );
    assert_eq!(c.run(&Job::new("jsonb_text", "x")).unwrap(), br#"{"a": 1}"#);
    assert_eq!(
        c.run(&Job::new("bc_text", "x")).unwrap(),
        b"0001-01-01 00:00:00+00 BC"
    );
    let e = client(&g.addr()).run(&Job::new("point", "x")).unwrap_err();
    let msg = failure_text(&e);
    assert!(msg.contains("point") && msg.contains("::text"), "{msg}");
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
