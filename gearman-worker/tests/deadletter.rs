//! Dead letters (`dead_letter = URL`) in a private PostgreSQL and MariaDB,
//! and `gearman-worker dead-letter list|replay|purge`, against a private
//! gearmand.

mod common;

use common::*;
use gearman_core::worker::{Worker, WorkerOptions};
use gearman_core::{Job, ServerList};
use gearman_testkit::{free_port, Gearmand, MariaDb, Postgres};
use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

fn sql_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../sql/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut t = String::new();
    s.read_to_string(&mut t).unwrap();
    t
}

/// (workload, unique key) of each job a [`catcher`] got.
type Caught = mpsc::Receiver<(Vec<u8>, Vec<u8>)>;

/// A worker for `function` that hands every (workload, unique key) over.
fn catcher(addr: &str, function: &str) -> (Caught, gearman_core::worker::StopHandle) {
    let (tx, rx) = mpsc::channel();
    let mut w = Worker::new(ServerList::parse(addr).unwrap(), WorkerOptions::default());
    w.register(function, move |ctx| {
        let _ = tx.send((ctx.workload().to_vec(), ctx.unique().to_vec()));
        Ok(Vec::new())
    });
    let stop = w.stop_handle();
    std::thread::spawn(move || w.run());
    (rx, stop)
}

/// Runs the worker until `count()` says the dead letter is written.
fn dead_letter_one_job(g: &Gearmand, url: &str, count: &dyn Fn() -> String) -> String {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let cfg = write_file(
        dir.path(),
        "worker.toml",
        &format!(
            "servers = [\"{}\"]\nlog_level = \"debug\"\n\
             [function.doomed]\n\
             exec = [\"sh\", \"-c\", \"echo boom-attempt-$GEARMAN_ATTEMPT >&2; exit 1\"]\n\
             retries = 1\nretry_backoff_ms = 100\ndead_letter = \"{url}\"\n",
            g.addr()
        ),
    );
    let w = WorkerProc::spawn(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--metrics-addr",
            &metrics,
        ],
        &[],
    );
    wait_workers(&g.addr(), "doomed", 1, &|| w.log());
    client(&g.addr())
        .submit_background(&Job::new("doomed", b"a\0b\xff".to_vec()).with_unique("dl-key"))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || count().trim() == "1"),
        "{}",
        w.log()
    );
    // The counter moves just after the row is committed: wait for it.
    let lines = [
        r#"gearman_worker_jobs_total{function="doomed",outcome="failed"} 2"#,
        r#"gearman_worker_jobs_total{function="doomed",outcome="retried"} 1"#,
        r#"gearman_worker_jobs_total{function="doomed",outcome="dead_letter"} 1"#,
    ];
    assert!(
        wait_until(Duration::from_secs(10), || {
            let t = scrape(&metrics);
            lines.iter().all(|l| t.contains(l))
        }),
        "{}",
        scrape(&metrics)
    );
    w.log()
}

/// With the gearman extension installed, `gearman.dead_letter` is its table:
/// the worker writes there without sql/postgres/dead_letter.sql, PUBLIC has
/// no rights on it, and running the standalone file afterwards changes
/// nothing (it is a no-op where the table exists).
#[test]
fn postgres_dead_letter_table_comes_with_the_extension() {
    let g = Gearmand::start();
    let pg = Postgres::start();
    pg.psql("CREATE EXTENSION gearman");
    assert_eq!(
        pg.psql(
            "SELECT count(*) FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid \
             WHERE e.extname = 'gearman' AND d.classid = 'pg_class'::regclass \
             AND d.objid = 'gearman.dead_letter'::regclass AND d.deptype = 'e'"
        )
        .trim(),
        "1",
        "gearman.dead_letter is not a member of the extension"
    );
    assert_eq!(
        pg.psql(
            "SELECT has_table_privilege('public', 'gearman.dead_letter', 'INSERT') \
             OR has_table_privilege('public', 'gearman.dead_letter', 'SELECT')"
        )
        .trim(),
        "f"
    );
    pg.psql(&sql_file("postgres/dead_letter.sql"));
    let url = pg.url();
    dead_letter_one_job(&g, &url, &|| {
        pg.psql("SELECT count(*) FROM gearman.dead_letter")
    });
    assert_eq!(
        pg.psql("SELECT function || '|' || attempts FROM gearman.dead_letter")
            .trim(),
        "doomed|2"
    );
}

#[test]
fn postgres_dead_letter_row_list_replay_with_gearmand_down_then_up_and_purge() {
    let mut g = Gearmand::start();
    let pg = Postgres::start();
    pg.psql(&sql_file("postgres/dead_letter.sql"));
    pg.psql(&sql_file("postgres/dead_letter.sql")); // idempotent
    let url = pg.url();
    dead_letter_one_job(&g, &url, &|| {
        pg.psql("SELECT count(*) FROM gearman.dead_letter")
    });
    assert_eq!(
        pg.psql(
            "SELECT function || '|' || convert_from(unique_key, 'UTF8') || '|' || encode(workload, 'hex') \
             || '|' || attempts || '|' || last_error || '|' || (first_failed_at <= last_failed_at) \
             FROM gearman.dead_letter"
        )
        .trim(),
        "doomed|dl-key|610062ff|2|`sh` failed: exit status 1: boom-attempt-2|true"
    );
    let id = pg
        .psql("SELECT id FROM gearman.dead_letter")
        .trim()
        .to_string();

    let (st, out, err) = run_to_end(&["dead-letter", "list", "--postgres", &url]);
    assert!(st.success(), "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let cols: Vec<&str> = out.trim_end().split('\t').collect();
    assert_eq!(
        (cols[0], cols[1], cols[2], cols[5], cols[6]),
        (id.as_str(), "doomed", "2", "dl-key", "4B"),
        "{out}"
    );
    assert!(cols[7].contains("boom-attempt-2"), "{out}");

    // gearmand down: replay fails clearly and keeps the row.
    g.kill();
    let (st, _, err) = run_to_end(&["dead-letter", "replay", "--postgres", &url, "-s", &g.addr()]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "replay of dead letter {id} (function doomed) failed"
        )),
        "{err}"
    );
    assert!(err.contains("the row is kept"), "{err}");
    assert_eq!(
        pg.psql("SELECT count(*) FROM gearman.dead_letter").trim(),
        "1"
    );

    // gearmand back: replay delivers the job (same workload and key) and removes the row.
    g.restart();
    let (st, out, err) = run_to_end(&[
        "dead-letter",
        "replay",
        "--postgres",
        &url,
        "-s",
        &g.addr(),
        "--id",
        &id,
    ]);
    assert!(st.success(), "{err}");
    assert!(out.contains("replayed 1 dead letter(s)"), "{out}");
    assert_eq!(
        pg.psql("SELECT count(*) FROM gearman.dead_letter").trim(),
        "0"
    );
    let (rx, stop) = catcher(&g.addr(), "doomed");
    let (workload, unique) = rx.recv_timeout(Duration::from_secs(15)).unwrap();
    stop.stop();
    assert_eq!(
        (workload.as_slice(), unique.as_slice()),
        (&b"a\0b\xff"[..], &b"dl-key"[..])
    );

    // purge selects by function.
    pg.psql(
        "INSERT INTO gearman.dead_letter (function, workload, last_error, attempts, first_failed_at) \
         VALUES ('x', '\\x00', 'e', 1, now()), ('y', '\\x00', 'e', 1, now())",
    );
    let (st, out, err) = run_to_end(&["dead-letter", "purge", "--postgres", &url, "-f", "x"]);
    assert!(st.success(), "{err}");
    assert!(out.contains("purged 1 dead letter(s)"), "{out}");
    assert_eq!(
        pg.psql("SELECT string_agg(function, ',') FROM gearman.dead_letter")
            .trim(),
        "y"
    );
}

#[test]
fn mysql_dead_letter_row_list_and_replay() {
    let g = Gearmand::start();
    let my = MariaDb::start();
    my.sql(&sql_file("mysql/dead_letter.sql")).unwrap();
    my.sql(&sql_file("mysql/dead_letter.sql")).unwrap();
    let url = my.url();
    dead_letter_one_job(&g, &url, &|| {
        my.sql("SELECT COUNT(*) FROM gearman_dead_letter").unwrap()
    });
    assert_eq!(
        my.sql(
            "SELECT CONCAT_WS('|', `function`, unique_key, HEX(workload), attempts, \
             last_error LIKE '%boom-attempt-2', first_failed_at <= last_failed_at) FROM gearman_dead_letter"
        )
        .unwrap()
        .trim(),
        "doomed|dl-key|610062FF|2|1|1"
    );
    let (st, out, err) = run_to_end(&["dead-letter", "list", "--mysql", &url, "-f", "doomed"]);
    assert!(st.success(), "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let (st, out, err) = run_to_end(&["dead-letter", "list", "--mysql", &url, "-f", "other"]);
    assert!(st.success() && out.is_empty(), "{out}{err}");
    let (st, out, err) = run_to_end(&["dead-letter", "replay", "--mysql", &url, "-s", &g.addr()]);
    assert!(st.success(), "{err}");
    assert!(out.contains("replayed 1 dead letter(s)"), "{out}");
    assert_eq!(
        my.sql("SELECT COUNT(*) FROM gearman_dead_letter")
            .unwrap()
            .trim(),
        "0"
    );
    let (rx, stop) = catcher(&g.addr(), "doomed");
    let (workload, unique) = rx.recv_timeout(Duration::from_secs(15)).unwrap();
    stop.stop();
    assert_eq!(
        (workload.as_slice(), unique.as_slice()),
        (&b"a\0b\xff"[..], &b"dl-key"[..])
    );
}

#[test]
fn dead_letter_function_receives_the_job_as_a_background_json_job() {
    let g = Gearmand::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "worker.toml",
        &format!(
            "servers = [\"{}\"]\nlog_level = \"debug\"\n\
             [function.doomed]\n\
             exec = [\"sh\", \"-c\", \"echo boom-attempt-$GEARMAN_ATTEMPT >&2; exit 1\"]\n\
             dead_letter_function = \"graveyard\"\n",
            g.addr()
        ),
    );
    let w = WorkerProc::spawn(&["--config", cfg.to_str().unwrap()], &[]);
    wait_workers(&g.addr(), "doomed", 1, &|| w.log());
    let (rx, stop) = catcher(&g.addr(), "graveyard");
    client(&g.addr())
        .submit_background(&Job::new("doomed", b"a\0b\xff".to_vec()).with_unique("dl-key"))
        .unwrap();
    let (payload, _) = rx
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}: {}", w.log()));
    stop.stop();
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["function"], "doomed");
    assert_eq!(v["unique_key_hex"], "646c2d6b6579");
    assert_eq!(v["workload_hex"], "610062ff");
    assert_eq!(v["attempts"], 1);
    assert!(
        v["last_error"]
            .as_str()
            .unwrap()
            .ends_with("boom-attempt-1"),
        "{v}"
    );
    // The line is written after the job server confirmed the job, which
    // may be after the catcher got it.
    assert!(
        wait_until(Duration::from_secs(10), || w
            .log()
            .contains("job dead-lettered function=doomed")),
        "{}",
        w.log()
    );
    assert!(w.log().contains("into function graveyard"), "{}", w.log());
}
