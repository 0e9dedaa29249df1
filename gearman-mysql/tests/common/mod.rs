//! Shared set-up for the UDF integration tests: a private gearmand, a private
//! MariaDB with the freshly built library in its plugin dir and install.sql
//! applied, and workers from gearman-core running in this process.

#![allow(dead_code)]

use gearman_core::admin::Admin;
use gearman_core::worker::WorkError;
use gearman_core::worker::{JobContext, StopHandle, WorkResult, Worker, WorkerOptions};
use gearman_core::{ServerAddr, ServerList};
use gearman_testkit::{Gearmand, MariaDb, MariaDbOptions};
use mysql::prelude::Queryable;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The cdylib cargo built for this test run. `cargo test` compiles the
/// package's lib target (crate-type cdylib + rlib) in one rustc run into
/// `<target>/<profile>/deps/`, the directory of the test binary itself, but
/// only `cargo build` copies the `.so` up to `<target>/<profile>/`; so the
/// fresh library is the one next to the test binary.
pub fn udf_library() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe
        .parent()
        .expect("test binary in <target>/<profile>/deps");
    let lib = deps.join("libgearman_mysql_udf.so");
    assert!(
        lib.is_file(),
        "{} is missing: run the tests with `cargo test -p gearman-mysql`, which builds it",
        lib.display()
    );
    // Same rustc invocation as the rlib linked into this test: same age.
    let rlib = deps.join("libgearman_mysql_udf.rlib");
    let age = |p: &std::path::Path| p.metadata().and_then(|m| m.modified()).ok();
    if let (Some(so), Some(r)) = (age(&lib), age(&rlib)) {
        let gap = r
            .duration_since(so)
            .or_else(|e| Ok::<_, ()>(e.duration()))
            .unwrap_or_default();
        assert!(
            gap < Duration::from_secs(60),
            "{} and {} come from different builds",
            lib.display(),
            rlib.display()
        );
    }
    lib
}

/// Install script path.
pub fn sql_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("sql")
        .join("mysql")
        .join(name)
}

/// One test's world.
pub struct Env {
    pub gearmand: Gearmand,
    pub db: MariaDb,
    pub config: tempfile::TempDir,
}

impl Env {
    /// gearmand + MariaDB whose UDF config file points at that gearmand
    /// (plus `extra_config` lines), install.sql applied.
    pub fn start(extra_config: &str) -> Env {
        Env::start_with(extra_config, &[])
    }

    /// As [`Env::start`], with extra mariadbd arguments.
    pub fn start_with(extra_config: &str, db_args: &[&str]) -> Env {
        let gearmand = Gearmand::start();
        let config = write_config(&format!(
            "servers = \"{}\"\n{extra_config}",
            gearmand.addr()
        ));
        let db = start_db(&config, db_args);
        Env {
            gearmand,
            db,
            config,
        }
    }

    /// A new client connection to the server.
    pub fn conn(&self) -> mysql::Conn {
        connect(&self.db)
    }

    pub fn servers(&self) -> ServerList {
        ServerList::parse(&self.gearmand.addr()).expect("addr")
    }

    pub fn admin(&self) -> Admin {
        let addr = ServerAddr::new("127.0.0.1", self.gearmand.port());
        Admin::connect(&addr, Duration::from_secs(5)).expect("admin connection")
    }

    /// Asserts mariadbd is running and answers `SELECT 1`.
    pub fn assert_alive(&mut self, after: &str) {
        assert!(
            self.db.is_alive(),
            "mariadbd died after {after}; error log:\n{}",
            self.db.error_log()
        );
        assert!(
            !self.db.error_log().contains("got signal"),
            "mariadbd crashed after {after}:\n{}",
            self.db.error_log()
        );
    }

    /// Lines of the error log written by the library.
    pub fn udf_log_lines(&self) -> Vec<String> {
        self.db
            .error_log()
            .lines()
            .filter(|l| l.contains("gearman-mysql-udf:"))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until gearmand reports at least `n` workers for `function`.
    pub fn wait_workers(&self, function: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(list) = self.admin().status() {
                if list
                    .iter()
                    .any(|f| f.function == function && f.workers >= n)
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{n} worker(s) for {function} did not register");
    }
}

/// Writes a UDF config file into a fresh temp dir readable by `mysql`.
pub fn write_config(text: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("gearman-udf-conf-")
        .tempdir()
        .expect("config dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.path().join("gearman-udf.toml");
    std::fs::write(&path, text).expect("write config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    dir
}

/// Starts MariaDB with the library and `GEARMAN_UDF_CONFIG` pointing into `config`.
pub fn start_db(config: &tempfile::TempDir, db_args: &[&str]) -> MariaDb {
    let db = MariaDb::start_with(MariaDbOptions {
        args: db_args.iter().map(|s| s.to_string()).collect(),
        env: vec![(
            "GEARMAN_UDF_CONFIG".into(),
            config.path().join("gearman-udf.toml").display().to_string(),
        )],
        plugins: vec![udf_library()],
    });
    let install = std::fs::read_to_string(sql_file("install.sql")).expect("install.sql");
    db.sql(&install)
        .unwrap_or_else(|e| panic!("install.sql failed: {e}\n{}", db.error_log()));
    db
}

pub fn connect(db: &MariaDb) -> mysql::Conn {
    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&db.url()).expect("url"))
        .read_timeout(Some(Duration::from_secs(120)))
        .write_timeout(Some(Duration::from_secs(120)));
    mysql::Conn::new(opts).expect("connecting to the private MariaDB")
}

/// A query's single value as bytes (`None` for NULL).
pub fn one(conn: &mut mysql::Conn, sql: &str) -> Option<Vec<u8>> {
    let row: Option<mysql::Row> = conn
        .query_first(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let row = row.expect("one row");
    let v: mysql::Value = row.get(0).expect("column 0");
    match v {
        mysql::Value::NULL => None,
        mysql::Value::Bytes(b) => Some(b),
        other => Some(other.as_sql(true).into_bytes()),
    }
}

/// A query's single value as text.
pub fn one_str(conn: &mut mysql::Conn, sql: &str) -> Option<String> {
    one(conn, sql).map(|b| String::from_utf8(b).expect("utf-8"))
}

/// `gman_last_error()` of this connection.
pub fn last_error(conn: &mut mysql::Conn) -> Option<String> {
    one_str(conn, "SELECT gman_last_error()")
}

pub type Handler = Arc<dyn Fn(&mut JobContext<'_>) -> WorkResult + Send + Sync>;

/// A gearman-core worker in a thread of this process; stopped on drop.
pub struct TestWorker {
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl TestWorker {
    /// Serves `functions` on `servers`.
    pub fn start(servers: &ServerList, functions: Vec<(&str, Handler)>) -> TestWorker {
        let mut w = Worker::new(
            servers.clone(),
            WorkerOptions {
                idle_regrab: Duration::from_millis(500),
                ..WorkerOptions::default()
            },
        );
        for (name, h) in functions {
            let h = h.clone();
            w.register(name, move |ctx| h(ctx));
        }
        let stop = w.stop_handle();
        let thread = std::thread::spawn(move || {
            let _ = w.run();
        });
        TestWorker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Wraps a closure as a handler.
pub fn handler(f: impl Fn(&mut JobContext<'_>) -> WorkResult + Send + Sync + 'static) -> Handler {
    Arc::new(f)
}

/// A handler that records every workload it sees and returns it unchanged.
pub fn recorder(log: &Arc<Mutex<Vec<Vec<u8>>>>) -> Handler {
    let log = log.clone();
    handler(move |ctx| {
        let w = ctx.workload().to_vec();
        log.lock().unwrap().push(w.clone());
        Ok(w)
    })
}

/// Waits until `pred` holds (bounded).
pub fn wait_until(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if pred() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A handler that answers only once `n` jobs are being worked on at the same
/// time (or fails after 20 s): all of them must have been submitted before
/// any result was awaited.
pub fn rendezvous(n: usize) -> Handler {
    let state = Arc::new((Mutex::new(0usize), Condvar::new()));
    handler(move |ctx| {
        let (count, cv) = &*state;
        let mut arrived = count.lock().unwrap();
        *arrived += 1;
        cv.notify_all();
        let deadline = Instant::now() + Duration::from_secs(20);
        while *arrived < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WorkError::Fail);
            }
            arrived = cv.wait_timeout(arrived, left).unwrap().0;
        }
        let mut w = ctx.workload().to_vec();
        w.reverse();
        Ok(w)
    })
}
