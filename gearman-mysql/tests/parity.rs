//! The functions MariaDB has in common with the PostgreSQL extension
//! (`gman_do_many`, `gman_dispatch_status`, `gman_do_background_at`), inside
//! a real MariaDB against a real gearmand, with workers from gearman-core in
//! this process.

mod common;

use common::*;
use gearman_core::worker::WorkError;
use mysql::prelude::Queryable;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PIPELINED: &str = "background_dispatch = \"pipelined\"\n";

fn json_of(c: &mut mysql::Conn, sql: &str) -> Value {
    let text = one_str(c, sql)
        .unwrap_or_else(|| panic!("{sql} returned NULL; gman_last_error: {:?}", last_error(c)));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{sql}: {e}: {text}"))
}

#[test]
fn gman_do_many_scatters_then_gathers_in_input_order() {
    let mut env = Env::start("");
    // Three workers, each holding its job until all three hold one.
    let gather = rendezvous(3);
    let _w: Vec<TestWorker> = (0..3)
        .map(|_| TestWorker::start(&env.servers(), vec![("gather", gather.clone())]))
        .collect();
    let echo = handler(|ctx| match ctx.workload() {
        b"fail" => Err(WorkError::Fail),
        b"binary" => Ok(vec![0xff, 0xfe]),
        w => Ok(w.to_vec()),
    });
    let _e = TestWorker::start(&env.servers(), vec![("echo", echo)]);
    env.wait_workers("gather", 3);
    env.wait_workers("echo", 1);
    let mut c = env.conn();

    assert_eq!(
        json_of(
            &mut c,
            r#"SELECT gman_do_many('gather', '["abc", "de", "f"]')"#
        ),
        json!(["cba", "ed", "f"])
    );
    assert_eq!(last_error(&mut c), None);

    // Elements: a string is its text, null an empty workload, anything else
    // the JSON text it was given; results are JSON strings, in input order.
    assert_eq!(
        json_of(
            &mut c,
            // MariaDB's string literal unescapes `\\` to `\`.
            r#"SELECT gman_do_many('echo', '["a\\u00e9\\"", null, 42, 1.50, {"k": [1, 2]}, ""]')"#
        ),
        json!(["aé\"", "", "42", "1.50", "{\"k\": [1, 2]}", ""])
    );
    assert_eq!(
        json_of(
            &mut c,
            "SELECT gman_do_many('echo', JSON_ARRAY('x', JSON_OBJECT('id', 7)))"
        ),
        json!(["x", "{\"id\": 7}"])
    );
    assert_eq!(
        json_of(&mut c, "SELECT gman_do_many('echo', '[]')"),
        json!([])
    );
    // One call per row.
    let rows: Vec<String> = c
        .query("SELECT gman_do_many('echo', JSON_ARRAY(seq, seq * 2)) FROM seq_1_to_3")
        .unwrap();
    assert_eq!(rows, ["[\"1\",\"2\"]", "[\"2\",\"4\"]", "[\"3\",\"6\"]"]);

    // A failed job is null in its place; the row is still returned and
    // gman_last_error() says which element failed and why.
    assert_eq!(
        json_of(
            &mut c,
            r#"SELECT gman_do_many('echo', '["ok", "fail", "binary", "ok2"]')"#
        ),
        json!(["ok", null, null, "ok2"])
    );
    let e = last_error(&mut c).unwrap();
    assert!(
        e.starts_with("gman_do_many: 2 of 4 jobs failed") && e.contains("first: element 2:"),
        "{e}"
    );
    assert!(e.contains("function 'echo'"), "{e}");

    // A NULL array is NULL, without an error.
    assert_eq!(one(&mut c, "SELECT gman_do_many('echo', NULL)"), None);
    assert_eq!(last_error(&mut c), None);

    // Bad arguments fail the row before anything is sent.
    for (sql, want) in [
        (
            "SELECT gman_do_many('echo', '{\"a\": 1}')",
            "is not a JSON array",
        ),
        (
            "SELECT gman_do_many('echo', '[1, 2')",
            "is not a JSON array",
        ),
        ("SELECT gman_do_many('', '[1]')", "function name is empty"),
        ("SELECT gman_do_many(NULL, '[1]')", "function name is NULL"),
        ("SELECT gman_do_many('bad name', '[1]')", "bad name"),
    ] {
        assert_eq!(one(&mut c, sql), None, "{sql}");
        let e = last_error(&mut c).unwrap_or_else(|| panic!("{sql}: no error"));
        assert!(
            e.starts_with("gman_do_many: ") && e.contains(want),
            "{sql}: {e}"
        );
    }
    let e = c
        .query_drop("SELECT gman_do_many('echo')")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gman_do_many(function, json_array) takes 2 arguments"),
        "{e}"
    );
    env.assert_alive("gman_do_many");
}

#[test]
fn gman_do_many_is_bounded_by_one_deadline_and_max_result_bytes() {
    let mut env =
        Env::start("foreground_timeout_ms = 1500\nmax_result_bytes = 100\nmax_sum_rows = 5\n");
    let echo = handler(|ctx| Ok(ctx.workload().to_vec()));
    let _e = TestWorker::start(&env.servers(), vec![("echo", echo)]);
    env.wait_workers("echo", 1);
    let mut c = env.conn();

    // Each result is at most max_result_bytes ...
    assert_eq!(
        json_of(
            &mut c,
            "SELECT gman_do_many('echo', JSON_ARRAY('short', REPEAT('x', 101)))"
        ),
        json!(["short", null])
    );
    let e = last_error(&mut c).unwrap();
    assert!(e.contains("exceeded 100 bytes"), "{e}");
    // ... so are all the results one call gathers together: the job whose
    // result would cross the bound fails (null) and its data is not kept;
    // which of the two that is depends on which finishes first ...
    let v = json_of(
        &mut c,
        "SELECT gman_do_many('echo', JSON_ARRAY(REPEAT('x', 60), REPEAT('y', 60)))",
    );
    let (x, y) = (json!("x".repeat(60)), json!("y".repeat(60)));
    assert!(
        v == json!([x.clone(), null]) || v == json!([null, y.clone()]),
        "{v}"
    );
    let e = last_error(&mut c).unwrap();
    assert!(
        e.contains("1 of 2 jobs failed") && e.contains("exceeded 100 bytes in all"),
        "{e}"
    );
    // ... and so is the whole output, JSON quoting included (94 bytes of
    // results, 101 of output).
    assert_eq!(
        one(
            &mut c,
            "SELECT gman_do_many('echo', JSON_ARRAY(REPEAT('x', 47), REPEAT('y', 47)))"
        ),
        None
    );
    let e = last_error(&mut c).unwrap();
    assert!(
        e.contains("exceed max_result_bytes (100 bytes) together"),
        "{e}"
    );
    // At most max_sum_rows elements.
    assert_eq!(
        one(&mut c, "SELECT gman_do_many('echo', '[1,2,3,4,5,6]')"),
        None
    );
    let e = last_error(&mut c).unwrap();
    assert!(e.contains("6 elements, more than 5"), "{e}");

    // No worker: every job waits within the one deadline of the call.
    let start = Instant::now();
    assert_eq!(
        json_of(&mut c, "SELECT gman_do_many('nobody', '[1, 2, 3]')"),
        json!([null, null, null])
    );
    assert!(
        start.elapsed() < Duration::from_millis(5 * 1500),
        "{:?}",
        start.elapsed()
    );
    let e = last_error(&mut c).unwrap();
    assert!(e.contains("3 of 3 jobs failed"), "{e}");
    env.assert_alive("bounded gman_do_many");
}

#[test]
fn gman_do_background_at_schedules_and_gman_do_epoch_is_its_alias() {
    let mut env = Env::start("");
    let got = Arc::new(Mutex::new(Vec::new()));
    let _w = TestWorker::start(&env.servers(), vec![("at", recorder(&got))]);
    env.wait_workers("at", 1);
    let mut c = env.conn();

    // Past times run at once: Unix seconds, RFC 3339 with Z or an offset,
    // and the old name.
    for sql in [
        "SELECT gman_do_background_at('at', 'a1', 946684800)",
        "SELECT gman_do_background_at('at', 'a2', '2000-01-01T00:00:00Z')",
        "SELECT gman_do_background_at('at', 'a3', '2000-01-01 01:00:00+01:00', 'key-a3')",
        "SELECT gman_do_epoch('at', 'a4', 946684800)",
    ] {
        let h = one_str(&mut c, sql).unwrap_or_else(|| panic!("{sql}: {:?}", last_error(&mut c)));
        assert!(h.starts_with("H:"), "{sql}: {h}");
    }
    wait_until("4 scheduled jobs run", Duration::from_secs(15), || {
        got.lock().unwrap().len() >= 4
    });
    let mut seen = got.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            b"a1".to_vec(),
            b"a2".to_vec(),
            b"a3".to_vec(),
            b"a4".to_vec()
        ]
    );

    // A future time waits in gearmand.
    let h = one_str(
        &mut c,
        "SELECT gman_do_background_at('later', 'x', '2099-01-01T00:00:00Z')",
    )
    .unwrap();
    let st = json_of(&mut c, &format!("SELECT gman_job_status('{h}')"));
    assert_eq!(st["known"], true, "{st}");

    // A DATETIME has no time zone: refused with a hint, not guessed.
    for (f, arg) in [
        ("gman_do_background_at", "run_at"),
        ("gman_do_epoch", "unix_seconds"),
    ] {
        let sql = format!("SELECT {f}('at', 'x', NOW() + INTERVAL 1 HOUR)");
        assert_eq!(one(&mut c, &sql), None);
        let e = last_error(&mut c).unwrap();
        assert!(
            e.starts_with(&format!("{f}: {arg} '"))
                && e.contains("without a time zone")
                && e.contains("UNIX_TIMESTAMP("),
            "{e}"
        );
    }
    let e = c
        .query_drop("SELECT gman_do_background_at('at', 'x')")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gman_do_background_at(function, workload, run_at [, unique])"),
        "{e}"
    );
    env.assert_alive("scheduled jobs");
}

#[test]
fn gman_dispatch_status_counts_pipelined_jobs() {
    let dead = gearman_testkit::DeadPort::new();
    let mut env = Env::start(&format!(
        "{PIPELINED}[function_servers]\ndead = \"127.0.0.1:{}\"\n",
        dead.port()
    ));
    let mut c = env.conn();
    let zero = json!({
        "dispatch": "pipelined", "sent": 0, "confirmed": 0, "failed": 0,
        "refused": 0, "unknown": 0, "pending": 0,
    });
    assert_eq!(json_of(&mut c, "SELECT gman_dispatch_status()"), zero);

    // maxqueue holds only for a function gearmand already knows: 1 job
    // makes it, 9 more fit a queue of 10, 91 are refused.
    let mut core = gearman_core::Client::new(env.servers(), Default::default());
    core.submit_background(&gearman_core::Job::new("capped", "creates the function"))
        .unwrap();
    env.admin().maxqueue("capped", Some(10)).unwrap();
    let n: Option<u64> = c
        .query_first(
            "SELECT COUNT(gman_do_background('capped', CONCAT('p', seq))) FROM seq_1_to_100",
        )
        .unwrap();
    assert_eq!(n, Some(100));
    let mut st = Value::Null;
    wait_until("every confirmation read", Duration::from_secs(20), || {
        st = counts(json_of(&mut c, "SELECT gman_dispatch_status()"));
        st["pending"] == 0
    });
    assert_eq!(
        st,
        json!({
            "dispatch": "pipelined", "sent": 100, "confirmed": 9, "failed": 91,
            "refused": 91, "unknown": 0, "pending": 0,
        })
    );
    // Confirmations alone are counted too, also those that only
    // gman_dispatch_status() reads from the idle pool.
    let n: Option<u64> = c
        .query_first("SELECT COUNT(gman_do_background('free', seq)) FROM seq_1_to_50")
        .unwrap();
    assert_eq!(n, Some(50));
    wait_until("every confirmation read", Duration::from_secs(20), || {
        st = counts(json_of(&mut c, "SELECT gman_dispatch_status()"));
        st["pending"] == 0
    });
    assert_eq!(
        st,
        json!({
            "dispatch": "pipelined", "sent": 150, "confirmed": 59, "failed": 91,
            "refused": 91, "unknown": 0, "pending": 0,
        })
    );
    // A job whose server cannot be reached is handed to the sender all
    // the same and waits in its queue: sent, pending, queued.
    assert!(one(&mut c, "SELECT gman_do_background('dead', 'x')").is_some());
    let st = json_of(&mut c, "SELECT gman_dispatch_status()");
    assert_eq!(st["sent"], 151, "{st}");
    assert_eq!(st["pending"], 1, "{st}");
    wait_until("the dead job queued", Duration::from_secs(10), || {
        json_of(&mut c, "SELECT gman_dispatch_status()")["sender"]["queued"] == 1
    });
    env.assert_alive("gman_dispatch_status");
}

/// The counts of `gman_dispatch_status()` without the sender's details.
fn counts(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("sender");
    }
    v
}

#[test]
fn gman_dispatch_status_is_all_zero_in_round_trip_mode() {
    let mut env = Env::start("");
    let mut c = env.conn();
    let h = one_str(&mut c, "SELECT gman_do_background('nobody', 'x')").unwrap();
    assert!(h.starts_with("H:"), "{h}");
    assert_eq!(
        json_of(&mut c, "SELECT gman_dispatch_status()"),
        json!({
            "dispatch": "round_trip", "sent": 0, "confirmed": 0, "failed": 0,
            "refused": 0, "unknown": 0, "pending": 0,
        })
    );
    env.assert_alive("gman_dispatch_status");
}

/// Issue 11, parity with PostgreSQL (`gearman-pg/tests/sql.rs`,
/// `parity_server_status_and_validation_texts`, checks the same state and
/// texts):
///
/// - gearmand state: function `parity_f` with 3 background jobs queued and
///   no worker. Expected for `parity_f`: `queued 3, running 0, workers 0`
///   (MariaDB adds `total 3`).
/// - validation errors carry gearman-core's one text (`Job::from_args`),
///   here after `<function name>: ` (PostgreSQL: after `gearman: `):
///   `gman_do('', 'x')` -> `function name is empty`;
///   `gman_do('a b', 'x')` -> `function name "a b" contains a space at byte
///   1; control characters and whitespace are not allowed`;
///   `gman_do_background('f', 'x', <64 bytes>)` -> `unique key is 64 bytes;
///   at most 63 are allowed (gearmand mishandles longer keys)`.
/// - `gman_do_many('parity_rev', ['abc', 'de', ''])` with a worker that
///   reverses its workload -> `cba, ed, ''` in input order; an element
///   whose job fails (`'fail'`) is NULL in its place (PostgreSQL with
///   `gearman.on_error = warning`: a NULL row and a WARNING).
#[test]
fn both_databases_agree_on_status_validation_and_gather() {
    let mut env = Env::start("");
    let mut c = env.conn();
    for i in 0..3 {
        let h = one_str(
            &mut c,
            &format!("SELECT gman_do_background('parity_f', 'w{i}')"),
        );
        assert!(h.is_some_and(|h| h.starts_with("H:")));
    }
    let status = json_of(&mut c, "SELECT gman_server_status()");
    let rows: Vec<&Value> = status
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["function"] == "parity_f")
        .collect();
    assert_eq!(rows.len(), 1, "{status}");
    assert_eq!(
        (
            &rows[0]["queued"],
            &rows[0]["running"],
            &rows[0]["workers"],
            &rows[0]["total"]
        ),
        (&json!(3), &json!(0), &json!(0), &json!(3)),
        "{status}"
    );

    let long = "k".repeat(64);
    for (sql, text) in [
        (
            "SELECT gman_do('', 'x')".to_string(),
            "function name is empty",
        ),
        (
            "SELECT gman_do('a b', 'x')".to_string(),
            "function name \"a b\" contains a space at byte 1; control characters and \
             whitespace are not allowed",
        ),
        (
            format!("SELECT gman_do_background('f', 'x', '{long}')"),
            "unique key is 64 bytes; at most 63 are allowed (gearmand mishandles longer keys)",
        ),
    ] {
        assert_eq!(one(&mut c, &sql), None, "{sql}");
        let function = sql["SELECT ".len()..sql.find('(').unwrap()].to_string();
        assert_eq!(
            last_error(&mut c).as_deref(),
            Some(format!("{function}: {text}").as_str()),
            "{sql}"
        );
    }
    // The same texts as the core's validator gives (not a copy of them).
    assert_eq!(
        gearman_core::Job::from_args(b"", "x", None)
            .unwrap_err()
            .to_string(),
        "function name is empty"
    );

    let rev = handler(|ctx| {
        if ctx.workload() == b"fail" {
            return Err(WorkError::Fail);
        }
        let mut w = ctx.workload().to_vec();
        w.reverse();
        Ok(w)
    });
    let _w = TestWorker::start(&env.servers(), vec![("parity_rev", rev)]);
    env.wait_workers("parity_rev", 1);
    assert_eq!(
        json_of(
            &mut c,
            r#"SELECT gman_do_many('parity_rev', '["abc", "de", ""]')"#
        ),
        json!(["cba", "ed", ""])
    );
    assert_eq!(
        json_of(
            &mut c,
            r#"SELECT gman_do_many('parity_rev', '["abc", "fail", "de"]')"#
        ),
        json!(["cba", null, "ed"])
    );
    env.assert_alive("parity");
}
