//! Pipelined dispatch through the process-wide sender thread, with a real
//! MariaDB: every connection's triggers share one gearmand connection;
//! dropping and re-creating every UDF while jobs flow does not crash
//! mariadbd (the library's destructor stops and joins the sender); a
//! shutdown with queued jobs neither hangs nor crashes.

mod common;

use common::{last_error, one_str, wait_until, Env};
use mysql::prelude::Queryable;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PIPELINED: &str = "background_dispatch = \"pipelined\"\n";

fn total(env: &Env, function: &str) -> u64 {
    env.admin()
        .status()
        .unwrap()
        .iter()
        .find(|f| f.function == function)
        .map_or(0, |f| f.total)
}

fn connections_with_id(env: &Env, id: &str) -> usize {
    env.admin()
        .workers()
        .unwrap()
        .iter()
        .filter(|w| w.client_id == id)
        .count()
}

fn trigger_table(c: &mut mysql::Conn, table: &str, function: &str) {
    c.query_drop(format!(
        "CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, title VARCHAR(200))"
    ))
    .unwrap();
    c.query_drop(format!(
        "CREATE TRIGGER {table}_bg AFTER INSERT ON {table} FOR EACH ROW \
         SET @ret = gman_do_background('{function}', CONCAT(NEW.id, ' - ', NEW.title))"
    ))
    .unwrap();
}

#[test]
fn triggers_of_many_connections_share_one_sender_connection() {
    let mut env = Env::start(PIPELINED);
    let mut c = env.conn();
    trigger_table(&mut c, "t", "disp_trig");
    let threads: Vec<_> = (0..8)
        .map(|k| {
            let mut conn = env.conn();
            std::thread::spawn(move || {
                for i in 0..200 {
                    conn.exec_drop("INSERT INTO t (title) VALUES (?)", (format!("{k}-{i}"),))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    wait_until("1,600 jobs queued", Duration::from_secs(30), || {
        total(&env, "disp_trig") >= 1600
    });
    std::thread::sleep(Duration::from_millis(200));
    // No worker: each job stays queued; none twice (no two share a key).
    assert_eq!(total(&env, "disp_trig"), 1600);
    assert_eq!(
        connections_with_id(&env, "gearman-mysql-udf-dispatcher"),
        1,
        "one sender connection for all 8 sessions"
    );
    assert_eq!(
        connections_with_id(&env, "gearman-mysql-udf"),
        0,
        "no per-session connection"
    );
    let mut st = String::new();
    wait_until("all confirmed", Duration::from_secs(10), || {
        st = one_str(&mut c, "SELECT gman_dispatch_status()").unwrap();
        st.contains("\"confirmed\":1600")
    });
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(v["sent"], 1600, "{st}");
    assert_eq!(v["pending"], 0, "{st}");
    assert_eq!(v["sender"]["queued"], 0, "{st}");
    assert_eq!(v["sender"]["written"], 1600, "{st}");
    assert_eq!(last_error(&mut c), None);
    env.assert_alive("shared sender");
}

/// Whether mariadbd has the library mapped now.
fn library_mapped(env: &Env) -> bool {
    let pid = env.db.pid().expect("mariadbd running");
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .contains("libgearman_mysql_udf.so")
}

#[test]
fn dropping_and_recreating_every_udf_while_jobs_flow_does_not_crash() {
    let mut env = Env::start(PIPELINED);
    let mut c = env.conn();
    trigger_table(&mut c, "t", "disp_drop");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|k| {
            let mut conn = env.conn();
            let (stop, ok) = (stop.clone(), ok.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Acquire) {
                    i += 1;
                    // Fails while the function is dropped: the row is not
                    // inserted and no job is sent.
                    if conn
                        .exec_drop("INSERT INTO t (title) VALUES (?)", (format!("{k}-{i}"),))
                        .is_ok()
                    {
                        ok.fetch_add(1, Ordering::AcqRel);
                    }
                }
            })
        })
        .collect();
    let uninstall = std::fs::read_to_string(common::sql_file("uninstall.sql")).unwrap();
    let install = std::fs::read_to_string(common::sql_file("install.sql")).unwrap();
    let mut mapped = 0;
    for round in 0..4 {
        wait_until("jobs flowing", Duration::from_secs(20), || {
            ok.load(Ordering::Acquire) > (round + 1) * 50
        });
        env.db.sql(&uninstall).unwrap();
        if library_mapped(&env) {
            mapped += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
        env.assert_alive("DROP FUNCTION of every UDF");
        env.db.sql(&install).unwrap();
    }
    stop.store(true, Ordering::Release);
    for w in writers {
        w.join().unwrap();
    }
    let sent = ok.load(Ordering::Acquire);
    // Every insert that succeeded handed its job over; the destructor
    // flushed those queued at each unload, so all reached gearmand.
    wait_until(
        "every job of a successful insert",
        Duration::from_secs(30),
        || total(&env, "disp_drop") >= sent,
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(total(&env, "disp_drop"), sent);
    // The library pinned itself when the sender started: every DROP
    // FUNCTION left it mapped, with its sender running.
    assert_eq!(mapped, 4, "the library was unmapped after DROP FUNCTION");
    assert!(
        !env.udf_log_lines().iter().any(|l| l.contains("never sent")),
        "{:?}",
        env.udf_log_lines()
    );
    let mut c = env.conn();
    assert_eq!(one_str(&mut c, "SELECT 1").as_deref(), Some("1"));
    // The same sender and counters after re-creating the functions.
    let st = one_str(&mut c, "SELECT gman_dispatch_status()").unwrap();
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(v["sent"], sent, "{st}");
    env.assert_alive("DROP/CREATE FUNCTION rounds");
    // Dropped once more, then a clean shutdown: the destructor runs at exit.
    env.db.sql(&uninstall).unwrap();
    drop(c);
    env.db.stop();
    let log = env.db.error_log();
    assert!(!log.contains("got signal"), "crashed:\n{log}");
    assert!(log.contains("Shutdown complete"), "{log}");
}

#[test]
fn shutdown_with_queued_jobs_neither_hangs_nor_crashes() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = common::write_config(&format!(
        "servers = \"127.0.0.1:{dead}\"\n{PIPELINED}io_timeout_ms = 2000\n"
    ));
    let mut db = common::start_db(&config, &[]);
    let mut c = common::connect(&db);
    let n: Option<u64> = c
        .query_first("SELECT COUNT(gman_do_background('f', seq)) FROM seq_1_to_100")
        .unwrap();
    assert_eq!(n, Some(100), "every call returns its key: the jobs wait");
    // All 100 in the queue (polled: every retry of the dead server takes
    // them out of the queue for the moment of its connect attempt).
    let mut st = String::new();
    wait_until("100 jobs queued", Duration::from_secs(10), || {
        st = one_str(&mut c, "SELECT gman_dispatch_status()").unwrap();
        let v: serde_json::Value = serde_json::from_str(&st).unwrap();
        v["sender"]["queued"] == 100
    });
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(
        (v["sender"]["queued"].clone(), v["sent"].clone()),
        (100.into(), 100.into()),
        "{st}"
    );
    drop(c);
    let t = Instant::now();
    db.stop();
    let took = t.elapsed();
    let log = db.error_log();
    assert!(
        took < Duration::from_secs(20),
        "shutdown took {took:?}:\n{log}"
    );
    assert!(!log.contains("got signal"), "crashed:\n{log}");
    assert!(log.contains("Shutdown complete"), "{log}");
    assert!(
        log.contains("pipelined dispatch stopped") && log.contains("100 never sent"),
        "{log}"
    );
}

/// Without cached threads (`thread_cache_size = 0`) the connection threads
/// that ran the UDFs end with their connections, and with them the
/// thread-local destructors that otherwise keep the library mapped: the
/// library's own pin (and, as observed, the sender thread's own
/// thread-local destructors: this test passes without the pin too) keeps
/// the sender's code mapped through `DROP FUNCTION` of every UDF.
#[test]
fn drop_function_after_every_caller_thread_ended_keeps_the_sender_safe() {
    let mut env = Env::start_with(PIPELINED, &["--thread-cache-size=0"]);
    {
        let mut c = env.conn();
        let n: Option<u64> = c
            .query_first("SELECT COUNT(gman_do_background('disp_tc', seq)) FROM seq_1_to_500")
            .unwrap();
        assert_eq!(n, Some(500));
    }
    wait_until("500 jobs queued", Duration::from_secs(20), || {
        total(&env, "disp_tc") >= 500
    });
    // The caller's thread is gone; drop every UDF.
    std::thread::sleep(Duration::from_millis(300));
    let uninstall = std::fs::read_to_string(common::sql_file("uninstall.sql")).unwrap();
    env.db.sql(&uninstall).unwrap();
    assert!(library_mapped(&env), "the pinned library stays mapped");
    std::thread::sleep(Duration::from_millis(500));
    env.assert_alive("DROP FUNCTION with no caller thread left");
    let install = std::fs::read_to_string(common::sql_file("install.sql")).unwrap();
    env.db.sql(&install).unwrap();
    let mut c = env.conn();
    let n: Option<u64> = c
        .query_first("SELECT COUNT(gman_do_background('disp_tc', seq)) FROM seq_1_to_100")
        .unwrap();
    assert_eq!(n, Some(100));
    wait_until("600 jobs queued", Duration::from_secs(20), || {
        total(&env, "disp_tc") >= 600
    });
    assert_eq!(total(&env, "disp_tc"), 600);
    drop(c);
    env.db.stop();
    let log = env.db.error_log();
    assert!(!log.contains("got signal"), "crashed:\n{log}");
    assert!(log.contains("Shutdown complete"), "{log}");
}
