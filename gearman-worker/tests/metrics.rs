//! `--metrics-addr` (`/metrics`, `/healthz`) and `--log-format json`,
//! against a private gearmand.

mod common;

use common::*;
use gearman_core::Job;
use gearman_testkit::{free_port, Gearmand};
use std::io::{Read, Write};
use std::time::Duration;

/// `GET path` on `addr`: (status code, body). Plain HTTP/1.0 by hand.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    // The process may still be starting: connect for up to 10 s.
    let start = std::time::Instant::now();
    let mut s = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot connect to {addr}: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

fn start(
    g: &Gearmand,
    metrics: &str,
    extra_flags: &[&str],
    body: &str,
) -> (WorkerProc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "servers = [\"{}\"]\nlog_level = \"debug\"\n{body}",
        g.addr()
    );
    let cfg = write_file(dir.path(), "worker.toml", &text);
    let mut args = vec!["--config", cfg.to_str().unwrap(), "--metrics-addr", metrics];
    args.extend_from_slice(extra_flags);
    let w = WorkerProc::spawn(&args, &[]);
    (w, dir)
}

#[test]
fn scrape_counts_ok_failed_and_timed_out_jobs_exactly() {
    let g = Gearmand::start();
    let metrics = format!("127.0.0.1:{}", free_port());
    let (w, _d) = start(
        &g,
        &metrics,
        &[],
        r#"
[function.ok]
builtin = "echo"
[function.bad]
exec = ["sh", "-c", "echo no >&2; exit 3"]
[function.slow]
exec = ["sleep", "30"]
timeout_ms = 1000
"#,
    );
    for f in ["ok", "bad", "slow"] {
        wait_workers(&g.addr(), f, 1, &|| w.log());
    }
    let mut c = client(&g.addr());
    for i in 0..3 {
        assert_eq!(
            c.run(&Job::new("ok", format!("{i}"))).unwrap(),
            format!("{i}").as_bytes()
        );
    }
    for _ in 0..2 {
        c.run(&Job::new("bad", "x")).unwrap_err();
    }
    c.run(&Job::new("slow", "x")).unwrap_err();

    let (code, text) = http_get(&metrics, "/metrics");
    assert_eq!(code, 200, "{text}");
    for line in [
        r#"gearman_worker_jobs_total{function="ok",outcome="ok"} 3"#,
        r#"gearman_worker_jobs_total{function="ok",outcome="failed"} 0"#,
        r#"gearman_worker_jobs_total{function="bad",outcome="failed"} 2"#,
        r#"gearman_worker_jobs_total{function="bad",outcome="ok"} 0"#,
        r#"gearman_worker_jobs_total{function="bad",outcome="timeout"} 0"#,
        r#"gearman_worker_jobs_total{function="slow",outcome="timeout"} 1"#,
        r#"gearman_worker_jobs_total{function="slow",outcome="failed"} 0"#,
        r#"gearman_worker_jobs_total{function="slow",outcome="retried"} 0"#,
        r#"gearman_worker_jobs_total{function="slow",outcome="dead_letter"} 0"#,
        r#"gearman_worker_job_duration_seconds_count{function="ok"} 3"#,
        r#"gearman_worker_job_duration_seconds_count{function="bad"} 2"#,
        r#"gearman_worker_job_duration_seconds_count{function="slow"} 1"#,
        r#"gearman_worker_job_duration_seconds_bucket{le="+Inf",function="slow"} 1"#,
        r#"gearman_worker_jobs_running{function="slow"} 0"#,
        "gearman_worker_servers_connected 1",
        "# TYPE gearman_worker_job_duration_seconds histogram",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    assert_eq!(http_get(&metrics, "/nope").0, 404);
}

#[test]
fn healthz_is_503_while_gearmand_is_down_and_200_after_it_returns() {
    let mut g = Gearmand::start();
    let metrics = format!("127.0.0.1:{}", free_port());
    let (w, _d) = start(&g, &metrics, &[], "[function.ok]\nbuiltin = \"echo\"\n");
    wait_workers(&g.addr(), "ok", 1, &|| w.log());
    assert_eq!(http_get(&metrics, "/healthz"), (200, "ok\n".to_string()));

    g.kill();
    let (code, body) = http_get(&metrics, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("no job server reachable ("), "{body}");
    assert!(body.contains(&g.addr()), "{body}");
    assert_eq!(body.lines().count(), 1, "{body}");
    let (_, text) = http_get(&metrics, "/metrics");
    assert!(
        text.contains("gearman_worker_servers_connected 0"),
        "{text}"
    );

    g.restart();
    let (code, body) = http_get(&metrics, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    // And the worker serves again.
    wait_workers(&g.addr(), "ok", 1, &|| w.log());
    assert_eq!(
        client(&g.addr()).run(&Job::new("ok", "back")).unwrap(),
        b"back"
    );
}

#[test]
fn a_busy_metrics_address_is_a_usage_error() {
    let g = Gearmand::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (st, _, err) = run_to_end(&[
        "-s",
        &g.addr(),
        "--metrics-addr",
        &addr,
        "-f",
        "x",
        "--",
        "cat",
    ]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("metrics_addr: cannot listen on {addr}")),
        "{err}"
    );
    let (st, _, err) = run_to_end(&["--metrics-addr", "nope", "-f", "x", "--", "cat"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains("--metrics-addr: `nope` is not HOST:PORT"),
        "{err}"
    );
}

#[test]
fn json_logs_carry_job_fields_and_keep_passwords_redacted() {
    let g = Gearmand::start();
    let dead = free_port();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "servers = [\"{}\"]\nlog_level = \"debug\"\nlog_format = \"json\"\n\
         [function.ok]\nbuiltin = \"echo\"\n\
         [function.bad]\nexec = [\"sh\", \"-c\", \"echo broken >&2; exit 3\"]\n\
         [function.db]\nsql = \"SELECT $1\"\ndatabase = \"postgres://app:s3cretpw@127.0.0.1:{dead}/app\"\n",
        g.addr()
    );
    let cfg = write_file(dir.path(), "worker.toml", &text);
    let w = WorkerProc::spawn(&["--config", cfg.to_str().unwrap()], &[]);
    for f in ["ok", "bad", "db"] {
        wait_workers(&g.addr(), f, 1, &|| w.log());
    }
    let mut c = client(&g.addr());
    c.run(&Job::new("ok", "hi").with_unique("u-ok")).unwrap();
    c.run(&Job::new("bad", "x").with_unique("u-bad"))
        .unwrap_err();
    let e = c.run(&Job::new("db", "x").with_unique("u-db")).unwrap_err();
    assert!(!e.to_string().contains("s3cretpw"), "{e}");
    assert!(
        wait_until(Duration::from_secs(5), || w.log().contains("u-db")),
        "{}",
        w.log()
    );

    let log = w.log();
    assert!(!log.contains("s3cretpw"), "{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for v in &lines {
        for k in [
            "time",
            "level",
            "function",
            "handle",
            "unique",
            "attempt",
            "duration_ms",
            "outcome",
            "message",
        ] {
            assert!(v.get(k).is_some(), "no {k} in {v}");
        }
    }
    let job = |u: &str| {
        lines
            .iter()
            .find(|v| v["unique"] == u)
            .unwrap_or_else(|| panic!("no line for {u} in {log}"))
            .clone()
    };
    let ok = job("u-ok");
    assert_eq!(
        (
            ok["level"].as_str(),
            ok["function"].as_str(),
            ok["outcome"].as_str()
        ),
        (Some("debug"), Some("ok"), Some("ok"))
    );
    assert_eq!(ok["attempt"], 1);
    assert!(ok["handle"].as_str().unwrap().starts_with("H:"), "{ok}");
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0, "{ok}");
    let bad = job("u-bad");
    assert_eq!(
        (bad["level"].as_str(), bad["outcome"].as_str()),
        (Some("warn"), Some("failed"))
    );
    assert!(bad["message"].as_str().unwrap().contains("broken"), "{bad}");
    let db = job("u-db");
    assert_eq!(db["outcome"], "failed");
    // The start line names the database with its password replaced.
    assert!(
        lines.iter().any(|v| v["function"].is_null()
            && v["message"]
                .as_str()
                .unwrap()
                .contains("via sql on postgres://app:***@")),
        "{log}"
    );
}

/// Value of the series `name{labels}` in a scrape (panics when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn relay_series_per_source_and_healthz_follow_gearmand_and_the_databases() {
    use gearman_testkit::{MariaDb, Postgres};
    use gearman_worker::db::redact_url;
    let mut g = Gearmand::start();
    g.kill();
    let mut pg = Postgres::start();
    let ddl = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../gearman-pg/sql/outbox.sql"
    ))
    .unwrap();
    pg.psql(
        &ddl.lines()
            .filter(|l| !l.contains("pg_extension_config_dump"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    pg.psql("INSERT INTO gearman.outbox (function, workload) SELECT 'm_pg', convert_to('r' || i, 'UTF8') FROM generate_series(1, 5) i");
    let my = MariaDb::start();
    my.sql(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../sql/mysql/outbox.sql"
        ))
        .unwrap(),
    )
    .unwrap();
    my.sql("INSERT INTO gearman_outbox (`function`, workload) SELECT 'm_my', CONCAT('r', seq) FROM seq_1_to_3").unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let r = WorkerProc::spawn(
        &[
            "relay",
            "--poll-interval-ms",
            "200",
            "-s",
            &g.addr(),
            "--metrics-addr",
            &metrics,
            "--postgres",
            &pg.url(),
            "--mysql",
            &my.url(),
        ],
        &[],
    );
    let (pg_src, my_src) = (redact_url(&pg.url()), redact_url(&my.url()));
    let rows = |src: &str| format!("gearman_relay_outbox_rows{{source=\"{src}\"}}");
    // gearmand down: nothing relayed, the rows are counted as waiting.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let t = http_get(&metrics, "/metrics").1;
            t.contains(&format!("{} 5", rows(&pg_src)))
                && t.contains(&format!("{} 3", rows(&my_src)))
        }),
        "{}\n{}",
        http_get(&metrics, "/metrics").1,
        r.log()
    );
    let t = http_get(&metrics, "/metrics").1;
    assert_eq!(
        sample(
            &t,
            &format!("gearman_relay_rows_total{{source=\"{pg_src}\"}}")
        ),
        0.0
    );
    assert!(
        sample(
            &t,
            &format!("gearman_relay_errors_total{{source=\"{pg_src}\"}}")
        ) >= 1.0
    );
    assert!(
        sample(
            &t,
            &format!("gearman_relay_oldest_row_age_seconds{{source=\"{my_src}\"}}")
        ) >= 0.0
    );
    let (code, body) = http_get(&metrics, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("no job server reachable"), "{body}");

    g.restart();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let t = http_get(&metrics, "/metrics").1;
            t.contains(&format!(
                "gearman_relay_rows_total{{source=\"{pg_src}\"}} 5"
            )) && t.contains(&format!(
                "gearman_relay_rows_total{{source=\"{my_src}\"}} 3"
            ))
        }),
        "{}\n{}",
        http_get(&metrics, "/metrics").1,
        r.log()
    );
    let t = http_get(&metrics, "/metrics").1;
    assert_eq!(sample(&t, &rows(&pg_src)), 0.0);
    assert_eq!(
        sample(
            &t,
            &format!("gearman_relay_oldest_row_age_seconds{{source=\"{pg_src}\"}}")
        ),
        0.0
    );
    assert_eq!(http_get(&metrics, "/healthz"), (200, "ok\n".to_string()));

    // A database going away turns /healthz to 503, naming it.
    pg.stop();
    assert!(
        wait_until(Duration::from_secs(20), || http_get(&metrics, "/healthz").0
            == 503),
        "{}",
        r.log()
    );
    let body = http_get(&metrics, "/healthz").1;
    assert!(body.starts_with("database not reachable ("), "{body}");
    assert!(body.contains(&pg_src), "{body}");
}
