//! Connection pools of the `sql` handler: one per (database URL, statement
//! timeout), shared by every function and worker thread using it and kept
//! across reloads. A pool holds at most as many connections as jobs ran on
//! it at once: a job takes an idle connection or opens one on its own thread
//! (failing at once with the driver's error when the database refuses it),
//! and gives it back when the statement ran, unless it broke.
//!
//! Why not r2d2 (the maintained synchronous pool; deadpool is async-only):
//! r2d2 opens connections on its own threads and retries a failed connect
//! until its checkout timeout, so a job against a database that refuses
//! connections would wait that timeout instead of failing with the driver's
//! error; it also needs a fixed maximum size, which a pool shared by
//! functions whose concurrency changes on reload does not have.
//!
//! Session settings: PostgreSQL `statement_timeout`, MariaDB
//! `max_statement_time` (MySQL: `max_execution_time`); MySQL connections
//! also get read and write timeouts 5 s longer than the statement timeout.

use super::{Bounds, DatabaseUrl};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type PoolKey = (DatabaseUrl, Duration);

/// Connection pools by (database URL, statement timeout).
#[derive(Debug, Default)]
pub struct Pools {
    map: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl Pools {
    /// The pool for `url` with statement timeout `timeout` (created empty on first use).
    pub fn get(&self, url: &DatabaseUrl, timeout: Duration) -> Arc<Pool> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((url.clone(), timeout))
            .or_insert_with(|| {
                Arc::new(Pool {
                    url: url.clone(),
                    timeout,
                    idle: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }
}

/// Idle connections to one database.
#[derive(Debug)]
pub struct Pool {
    url: DatabaseUrl,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

/// One database connection.
pub enum Conn {
    /// PostgreSQL, with its prepared statements by (SQL, parameter type).
    Pg(
        Box<postgres::Client>,
        HashMap<(String, bool), postgres::Statement>,
    ),
    /// MySQL / MariaDB.
    My(Box<mysql::Conn>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Pg(..) => f.write_str("Conn::Pg"),
            Conn::My(..) => f.write_str("Conn::My"),
        }
    }
}

impl Pool {
    /// The database this pool connects to.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// An idle connection, if any.
    pub fn take(&self) -> Option<Conn> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Returns a connection that is still usable.
    pub fn give_back(&self, c: Conn) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }

    /// Number of idle connections.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Opens a new connection with the session's statement timeout set.
    ///
    /// # Errors
    /// `connecting to URL: ERROR` (password redacted).
    pub fn connect(&self) -> Result<Conn, String> {
        let context = |e: String| format!("connecting to {}: {e}", self.url.redacted());
        match &self.url {
            DatabaseUrl::Postgres(_) => {
                let bounds = Bounds {
                    app: "gearman-worker",
                    io: self.timeout,
                };
                let mut cfg = self.url.pg_config(bounds)?;
                let opts = format!(
                    "{} -c statement_timeout={}",
                    cfg.get_options().unwrap_or(""),
                    self.timeout.as_millis()
                );
                cfg.options(opts.trim());
                let client = cfg
                    .connect(postgres::NoTls)
                    .map_err(|e| context(super::pg_error(&e)))?;
                Ok(Conn::Pg(Box::new(client), HashMap::new()))
            }
            DatabaseUrl::Mysql(_) => {
                let bounds = Bounds {
                    app: "gearman-worker",
                    io: self.timeout + Duration::from_secs(5),
                };
                let mut conn = self.url.connect_my(bounds).map_err(context)?;
                use mysql::prelude::Queryable;
                let secs = self.timeout.as_secs_f64();
                let ms = self.timeout.as_millis();
                // MariaDB first, then MySQL's SELECT-only equivalent; a server
                // with neither keeps only the read timeout above.
                if conn
                    .query_drop(format!("SET SESSION max_statement_time = {secs}"))
                    .is_err()
                {
                    let _ = conn.query_drop(format!("SET SESSION max_execution_time = {ms}"));
                }
                Ok(Conn::My(Box::new(conn)))
            }
        }
    }
}
