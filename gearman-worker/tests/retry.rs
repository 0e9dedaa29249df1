//! Retries with back-off (`retries`, `retry_backoff_ms`): scheduled jobs on
//! a private gearmand, across a SIGKILL, and what a foreground caller sees.

mod common;

use common::*;
use gearman_core::Job;
use gearman_testkit::{free_port, Gearmand};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// A command that counts its runs in DIR/NAME.n, appends `$GEARMAN_ATTEMPT`
/// to DIR/NAME.attempts, fails (stderr `fail<run>`) while the run is below
/// `succeed_on` (0: always fails), else copies stdin to DIR/NAME.out.
fn flaky(dir: &Path, name: &str, succeed_on: u32) -> String {
    let d = dir.display();
    format!(
        "exec = [\"sh\", \"-c\", \"n=$(cat {d}/{name}.n 2>/dev/null || echo 0); n=$((n+1)); \
         echo $n > {d}/{name}.n; echo $GEARMAN_ATTEMPT >> {d}/{name}.attempts; \
         if [ {succeed_on} -eq 0 ] || [ $n -lt {succeed_on} ]; then echo fail$n >&2; exit 1; fi; \
         cat > {d}/{name}.tmp && mv {d}/{name}.tmp {d}/{name}.out\"]\n"
    )
}

fn attempts(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{name}.attempts")))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut t = String::new();
    s.read_to_string(&mut t).unwrap();
    t
}

fn spawn(cfg: &Path, metrics: Option<&str>) -> WorkerProc {
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    if let Some(m) = metrics {
        args.extend(["--metrics-addr", m]);
    }
    WorkerProc::spawn(&args, &[])
}

#[test]
fn failing_twice_then_ok_runs_three_times_and_always_failing_stops_after_retries_plus_one() {
    let g = Gearmand::start();
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let text = format!(
        "servers = [\"{}\"]\nlog_level = \"debug\"\n\
         [function.flaky]\n{}retries = 3\nretry_backoff_ms = 100\n\
         [function.broken]\n{}retries = 2\nretry_backoff_ms = 100\n",
        g.addr(),
        flaky(dir.path(), "flaky", 3),
        flaky(dir.path(), "broken", 0),
    );
    let cfg = write_file(dir.path(), "worker.toml", &text);
    let w = spawn(&cfg, Some(&metrics));
    wait_workers(&g.addr(), "flaky", 1, &|| w.log());
    wait_workers(&g.addr(), "broken", 1, &|| w.log());
    let mut c = client(&g.addr());
    c.submit_background(&Job::new("flaky", b"pay\0load".to_vec()).with_unique("k-flaky"))
        .unwrap();
    c.submit_background(&Job::new("broken", "x")).unwrap();

    assert!(
        wait_until(Duration::from_secs(40), || dir
            .path()
            .join("flaky.out")
            .exists()
            && attempts(dir.path(), "broken").len() >= 3),
        "{}",
        w.log()
    );
    // The third run got the original workload, byte for byte.
    assert_eq!(
        std::fs::read(dir.path().join("flaky.out")).unwrap(),
        b"pay\0load"
    );
    assert_eq!(attempts(dir.path(), "flaky"), ["1", "2", "3"]);
    // `broken`: retries + 1 = 3 attempts, then no more (a fourth would be
    // due within 2 s plus the 5 s idle re-grab).
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        attempts(dir.path(), "broken"),
        ["1", "2", "3"],
        "{}",
        w.log()
    );
    let t = scrape(&metrics);
    for line in [
        r#"gearman_worker_jobs_total{function="flaky",outcome="ok"} 1"#,
        r#"gearman_worker_jobs_total{function="flaky",outcome="failed"} 2"#,
        r#"gearman_worker_jobs_total{function="flaky",outcome="retried"} 2"#,
        r#"gearman_worker_jobs_total{function="broken",outcome="ok"} 0"#,
        r#"gearman_worker_jobs_total{function="broken",outcome="failed"} 3"#,
        r#"gearman_worker_jobs_total{function="broken",outcome="retried"} 2"#,
    ] {
        assert!(t.contains(line), "missing `{line}` in\n{t}");
    }
    let log = w.log();
    assert!(
        log.contains("job retry scheduled function=flaky") && log.contains(": attempt 3 of 4 in "),
        "{log}"
    );
}

#[test]
fn a_pending_retry_survives_a_sigkill_of_the_worker() {
    let g = Gearmand::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "servers = [\"{}\"]\nlog_level = \"debug\"\n\
         [function.flaky]\n{}retries = 1\nretry_backoff_ms = 4000\n",
        g.addr(),
        flaky(dir.path(), "flaky", 2),
    );
    let cfg = write_file(dir.path(), "worker.toml", &text);
    let w = spawn(&cfg, None);
    wait_workers(&g.addr(), "flaky", 1, &|| w.log());
    client(&g.addr())
        .submit_background(&Job::new("flaky", "survive"))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || w
            .log()
            .contains("job retry scheduled function=flaky")),
        "{}",
        w.log()
    );
    w.signal(libc::SIGKILL);
    drop(w);
    // The retry waits in gearmand, not in the dead worker.
    assert_eq!(queued(&g.addr(), "flaky"), 1);
    assert!(!dir.path().join("flaky.out").exists());
    let w2 = spawn(&cfg, None);
    assert!(
        wait_until(Duration::from_secs(20), || dir
            .path()
            .join("flaky.out")
            .exists()),
        "{}",
        w2.log()
    );
    assert_eq!(
        std::fs::read(dir.path().join("flaky.out")).unwrap(),
        b"survive"
    );
    assert_eq!(attempts(dir.path(), "flaky"), ["1", "2"]);
}

#[test]
fn a_foreground_caller_gets_the_first_failure_and_the_job_is_still_retried() {
    let g = Gearmand::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "servers = [\"{}\"]\nlog_level = \"debug\"\n\
         [function.flaky]\n{}retries = 1\nretry_backoff_ms = 100\n",
        g.addr(),
        flaky(dir.path(), "flaky", 2),
    );
    let cfg = write_file(dir.path(), "worker.toml", &text);
    let w = spawn(&cfg, None);
    wait_workers(&g.addr(), "flaky", 1, &|| w.log());
    let e = client(&g.addr()).run(&Job::new("flaky", "fg")).unwrap_err();
    assert!(failure_text(&e).contains("fail1"), "{e}");
    assert_eq!(attempts(dir.path(), "flaky"), ["1"]);
    assert!(
        wait_until(Duration::from_secs(20), || dir
            .path()
            .join("flaky.out")
            .exists()),
        "{}",
        w.log()
    );
    assert_eq!(attempts(dir.path(), "flaky"), ["1", "2"]);
}

#[test]
fn sql_statements_see_the_attempt_as_their_second_parameter() {
    use gearman_testkit::{MariaDb, Postgres};
    let g = Gearmand::start();
    let pg = Postgres::start();
    pg.psql("CREATE TABLE done (w text, attempt int)");
    let my = MariaDb::start();
    my.sql("CREATE TABLE done (w VARCHAR(20) NOT NULL, attempt INT NOT NULL)")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "servers = [\"{}\"]\nlog_level = \"debug\"\n\
         [function.pg_flaky]\n\
         sql = \"WITH x AS (SELECT CASE WHEN $2::int < 3 THEN 1/0 ELSE $2::int END AS a) \
                INSERT INTO done SELECT $1, a FROM x RETURNING attempt::text\"\n\
         database = \"{}\"\nretries = 2\nretry_backoff_ms = 100\n\
         [function.my_flaky]\n\
         sql = \"INSERT INTO done (w, attempt) VALUES (?, NULLIF(?, 1))\"\n\
         database = \"{}\"\nretries = 1\nretry_backoff_ms = 100\n",
        g.addr(),
        pg.url(),
        my.url()
    );
    let cfg = write_file(dir.path(), "worker.toml", &text);
    let w = spawn(&cfg, None);
    wait_workers(&g.addr(), "pg_flaky", 1, &|| w.log());
    wait_workers(&g.addr(), "my_flaky", 1, &|| w.log());
    let mut c = client(&g.addr());
    c.submit_background(&Job::new("pg_flaky", "p")).unwrap();
    c.submit_background(&Job::new("my_flaky", "m")).unwrap();
    assert!(
        wait_until(Duration::from_secs(40), || {
            pg.psql("SELECT count(*) FROM done").trim() == "1"
                && my.sql("SELECT COUNT(*) FROM done").unwrap().trim() == "1"
        }),
        "{}",
        w.log()
    );
    assert_eq!(pg.psql("SELECT w || attempt FROM done").trim(), "p3");
    assert_eq!(
        my.sql("SELECT CONCAT(w, attempt) FROM done")
            .unwrap()
            .trim(),
        "m2"
    );
    let log = w.log();
    assert_eq!(log.matches("division by zero").count(), 2, "{log}");
    assert_eq!(log.matches("cannot be null").count(), 1, "{log}");
}

#[test]
fn a_retry_reaching_a_function_without_retries_still_gets_the_original_workload() {
    // E.g. after a reload that removed `retries`: the envelope is unwrapped
    // all the same, and a failure is not retried.
    use gearman_worker::retry::Envelope;
    let g = Gearmand::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "worker.toml",
        &format!(
            "servers = [\"{}\"]\nlog_level = \"debug\"\n[function.echo]\nbuiltin = \"echo\"\n\
             [function.env]\nexec = [\"sh\", \"-c\", \"printf %s $GEARMAN_ATTEMPT; cat\"]\n",
            g.addr()
        ),
    );
    let w = spawn(&cfg, None);
    wait_workers(&g.addr(), "echo", 1, &|| w.log());
    wait_workers(&g.addr(), "env", 1, &|| w.log());
    let wrapped = Envelope {
        attempt: 3,
        first_failure: 1,
        unique: b"orig".to_vec(),
        workload: b"in\0ner".to_vec(),
    }
    .encode();
    let mut c = client(&g.addr());
    assert_eq!(
        c.run(&Job::new("echo", wrapped.clone())).unwrap(),
        b"in\0ner"
    );
    assert_eq!(c.run(&Job::new("env", wrapped)).unwrap(), b"3in\0ner");
}

#[test]
fn on_a_server_without_scheduled_jobs_the_retry_fails_clearly_and_goes_to_the_dead_letter() {
    // Perl's Gearman::Server answers SUBMIT_JOB_EPOCH with ERROR.
    let p = gearman_testkit::PerlGearmand::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "servers = [\"{}\"]\nlog_level = \"debug\"\n\
         [function.flaky]\n{}retries = 2\nretry_backoff_ms = 100\n\
         dead_letter_function = \"graveyard\"\n",
        p.addr(),
        flaky(dir.path(), "flaky", 0),
    );
    let cfg = write_file(dir.path(), "worker.toml", &text);
    let w = spawn(&cfg, None);
    wait_workers(&p.addr(), "flaky", 1, &|| w.log());
    client(&p.addr())
        .submit_background(&Job::new("flaky", "x"))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || w
            .log()
            .contains("job dead-lettered function=flaky")),
        "{}",
        w.log()
    );
    let log = w.log();
    assert!(
        log.contains("failed on attempt 1 and its retry could not be scheduled"),
        "{log}"
    );
    assert_eq!(attempts(dir.path(), "flaky"), ["1"]);
    assert_eq!(queued(&p.addr(), "graveyard"), 1, "{log}");
}
