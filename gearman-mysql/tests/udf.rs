//! The UDFs inside a real MariaDB, against a real gearmand, with workers from
//! gearman-core in this process.

mod common;

use common::*;
use gearman_core::ServerList;
use gearman_testkit::{DeadPort, Gearmand, Overlap};
use mysql::prelude::Queryable;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Config line for tests that call gman_servers_set (off by default).
const ALLOW_SET: &str = "allow_servers_set = true\n";

fn gearmand_accepts(g: &Gearmand) -> usize {
    g.log().matches("Accepted connection").count()
}

#[test]
fn cookbook_trigger_delivers_every_payload_and_reuses_connections() {
    let env = Env::start("");
    let got = Arc::new(Mutex::new(Vec::new()));
    let _w = TestWorker::start(&env.servers(), vec![("send_tweet", recorder(&got))]);
    env.wait_workers("send_tweet", 1);

    let mut c = env.conn();
    c.query_drop(
        "CREATE TABLE blog_entries (id INT AUTO_INCREMENT PRIMARY KEY, \
         title VARCHAR(200), url VARCHAR(200)) DEFAULT CHARSET=utf8mb4",
    )
    .unwrap();
    // The cookbook trigger, verbatim.
    c.query_drop(r#"CREATE TRIGGER tweet_blog BEFORE INSERT ON blog_entries FOR EACH ROW SET @ret=gman_do_background('send_tweet', CONCAT(NEW.title, " - ", NEW.url));"#)
        .unwrap();

    let rows: Vec<(&str, &str)> = vec![
        ("Hello world", "http://example.com/1"),
        ("It's \"quoted\"", "http://example.com/2?a=1&b=2"),
        ("Ünïcödé ✓ 日本", "http://example.com/ü"),
        ("tab\there\nnewline", "u"),
        ("", ""),
    ];
    for (t, u) in &rows {
        c.exec_drop(
            "INSERT INTO blog_entries (title, url) VALUES (?, ?)",
            (t, u),
        )
        .unwrap();
        let ret = one_str(&mut c, "SELECT @ret").expect("@ret is the job handle");
        assert!(ret.starts_with("H:"), "@ret = {ret}");
    }
    // A multi-row INSERT fires the trigger once per row.
    c.query_drop(
        "INSERT INTO blog_entries (title, url) VALUES ('m1','u1'),('m2','u2'),('m3','u3')",
    )
    .unwrap();
    let mut expected: Vec<Vec<u8>> = rows
        .iter()
        .map(|(t, u)| format!("{t} - {u}").into_bytes())
        .collect();
    for i in 1..=3 {
        expected.push(format!("m{i} - u{i}").into_bytes());
    }
    wait_until(
        "all trigger payloads at the worker",
        Duration::from_secs(20),
        || got.lock().unwrap().len() >= expected.len(),
    );
    let mut seen = got.lock().unwrap().clone();
    seen.sort();
    expected.sort();
    assert_eq!(
        seen, expected,
        "payloads must reach the worker byte for byte"
    );

    // Pooling: many single-row INSERTs (each its own statement and trigger
    // call) do not open a TCP connection each.
    let before = gearmand_accepts(&env.gearmand);
    got.lock().unwrap().clear();
    const N: usize = 300;
    for i in 0..N {
        c.exec_drop(
            "INSERT INTO blog_entries (title, url) VALUES (?, 'x')",
            (format!("t{i}"),),
        )
        .unwrap();
    }
    wait_until("the pooled inserts' jobs", Duration::from_secs(30), || {
        got.lock().unwrap().len() >= N
    });
    std::thread::sleep(Duration::from_millis(300));
    let opened = gearmand_accepts(&env.gearmand) - before;
    assert!(
        opened <= 2,
        "{N} single-row INSERTs opened {opened} connections to gearmand"
    );
    let udf_conns = env
        .admin()
        .workers()
        .unwrap()
        .into_iter()
        .filter(|w| w.client_id == "gearman-mysql-udf")
        .count();
    assert!(
        (1..=2).contains(&udf_conns),
        "pooled connections seen by gearmand: {udf_conns}"
    );
    // From another session too (another mariadbd thread): the pool is shared.
    let before = gearmand_accepts(&env.gearmand);
    let mut c2 = env.conn();
    for i in 0..20 {
        c2.exec_drop(
            "INSERT INTO blog_entries (title, url) VALUES (?, 'y')",
            (format!("s{i}"),),
        )
        .unwrap();
    }
    assert_eq!(gearmand_accepts(&env.gearmand) - before, 0);
}

#[test]
fn foreground_per_row_priorities_binary_and_status() {
    let env = Env::start_with("", &["--max-allowed-packet=64M"]);
    let reverse = handler(|ctx| {
        let mut w = ctx.workload().to_vec();
        w.reverse();
        Ok(w)
    });
    let echo = handler(|ctx| Ok(ctx.workload().to_vec()));
    let _w = TestWorker::start(&env.servers(), vec![("reverse", reverse), ("echo", echo)]);
    env.wait_workers("reverse", 1);
    let mut c = env.conn();
    assert_eq!(last_error(&mut c), None);

    // Per-row foreground calls.
    let rows: Vec<(String, Option<Vec<u8>>)> = c
        .query("SELECT Host, gman_do('reverse', Host) FROM mysql.user")
        .unwrap();
    assert!(!rows.is_empty());
    for (host, rev) in rows {
        let mut want = host.clone().into_bytes();
        want.reverse();
        assert_eq!(rev, Some(want), "row {host}");
    }
    // All priorities, foreground.
    for f in ["gman_do", "gman_do_high", "gman_do_low"] {
        assert_eq!(
            one(&mut c, &format!("SELECT {f}('reverse', 'abc')")),
            Some(b"cba".to_vec()),
            "{f}"
        );
        assert_eq!(
            one(&mut c, &format!("SELECT {f}('reverse', 'abc', 'uniq-{f}')")),
            Some(b"cba".to_vec())
        );
    }
    // All priorities, background: job handles.
    for f in [
        "gman_do_background",
        "gman_do_high_background",
        "gman_do_low_background",
    ] {
        let h = one_str(&mut c, &format!("SELECT {f}('echo', 'bg')")).unwrap();
        assert!(h.starts_with("H:"), "{f} returned {h}");
    }

    // Binary safety, both directions.
    let bin: Vec<u8> = vec![0, 255, 0, 1, b'\n', 0, 0x80, b'\'', b'\\', 0];
    let r: Option<Vec<u8>> = c
        .exec_first("SELECT gman_do('echo', ?)", (bin.clone(),))
        .unwrap();
    assert_eq!(r, Some(bin));
    assert_eq!(
        one(&mut c, "SELECT gman_do('echo', x'00ff00')"),
        Some(vec![0, 255, 0])
    );
    // Numbers and dates are sent as their text; NULL workload is empty.
    assert_eq!(
        one_str(&mut c, "SELECT gman_do('echo', 42)").as_deref(),
        Some("42")
    );
    assert_eq!(
        one_str(&mut c, "SELECT gman_do('echo', -1.50)").as_deref(),
        Some("-1.50")
    );
    assert_eq!(
        one_str(&mut c, "SELECT gman_do('echo', DATE '2024-01-02')").as_deref(),
        Some("2024-01-02")
    );
    assert_eq!(
        one_str(&mut c, "SELECT gman_do('echo', NULL)").as_deref(),
        Some("")
    );
    assert_eq!(
        one_str(&mut c, "SELECT gman_do('echo', '')").as_deref(),
        Some("")
    );

    // Results longer than 255 bytes, up to 16 MiB.
    assert_eq!(
        one_str(&mut c, "SELECT LENGTH(gman_do('echo', REPEAT('ab', 1000)))").as_deref(),
        Some("2000")
    );
    assert_eq!(
        one_str(
            &mut c,
            "SELECT CONCAT(LENGTH(gman_do('reverse', @big := REPEAT('xyz0', 4194304))), ':', \
             MD5(gman_do('reverse', @big)) = MD5(REVERSE(@big)))"
        )
        .as_deref(),
        Some("16777216:1")
    );

    // Scheduled job + job status.
    let h = one_str(
        &mut c,
        "SELECT gman_do_epoch('echo', 'later', UNIX_TIMESTAMP() + 3600)",
    )
    .unwrap();
    assert!(h.starts_with("H:"), "{h}");
    let st: serde_json::Value =
        serde_json::from_str(&one_str(&mut c, &format!("SELECT gman_job_status('{h}')")).unwrap())
            .unwrap();
    assert_eq!(st["known"], true, "{st}");
    assert_eq!(st["running"], false, "{st}");
    assert!(
        st["numerator"].is_u64() && st["denominator"].is_u64(),
        "{st}"
    );
    let st: serde_json::Value = serde_json::from_str(
        &one_str(&mut c, "SELECT gman_job_status('H:nohost:999999')").unwrap(),
    )
    .unwrap();
    assert_eq!(st["known"], false);

    // Server status from the admin protocol.
    let s: serde_json::Value =
        serde_json::from_str(&one_str(&mut c, "SELECT gman_server_status()").unwrap()).unwrap();
    let rev = s
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["function"] == "reverse")
        .unwrap_or_else(|| panic!("no 'reverse' in {s}"));
    assert_eq!(rev["server"], env.gearmand.addr());
    assert!(rev["workers"].as_u64().unwrap() >= 1, "{rev}");
    assert!(rev["queued"].is_u64() && rev["running"].is_u64(), "{rev}");
    assert_eq!(last_error(&mut c), None, "no call failed");
}

#[test]
fn priorities_order_and_unique_coalescing() {
    let env = Env::start("");
    let mut c = env.conn();
    // No worker yet: jobs queue up in gearmand.
    let hs: (String, String, String) = c
        .query_first(
            "SELECT gman_do_low_background('prio', 'low'), gman_do_background('prio', 'normal'), \
             gman_do_high_background('prio', 'high')",
        )
        .unwrap()
        .unwrap();
    assert!(hs.0.starts_with("H:") && hs.1.starts_with("H:") && hs.2.starts_with("H:"));
    let ps = env.admin().priority_status().unwrap();
    let p = ps
        .iter()
        .find(|p| p.function == "prio")
        .expect("prio queued");
    assert_eq!((p.high, p.normal, p.low), (1, 1, 1));

    // Background coalescing: same unique key while queued -> same job.
    let (a, b): (String, String) = c
        .query_first(
            "SELECT gman_do_background('co', 'first', 'key-1'), \
             gman_do_background('co', 'second', 'key-1')",
        )
        .unwrap()
        .unwrap();
    assert_eq!(a, b, "same unique key, one job");
    let st: serde_json::Value =
        serde_json::from_str(&one_str(&mut c, "SELECT gman_job_status('key-1')").unwrap()).unwrap();
    assert_eq!(st["known"], true, "status by unique key: {st}");

    let order = Arc::new(Mutex::new(Vec::new()));
    let co = Arc::new(Mutex::new(Vec::new()));
    let w = TestWorker::start(
        &env.servers(),
        vec![("prio", recorder(&order)), ("co", recorder(&co))],
    );
    wait_until("3 prio jobs", Duration::from_secs(20), || {
        order.lock().unwrap().len() >= 3
    });
    assert_eq!(
        *order.lock().unwrap(),
        vec![b"high".to_vec(), b"normal".to_vec(), b"low".to_vec()]
    );
    wait_until("co job", Duration::from_secs(20), || {
        !co.lock().unwrap().is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(*co.lock().unwrap(), vec![b"first".to_vec()]);
    drop(w);

    // Foreground coalescing: a second caller with the same unique key joins
    // the running job and gets the same result; the worker runs it once. The
    // job is held until gearmand counts both callers waiting on the key.
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r2, rel) = (runs.clone(), release.clone());
    let _slow = TestWorker::start(
        &env.servers(),
        vec![(
            "slowco",
            handler(move |ctx| {
                let n = r2.fetch_add(1, Ordering::SeqCst) + 1;
                let t = Instant::now();
                while !rel.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(20) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(format!("{}#{n}", String::from_utf8_lossy(ctx.workload())).into_bytes())
            }),
        )],
    );
    env.wait_workers("slowco", 1);
    let url = env.db.url();
    let call = move || {
        let mut c = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
        one_str(&mut c, "SELECT gman_do('slowco', 'payload', 'same-key')")
    };
    let c1 = call.clone();
    let t1 = std::thread::spawn(c1);
    wait_until("first job running", Duration::from_secs(10), || {
        runs.load(Ordering::SeqCst) == 1
    });
    let t2 = std::thread::spawn(call);
    let mut gc = gearman_core::Client::new(env.servers(), gearman_core::Options::default());
    wait_until("two callers on same-key", Duration::from_secs(10), || {
        gc.status_by_unique(b"same-key").unwrap().waiting >= 2
    });
    release.store(true, Ordering::SeqCst);
    let (r1, r2) = (t1.join().unwrap(), t2.join().unwrap());
    assert_eq!(r1.as_deref(), Some("payload#1"));
    assert_eq!(r2, r1, "the second caller shares the first job's result");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn gman_sum_runs_every_server_list_at_once() {
    let env = Env::start(ALLOW_SET);
    // Two workers, each holding its job until both hold one.
    let both = rendezvous(2);
    let _w: Vec<TestWorker> = (0..2)
        .map(|_| {
            TestWorker::start(
                &env.servers(),
                vec![("sum_a", both.clone()), ("sum_b", both.clone())],
            )
        })
        .collect();
    env.wait_workers("sum_a", 2);
    env.wait_workers("sum_b", 2);
    let mut c = env.conn();
    // sum_b has its own list (this gearmand and a closed port), sum_a the
    // default list: one group's jobs go out together, whatever their lists.
    let dead = DeadPort::new();
    let list = format!("{},127.0.0.1:{}", env.gearmand.addr(), dead.port());
    assert!(one_str(
        &mut c,
        &format!("SELECT gman_servers_set('{list}', 'sum_b')")
    )
    .is_some());
    assert_eq!(
        one_str(
            &mut c,
            "SELECT gman_sum(f, w) FROM (SELECT 'sum_a' AS f, '1' AS w UNION ALL \
             SELECT 'sum_b', '2') t"
        )
        .as_deref(),
        Some("3"),
        "gman_last_error: {:?}",
        last_error(&mut c)
    );
}

#[test]
fn gman_sum_runs_the_rows_concurrently() {
    let env = Env::start("");
    let mut workers = Vec::new();
    const N: i64 = 8;
    // Each job waits until all eight run at once (gearman_testkit::Overlap).
    let overlap = Overlap::new(N as usize);
    for _ in 0..N {
        let o = overlap.clone();
        workers.push(TestWorker::start(
            &env.servers(),
            vec![
                (
                    "slow_double",
                    handler(move |ctx| {
                        o.run(|| std::thread::sleep(Duration::from_millis(20)));
                        let v: i64 = String::from_utf8_lossy(ctx.workload()).parse().unwrap();
                        Ok((2 * v).to_string().into_bytes())
                    }),
                ),
                ("not_a_number", handler(|_| Ok(b"abc".to_vec()))),
            ],
        ));
    }
    env.wait_workers("slow_double", N as u64);
    let mut c = env.conn();
    c.query_drop("CREATE TABLE nums (v INT, g INT)").unwrap();
    for v in 1..=N {
        c.exec_drop("INSERT INTO nums VALUES (?, ?)", (v, v % 2))
            .unwrap();
    }
    let sum = one_str(&mut c, "SELECT gman_sum('slow_double', v) FROM nums");
    assert_eq!(sum.as_deref(), Some("72"));
    assert_eq!(
        overlap.peak(),
        N as usize,
        "the {N} rows' jobs did not run at once"
    );
    let groups: Vec<(i64, Option<i64>)> = c
        .query("SELECT g, gman_sum('slow_double', v) FROM nums GROUP BY g ORDER BY g")
        .unwrap();
    assert_eq!(groups, vec![(0, Some(40)), (1, Some(32))]);
    // No rows: NULL, like SUM().
    assert_eq!(
        one(
            &mut c,
            "SELECT gman_sum('slow_double', v) FROM nums WHERE v > 100"
        ),
        None
    );
    assert_eq!(last_error(&mut c), None);
    // A non-integer result: NULL, error flag, message.
    assert_eq!(
        one(&mut c, "SELECT gman_sum('not_a_number', v) FROM nums"),
        None
    );
    let e = last_error(&mut c).unwrap();
    assert!(e.contains("not an integer"), "{e}");
}

/// Statements that must fail at `_init` with a message naming the function.
const INIT_ERRORS: &[(&str, &str)] = &[
    ("SELECT gman_do()", "gman_do(function, workload [, unique])"),
    (
        "SELECT gman_do('a')",
        "gman_do(function, workload [, unique])",
    ),
    (
        "SELECT gman_do('a','b','c','d')",
        "takes 2 or 3 arguments, got 4",
    ),
    ("SELECT gman_do_high('a')", "gman_do_high("),
    ("SELECT gman_do_low()", "gman_do_low("),
    ("SELECT gman_do_background('a')", "gman_do_background("),
    (
        "SELECT gman_do_high_background()",
        "gman_do_high_background(",
    ),
    (
        "SELECT gman_do_low_background('a','b','c','d','e')",
        "gman_do_low_background(",
    ),
    (
        "SELECT gman_do_epoch('a','b')",
        "gman_do_epoch(function, workload, unix_seconds [, unique])",
    ),
    (
        "SELECT gman_sum('a') FROM (SELECT 1) t",
        "gman_sum(function, workload)",
    ),
    (
        "SELECT gman_servers_set()",
        "gman_servers_set(servers [, function])",
    ),
    ("SELECT gman_job_status()", "gman_job_status("),
    ("SELECT gman_job_status('a', 'b')", "gman_job_status("),
    ("SELECT gman_server_status(1)", "gman_server_status()"),
    ("SELECT gman_last_error(1)", "gman_last_error()"),
];

/// Statements that return NULL with the error flag, and the error text.
const ROW_ERRORS: &[(&str, &str)] = &[
    ("SELECT gman_do(NULL, 'x')", "function name is NULL"),
    ("SELECT gman_do('', 'x')", "function name is empty"),
    ("SELECT gman_do_high(NULL, NULL)", "function name is NULL"),
    (
        "SELECT gman_do_low(NULL, NULL, NULL)",
        "function name is NULL",
    ),
    (
        "SELECT gman_do_background(NULL, NULL)",
        "function name is NULL",
    ),
    (
        "SELECT gman_do_high_background(NULL, 'x')",
        "function name is NULL",
    ),
    (
        "SELECT gman_do_low_background('', NULL)",
        "function name is empty",
    ),
    (
        "SELECT gman_do_epoch(NULL, 'w', 1)",
        "function name is NULL",
    ),
    (
        "SELECT gman_do_epoch('echo', 'w', NULL)",
        "unix_seconds is NULL",
    ),
    (
        "SELECT gman_do_epoch('echo', 'w', 'soon')",
        "not an integer",
    ),
    ("SELECT gman_do_epoch('echo', 'w', -5)", "negative"),
    (
        "SELECT gman_sum(NULL, 1) FROM (SELECT 1) t",
        "function name is NULL",
    ),
    ("SELECT gman_servers_set(NULL)", "servers is NULL"),
    ("SELECT gman_servers_set('host:notaport')", "servers"),
    // Lists are parsed strictly when set, naming the bad entry (item 6).
    (
        "SELECT gman_servers_set('garbage:::')",
        "invalid server address \"garbage:::\"",
    ),
    (
        "SELECT gman_servers_set('a:b:c')",
        "invalid server address \"a:b:c\"",
    ),
    (
        "SELECT gman_servers_set('127.0.0.1:4731:')",
        "invalid server address \"127.0.0.1:4731:\"",
    ),
    (
        "SELECT gman_servers_set('127.0.0.1:4731, a:b:c', 'f')",
        "invalid server address \"a:b:c\"",
    ),
    ("SELECT gman_servers_set('::1', 'f')", "\"::1\""),
    ("SELECT gman_job_status(NULL)", "handle is NULL"),
    ("SELECT gman_do(x'61006200', 'x')", "NUL"),
    (
        "SELECT gman_do('echo', 'x', REPEAT('u', 64))",
        // gearman-core's one validator: the same text in PostgreSQL.
        "unique key is 64 bytes; at most 63 are allowed",
    ),
    (
        "SELECT gman_do_background('echo', 'x', REPEAT('u', 64))",
        "unique key is 64 bytes",
    ),
    (
        "SELECT gman_do_epoch('echo', 'x', 1, REPEAT('u', 64))",
        "unique key is 64 bytes",
    ),
];

fn garbage_server(reply: &'static [u8]) -> (u16, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let t = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut held = Vec::new();
        while Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(reply);
                    held.push(s);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (port, t)
}

#[test]
fn bad_input_and_faults_never_take_the_server_down() {
    let mut env = Env::start_with(
        "connect_timeout_ms = 1000\nio_timeout_ms = 1000\nforeground_timeout_ms = 3000\n\
         allow_servers_set = true\n",
        &["--max-allowed-packet=64M"],
    );
    let echo = handler(|ctx| Ok(ctx.workload().to_vec()));
    let w = TestWorker::start(&env.servers(), vec![("echo", echo.clone())]);
    env.wait_workers("echo", 1);
    let mut c = env.conn();

    for (sql, want) in INIT_ERRORS {
        let e = c
            .query_drop(sql)
            .expect_err(&format!("{sql} must fail"))
            .to_string();
        assert!(e.contains(want), "{sql}: {e}");
        env.assert_alive(sql);
    }
    // A row value is not an argument (the server or _init refuses it).
    assert!(c.query_drop("SELECT gman_do(ROW(1,2), 'x')").is_err());
    env.assert_alive("row argument");

    for (sql, want) in ROW_ERRORS {
        assert_eq!(one(&mut c, sql), None, "{sql} must be NULL");
        let e = last_error(&mut c).unwrap_or_else(|| panic!("{sql}: no gman_last_error()"));
        assert!(e.contains(want), "{sql}: {e}");
        env.assert_alive(sql);
    }
    assert!(env
        .udf_log_lines()
        .iter()
        .any(|l| l.contains("unique key is 64 bytes")));
    // NULL workload and unique are allowed: empty workload, no unique key.
    assert_eq!(
        one_str(&mut c, "SELECT gman_do('echo', NULL, NULL)").as_deref(),
        Some("")
    );
    assert_eq!(
        one_str(&mut c, "SELECT gman_do_low('echo', 'w', '')").as_deref(),
        Some("w")
    );
    assert!(
        one_str(&mut c, "SELECT gman_do_high_background('echo', NULL, NULL)")
            .unwrap()
            .starts_with("H:")
    );

    // Binary data and 16 MiB workloads still work after all that.
    assert_eq!(
        one(&mut c, "SELECT gman_do('echo', x'00010200ff')"),
        Some(vec![0, 1, 2, 0, 255])
    );
    let h = one_str(
        &mut c,
        "SELECT gman_do_background('big', REPEAT('x', 16777216))",
    )
    .unwrap();
    assert!(h.starts_with("H:"));
    assert_eq!(
        one_str(
            &mut c,
            "SELECT LENGTH(gman_do('echo', REPEAT(x'00', 16777216)))"
        )
        .as_deref(),
        Some("16777216")
    );
    env.assert_alive("16 MiB workloads");

    // gearmand stopped: NULL within the connect timeout, and the reason.
    drop(w);
    env.gearmand.kill();
    let t0 = Instant::now();
    assert_eq!(one(&mut c, "SELECT gman_do('echo', 'x')"), None);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    let e = last_error(&mut c).unwrap();
    assert!(
        e.contains("gman_do") && e.contains(&env.gearmand.addr()),
        "{e}"
    );
    assert_eq!(one(&mut c, "SELECT gman_do_background('echo', 'x')"), None);
    env.assert_alive("gearmand stopped");

    // One error-log line per failing statement, not one per row.
    let before = env.udf_log_lines().len();
    let n: Vec<Option<Vec<u8>>> = c
        .query("SELECT gman_do('per_statement', seq) FROM seq_1_to_50")
        .unwrap();
    assert_eq!(n.len(), 50);
    assert!(n.iter().all(Option::is_none));
    let new: Vec<String> = env.udf_log_lines()[before..].to_vec();
    assert_eq!(
        new.len(),
        1,
        "log lines for one failing statement: {new:#?}"
    );
    assert!(
        new[0].contains("[ERROR]") && new[0].contains("per_statement"),
        "{}",
        new[0]
    );

    // gearmand restarted between statements: the next call succeeds.
    env.gearmand.restart();
    let _w2 = TestWorker::start(&env.servers(), vec![("echo", echo)]);
    env.wait_workers("echo", 1);
    assert_eq!(
        one_str(&mut c, "SELECT gman_do('echo', 'back')").as_deref(),
        Some("back")
    );
    assert!(one_str(&mut c, "SELECT gman_do_background('echo', 'bg')")
        .unwrap()
        .starts_with("H:"));

    // A fake server that answers with garbage.
    let (gport, _g) = garbage_server(b"HTTP/1.1 400 Bad Request\r\n\r\n\x00\x00garbage");
    one_str(
        &mut c,
        &format!("SELECT gman_servers_set('127.0.0.1:{gport}', 'garbage')"),
    )
    .unwrap();
    for sql in [
        "SELECT gman_do('garbage', 'x')",
        "SELECT gman_do_background('garbage', 'x')",
        "SELECT gman_do_epoch('garbage', 'x', 2000000000)",
    ] {
        let t0 = Instant::now();
        assert_eq!(one(&mut c, sql), None, "{sql}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{sql} took {:?}",
            t0.elapsed()
        );
        let e = last_error(&mut c).unwrap();
        assert!(
            e.contains("'garbage'") && e.contains(&format!("127.0.0.1:{gport}")),
            "{sql}: {e}"
        );
        env.assert_alive(sql);
    }
    // A server that accepts and never answers: bounded by the I/O timeout.
    let (sport, _s) = garbage_server(b"");
    one_str(
        &mut c,
        &format!("SELECT gman_servers_set('127.0.0.1:{sport}', 'silent')"),
    )
    .unwrap();
    for sql in [
        "SELECT gman_do('silent', 'x')",
        "SELECT gman_do_background('silent', 'x')",
    ] {
        let t0 = Instant::now();
        assert_eq!(one(&mut c, sql), None, "{sql}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{sql} took {:?}",
            t0.elapsed()
        );
        env.assert_alive(sql);
    }
    // Still serving the healthy server.
    assert_eq!(
        one_str(&mut c, "SELECT gman_do('echo', 'still')").as_deref(),
        Some("still")
    );
    env.assert_alive("all faults");
}

#[test]
fn servers_set_routes_per_function_and_per_row() {
    let env = Env::start(ALLOW_SET);
    let g2 = Gearmand::start();
    let mut c = env.conn();
    assert_eq!(
        one_str(
            &mut c,
            &format!("SELECT gman_servers_set('{}', 'routed')", g2.addr())
        )
        .as_deref(),
        Some(g2.addr().as_str())
    );
    // The argument comes back as given, as gearman-mysql-udf returned it
    // (deployments store and compare it).
    for given in [
        "127.0.0.1",
        "localhost",
        "localhost:4731",
        "127.0.0.1:4731,localhost",
    ] {
        assert_eq!(
            one_str(
                &mut c,
                &format!("SELECT gman_servers_set('{given}', 'unused_fn')")
            )
            .as_deref(),
            Some(given)
        );
    }
    assert_eq!(
        one_str(&mut c, "SELECT gman_servers_set('', 'unused_fn')").as_deref(),
        Some("")
    );
    // One statement, rows for both functions: each row is routed on its own.
    let hs: Vec<Option<String>> = c
        .query(
            "SELECT gman_do_background(f, 'x') FROM \
             (SELECT 'other' AS f UNION ALL SELECT 'routed' UNION ALL SELECT 'other') t",
        )
        .unwrap();
    assert!(
        hs.iter()
            .all(|h| h.as_deref().is_some_and(|h| h.starts_with("H:"))),
        "{hs:?}"
    );
    let count = |g: &Gearmand, f: &str| -> u64 {
        let addr = gearman_core::ServerAddr::new("127.0.0.1", g.port());
        gearman_core::admin::Admin::connect(&addr, Duration::from_secs(5))
            .unwrap()
            .status()
            .unwrap()
            .iter()
            .find(|s| s.function == f)
            .map_or(0, |s| s.total)
    };
    assert_eq!(count(&env.gearmand, "other"), 2);
    assert_eq!(count(&g2, "routed"), 1);
    assert_eq!(count(&env.gearmand, "routed"), 0);
    // A unique key is found on the function's own list as well as the
    // default one (the key alone does not say which list it went to).
    one_str(
        &mut c,
        "SELECT gman_do_background('routed', 'k', 'routed-key')",
    )
    .unwrap();
    one_str(
        &mut c,
        "SELECT gman_do_background('other', 'k', 'default-key')",
    )
    .unwrap();
    for key in ["routed-key", "default-key"] {
        let st: serde_json::Value = serde_json::from_str(
            &one_str(&mut c, &format!("SELECT gman_job_status('{key}')")).unwrap(),
        )
        .unwrap();
        assert_eq!(st["known"], true, "{key}: {st}");
    }
    let st = one_str(&mut c, "SELECT gman_job_status('nowhere-key')").unwrap();
    assert!(st.contains("\"known\":false"), "{st}");
    assert_eq!(count(&g2, "routed"), 2);
    // Clearing the function's list returns it to the default list.
    assert_eq!(
        one_str(&mut c, "SELECT gman_servers_set(NULL, 'routed')"),
        None
    );
    assert_eq!(last_error(&mut c), None, "clearing is not an error");
    one_str(&mut c, "SELECT gman_do_background('routed', 'y')").unwrap();
    assert_eq!(count(&env.gearmand, "routed"), 1);
    // The default list, process-wide: another session sees it.
    one_str(&mut c, &format!("SELECT gman_servers_set('{}')", g2.addr())).unwrap();
    let mut c2 = env.conn();
    one_str(&mut c2, "SELECT gman_do_background('dflt', 'z')").unwrap();
    assert_eq!(count(&g2, "dflt"), 1);
    // The server status covers every configured server.
    let s = one_str(&mut c2, "SELECT gman_server_status()").unwrap();
    assert!(s.contains(&g2.addr()), "{s}");
}

#[test]
fn config_file_locks_servers_set_and_fails_over() {
    let live = Gearmand::start();
    let special = Gearmand::start();
    let dead_port = DeadPort::new();
    let dead = dead_port.port();
    let config = write_config(&format!(
        "servers = \"127.0.0.1:{dead},{}\"\nallow_servers_set = false\nconnect_timeout_ms = 500\n\
         [function_servers]\nspecial = \"{}\"\n",
        live.addr(),
        special.addr()
    ));
    let mut db = start_db(&config, &[]);
    let mut c = common::connect(&db);
    let e = c
        .query_drop("SELECT gman_servers_set('127.0.0.1:1')")
        .unwrap_err()
        .to_string();
    assert!(e.contains("allow_servers_set = false"), "{e}");
    assert!(c
        .query_drop("SELECT gman_servers_set('127.0.0.1:1', 'special')")
        .is_err());

    // With one of two servers down, every job goes to the other.
    let hs: Vec<Option<String>> = c
        .query("SELECT gman_do_background('fo', seq) FROM seq_1_to_20")
        .unwrap();
    assert!(hs.iter().all(Option::is_some), "{hs:?}");
    let live_servers = ServerList::parse(&live.addr()).unwrap();
    let echo = handler(|ctx| Ok(ctx.workload().to_vec()));
    let _w = TestWorker::start(&live_servers, vec![("echo", echo)]);
    let addr = gearman_core::ServerAddr::new("127.0.0.1", live.port());
    wait_until("echo worker", Duration::from_secs(10), || {
        gearman_core::admin::Admin::connect(&addr, Duration::from_secs(2))
            .and_then(|mut a| a.status())
            .map(|l| l.iter().any(|f| f.function == "echo" && f.workers > 0))
            .unwrap_or(false)
    });
    for i in 0..5 {
        assert_eq!(
            one_str(&mut c, &format!("SELECT gman_do('echo', 'fo{i}')")),
            Some(format!("fo{i}"))
        );
    }
    let st = gearman_core::admin::Admin::connect(&addr, Duration::from_secs(2))
        .unwrap()
        .status()
        .unwrap();
    let fo = st
        .iter()
        .find(|f| f.function == "fo")
        .expect("fo on the live server");
    assert_eq!(fo.total, 20);
    // Per-function servers from the file.
    one_str(&mut c, "SELECT gman_do_background('special', 'x')").unwrap();
    let saddr = gearman_core::ServerAddr::new("127.0.0.1", special.port());
    let st = gearman_core::admin::Admin::connect(&saddr, Duration::from_secs(2))
        .unwrap()
        .status()
        .unwrap();
    assert!(
        st.iter().any(|f| f.function == "special" && f.total == 1),
        "{st:?}"
    );
    assert!(db.is_alive());
}

#[test]
fn a_bad_server_entry_in_the_config_file_is_refused_at_load() {
    for (config, entry) in [
        ("servers = \"garbage:::\"\n", "garbage:::"),
        ("servers = \"127.0.0.1:4731:\"\n", "127.0.0.1:4731:"),
        (
            "[function_servers]\nf = \"127.0.0.1:4731,a:b:c\"\n",
            "a:b:c",
        ),
    ] {
        let config = write_config(config);
        let mut db = start_db(&config, &[]);
        let log = db.error_log();
        assert!(
            log.contains("gearman-mysql-udf: not usable") && log.contains(&format!("{entry:?}")),
            "{log}"
        );
        let mut c = common::connect(&db);
        assert_eq!(one(&mut c, "SELECT gman_do_background('f', 'x')"), None);
        let e = last_error(&mut c).unwrap();
        assert!(e.contains(&format!("{entry:?}")), "{e}");
        assert!(db.is_alive());
    }
}

#[test]
fn broken_config_file_fails_every_call_visibly() {
    let config = write_config("servers = \"127.0.0.1:1\"\nallow_server_set = false\n");
    let mut db = start_db(&config, &[]);
    // Read when the library is loaded (install.sql's CREATE FUNCTION), before any call.
    assert!(
        db.error_log().contains("gearman-mysql-udf: not usable"),
        "{}",
        db.error_log()
    );
    let mut c = common::connect(&db);
    for sql in [
        "SELECT gman_do_background('f', 'x')",
        "SELECT gman_do('f', 'x')",
        "SELECT gman_sum('f', 1)",
    ] {
        assert_eq!(one(&mut c, sql), None, "{sql}");
        let e = last_error(&mut c).unwrap();
        assert!(
            e.contains("configuration file") && e.contains("allow_server_set"),
            "{e}"
        );
    }
    assert!(db.is_alive());
}

// ---------------------------------------------------------------------------
// background_dispatch = "pipelined"

const PIPELINED: &str = "background_dispatch = \"pipelined\"\n";

/// Ends a test: the server answers `SELECT 1` and did not crash.
fn assert_select_1(env: &mut Env, c: &mut mysql::Conn, after: &str) {
    assert_eq!(
        one_str(c, "SELECT 1").as_deref(),
        Some("1"),
        "after {after}"
    );
    env.assert_alive(after);
}

/// The error-log lines about pipelined jobs that were not confirmed.
fn not_queued_lines(env: &Env) -> Vec<String> {
    env.udf_log_lines()
        .into_iter()
        .filter(|l| l.contains("pipelined background dispatch:"))
        .collect()
}

/// `N` of "... N jobs not confirmed" / "N job not confirmed".
fn not_queued_count(line: &str) -> u64 {
    let head = line
        .split("pipelined background dispatch: ")
        .nth(1)
        .expect("marker");
    head.split(' ').next().unwrap().parse().expect("count")
}

#[test]
fn pipelined_background_delivers_every_row_once_and_returns_unique_keys() {
    let mut env = Env::start(&format!("{PIPELINED}{ALLOW_SET}"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let _w = TestWorker::start(&env.servers(), vec![("f", recorder(&got))]);
    env.wait_workers("f", 1);
    let mut c = env.conn();

    let n: Option<u64> = c
        .query_first("SELECT COUNT(gman_do_background('f', CONCAT('p', seq))) FROM seq_1_to_1000")
        .unwrap();
    assert_eq!(n, Some(1000), "every row returns a value");
    wait_until("1,000 jobs at the worker", Duration::from_secs(30), || {
        got.lock().unwrap().len() >= 1000
    });
    // Returned values: distinct generated unique keys, not job handles.
    let keys: Vec<Option<String>> = c
        .query("SELECT gman_do_background('f', CONCAT('k', seq)) FROM seq_1_to_200")
        .unwrap();
    let keys: Vec<String> = keys
        .into_iter()
        .map(|k| k.expect("a key, not NULL"))
        .collect();
    for k in &keys {
        assert!(!k.starts_with("H:"), "a unique key, not a handle: {k}");
        assert_eq!(k.len(), 36, "{k}");
    }
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "generated keys are unique");
    wait_until("1,200 jobs at the worker", Duration::from_secs(30), || {
        got.lock().unwrap().len() >= 1200
    });
    std::thread::sleep(Duration::from_millis(300));
    let seen = got.lock().unwrap().clone();
    assert_eq!(seen.len(), 1200, "no job twice");
    let mut p: Vec<&Vec<u8>> = seen.iter().filter(|w| w.starts_with(b"p")).collect();
    p.sort();
    let mut want: Vec<Vec<u8>> = (1..=1000).map(|i| format!("p{i}").into_bytes()).collect();
    want.sort();
    assert_eq!(p, want.iter().collect::<Vec<_>>(), "each row exactly once");

    // The caller's key is returned as given; gman_job_status() finds both
    // kinds of key (no worker for 'nobody': the jobs stay queued).
    assert_eq!(
        one_str(
            &mut c,
            "SELECT gman_do_background('nobody', 'x', 'my-key-1')"
        )
        .as_deref(),
        Some("my-key-1")
    );
    let generated = one_str(&mut c, "SELECT gman_do_low_background('nobody', 'y')").unwrap();
    assert_eq!(generated.len(), 36);
    for key in ["my-key-1", generated.as_str()] {
        let mut st = String::new();
        wait_until(
            "status by the returned key",
            Duration::from_secs(10),
            || {
                st = one_str(&mut c, &format!("SELECT gman_job_status('{key}')")).unwrap();
                st.contains("\"known\":true")
            },
        );
        assert!(st.contains("\"waiting\":0"), "{st}");
    }
    let st = one_str(&mut c, "SELECT gman_job_status('never-submitted')").unwrap();
    assert!(st.contains("\"known\":false"), "{st}");

    // Epoch and high priority go the same way.
    let e = one_str(
        &mut c,
        "SELECT gman_do_epoch('nobody', 'z', UNIX_TIMESTAMP() + 3600)",
    )
    .unwrap();
    assert_eq!(e.len(), 36);
    let h = one_str(
        &mut c,
        "SELECT gman_do_high_background('nobody', 'h', 'hk')",
    )
    .unwrap();
    assert_eq!(h, "hk");
    wait_until("4 queued for nobody", Duration::from_secs(10), || {
        env.admin()
            .status()
            .unwrap()
            .iter()
            .any(|f| f.function == "nobody" && f.total == 4)
    });

    // A job whose servers cannot be reached returns its key all the same:
    // it waits in the sender's bounded queue until a server of its list
    // takes a connection (the call fails only when the queue stays full
    // for io_timeout_ms).
    let dead_port = DeadPort::new();
    let dead = dead_port.port();
    one_str(
        &mut c,
        &format!("SELECT gman_servers_set('127.0.0.1:{dead}', 'dead')"),
    )
    .unwrap();
    let k = one_str(&mut c, "SELECT gman_do_background('dead', 'x')").unwrap();
    assert_eq!(k.len(), 36, "{k}");
    let mut st = String::new();
    wait_until("the dead server seen down", Duration::from_secs(10), || {
        st = one_str(&mut c, "SELECT gman_dispatch_status()").unwrap();
        st.contains(&format!("\"127.0.0.1:{dead}\":\"down\""))
    });
    assert!(st.contains("\"queued\":1"), "{st}");
    assert!(
        not_queued_lines(&env).is_empty(),
        "nothing refused: {:?}",
        not_queued_lines(&env)
    );
    assert_select_1(&mut env, &mut c, "pipelined background calls");
}

#[test]
fn pipelined_refusals_are_counted_in_the_log_and_last_error() {
    let mut env = Env::start(PIPELINED);
    // maxqueue only holds for a function gearmand already knows.
    let mut core = gearman_core::Client::new(env.servers(), Default::default());
    core.submit_background(&gearman_core::Job::new("capped", "creates the function"))
        .unwrap();
    env.admin().maxqueue("capped", Some(10)).unwrap();
    let mut c = env.conn();
    let n: Option<u64> = c
        .query_first(
            "SELECT COUNT(gman_do_background('capped', CONCAT('p', seq))) FROM seq_1_to_100",
        )
        .unwrap();
    assert_eq!(n, Some(100), "written rows all return their key");
    // 1 + 9 fit the queue of 10: 91 refused. Confirmations that had not
    // arrived when the statement ended are collected by the next call that
    // uses the pooled connection (here: status queries).
    wait_until("91 refusals reported", Duration::from_secs(20), || {
        let _ = one_str(&mut c, "SELECT gman_job_status('probe')");
        not_queued_lines(&env)
            .iter()
            .any(|l| l.contains("; 91 since the library was loaded"))
    });
    let lines = not_queued_lines(&env);
    let total: u64 = lines.iter().map(|l| not_queued_count(l)).sum();
    assert_eq!(total, 91, "{lines:#?}");
    // One line per flush (end of statement, deferred flush, later call),
    // not one per refused row; how many flushes depends on timing.
    assert!(
        lines.len() <= 10,
        "one line per flush, not per row: {lines:#?}"
    );
    for l in &lines {
        assert!(l.contains("refused by the job server"), "{l}");
        assert!(l.contains("QUEUE_ERROR"), "{l}");
        assert!(l.contains("function 'capped'"), "{l}");
    }
    let e = last_error(&mut c).unwrap();
    assert!(
        e.contains("not confirmed")
            && e.contains("refused by the job server")
            && e.contains("QUEUE_ERROR"),
        "{e}"
    );
    let st = env.admin().status().unwrap();
    assert_eq!(
        st.iter().find(|f| f.function == "capped").map(|f| f.total),
        Some(10),
        "{st:?}"
    );
    assert_select_1(&mut env, &mut c, "refused pipelined jobs");
}

#[test]
fn pipelined_cookbook_trigger_delivers_every_payload_once() {
    let mut env = Env::start(PIPELINED);
    let got = Arc::new(Mutex::new(Vec::new()));
    let _w = TestWorker::start(&env.servers(), vec![("send_tweet", recorder(&got))]);
    env.wait_workers("send_tweet", 1);
    let mut c = env.conn();
    c.query_drop(
        "CREATE TABLE blog_entries (id INT AUTO_INCREMENT PRIMARY KEY, \
         title VARCHAR(200), url VARCHAR(200)) DEFAULT CHARSET=utf8mb4",
    )
    .unwrap();
    c.query_drop(r#"CREATE TRIGGER tweet_blog BEFORE INSERT ON blog_entries FOR EACH ROW SET @ret=gman_do_background('send_tweet', CONCAT(NEW.title, " - ", NEW.url));"#)
        .unwrap();
    const N: usize = 200;
    let mut rets = std::collections::HashSet::new();
    for i in 0..N {
        c.exec_drop(
            "INSERT INTO blog_entries (title, url) VALUES (?, ?)",
            (format!("t{i}"), "http://example.com/"),
        )
        .unwrap();
        let ret = one_str(&mut c, "SELECT @ret").expect("@ret is the unique key");
        assert!(!ret.starts_with("H:") && ret.len() == 36, "@ret = {ret}");
        assert!(rets.insert(ret));
    }
    c.query_drop(
        "INSERT INTO blog_entries (title, url) VALUES ('m1','u1'),('m2','u2'),('m3','u3')",
    )
    .unwrap();
    let mut expected: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("t{i} - http://example.com/").into_bytes())
        .collect();
    for i in 1..=3 {
        expected.push(format!("m{i} - u{i}").into_bytes());
    }
    wait_until("all trigger payloads", Duration::from_secs(30), || {
        got.lock().unwrap().len() >= expected.len()
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut seen = got.lock().unwrap().clone();
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected, "every payload exactly once");
    assert!(not_queued_lines(&env).is_empty());
    assert_select_1(&mut env, &mut c, "pipelined trigger");
}

// ---------------------------------------------------------------------------
// Per-row failures (issue 10, item 13)

/// A row that fails returns NULL for itself only: MariaDB stops calling a
/// UDF for the rest of the statement once it sets the error flag, so a
/// failure must never set it. Every later row is still evaluated and sent.
#[test]
fn a_failing_row_does_not_stop_the_later_rows() {
    let dead_port = DeadPort::new();
    let mut env = Env::start(&format!(
        "connect_timeout_ms = 1000\n[function_servers]\ndeadfn = \"127.0.0.1:{}\"\n",
        dead_port.port()
    ));
    let mut c = env.conn();
    // Every tenth row goes to a closed port.
    let rows: Vec<(u64, Option<String>)> = c
        .query(
            "SELECT seq, gman_do_background(IF(seq % 10 = 0, 'deadfn', 'okfn'), seq) \
             FROM seq_1_to_1000",
        )
        .unwrap();
    assert_eq!(rows.len(), 1000);
    let mut handles = 0;
    for (seq, h) in &rows {
        if seq % 10 == 0 {
            assert_eq!(h, &None, "row {seq}");
        } else {
            assert!(
                h.as_deref().is_some_and(|h| h.starts_with("H:")),
                "row {seq}: {h:?}"
            );
            handles += 1;
        }
    }
    assert_eq!(handles, 900);
    let queued = |env: &Env, f: &str| {
        env.admin()
            .status()
            .unwrap()
            .iter()
            .find(|s| s.function == f)
            .map_or(0, |s| s.total)
    };
    assert_eq!(queued(&env, "okfn"), 900, "the 900 other jobs at gearmand");
    let e = last_error(&mut c).unwrap();
    assert!(e.contains("'deadfn'"), "{e}");
    assert!(
        env.udf_log_lines()
            .iter()
            .any(|l| l.contains("100 of 1000 calls failed")),
        "{:#?}",
        env.udf_log_lines()
    );
    // gman_server_status(): queued = waiting for a worker (total - running).
    let st: serde_json::Value =
        serde_json::from_str(&one_str(&mut c, "SELECT gman_server_status()").unwrap()).unwrap();
    let ok = st
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["function"] == "okfn")
        .unwrap_or_else(|| panic!("{st}"));
    assert_eq!(
        (&ok["total"], &ok["queued"], &ok["running"]),
        (&900.into(), &900.into(), &0.into()),
        "{ok}"
    );

    // An invalid argument in some rows: the same.
    let rows: Vec<Option<String>> = c
        .query("SELECT gman_do_background(IF(seq % 10 = 0, '', 'okfn2'), seq) FROM seq_1_to_100")
        .unwrap();
    assert_eq!(rows.iter().filter(|h| h.is_none()).count(), 10);
    assert_eq!(queued(&env, "okfn2"), 90);
    assert!(last_error(&mut c)
        .unwrap()
        .contains("function name is empty"));

    // Foreground calls and per-group gman_sum.
    let echo = handler(|ctx| Ok(ctx.workload().to_vec()));
    let _w = TestWorker::start(
        &env.servers(),
        vec![("echo", echo), ("words", handler(|_| Ok(b"abc".to_vec())))],
    );
    env.wait_workers("echo", 1);
    let rows: Vec<Option<String>> = c
        .query("SELECT gman_do(IF(seq % 2 = 0, 'deadfn', 'echo'), seq) FROM seq_1_to_10")
        .unwrap();
    let want: Vec<Option<String>> = (1..=10)
        .map(|i| (i % 2 == 1).then(|| i.to_string()))
        .collect();
    assert_eq!(rows, want);
    let groups: Vec<(u64, Option<i64>)> = c
        .query(
            "SELECT seq % 3 g, gman_sum(IF(seq % 3 = 1, 'words', 'echo'), seq) \
             FROM seq_1_to_9 GROUP BY g ORDER BY g",
        )
        .unwrap();
    assert_eq!(groups, vec![(0, Some(18)), (1, None), (2, Some(15))]);
    assert!(last_error(&mut c).unwrap().contains("not an integer"));
    assert_select_1(&mut env, &mut c, "per-row failures");
}

// ---------------------------------------------------------------------------
// gman_last_error() per connection (issue 10, item 8)

fn user_conn(env: &Env, user: &str) -> mysql::Conn {
    let opts = mysql::OptsBuilder::new()
        .ip_or_hostname(Some("127.0.0.1"))
        .tcp_port(env.db.port())
        .user(Some(user))
        .pass(Some("pw"))
        .read_timeout(Some(Duration::from_secs(120)));
    mysql::Conn::new(opts).expect("connecting as an ordinary user")
}

fn status_var(c: &mut mysql::Conn, name: &str) -> u64 {
    let r: Option<(String, String)> = c
        .query_first(format!("SHOW GLOBAL STATUS LIKE '{name}'"))
        .unwrap();
    r.expect("status variable").1.parse().unwrap()
}

/// Errors of one connection, then another user's new connection on the
/// same (cached or pooled) server thread: it never sees them.
fn last_error_stays_with_its_connection(env: &Env, pooled: bool) {
    let mut admin = env.conn();
    admin
        .query_drop("CREATE USER bob@'%' IDENTIFIED BY 'pw'")
        .unwrap();
    for round in 0..5 {
        let mut root = env.conn();
        assert_eq!(
            one(
                &mut root,
                &format!("SELECT gman_do_epoch('f', 'w', 'root-secret-{round}')")
            ),
            None
        );
        let e = last_error(&mut root).unwrap();
        assert!(e.contains(&format!("root-secret-{round}")), "{e}");
        drop(root);
        if !pooled {
            // The root connection's thread is back in the cache.
            wait_until("a cached thread", Duration::from_secs(10), || {
                status_var(&mut admin, "Threads_cached") > 0
            });
        }
        let mut bob = user_conn(env, "bob");
        assert_eq!(
            last_error(&mut bob),
            None,
            "round {round}: bob sees root's error"
        );
        // Bob's own error is his, and not the admin connection's.
        assert_eq!(
            one(&mut bob, "SELECT gman_do_epoch('f', 'w', 'bob-secret')"),
            None
        );
        assert!(last_error(&mut bob).unwrap().contains("bob-secret"));
        assert_eq!(last_error(&mut admin), None);
        assert!(last_error(&mut bob).unwrap().contains("bob-secret"));
        // Cleared by the connection's next statement that calls gman_*.
        assert!(one_str(&mut bob, "SELECT gman_do_background('nobody', 'x')").is_some());
        assert_eq!(last_error(&mut bob), None);
    }
    if !pooled {
        assert!(
            status_var(&mut admin, "Threads_created") < 10,
            "threads were reused"
        );
    }
}

#[test]
fn last_error_is_per_connection_with_thread_cache_and_pool() {
    let env = Env::start_with("", &["--thread-cache-size=8"]);
    last_error_stays_with_its_connection(&env, false);
    // One pool thread serves every connection in turn.
    let env = Env::start_with(
        "",
        &["--thread-handling=pool-of-threads", "--thread-pool-size=1"],
    );
    last_error_stays_with_its_connection(&env, true);
    // Two connections open at once on that one thread.
    let (mut a, mut b) = (env.conn(), env.conn());
    assert_eq!(
        one(&mut a, "SELECT gman_do_epoch('f', 'w', 'a-secret')"),
        None
    );
    assert_eq!(last_error(&mut b), None);
    assert!(last_error(&mut a).unwrap().contains("a-secret"));
}

/// A pipelined job refused after its call returned is reported to the
/// connection that submitted it, not to another session whose call happened
/// to read the confirmation on the shared pooled connection.
#[test]
fn pipelined_refusals_go_to_the_submitting_connection_only() {
    let env = Env::start(PIPELINED);
    let mut core = gearman_core::Client::new(env.servers(), Default::default());
    core.submit_background(&gearman_core::Job::new("capped", "creates the function"))
        .unwrap();
    env.admin().maxqueue("capped", Some(10)).unwrap();
    let (mut a, mut b) = (env.conn(), env.conn());
    // Open the pooled connection, then hold gearmand so that no
    // confirmation arrives before a's statement has ended.
    assert!(one_str(&mut a, "SELECT gman_do_background('capped', 'warm')").is_some());
    env.gearmand.pause();
    let n: Option<u64> = a
        .query_first(
            "SELECT COUNT(gman_do_background('capped', CONCAT('p', seq))) FROM seq_1_to_100",
        )
        .unwrap();
    env.gearmand.resume();
    assert_eq!(n, Some(100));
    // 2 + 8 fit the queue of 10: 92 refused, read by b's calls.
    let t0 = Instant::now();
    while !not_queued_lines(&env)
        .iter()
        .any(|l| l.contains("; 92 since the library was loaded"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "92 refusals not reported: {:#?}",
            env.udf_log_lines()
        );
        let _ = one_str(&mut b, "SELECT gman_job_status('probe')");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(last_error(&mut b), None, "b submitted nothing");
    let e = last_error(&mut a).unwrap();
    assert!(
        e.contains("not confirmed") && e.contains("QUEUE_ERROR"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// gman_servers_set is off unless the configuration file enables it (item 9)

#[test]
fn servers_set_is_refused_by_default_for_every_user() {
    // A configuration file without allow_servers_set.
    let env = Env::start("");
    let mut root = env.conn();
    root.query_drop("CREATE USER bob@'%' IDENTIFIED BY 'pw'")
        .unwrap();
    let mut bob = user_conn(&env, "bob");
    for (who, c) in [("root", &mut root), ("bob", &mut bob)] {
        for sql in [
            "SELECT gman_servers_set('127.0.0.1:1')",
            "SELECT gman_servers_set('127.0.0.1:1', 'f')",
        ] {
            let e = c
                .query_drop(sql)
                .expect_err(&format!("{who}: {sql} must be refused"))
                .to_string();
            assert!(e.contains("allow_servers_set = false"), "{who}: {e}");
        }
        // Routing unchanged: jobs still go to the configured server.
        let h = one_str(c, "SELECT gman_do_background('f', 'x')").unwrap();
        assert!(h.starts_with("H:"), "{who}: {h}");
    }
    let st = env.admin().status().unwrap();
    assert_eq!(
        st.iter().find(|s| s.function == "f").map(|s| s.total),
        Some(2)
    );
}

// ---------------------------------------------------------------------------
// One bounded pool for every server list (item 3)

/// Connections from the library that gearmand sees.
fn udf_connections(env: &Env) -> usize {
    env.admin()
        .workers()
        .unwrap()
        .into_iter()
        .filter(|w| w.client_id == "gearman-mysql-udf")
        .count()
}

/// Open socket descriptors of mariadbd.
fn mariadbd_sockets(env: &Env) -> usize {
    let pid = env.db.pid().expect("mariadbd pid");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn the_pool_is_bounded_across_server_lists_and_shares_servers() {
    const BOUND: usize = 4;
    let env = Env::start(&format!(
        "{ALLOW_SET}max_idle_connections = {BOUND}\nidle_timeout_ms = 1500\n"
    ));
    let mut c = env.conn();
    let sockets_before = mariadbd_sockets(&env);
    // 300 calls, each under its own per-function list that names this
    // gearmand and another (closed) port.
    let dead: Vec<DeadPort> = (0..300).map(|_| DeadPort::new()).collect();
    for (i, d) in dead.iter().enumerate() {
        let list = format!("{},127.0.0.1:{}", env.gearmand.addr(), d.port());
        assert_eq!(
            one_str(
                &mut c,
                &format!("SELECT gman_servers_set('{list}', 'fn{i}')")
            ),
            Some(list)
        );
        let h = one_str(&mut c, &format!("SELECT gman_do_background('fn{i}', 'x')"));
        assert!(h.is_some_and(|h| h.starts_with("H:")), "call {i}");
    }
    let open = udf_connections(&env);
    assert!(
        (1..=BOUND).contains(&open),
        "300 lists left {open} connections at gearmand"
    );
    let sockets = mariadbd_sockets(&env);
    assert!(
        sockets <= sockets_before + BOUND,
        "mariadbd holds {sockets} sockets, {sockets_before} before"
    );

    // Concurrent callers: one pooled connection each, all closed again once
    // idle longer than idle_timeout_ms.
    const N: usize = 3;
    let overlap = Overlap::new(N);
    let o = overlap.clone();
    let _w: Vec<TestWorker> = (0..N)
        .map(|_| {
            let o = o.clone();
            TestWorker::start(
                &env.servers(),
                vec![(
                    "together",
                    handler(move |ctx| Ok(o.run(|| ctx.workload().to_vec()))),
                )],
            )
        })
        .collect();
    env.wait_workers("together", N as u64);
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let url = env.db.url();
            std::thread::spawn(move || {
                let mut c = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
                one_str(&mut c, &format!("SELECT gman_do('together', 't{i}')"))
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), Some(format!("t{i}")));
    }
    assert_eq!(overlap.peak(), N);
    assert!(udf_connections(&env) >= N, "one per concurrent caller");
    // Idle past idle_timeout_ms: the next call closes them.
    std::thread::sleep(Duration::from_millis(2000));
    assert!(one_str(&mut c, "SELECT gman_do_background('fn0', 'x')").is_some());
    wait_until("idle clients closed", Duration::from_secs(10), || {
        udf_connections(&env) == 1
    });
}

// ---------------------------------------------------------------------------
// Function names with control characters or whitespace (item 10)

/// Submits a background job for `function` with a raw SUBMIT_JOB_BG packet
/// (our clients refuse such names) and waits for JOB_CREATED.
fn raw_submit_bg(g: &Gearmand, function: &[u8]) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", g.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut body = function.to_vec();
    body.extend_from_slice(b"\0\0w");
    let mut p = b"\0REQ".to_vec();
    p.extend_from_slice(&18u32.to_be_bytes()); // SUBMIT_JOB_BG
    p.extend_from_slice(&(body.len() as u32).to_be_bytes());
    p.extend_from_slice(&body);
    s.write_all(&p).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[4..8], &8u32.to_be_bytes(), "JOB_CREATED");
}

#[test]
fn function_names_with_newlines_are_refused_and_forged_admin_lines_skipped() {
    let env = Env::start(ALLOW_SET);
    let mut c = env.conn();
    let nl = "CONCAT('nl', CHAR(10), '.', CHAR(10), 'x')";
    for sql in [
        format!("SELECT gman_do_background({nl}, 'w')"),
        format!("SELECT gman_do({nl}, 'w')"),
        format!("SELECT gman_do_epoch({nl}, 'w', 1)"),
        format!("SELECT gman_servers_set('{}', {nl})", env.gearmand.addr()),
        "SELECT gman_do_background('tab\\there', 'w')".to_string(),
        "SELECT gman_do_background('a b', 'w')".to_string(),
    ] {
        assert_eq!(one(&mut c, &sql), None, "{sql}");
        let e = last_error(&mut c).unwrap_or_else(|| panic!("{sql}: no error"));
        assert!(e.contains("function name"), "{sql}: {e}");
    }
    assert_eq!(
        one(
            &mut c,
            &format!("SELECT gman_sum({nl}, 1) FROM (SELECT 1) t")
        ),
        None
    );
    assert!(last_error(&mut c).unwrap().contains("function name"));
    // Nothing reached gearmand under such a name.
    let st = env.admin().status().unwrap();
    assert!(st.iter().all(|f| !f.function.starts_with("nl")), "{st:?}");

    // Another client forges an admin line anyway: gman_server_status()
    // still answers, with the functions it can parse.
    one_str(&mut c, "SELECT gman_do_background('honest', 'w')").unwrap();
    raw_submit_bg(&env.gearmand, b"nl\n.\nx");
    let st = one_str(&mut c, "SELECT gman_server_status()")
        .unwrap_or_else(|| panic!("NULL: {:?}", last_error(&mut c)));
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|e| e["function"] == "honest" && e["total"] == 1),
        "{st}"
    );
}

#[test]
fn a_config_file_function_name_with_whitespace_is_refused_at_load() {
    let config = write_config("[function_servers]\n\"a b\" = \"127.0.0.1:4731\"\n");
    let mut db = start_db(&config, &[]);
    let log = db.error_log();
    assert!(
        log.contains("gearman-mysql-udf: not usable") && log.contains("function name"),
        "{log}"
    );
    assert!(db.is_alive());
}

// ---------------------------------------------------------------------------
// Results are capped (item 1)

/// Sends `chunks` WORK_DATA packets of 1 MiB, then completes with nothing.
fn flood(chunks: usize) -> Handler {
    handler(move |ctx| {
        let mib = vec![b'f'; 1 << 20];
        for _ in 0..chunks {
            if ctx.send_data(&mib).is_err() {
                break;
            }
        }
        Ok(Vec::new())
    })
}

#[test]
fn foreground_results_are_capped() {
    // Default: 16 MiB, MariaDB's largest UDF string result.
    let mut env = Env::start_with("", &["--max-allowed-packet=64M"]);
    let echo = handler(|ctx| Ok(ctx.workload().to_vec()));
    let _w = TestWorker::start(
        &env.servers(),
        vec![("flood", flood(20)), ("echo", echo.clone())],
    );
    env.wait_workers("flood", 1);
    let mut c = env.conn();
    assert_eq!(one(&mut c, "SELECT gman_do('flood', 'x')"), None);
    let e = last_error(&mut c).unwrap();
    assert!(
        e.contains("gman_do") && e.contains("exceeded 16777216 bytes"),
        "{e}"
    );
    // Exactly the cap still comes back whole.
    assert_eq!(
        one_str(
            &mut c,
            "SELECT LENGTH(gman_do('echo', REPEAT('x', 16777216)))"
        )
        .as_deref(),
        Some("16777216")
    );
    assert_select_1(&mut env, &mut c, "a flood of WORK_DATA");

    // Configured lower; also gman_sum and the rows after a failing one.
    let mut env = Env::start("max_result_bytes = 1048576\n");
    let _w = TestWorker::start(
        &env.servers(),
        vec![("flood", flood(3)), ("echo", echo), ("sumflood", flood(1))],
    );
    env.wait_workers("sumflood", 1);
    let mut c = env.conn();
    let rows: Vec<Option<u64>> = c
        .query(
            "SELECT LENGTH(gman_do(IF(seq = 2, 'flood', 'echo'), REPEAT('y', 1048573 + seq))) \
             FROM seq_1_to_4",
        )
        .unwrap();
    // Up to 1048576 bytes fit; the flood and 1048577 bytes do not.
    assert_eq!(rows, vec![Some(1_048_574), None, Some(1_048_576), None]);
    let e = last_error(&mut c).unwrap();
    assert!(e.contains("exceeded 1048576 bytes"), "{e}");
    assert_eq!(
        one(&mut c, "SELECT gman_sum('sumflood', seq) FROM seq_1_to_3"),
        None
    );
    let e = last_error(&mut c).unwrap();
    assert!(e.contains("exceeded 4096 bytes"), "{e}");
    assert_select_1(&mut env, &mut c, "capped results");
}

// ---------------------------------------------------------------------------
// One deadline per call (item 2)

#[test]
fn every_call_has_one_deadline_over_twenty_black_holed_servers() {
    let holes = gearman_testkit::BlackHole::many(20);
    let list = holes.iter().map(|h| h.addr()).collect::<Vec<_>>().join(",");
    // Each connect may take 1 s; every call is bounded by 2 s as a whole.
    let mut env = Env::start(&format!(
        "connect_timeout_ms = 1000\nio_timeout_ms = 2000\nforeground_timeout_ms = 2000\n\
         [function_servers]\nblack = \"{list}\"\n"
    ));
    let mut c = env.conn();
    let bound = Duration::from_secs(8); // 4x the deadline; 20 connects took 20 s
    for sql in [
        "SELECT gman_do('black', 'x')",
        "SELECT gman_do_background('black', 'x')",
        "SELECT gman_sum('black', seq) FROM seq_1_to_3",
    ] {
        let t0 = Instant::now();
        assert_eq!(one(&mut c, sql), None, "{sql}");
        let took = t0.elapsed();
        assert!(took < bound, "{sql} took {took:?}");
        let e = last_error(&mut c).unwrap();
        assert!(
            e.contains("deadline") || e.contains("timed out") || e.contains("within"),
            "{sql}: {e}"
        );
    }
    // Status walks over every server and list: within the bound (the live
    // server answers "not known"; the black holes cannot).
    for sql in [
        "SELECT gman_job_status('some-unique-key')",
        "SELECT gman_job_status('H:host:1')",
    ] {
        let t0 = Instant::now();
        let st = one_str(&mut c, sql);
        let took = t0.elapsed();
        assert!(took < bound, "{sql} took {took:?}");
        if let Some(st) = st {
            assert!(st.contains("\"known\":false"), "{sql}: {st}");
        }
    }
    // gman_server_status(): the live server's answer, the black holes as
    // errors, all within the bound.
    assert!(one_str(&mut c, "SELECT gman_do_background('live', 'x')").is_some());
    let t0 = Instant::now();
    let st = one_str(&mut c, "SELECT gman_server_status()").unwrap();
    let took = t0.elapsed();
    assert!(took < bound, "gman_server_status took {took:?}");
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    let arr = v.as_array().unwrap();
    assert!(
        arr.iter()
            .any(|e| e["server"] == env.gearmand.addr() && e["function"] == "live"),
        "{st}"
    );
    assert_eq!(
        arr.iter().filter(|e| e.get("error").is_some()).count(),
        20,
        "{st}"
    );
    assert_select_1(&mut env, &mut c, "black holes");
}

// ---------------------------------------------------------------------------
// Owed confirmations have a deadline (item 18)

/// Pipelined jobs whose JOB_CREATED does not come within io_timeout_ms
/// (gearmand stopped after accepting them) are reported as of unknown fate
/// (they may have been queued: they are, once gearmand resumes), to the
/// connection that submitted them, instead of staying pending for ever.
#[test]
fn overdue_pipelined_confirmations_are_reported_as_unknown_fate() {
    let mut env = Env::start(&format!("{PIPELINED}io_timeout_ms = 1000\n"));
    let mut a = env.conn();
    // The first job of its kind on the connection is confirmed before
    // anything is pipelined behind it.
    assert!(one_str(&mut a, "SELECT gman_do_background('late', 'warm')").is_some());
    // The sender writes it after the call returned: wait for its
    // confirmation before pausing gearmand.
    wait_until("the warm job confirmed", Duration::from_secs(10), || {
        one_str(&mut a, "SELECT gman_dispatch_status()")
            .is_some_and(|s| s.contains("\"confirmed\":1,"))
    });
    env.gearmand.pause();
    let n: Option<u64> = a
        .query_first("SELECT COUNT(gman_do_background('late', seq)) FROM seq_1_to_50")
        .unwrap();
    assert_eq!(n, Some(50), "written");
    // A later call (any session) reads the ledger and finds them overdue.
    let mut b = env.conn();
    let t0 = Instant::now();
    while !not_queued_lines(&env)
        .iter()
        .any(|l| l.contains("; 50 since the library was loaded"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "50 overdue jobs not reported: {:#?}",
            env.udf_log_lines()
        );
        let _ = one(&mut b, "SELECT gman_job_status('probe')");
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = not_queued_lines(&env);
    assert_eq!(
        lines.iter().map(|l| not_queued_count(l)).sum::<u64>(),
        50,
        "{lines:#?}"
    );
    for l in &lines {
        assert!(
            l.contains("of unknown fate") && l.contains("may have been queued"),
            "{l}"
        );
    }
    let e = last_error(&mut a).unwrap();
    assert!(e.contains("50 of unknown fate"), "{e}");
    // They were queued after all once gearmand runs again.
    env.gearmand.resume();
    wait_until(
        "51 'late' jobs at gearmand",
        Duration::from_secs(20),
        || {
            env.admin()
                .status()
                .unwrap()
                .iter()
                .any(|f| f.function == "late" && f.total == 51)
        },
    );
    assert_select_1(&mut env, &mut a, "overdue confirmations");
}

/// Python's `gear` job server ignores SUBMIT_JOB_EPOCH (no reply at all).
/// Confirmations are matched in order, so before a packet type had been
/// seen answered on a connection, a later job's JOB_CREATED was credited to
/// the ignored one. The first job of each kind is now confirmed before
/// anything is pipelined behind it: the epoch job is reported as of
/// unknown fate (its call returned its key: the sender thread writes it),
/// and every background job is confirmed, none blamed.
#[test]
fn pipelined_dispatch_against_python_gear_blames_only_the_ignored_packet() {
    let gear = gearman_testkit::GearServer::start();
    let config = write_config(&format!(
        "servers = \"{}\"\n{PIPELINED}io_timeout_ms = 1500\n",
        gear.addr()
    ));
    let mut db = start_db(&config, &[]);
    let mut c = common::connect(&db);
    assert!(
        one(
            &mut c,
            "SELECT gman_do_epoch('ep', 'x', UNIX_TIMESTAMP() + 3600)"
        )
        .is_some(),
        "handed to the sender"
    );
    wait_until("the epoch job reported", Duration::from_secs(20), || {
        last_error(&mut c).is_some_and(|e| e.contains("'ep'") && e.contains("unknown fate"))
    });
    let keys: Vec<Option<String>> = c
        .query("SELECT gman_do_background('bg', CONCAT('b', seq)) FROM seq_1_to_20")
        .unwrap();
    assert!(keys.iter().all(Option::is_some), "{keys:?}");
    // Every confirmation is collected (this call waits for the ledger),
    // and no background job is reported as failed.
    let t0 = Instant::now();
    loop {
        let _ = one(&mut c, "SELECT gman_job_status('probe')");
        let st = gearman_core::admin::Admin::connect(
            &gearman_core::ServerAddr::new("127.0.0.1", gear.port()),
            Duration::from_secs(2),
        )
        .and_then(|mut a| a.status());
        if let Ok(st) = st {
            if st.iter().any(|f| f.function == "bg" && f.total == 20) {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "20 bg jobs at gear");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let _ = one(&mut c, "SELECT gman_job_status('probe')");
    let blamed: Vec<String> = db
        .error_log()
        .lines()
        .filter(|l| l.contains("pipelined background dispatch:") && l.contains("'bg'"))
        .map(str::to_owned)
        .collect();
    assert!(blamed.is_empty(), "background jobs blamed: {blamed:#?}");
    assert!(db.is_alive());
}
