//! `#[pg_test]` tests: they run inside a PostgreSQL backend started by
//! `cargo pgrx test pg15`, each in a transaction that is rolled back.
//! Every test starts its own gearmand (gearman_testkit) and a Gearman
//! worker on a thread of the backend (pure Rust; it never calls into
//! PostgreSQL), and points `gearman.servers` at it with `SET`.
//!
//! COMMIT itself cannot happen here; the commit-dispatch tests are in
//! `tests/sql.rs`, over real connections.

#[pgrx::pg_schema]
mod tests {
    use gearman_core::worker::{JobContext, StopHandle, WorkResult, Worker, WorkerOptions};
    use gearman_core::ServerList;
    use gearman_testkit::Gearmand;
    use pgrx::prelude::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    /// A worker thread that records each job's function and workload and
    /// echoes the workload (or answers with `reply`).
    struct Recorder {
        seen: Seen,
        stop: StopHandle,
    }

    impl Recorder {
        fn start(addr: &str, functions: &[&str]) -> Recorder {
            Recorder::start_with(addr, functions, |j| Ok(j.workload().to_vec()))
        }

        fn start_with(
            addr: &str,
            functions: &[&str],
            reply: impl Fn(&mut JobContext<'_>) -> WorkResult + Send + Sync + Clone + 'static,
        ) -> Recorder {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let mut w = Worker::new(ServerList::parse(addr).unwrap(), WorkerOptions::default());
            for f in functions {
                let seen = seen.clone();
                let reply = reply.clone();
                w.register(f, move |j: &mut JobContext<'_>| {
                    seen.lock()
                        .unwrap()
                        .push((j.function().to_string(), j.workload().to_vec()));
                    reply(j)
                });
            }
            let stop = w.stop_handle();
            std::thread::spawn(move || {
                let _ = w.run();
            });
            let r = Recorder { seen, stop };
            r.wait_registered(addr, functions);
            r
        }

        fn wait_registered(&self, addr: &str, functions: &[&str]) {
            let list = ServerList::parse(addr).unwrap();
            let server = list.iter().next().unwrap().clone();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(mut a) =
                    gearman_core::admin::Admin::connect(&server, Duration::from_secs(2))
                {
                    if let Ok(st) = a.status() {
                        if functions
                            .iter()
                            .all(|f| st.iter().any(|s| s.function == *f && s.workers > 0))
                        {
                            return;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("worker for {functions:?} did not register");
        }

        fn workloads(&self) -> Vec<String> {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .map(|(_, w)| String::from_utf8_lossy(w).into_owned())
                .collect()
        }

        fn wait_for_workload(&self, w: &str) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if self.workloads().iter().any(|x| x == w) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("{w:?} never arrived; seen {:?}", self.workloads());
        }
    }

    impl Drop for Recorder {
        fn drop(&mut self) {
            self.stop.stop();
        }
    }

    fn use_server(g: &Gearmand) {
        Spi::run(&format!("SET gearman.servers = '{}'", g.addr())).unwrap();
    }

    fn one(sql: &str) -> Option<String> {
        Spi::get_one::<String>(sql).unwrap()
    }

    /// User text in a WARNING sent after COMMIT is ASCII only, so no
    /// client encoding can turn the WARNING into an ERROR there.
    #[pg_test]
    fn commit_time_warning_text_is_ascii() {
        assert_eq!(crate::backend::ascii(b"key-1 (f)"), "key-1 (f)");
        assert_eq!(
            crate::backend::ascii("k\u{e9}\n\u{4e2d}".as_bytes()),
            "k\\u{e9}\\n\\u{4e2d}"
        );
        assert_eq!(crate::backend::ascii(b"\xff"), "\\u{fffd}");
    }

    #[pg_test]
    fn gman_do_all_priorities_and_types() {
        let g = Gearmand::start();
        let _w = Recorder::start(&g.addr(), &["echo"]);
        use_server(&g);
        assert_eq!(one("SELECT gman_do('echo', 'abc')").as_deref(), Some("abc"));
        assert_eq!(
            one("SELECT gman_do_high('echo', 'hi')").as_deref(),
            Some("hi")
        );
        assert_eq!(
            one("SELECT gman_do_low('echo', 'lo', 'key')").as_deref(),
            Some("lo")
        );
        assert_eq!(one("SELECT gman_do('echo', NULL)").as_deref(), Some(""));
        assert_eq!(one("SELECT gman_do(NULL, 'x')"), None);
        assert_eq!(
            one("SELECT gman_do('echo', '{\"k\": 1}'::jsonb)").as_deref(),
            Some("{\"k\": 1}")
        );
        let b = Spi::get_one::<Vec<u8>>("SELECT gman_do('echo', '\\x00ff10'::bytea)").unwrap();
        assert_eq!(b, Some(vec![0x00, 0xff, 0x10]));
        let b = Spi::get_one::<Vec<u8>>("SELECT gman_do_high('echo', '\\x01'::bytea)").unwrap();
        assert_eq!(b, Some(vec![1]));
    }

    #[pg_test]
    fn gman_do_background_per_dispatch_mode() {
        let g = Gearmand::start();
        let w = Recorder::start(&g.addr(), &["bg"]);
        use_server(&g);
        // commit (default): held; the key is a UUID; nothing is sent yet.
        let key = one("SELECT gman_do_background('bg', 'held')").unwrap();
        assert_eq!(key.len(), 36);
        assert_eq!(
            one("SELECT gman_do_low_background('bg', 'held2', 'mine')").as_deref(),
            Some("mine")
        );
        // immediate: sent now, returns the handle.
        Spi::run("SET gearman.dispatch = 'immediate'").unwrap();
        let h = one("SELECT gman_do_high_background('bg', 'now')").unwrap();
        assert!(h.starts_with("H:"), "{h}");
        w.wait_for_workload("now");
        let h = one("SELECT gman_do_background('bg', '\\x6e6f7732'::bytea)").unwrap();
        assert!(h.starts_with("H:"), "{h}");
        w.wait_for_workload("now2");
        // The held jobs were queued before "now" but are still unsent.
        assert!(
            !w.workloads().iter().any(|x| x.starts_with("held")),
            "{:?}",
            w.workloads()
        );
        // outbox: a row in gearman.outbox.
        Spi::run("SET gearman.dispatch = 'outbox'").unwrap();
        let key = one("SELECT gman_do_background('bg', 'boxed', 'box-1')").unwrap();
        assert_eq!(key, "box-1");
        assert_eq!(
            one("SELECT function || ':' || convert_from(workload, 'UTF8') || ':' || priority FROM gearman.outbox WHERE unique_key = 'box-1'")
                .as_deref(),
            Some("bg:boxed:normal")
        );
    }

    #[pg_test]
    fn gman_do_background_at_schedules() {
        let g = Gearmand::start();
        let w = Recorder::start(&g.addr(), &["at"]);
        use_server(&g);
        Spi::run("SET gearman.dispatch = 'immediate'").unwrap();
        let h = one("SELECT gman_do_background_at('at', 'soon', now())").unwrap();
        assert!(h.starts_with("H:"), "{h}");
        w.wait_for_workload("soon");
        let h = one(
            "SELECT gman_do_background_at('at', 'later', now() + interval '1 hour', 'later-1')",
        )
        .unwrap();
        assert!(h.starts_with("H:"));
        assert_eq!(
            one("SELECT known::text FROM gman_job_status('later-1')").as_deref(),
            Some("true")
        );
        assert_eq!(one("SELECT gman_do_background_at('at', 'x', NULL)"), None);
    }

    #[pg_test(error = "gearman: run_at must be a finite timestamp, not infinity")]
    fn gman_do_background_at_rejects_infinity() {
        Spi::run("SELECT gman_do_background_at('at', 'x', 'infinity')").unwrap();
    }

    #[pg_test]
    fn gman_do_many_and_gman_sum() {
        let g = Gearmand::start();
        let _w = Recorder::start(&g.addr(), &["echo"]);
        use_server(&g);
        let got: Vec<(i32, Option<String>)> = Spi::connect(|c| {
            c.select(
                "SELECT ordinality, result FROM gman_do_many('echo', ARRAY['a','b','c'])",
                None,
                &[],
            )
            .unwrap()
            .map(|r| {
                (
                    r.get::<i32>(1).unwrap().unwrap(),
                    r.get::<String>(2).unwrap(),
                )
            })
            .collect()
        });
        assert_eq!(
            got,
            vec![
                (1, Some("a".into())),
                (2, Some("b".into())),
                (3, Some("c".into()))
            ]
        );
        let sum =
            Spi::get_one::<i64>("SELECT gman_sum('echo', i::text) FROM generate_series(1, 10) i")
                .unwrap();
        assert_eq!(sum, Some(55));
        let sum =
            Spi::get_one::<i64>("SELECT gman_sum('echo', x) FROM (VALUES (' 5 '), ('-2')) v(x)")
                .unwrap();
        assert_eq!(sum, Some(3));
    }

    #[pg_test]
    fn gman_job_status_and_server_status() {
        let g = Gearmand::start();
        use_server(&g);
        Spi::run("SET gearman.dispatch = 'immediate'").unwrap();
        let h = one("SELECT gman_do_background('queued_fn', 'x', 'q-1')").unwrap();
        let known =
            Spi::get_one::<bool>(&format!("SELECT known FROM gman_job_status('{h}')")).unwrap();
        assert_eq!(known, Some(true));
        let known = Spi::get_one::<bool>("SELECT known FROM gman_job_status('q-1')").unwrap();
        assert_eq!(known, Some(true));
        let known = Spi::get_one::<bool>("SELECT known FROM gman_job_status('nope')").unwrap();
        assert_eq!(known, Some(false));
        let q = Spi::get_one::<i64>(
            "SELECT queued FROM gman_server_status() WHERE function = 'queued_fn'",
        )
        .unwrap();
        assert_eq!(q, Some(1));
        let server = one("SELECT server FROM gman_server_status() WHERE function = 'queued_fn'");
        assert_eq!(server, Some(g.addr()));
    }

    /// Issue 11: calls alternating between functions with different server
    /// lists reuse one connection per server (the backend keeps one client
    /// with a routing table; it used to swap the whole list per call and
    /// reopen connections).
    #[pg_test]
    fn alternating_lists_do_not_reopen_connections() {
        let g1 = Gearmand::start();
        let g2 = Gearmand::start();
        let _w1 = Recorder::start(&g1.addr(), &["on_one"]);
        let _w2 = Recorder::start(&g2.addr(), &["on_two"]);
        use_server(&g1);
        let set = format!("SELECT gman_servers_set('{}', 'on_two')", g2.addr());
        assert_eq!(Spi::get_one::<bool>(&set).unwrap(), Some(true));
        assert_eq!(one("SELECT gman_do('on_one', 'a')").as_deref(), Some("a"));
        assert_eq!(one("SELECT gman_do('on_two', 'b')").as_deref(), Some("b"));
        let before = crate::backend::client_stats().unwrap().connects;
        for i in 0..10 {
            let a = one(&format!("SELECT gman_do('on_one', '{i}')"));
            let b = one(&format!("SELECT gman_do('on_two', '{i}')"));
            assert_eq!((a, b), (Some(i.to_string()), Some(i.to_string())));
        }
        assert_eq!(crate::backend::client_stats().unwrap().connects, before);
        let me = format!("postgres-{}", std::process::id());
        for g in [&g1, &g2] {
            let addr = gearman_core::ServerAddr::parse(&g.addr()).unwrap();
            let mut a = gearman_core::admin::Admin::connect(&addr, Duration::from_secs(5)).unwrap();
            let mine = a
                .workers()
                .unwrap()
                .iter()
                .filter(|w| w.client_id == me)
                .count();
            assert_eq!(mine, 1, "one connection from this backend to {}", g.addr());
        }
    }

    #[pg_test]
    fn gman_servers_set_session_and_function() {
        let g1 = Gearmand::start();
        let g2 = Gearmand::start();
        let _w1 = Recorder::start_with(&g1.addr(), &["who"], |_| Ok(b"one".to_vec()));
        let _w2 = Recorder::start_with(&g2.addr(), &["who"], |_| Ok(b"two".to_vec()));
        let set = |sql: &str| Spi::get_one::<bool>(sql).unwrap();
        assert_eq!(
            set(&format!("SELECT gman_servers_set('{}')", g1.addr())),
            Some(true)
        );
        assert_eq!(one("SELECT gman_do('who', '')").as_deref(), Some("one"));
        assert_eq!(
            set(&format!("SELECT gman_servers_set('{}', 'who')", g2.addr())),
            Some(true)
        );
        assert_eq!(one("SELECT gman_do('who', '')").as_deref(), Some("two"));
        assert_eq!(set("SELECT gman_servers_set('', 'who')"), Some(true));
        assert_eq!(one("SELECT gman_do('who', '')").as_deref(), Some("one"));
    }

    #[pg_test]
    fn gearman_servers_set_to_the_default_value_wins_over_the_legacy_setting() {
        use crate::gucs::servers_text;
        // Nothing set: the built-in default.
        assert_eq!(servers_text(), "127.0.0.1:4730");
        // The legacy setting applies while gearman.servers is not set.
        Spi::run("SET pggearman.default_servers = '127.0.0.1:4999'").unwrap();
        assert_eq!(servers_text(), "127.0.0.1:4999");
        // Set explicitly, even to the default's value: gearman.servers wins.
        for explicit in ["127.0.0.1:4730", " 127.0.0.1:4730 ", "127.0.0.1:4731"] {
            Spi::run(&format!("SET gearman.servers = '{explicit}'")).unwrap();
            assert_eq!(servers_text(), explicit.trim(), "{explicit:?}");
        }
        // RESET goes back to the default source: the legacy setting again.
        Spi::run("RESET gearman.servers").unwrap();
        assert_eq!(servers_text(), "127.0.0.1:4999");
        Spi::run("SET LOCAL gearman.servers = '127.0.0.1:4730'").unwrap();
        assert_eq!(servers_text(), "127.0.0.1:4730");
        Spi::run("SET LOCAL gearman.servers TO DEFAULT").unwrap();
        assert_eq!(servers_text(), "127.0.0.1:4999");
        Spi::run("SELECT set_config('gearman.servers', '127.0.0.1:4730', true)").unwrap();
        assert_eq!(servers_text(), "127.0.0.1:4730");
    }

    #[pg_test]
    fn command_line_values_are_found_as_postgres_parses_them() {
        use crate::gucs::command_line_value;
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cl = args(&[
            "/usr/lib/postgresql/15/bin/postgres",
            "-D",
            "/x",
            "-c",
            "gearman.servers=a:1",
            "-cgearman.servers=b:2",
            "--port=5",
        ]);
        assert_eq!(
            command_line_value(&cl, "gearman.servers").as_deref(),
            Some("b:2")
        );
        let cl = args(&["postgres", "--gearman.servers=c:3", "-c", "other=1"]);
        assert_eq!(
            command_line_value(&cl, "gearman.servers").as_deref(),
            Some("c:3")
        );
        assert_eq!(command_line_value(&cl, "pggearman.default_servers"), None);
        assert_eq!(command_line_value(&args(&["postgres", "-c"]), "x"), None);
    }

    #[pg_test]
    fn gman_trigger_sends_row_json() {
        let g = Gearmand::start();
        let w = Recorder::start(&g.addr(), &["rows"]);
        use_server(&g);
        Spi::run("SET gearman.dispatch = 'immediate'").unwrap();
        Spi::run(
            "CREATE TABLE tt (id int, note text, tags text[]);
             CREATE TRIGGER tt_ev AFTER INSERT OR UPDATE ON tt FOR EACH ROW EXECUTE FUNCTION gman_trigger('rows', 'low')",
        )
        .unwrap();
        Spi::run("INSERT INTO tt VALUES (1, 'a\"b', ARRAY['x','y'])").unwrap();
        let expected = r#"{"schema":"public","table":"tt","op":"INSERT","new":{"id":1,"note":"a\"b","tags":["x","y"]},"old":null}"#;
        w.wait_for_workload(expected);
        Spi::run("UPDATE tt SET id = 2").unwrap();
        let expected = r#"{"schema":"public","table":"tt","op":"UPDATE","new":{"id":2,"note":"a\"b","tags":["x","y"]},"old":{"id":1,"note":"a\"b","tags":["x","y"]}}"#;
        w.wait_for_workload(expected);
    }

    #[pg_test(
        error = "gearman: unique key is 64 bytes; at most 63 are allowed (gearmand mishandles longer keys)"
    )]
    fn unique_over_63_bytes_is_rejected() {
        Spi::run("SELECT gman_do_background('f', 'x', repeat('k', 64))").unwrap();
    }

    #[pg_test]
    fn gearmand_stopped_error_and_warning() {
        let mut g = Gearmand::start();
        use_server(&g);
        g.kill();
        Spi::run("SET gearman.on_error = 'warning'").unwrap();
        assert_eq!(one("SELECT gman_do('f', 'x')"), None);
        Spi::run("SET gearman.dispatch = 'immediate'").unwrap();
        assert_eq!(one("SELECT gman_do_background('f', 'x')"), None);
        // With on_error = error the failure is an ERROR with a SQLSTATE.
        Spi::run("SET gearman.on_error = 'error'").unwrap();
        let caught = PgTryBuilder::new(|| {
            Spi::run("SELECT gman_do('f', 'x')").unwrap();
            None
        })
        .catch_others(|e| match e {
            pgrx::pg_sys::panic::CaughtError::ErrorReport(r)
            | pgrx::pg_sys::panic::CaughtError::PostgresError(r) => {
                Some((r.sql_error_code(), r.message().to_string()))
            }
            _ => None,
        })
        .execute();
        let (code, message) = caught.expect("an ERROR");
        assert_eq!(
            code,
            PgSqlErrorCode::ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION
        );
        assert!(message.starts_with("gearman:"), "{message}");
    }

    #[pg_test]
    fn gearman_timeout_bounds_a_foreground_wait() {
        let g = Gearmand::start();
        use_server(&g);
        Spi::run("SET gearman.timeout = '300ms'; SET gearman.on_error = 'warning'").unwrap();
        let started = Instant::now();
        assert_eq!(one("SELECT gman_do('nobody', 'x')"), None);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[pg_test]
    fn settings_have_units_and_defaults() {
        assert_eq!(one("SHOW gearman.dispatch").as_deref(), Some("commit"));
        assert_eq!(one("SHOW gearman.on_error").as_deref(), Some("error"));
        assert_eq!(one("SHOW gearman.timeout").as_deref(), Some("30s"));
        assert_eq!(one("SHOW gearman.connect_timeout").as_deref(), Some("2s"));
        Spi::run("SET gearman.timeout = '5s'").unwrap();
        assert_eq!(one("SHOW gearman.timeout").as_deref(), Some("5s"));
        Spi::run("SET gearman.timeout = 1500").unwrap();
        assert_eq!(one("SHOW gearman.timeout").as_deref(), Some("1500ms"));
    }

    #[pg_test]
    fn gman_dispatch_status_is_one_row_of_consistent_counters() {
        let rows = Spi::get_one::<i64>("SELECT count(*) FROM gman_dispatch_status()")
            .unwrap()
            .unwrap();
        assert_eq!(rows, 1);
        let consistent = Spi::get_one::<bool>(
            "SELECT sent = confirmed + failed + pending \
                    AND least(sent, confirmed, failed, pending) >= 0 \
             FROM gman_dispatch_status()",
        )
        .unwrap()
        .unwrap();
        assert!(consistent);
        let sent = Spi::get_one::<i64>("SELECT sent FROM gman_dispatch_status()")
            .unwrap()
            .unwrap();
        // Jobs held for a commit that never comes (the test rolls back) are
        // not counted.
        let before = sent;
        Spi::run("SELECT gman_do_background('held', 'x')").unwrap();
        let after = Spi::get_one::<i64>("SELECT sent FROM gman_dispatch_status()")
            .unwrap()
            .unwrap();
        assert_eq!(after, before);
    }
}
