//! The dispatcher background worker (issue 15): `gearman` in
//! `shared_preload_libraries`, commit-mode jobs handed off in shared memory
//! and written by one process. Real parts: a private gearmand, a private
//! PostgreSQL 15 (or GEARMAN_TEST_PG_BINDIR) started with the preload, a
//! worker thread recording every job.
//!
//! Needs the extension installed first, as for `tests/sql.rs`.

mod support;

use gearman_core::admin::Admin;
use gearman_core::ServerAddr;
use gearman_testkit::{Gearmand, Postgres};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::{describe, Env, Session};

const PRELOAD: &str = "shared_preload_libraries=gearman";

/// Polls `f` every 20 ms until it returns `Some`, at most `secs` seconds.
fn until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `gman_dispatch_status()` as column name → text value.
fn status(s: &mut Session) -> BTreeMap<String, Option<String>> {
    let msgs = s
        .client
        .simple_query("SELECT * FROM gman_dispatch_status()")
        .unwrap_or_else(|e| panic!("gman_dispatch_status: {}", describe(&e)));
    for m in msgs {
        if let postgres::SimpleQueryMessage::Row(r) = m {
            return r
                .columns()
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name().to_string(), r.get(i).map(str::to_string)))
                .collect();
        }
    }
    panic!("gman_dispatch_status returned no row");
}

fn num(st: &BTreeMap<String, Option<String>>, col: &str) -> i64 {
    st[col]
        .as_deref()
        .unwrap_or_else(|| panic!("{col} is NULL: {st:?}"))
        .parse()
        .unwrap()
}

/// The dispatcher's pid from pg_stat_activity, once it runs.
fn dispatcher_pid(pg: &Postgres) -> i32 {
    until(30, "the gearman dispatcher in pg_stat_activity", || {
        // Connections fail while PostgreSQL reinitialises after a crash.
        let mut s = Session::try_connect_with(&pg.url(), None, None).ok()?;
        let rows = s
            .client
            .simple_query(
                "SELECT coalesce(max(pid), 0) FROM pg_stat_activity \
                 WHERE backend_type = 'gearman dispatcher'",
            )
            .ok()?;
        rows.iter()
            .find_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse::<i32>().ok(),
                _ => None,
            })
            .filter(|p| *p != 0)
    })
}

/// gearmand's client connections from PostgreSQL, from one `workers`
/// listing: (the dispatcher's, backends' own).
fn connections(addr: &str) -> (usize, usize) {
    let mut a = Admin::connect(&ServerAddr::parse(addr).unwrap(), Duration::from_secs(2)).unwrap();
    let w = a.workers().unwrap();
    let ids = |p: &str| w.iter().filter(|w| w.client_id.starts_with(p)).count();
    let dispatcher = ids("postgres-dispatcher-");
    (dispatcher, ids("postgres-") - dispatcher)
}

/// Jobs queued in gearmand for `function`.
fn queued(addr: &str, function: &str) -> u64 {
    let mut a = Admin::connect(&ServerAddr::parse(addr).unwrap(), Duration::from_secs(2)).unwrap();
    a.status()
        .unwrap()
        .into_iter()
        .find(|f| f.function == function)
        .map_or(0, |f| f.queued())
}

#[test]
fn commit_hands_off_rollback_and_savepoints_keep_their_rules() {
    let env = Env::start_with(&[PRELOAD]);
    dispatcher_pid(&env.pg);
    let w = env.worker(&["disp_a"]);
    let mut s = env.connect();
    let st = status(&mut s);
    assert_eq!(st["dispatcher"].as_deref(), Some("running"), "{st:?}");

    s.exec("BEGIN; SELECT gman_do_background('disp_a', 'rolled-back'); ROLLBACK");
    s.exec(
        "BEGIN; SELECT gman_do_background('disp_a', 'kept-1'); SAVEPOINT p; \
         SELECT gman_do_background('disp_a', 'dropped-by-savepoint'); ROLLBACK TO SAVEPOINT p; \
         SELECT gman_do_background('disp_a', 'kept-2'); COMMIT",
    );
    s.exec("SELECT gman_do_background('disp_a', 'autocommit')");
    // PREPARE TRANSACTION with held jobs stays an error.
    let e = s.exec_err(
        "BEGIN; SELECT gman_do_background('disp_a', 'prepared'); PREPARE TRANSACTION 'p1'",
    );
    assert!(e.message.contains("cannot PREPARE"), "{e:?}");
    s.exec("ROLLBACK");
    s.exec("SELECT gman_do_background('disp_a', 'last')");
    w.wait_for_workload("last");
    assert_eq!(w.workloads(), ["kept-1", "kept-2", "autocommit", "last"]);

    let st = status(&mut s);
    // This backend wrote nothing itself: it handed 4 jobs off.
    assert_eq!(num(&st, "sent"), 0, "{st:?}");
    assert_eq!(num(&st, "handed_off"), 4, "{st:?}");
    assert_eq!(num(&st, "cluster_handed_off"), 4, "{st:?}");
    let st = until(10, "4 confirmations", || {
        let st = status(&mut s);
        (num(&st, "cluster_confirmed") == 4).then_some(st)
    });
    assert_eq!(num(&st, "cluster_sent"), 4, "{st:?}");
    assert_eq!(num(&st, "cluster_unknown") + num(&st, "cluster_refused"), 0);
    assert_eq!(st["servers_down"], None);

    // gearman.use_dispatcher = off: this session writes its own jobs.
    s.exec("SET gearman.use_dispatcher = off; SELECT gman_do_background('disp_a', 'own')");
    w.wait_for_workload("own");
    let st = status(&mut s);
    assert_eq!(num(&st, "sent"), 1, "{st:?}");
    assert_eq!(num(&st, "handed_off"), 4, "{st:?}");
}

#[test]
fn eight_sessions_every_job_once_over_one_gearmand_connection() {
    let env = Env::start_with(&[PRELOAD]);
    dispatcher_pid(&env.pg);
    let url = env.pg.url();
    let mut s = env.connect();
    s.exec(
        "CREATE TABLE t (id int, payload text); \
         CREATE FUNCTION t_job() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM gman_do_background('disp_many', NEW.payload); RETURN NEW; END $$; \
         CREATE TRIGGER t_job AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION t_job()",
    );
    const SESSIONS: usize = 8;
    const ROWS: usize = 250;
    let addr = env.addr();
    let threads: Vec<_> = (0..SESSIONS)
        .map(|k| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut s = Session::connect(&url);
                for i in 0..ROWS {
                    s.exec(&format!("INSERT INTO t VALUES ({i}, 's{k}-{i}')"));
                }
            })
        })
        .collect();
    // While they run: no backend ever connects to gearmand (client ids
    // postgres-<pid>); the dispatcher holds one connection.
    let mut most = 0;
    let mut backends = 0;
    while threads.iter().any(|t| !t.is_finished()) {
        let (d, b) = connections(&addr);
        most = most.max(d);
        backends = backends.max(b);
        std::thread::sleep(Duration::from_millis(20));
    }
    for t in threads {
        t.join().unwrap();
    }
    let total = (SESSIONS * ROWS) as u64;
    until(20, "every job queued in gearmand", || {
        (queued(&addr, "disp_many") >= total).then_some(())
    });
    assert_eq!(queued(&addr, "disp_many"), total);
    assert_eq!(backends, 0, "backends connected to gearmand themselves");
    assert!(most <= 1, "{most} dispatcher connections to one gearmand");
    assert_eq!(connections(&addr), (1, 0));
    // Exactly once each: drain with a worker and compare.
    let w = env.worker(&["disp_many"]);
    let seen = w.wait_for(SESSIONS * ROWS, Duration::from_secs(30));
    let mut got: Vec<String> = seen
        .iter()
        .map(|s| String::from_utf8_lossy(&s.workload).into_owned())
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..SESSIONS)
        .flat_map(|k| (0..ROWS).map(move |i| format!("s{k}-{i}")))
        .collect();
    want.sort();
    assert_eq!(got, want);
    let st = until(10, "all confirmed", || {
        let st = status(&mut s);
        (num(&st, "cluster_confirmed") == total as i64).then_some(st)
    });
    assert_eq!(num(&st, "cluster_handed_off"), total as i64, "{st:?}");
}

#[test]
fn killed_dispatcher_is_restarted_and_counts_what_was_in_flight() {
    let env = Env::start_with(&[PRELOAD, "gearman.commit_send_timeout=60000"]);
    let first = dispatcher_pid(&env.pg);
    let mut s = env.connect();
    s.exec("SELECT gman_do_background('disp_k', 'before')");
    until(10, "the first job confirmed", || {
        (num(&status(&mut s), "cluster_confirmed") == 1).then_some(())
    });
    // gearmand stops reading: the next jobs are written (or queued) but
    // never confirmed.
    env.gearmand.pause();
    for i in 0..5 {
        s.exec(&format!(
            "SELECT gman_do_background('disp_k', 'in-flight-{i}')"
        ));
    }
    let st = status(&mut s);
    assert_eq!(num(&st, "cluster_handed_off"), 6, "{st:?}");
    // SAFETY: kill(2) of the dispatcher process.
    unsafe { libc::kill(first, libc::SIGKILL) };
    drop(s);
    // PostgreSQL reinitialises (every backend restarts) and starts a new
    // dispatcher.
    let second = until(60, "a new dispatcher", || {
        let p = dispatcher_pid(&env.pg);
        (p != first).then_some(p)
    });
    assert_ne!(second, first);
    env.gearmand.resume();
    let mut s = until(30, "a new session", || {
        Session::try_connect_with(&env.pg.url(), None, None).ok()
    });
    let st = status(&mut s);
    assert_eq!(num(&st, "dispatcher_starts"), 2, "{st:?}");
    assert_eq!(num(&st, "cluster_lost"), 5, "{st:?}");
    assert_eq!(num(&st, "cluster_handed_off"), 6, "{st:?}");
    let w = env.worker(&["disp_k"]);
    s.exec("SELECT gman_do_background('disp_k', 'after-restart')");
    w.wait_for_workload("after-restart");
    let st = until(10, "the job after the restart confirmed", || {
        let st = status(&mut s);
        (num(&st, "cluster_confirmed") >= 2).then_some(st)
    });
    assert_eq!(num(&st, "cluster_handed_off"), 7, "{st:?}");
    // handed_off = sent + unsent + lost + queued, across the crash.
    assert_eq!(
        num(&st, "cluster_sent")
            + num(&st, "cluster_unsent")
            + num(&st, "cluster_lost")
            + num(&st, "cluster_queued"),
        7,
        "{st:?}"
    );
}

#[test]
fn gearmand_down_queued_jobs_go_once_back_and_commits_fail_while_known_down() {
    let mut env = Env::start_with(&[PRELOAD, "gearman.connect_timeout=500"]);
    dispatcher_pid(&env.pg);
    let mut s = env.connect();
    env.gearmand.kill();
    // The dispatcher does not know yet: the job is handed off and waits.
    s.exec("SELECT gman_do_background('disp_d', 'queued-while-down')");
    let st = until(20, "the server reported down", || {
        let st = status(&mut s);
        st["servers_down"].is_some().then_some(st)
    });
    assert_eq!(st["servers_down"].as_deref(), Some(env.addr().as_str()));
    assert_eq!(num(&st, "cluster_queued"), 1, "{st:?}");
    // This backend's own connection to another job server (immediate
    // dispatch there).
    let other = Gearmand::start();
    s.exec(&format!("SET gearman.servers = '{}'", other.addr()));
    s.exec("SET gearman.dispatch = 'immediate'");
    s.exec("SELECT gman_do_background('disp_other', 'x')");
    s.exec("RESET gearman.dispatch");
    s.exec("RESET gearman.servers");
    assert_eq!(connections(&other.addr()), (0, 1));
    // Now commits with jobs for that list fail per gearman.on_error.
    let e = s.exec_err("SELECT gman_do_background('disp_d', 'refused-at-commit')");
    assert_eq!(e.code, "08001", "{e:?}");
    assert!(
        e.message.contains("no job server reachable") && e.message.contains("rolled back"),
        "{e:?}"
    );
    // The check closed no connection it did not open (gearmand lists a
    // closed connection for a moment: give it time to drop one).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(connections(&other.addr()), (0, 1));
    s.exec("SET gearman.on_error = warning");
    s.exec("SELECT gman_do_background('disp_d', 'dropped-with-warning')");
    let n = s.take_notices();
    assert!(
        n.iter().any(|m| m.contains("are dropped")),
        "no WARNING: {n:?}"
    );
    s.exec("RESET gearman.on_error");
    env.gearmand.restart();
    let w = env.worker(&["disp_d"]);
    w.wait_for_workload("queued-while-down");
    until(20, "the server reported up again", || {
        status(&mut s)["servers_down"].is_none().then_some(())
    });
    s.exec("SELECT gman_do_background('disp_d', 'after')");
    w.wait_for_workload("after");
    assert_eq!(w.workloads(), ["queued-while-down", "after"]);
}

#[test]
fn a_full_queue_pushes_back_on_committers_and_memory_stays_bounded() {
    let env = Env::start_with(&[
        PRELOAD,
        "gearman.dispatch_queue_size=64kB",
        "gearman.commit_send_timeout=300",
    ]);
    dispatcher_pid(&env.pg);
    let mut s = env.connect();
    // gearmand stops reading; its socket buffers, the dispatcher's queue and
    // then the shared queue fill up.
    env.gearmand.pause();
    let big = "x".repeat(30_000);
    let mut committed = 0u64;
    let err = until(120, "a commit refused for a full queue", || {
        match s
            .client
            .batch_execute(&format!("SELECT gman_do_background('disp_full', '{big}')"))
        {
            Ok(()) => {
                committed += 1;
                None
            }
            Err(e) => Some(describe(&e)),
        }
    });
    assert!(
        err.contains("dispatcher queue stayed full") && err.contains("rolled back"),
        "{err}"
    );
    let st = status(&mut s);
    assert!(num(&st, "cluster_full_timeouts") >= 1, "{st:?}");
    assert_eq!(num(&st, "cluster_handed_off"), committed as i64, "{st:?}");
    // Bounded: what waits is at most the shared queue plus the dispatcher's
    // own queue (1 MB at least) plus one batch.
    assert!(
        num(&st, "cluster_queued_bytes") <= (64 << 10) + (2 << 20),
        "{st:?}"
    );
    env.gearmand.resume();
    until(60, "every committed job in gearmand", || {
        (queued(&env.addr(), "disp_full") >= committed).then_some(())
    });
    assert_eq!(queued(&env.addr(), "disp_full"), committed);
}

#[test]
fn clean_shutdown_flushes_what_the_dispatcher_holds() {
    let env = Env::start_with(&[
        PRELOAD,
        "gearman.commit_send_timeout=20000",
        "gearman.connect_timeout=500",
    ]);
    dispatcher_pid(&env.pg);
    let mut s = env.connect();
    let Env { mut gearmand, pg } = env;
    // gearmand is down: one transaction's 20 jobs wait in the dispatcher.
    gearmand.kill();
    s.exec(
        "BEGIN; SELECT gman_do_background('disp_s', 'j' || i) FROM generate_series(1, 20) i; \
         COMMIT",
    );
    let st = until(20, "the jobs waiting for the down server", || {
        let st = status(&mut s);
        (st["servers_down"].is_some() && num(&st, "cluster_queued") == 20).then_some(st)
    });
    assert_eq!(num(&st, "cluster_sent"), 0, "{st:?}");
    drop(s);
    // Fast shutdown: the dispatcher keeps trying (within
    // gearman.commit_send_timeout); gearmand comes back meanwhile.
    let log_path = pg.log_path();
    let stopper = std::thread::spawn(move || {
        let mut pg = pg;
        pg.stop();
        pg
    });
    std::thread::sleep(Duration::from_millis(500));
    gearmand.restart();
    let pg = stopper.join().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(queued(&gearmand.addr(), "disp_s"), 20, "server log:\n{log}");
    assert!(
        log.contains("gearman dispatcher stopped: 20 job(s) written, 20 confirmed")
            && log.contains(", 0 unsent"),
        "server log:\n{log}"
    );
    drop(pg);
}

#[test]
fn without_a_dispatcher_process_sessions_send_their_own_jobs() {
    // No room for background workers: the dispatcher never starts.
    let env = Env::start_with(&[PRELOAD, "max_worker_processes=0"]);
    let w = env.worker(&["disp_none"]);
    let mut s = env.connect();
    s.exec("SELECT gman_do_background('disp_none', 'sent-by-the-backend')");
    w.wait_for_workload("sent-by-the-backend");
    let st = status(&mut s);
    assert_eq!(st["dispatcher"].as_deref(), Some("not running"), "{st:?}");
    assert_eq!(num(&st, "sent"), 1, "{st:?}");
    assert_eq!(num(&st, "handed_off"), 0, "{st:?}");
    assert_eq!(num(&st, "cluster_handed_off"), 0, "{st:?}");
}

#[test]
fn a_reload_that_changes_connection_settings_carries_the_unwritten_jobs_over() {
    // (Not gearman.connect_timeout: a setting given at start outranks
    // ALTER SYSTEM.)
    let mut env = Env::start_with(&[PRELOAD, "gearman.commit_send_timeout=1s"]);
    dispatcher_pid(&env.pg);
    let mut s = env.connect();
    env.gearmand.kill();
    // One transaction, handed off before the dispatcher finds gearmand down.
    s.exec(
        "BEGIN; SELECT gman_do_background('disp_r', 'r0'); \
         SELECT gman_do_background('disp_r', 'r1'); \
         SELECT gman_do_background('disp_r', 'r2'); COMMIT",
    );
    until(20, "3 jobs waiting in the dispatcher", || {
        (num(&status(&mut s), "cluster_queued") == 3).then_some(())
    });
    // A new connect timeout: the dispatcher replaces its sender.
    s.exec("ALTER SYSTEM SET gearman.connect_timeout = '600ms'");
    s.exec("SELECT pg_reload_conf()");
    until(20, "the reload in the server log", || {
        env.pg.log().contains("settings reloaded").then_some(())
    });
    assert!(
        env.pg
            .log()
            .contains("3 job(s) not yet written carried over"),
        "{}",
        env.pg.log()
    );
    env.gearmand.restart();
    let w = env.worker(&["disp_r"]);
    for k in ["r0", "r1", "r2"] {
        w.wait_for_workload(k);
    }
    assert_eq!(w.workloads(), ["r0", "r1", "r2"]);
    let st = until(20, "every job confirmed", || {
        let st = status(&mut s);
        (num(&st, "cluster_confirmed") == 3).then_some(st)
    });
    assert_eq!(num(&st, "cluster_unsent"), 0, "{st:?}");
    assert_eq!(num(&st, "cluster_lost"), 0, "{st:?}");
}
