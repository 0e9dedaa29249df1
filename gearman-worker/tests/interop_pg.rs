//! Interoperability: jobs sent by the SQL functions of the gearman-pg
//! extension (installed into the system PostgreSQL 15 with `cargo pgrx
//! install -p gearman-pg`) are served by gearman-worker,
//! directly and through the outbox and the relay.

mod common;

use common::*;
use gearman_testkit::{Gearmand, Postgres};
use std::time::Duration;

const CONTROL: &str = "/usr/share/postgresql/15/extension/gearman.control";

#[test]
fn jobs_from_gearman_pg_functions_and_outbox_are_served() {
    assert!(
        std::path::Path::new(CONTROL).exists(),
        "{CONTROL} missing: install the extension with `cargo pgrx install -p gearman-pg --pg-config /usr/lib/postgresql/15/bin/pg_config`"
    );
    let g = Gearmand::start();
    let servers = format!("gearman.servers={}", g.addr());
    let pg = Postgres::start_with(&[&servers]);
    pg.psql("CREATE EXTENSION gearman");

    let dir = tempfile::tempdir().unwrap();
    // `upper` also records each workload it gets, one per line.
    let seen = dir.path().join("seen.txt");
    let script = format!(
        "w=$(cat); printf '%s\\n' \"$w\" >> {}; printf %s \"$w\" | tr a-z A-Z",
        seen.display()
    );
    let cfg = write_file(
        dir.path(),
        "worker.toml",
        &format!(
            "servers = [\"{}\"]\nlog_level = \"debug\"\n[function.reverse]\nbuiltin = \"reverse\"\n\
             [function.upper]\nexec = [\"sh\", \"-c\", {:?}]\n",
            g.addr(),
            script
        ),
    );
    let w = WorkerProc::spawn(&["--config", cfg.to_str().unwrap()], &[]);
    for f in ["reverse", "upper"] {
        wait_workers(&g.addr(), f, 1, &|| w.log());
    }

    // Foreground: SQL -> gearmand -> gearman-worker -> result column.
    assert_eq!(pg.psql("SELECT gman_do('reverse', 'Hello')"), "olleH");
    // Background, default dispatch (sent at commit).
    pg.psql("SELECT gman_do_background('upper', 'commit-mode')");

    // Outbox dispatch: one committed, one rolled back; the relay sends the first only.
    pg.psql(
        "SET gearman.dispatch = 'outbox';
         BEGIN; SELECT gman_do_background('upper', 'outbox-kept'); COMMIT;
         BEGIN; SELECT gman_do_background('upper', 'outbox-dropped'); ROLLBACK;",
    );
    assert_eq!(pg.psql("SELECT count(*) FROM gearman.outbox"), "1");
    let mut relay = WorkerProc::spawn(
        &[
            "relay",
            "--postgres",
            &pg.url(),
            "-s",
            &g.addr(),
            "--poll-interval-ms",
            "200",
        ],
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(15), || pg
            .psql("SELECT count(*) FROM gearman.outbox")
            == "0"),
        "{}",
        relay.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || w
            .log()
            .matches("job done function=upper handle=")
            .count()
            == 2),
        "{}",
        w.log()
    );
    // Exactly the commit-mode job and the kept outbox row ran.
    let mut got: Vec<String> = std::fs::read_to_string(&seen)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    got.sort();
    assert_eq!(got, ["commit-mode", "outbox-kept"]);
    relay.signal(libc::SIGTERM);
    let st = relay
        .wait_exit(Duration::from_secs(10))
        .expect("relay did not exit");
    assert_eq!(st.code(), Some(0), "{}", relay.log());
}
