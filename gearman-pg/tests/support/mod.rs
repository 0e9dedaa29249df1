//! Shared fixtures for the SQL-level tests of the installed extension: a
//! private gearmand, a private PostgreSQL 15 with `CREATE EXTENSION
//! gearman`, client connections that record notices, and a Gearman worker
//! (from `gearman_core::worker`) on a thread that records every job.
//!
//! The extension must have been installed into the system PostgreSQL 15
//! first (the private server uses the same share and lib directories):
//!
//! ```text
//! cargo pgrx install -p gearman-pg --pg-config /usr/lib/postgresql/15/bin/pg_config
//! ```
#![allow(dead_code)]

use gearman_core::worker::{JobContext, StopHandle, WorkResult, Worker, WorkerOptions};
use gearman_core::ServerList;
use gearman_testkit::{Gearmand, Postgres};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const INSTALL_HINT: &str = "run `cargo pgrx install -p gearman-pg --pg-config \
     /usr/lib/postgresql/15/bin/pg_config` (as root) before these tests, so that the \
     private PostgreSQL 15 finds gearman.control and gearman.so";

/// gearmand + PostgreSQL with the extension created in database `postgres`.
pub struct Env {
    pub gearmand: Gearmand,
    pub pg: Postgres,
}

impl Env {
    /// Starts both servers; `gearman.servers` points at the private gearmand
    /// through the server's own configuration (`-c gearman.servers=...`).
    pub fn start() -> Env {
        Env::start_with(&[])
    }

    /// As [`Env::start`], with extra `name=value` PostgreSQL settings.
    pub fn start_with(settings: &[&str]) -> Env {
        let gearmand = Gearmand::start();
        let servers = format!("gearman.servers={}", gearmand.addr());
        let mut all: Vec<&str> = vec![servers.as_str()];
        all.extend_from_slice(settings);
        let pg = Postgres::start_with(&all);
        let env = Env { gearmand, pg };
        env.create_extension();
        env
    }

    /// Starts PostgreSQL with exactly `settings` (no gearman.servers).
    pub fn start_raw(settings: &[&str]) -> Env {
        let gearmand = Gearmand::start();
        let pg = Postgres::start_with(settings);
        let env = Env { gearmand, pg };
        env.create_extension();
        env
    }

    fn create_extension(&self) {
        if let Err(e) = self.pg.try_psql("CREATE EXTENSION gearman") {
            panic!("CREATE EXTENSION gearman failed: {e}\nHint: {INSTALL_HINT}");
        }
    }

    /// A new session as superuser `postgres`.
    pub fn connect(&self) -> Session {
        Session::connect(&self.pg.url())
    }

    /// The gearmand address `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.gearmand.addr()
    }

    /// A recording worker for `functions` on this gearmand.
    pub fn worker(&self, functions: &[&str]) -> TestWorker {
        TestWorker::start(&self.addr(), functions, handlers::echo)
    }
}

/// A notice (WARNING, NOTICE, ...) as received, with its hint.
#[derive(Debug, Clone)]
pub struct Notice {
    pub severity: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// A client session that keeps the notices (WARNINGs) it receives.
pub struct Session {
    pub client: postgres::Client,
    notices: Arc<Mutex<Vec<Notice>>>,
}

impl Session {
    pub fn connect(url: &str) -> Session {
        Session::try_connect_with(url, None, None)
            .unwrap_or_else(|e| panic!("connecting to {url}: {}", describe(&e)))
    }

    /// Connects as `user` (if given) with startup `options` (as
    /// `PGOPTIONS`, e.g. `-c gearman.servers=...`).
    pub fn try_connect_with(
        url: &str,
        user: Option<&str>,
        options: Option<&str>,
    ) -> Result<Session, postgres::Error> {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let sink = notices.clone();
        let mut config: postgres::Config = url.parse().expect("valid URL");
        if let Some(u) = user {
            config.user(u);
        }
        if let Some(o) = options {
            config.options(o);
        }
        config.notice_callback(move |n| {
            sink.lock().unwrap().push(Notice {
                severity: n.severity().to_string(),
                message: n.message().to_string(),
                detail: n.detail().map(str::to_string),
                hint: n.hint().map(str::to_string),
            })
        });
        let client = config.connect(postgres::NoTls)?;
        Ok(Session { client, notices })
    }

    /// Runs statements (simple query protocol); panics with the error.
    pub fn exec(&mut self, sql: &str) {
        if let Err(e) = self.client.batch_execute(sql) {
            panic!("`{sql}` failed: {}", describe(&e));
        }
    }

    /// Runs statements and returns the error text (panics on success).
    pub fn exec_err(&mut self, sql: &str) -> DbErr {
        match self.client.batch_execute(sql) {
            Ok(()) => panic!("`{sql}` succeeded, but an error was expected"),
            Err(e) => DbErr::from(&e),
        }
    }

    /// One text value (NULL as `None`) from a one-row, one-column query.
    pub fn one(&mut self, sql: &str) -> Option<String> {
        let rows = self
            .client
            .simple_query(sql)
            .unwrap_or_else(|e| panic!("`{sql}` failed: {}", describe(&e)));
        for m in rows {
            if let postgres::SimpleQueryMessage::Row(r) = m {
                return r.get(0).map(|s| s.to_string());
            }
        }
        panic!("`{sql}` returned no row");
    }

    /// All rows as text columns.
    pub fn rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        let msgs = self
            .client
            .simple_query(sql)
            .unwrap_or_else(|e| panic!("`{sql}` failed: {}", describe(&e)));
        let mut out = Vec::new();
        for m in msgs {
            if let postgres::SimpleQueryMessage::Row(r) = m {
                out.push(
                    (0..r.len())
                        .map(|i| r.get(i).map(|s| s.to_string()))
                        .collect(),
                );
            }
        }
        out
    }

    /// The notices received so far as `SEVERITY: message` (and forgets
    /// them).
    pub fn take_notices(&self) -> Vec<String> {
        self.take_full_notices()
            .into_iter()
            .map(|n| format!("{}: {}", n.severity, n.message))
            .collect()
    }

    /// The notices received so far, with detail and hint (and forgets them).
    pub fn take_full_notices(&self) -> Vec<Notice> {
        std::mem::take(&mut *self.notices.lock().unwrap())
    }
}

/// The parts of a server error a test looks at.
#[derive(Debug, Clone)]
pub struct DbErr {
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl From<&postgres::Error> for DbErr {
    fn from(e: &postgres::Error) -> DbErr {
        match e.as_db_error() {
            Some(db) => DbErr {
                code: db.code().code().to_string(),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
            },
            None => DbErr {
                code: String::new(),
                message: e.to_string(),
                detail: None,
                hint: None,
            },
        }
    }
}

pub fn describe(e: &postgres::Error) -> String {
    let d = DbErr::from(e);
    format!(
        "{} {} (detail: {:?}, hint: {:?})",
        d.code, d.message, d.detail, d.hint
    )
}

/// Handlers for the recording worker.
pub mod handlers {
    use super::*;

    /// Returns the workload unchanged.
    pub fn echo(job: &mut JobContext<'_>) -> WorkResult {
        Ok(job.workload().to_vec())
    }
}

/// Workers gearmand at `addr` lists for each of `functions` (0 when the
/// server cannot be asked).
fn worker_counts(addr: &str, functions: &[&str]) -> Vec<u64> {
    let server = ServerList::parse(addr)
        .unwrap()
        .iter()
        .next()
        .unwrap()
        .clone();
    let status = gearman_core::admin::Admin::connect(&server, Duration::from_secs(2))
        .and_then(|mut a| a.status())
        .unwrap_or_default();
    functions
        .iter()
        .map(|f| {
            status
                .iter()
                .find(|s| s.function == *f)
                .map_or(0, |s| s.workers)
        })
        .collect()
}

/// One job as the worker saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub function: String,
    pub workload: Vec<u8>,
    pub unique: Vec<u8>,
}

type Handler = dyn Fn(&mut JobContext<'_>) -> WorkResult + Send + Sync;

/// A worker on its own thread that records each job, then answers with
/// its handler. Stopped on drop.
pub struct TestWorker {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl TestWorker {
    pub fn start(
        addr: &str,
        functions: &[&str],
        handler: impl Fn(&mut JobContext<'_>) -> WorkResult + Send + Sync + 'static,
    ) -> TestWorker {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let mut w = Worker::new(
            ServerList::parse(addr).expect("server list"),
            WorkerOptions::default(),
        );
        for f in functions {
            let seen = seen.clone();
            let handler = handler.clone();
            w.register(f, move |job: &mut JobContext<'_>| {
                seen.lock().unwrap().push(Seen {
                    function: job.function().to_string(),
                    workload: job.workload().to_vec(),
                    unique: job.unique().to_vec(),
                });
                handler(job)
            });
        }
        let before = worker_counts(addr, functions);
        let stop = w.stop_handle();
        let thread = std::thread::spawn(move || {
            w.run().expect("worker run");
        });
        let tw = TestWorker {
            seen,
            stop,
            thread: Some(thread),
        };
        tw.wait_registered(addr, functions, &before);
        tw
    }

    /// Waits until gearmand lists one more worker for every function than
    /// `before` (this one, not only one started earlier).
    fn wait_registered(&self, addr: &str, functions: &[&str], before: &[u64]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = worker_counts(addr, functions);
            if now.iter().zip(before).all(|(n, b)| n > b) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker for {functions:?} did not register with {addr}: {before:?} -> {now:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Jobs seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Workloads seen so far, as text.
    pub fn workloads(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .map(|s| String::from_utf8_lossy(&s.workload).into_owned())
            .collect()
    }

    /// Waits until at least `n` jobs were seen (at most `timeout`).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.seen();
            if s.len() >= n || Instant::now() >= deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until a job with workload `w` was seen; panics after 10 s.
    pub fn wait_for_workload(&self, w: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.workloads().iter().any(|x| x == w) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "workload {w:?} never reached the worker; seen: {:?}",
            self.workloads()
        );
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.stop.stop();
        // The worker returns after its current wait slice; do not block the
        // test on it for long.
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(3);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}
