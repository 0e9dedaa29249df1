//! Dead letters: jobs that failed on their last attempt, kept in a table
//! (PostgreSQL `gearman.dead_letter` from `sql/postgres/dead_letter.sql`,
//! MySQL/MariaDB `gearman_dead_letter` from `sql/mysql/dead_letter.sql`),
//! and `gearman-worker dead-letter list|replay|purge`.
//!
//! A function with `dead_letter = "postgres://..." | "mysql://..."` writes
//! one row per job whose last attempt (attempt `retries + 1`) failed, or
//! whose retry could not be scheduled: function, unique key, workload (bytes
//! as received), last error, attempts, first and last failure times. Each
//! write opens its own connection (dead letters are rare), bounded by a
//! 10 s connect and 30 s I/O ([`crate::db`]). A row that cannot be written is logged at
//! error level with the job's function, handle, unique key and workload
//! size (the job is then lost, as without a dead-letter table).
//!
//! `replay` resubmits each selected row as a background job (its function,
//! workload and unique key; attempt 1 again) and deletes the row only after
//! the job server answered JOB_CREATED; if the submission fails it stops,
//! says which row, and keeps it (exit 1). If the delete fails after the job
//! was created, the row stays and a later replay sends the job again.

use crate::db::{my_error, pg_error, Bounds, DatabaseUrl};
use gearman_core::{Client, Job, ServerList};
use std::time::Duration;

/// I/O bound of dead-letter connections.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One dead-letter row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// Function name.
    pub function: String,
    /// Unique key (`None`: none).
    pub unique_key: Option<Vec<u8>>,
    /// Workload.
    pub workload: Vec<u8>,
    /// Last failure message.
    pub last_error: String,
    /// Attempts made.
    pub attempts: i64,
    /// First failure, as the database prints it.
    pub first_failed_at: String,
    /// Last failure, as the database prints it.
    pub last_failed_at: String,
}

/// Which rows a command applies to (all when empty).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only rows of this function.
    pub function: Option<String>,
    /// Only these ids.
    pub ids: Vec<i64>,
}

/// What goes into a new row.
#[derive(Debug, Clone)]
pub struct NewDeadLetter<'a> {
    /// Function name.
    pub function: &'a str,
    /// Unique key (empty: none).
    pub unique_key: &'a [u8],
    /// Workload.
    pub workload: &'a [u8],
    /// Last failure message.
    pub last_error: &'a str,
    /// Attempts made.
    pub attempts: u32,
    /// Unix time of the first failure.
    pub first_failed_unix: i64,
}

enum Conn {
    Pg(Box<postgres::Client>),
    My(Box<mysql::Conn>),
}

/// A dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    url: DatabaseUrl,
}

impl Store {
    /// The table in the database at `url`.
    pub fn new(url: DatabaseUrl) -> Store {
        Store { url }
    }

    /// The database URL, password replaced.
    pub fn redacted(&self) -> String {
        self.url.redacted()
    }

    fn connect(&self) -> Result<Conn, String> {
        let bounds = Bounds {
            app: "gearman-worker dead-letter",
            io: IO_TIMEOUT,
        };
        let context = |e: String| format!("connecting to {}: {e}", self.redacted());
        match &self.url {
            DatabaseUrl::Postgres(_) => self
                .url
                .connect_pg(bounds)
                .map(|c| Conn::Pg(Box::new(c)))
                .map_err(context),
            DatabaseUrl::Mysql(_) => self
                .url
                .connect_my(bounds)
                .map(|c| Conn::My(Box::new(c)))
                .map_err(context),
        }
    }

    /// Writes one row.
    ///
    /// # Errors
    /// The database cannot be reached or refused the row (text names it).
    pub fn insert(&self, row: &NewDeadLetter<'_>) -> Result<(), String> {
        let unique: Option<&[u8]> = (!row.unique_key.is_empty()).then_some(row.unique_key);
        match self.connect()? {
            Conn::Pg(mut c) => c
                .execute(
                    "INSERT INTO gearman.dead_letter \
                     (function, unique_key, workload, last_error, attempts, first_failed_at) \
                     VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8))",
                    &[
                        &row.function,
                        &unique,
                        &row.workload,
                        &row.last_error,
                        &(row.attempts as i32),
                        &(row.first_failed_unix as f64),
                    ],
                )
                .map(|_| ())
                .map_err(|e| pg_error(&e)),
            Conn::My(mut c) => {
                use mysql::prelude::Queryable;
                c.exec_drop(
                    "INSERT INTO gearman_dead_letter \
                     (`function`, unique_key, workload, last_error, attempts, first_failed_at) \
                     VALUES (?, ?, ?, ?, ?, FROM_UNIXTIME(?))",
                    (
                        row.function.as_bytes(),
                        unique,
                        row.workload,
                        row.last_error,
                        row.attempts,
                        row.first_failed_unix,
                    ),
                )
                .map_err(|e| my_error(&e))
            }
        }
    }

    fn list_on(conn: &mut Conn, f: &Filter) -> Result<Vec<DeadLetter>, String> {
        match conn {
            Conn::Pg(c) => {
                let rows = c
                    .query(
                        "SELECT id, function, unique_key, workload, last_error, attempts::int8, \
                                first_failed_at::text, last_failed_at::text \
                         FROM gearman.dead_letter \
                         WHERE ($1::text IS NULL OR function = $1) \
                           AND (cardinality($2::int8[]) = 0 OR id = ANY($2)) \
                         ORDER BY id",
                        &[&f.function, &f.ids],
                    )
                    .map_err(|e| pg_error(&e))?;
                Ok(rows
                    .iter()
                    .map(|r| DeadLetter {
                        id: r.get(0),
                        function: r.get(1),
                        unique_key: r.get(2),
                        workload: r.get(3),
                        last_error: r.get(4),
                        attempts: r.get(5),
                        first_failed_at: r.get(6),
                        last_failed_at: r.get(7),
                    })
                    .collect())
            }
            Conn::My(c) => {
                use mysql::prelude::Queryable;
                let mut sql = String::from(
                    "SELECT CAST(id AS SIGNED), `function`, unique_key, workload, last_error, \
                            CAST(attempts AS SIGNED), CAST(first_failed_at AS CHAR), \
                            CAST(last_failed_at AS CHAR) \
                     FROM gearman_dead_letter WHERE (? IS NULL OR `function` = ?)",
                );
                if !f.ids.is_empty() {
                    // Integers only: safe in the SQL text.
                    let ids: Vec<String> = f.ids.iter().map(i64::to_string).collect();
                    sql.push_str(&format!(" AND id IN ({})", ids.join(",")));
                }
                sql.push_str(" ORDER BY id");
                type Row = (
                    i64,
                    Vec<u8>,
                    Option<Vec<u8>>,
                    Vec<u8>,
                    String,
                    i64,
                    String,
                    String,
                );
                let rows: Vec<Row> = c
                    .exec(&sql, (&f.function, &f.function))
                    .map_err(|e| my_error(&e))?;
                Ok(rows
                    .into_iter()
                    .map(|r| DeadLetter {
                        id: r.0,
                        function: String::from_utf8_lossy(&r.1).into_owned(),
                        unique_key: r.2,
                        workload: r.3,
                        last_error: r.4,
                        attempts: r.5,
                        first_failed_at: r.6,
                        last_failed_at: r.7,
                    })
                    .collect())
            }
        }
    }

    fn delete_on(conn: &mut Conn, id: i64) -> Result<u64, String> {
        match conn {
            Conn::Pg(c) => c
                .execute("DELETE FROM gearman.dead_letter WHERE id = $1", &[&id])
                .map_err(|e| pg_error(&e)),
            Conn::My(c) => {
                use mysql::prelude::Queryable;
                c.exec_drop("DELETE FROM gearman_dead_letter WHERE id = ?", (id,))
                    .map_err(|e| my_error(&e))?;
                Ok(c.affected_rows())
            }
        }
    }

    /// The rows `f` selects, by id.
    ///
    /// # Errors
    /// A database error.
    pub fn list(&self, f: &Filter) -> Result<Vec<DeadLetter>, String> {
        Store::list_on(&mut self.connect()?, f)
    }

    /// Deletes the rows `f` selects; returns how many.
    ///
    /// # Errors
    /// A database error.
    pub fn purge(&self, f: &Filter) -> Result<u64, String> {
        let mut conn = self.connect()?;
        let mut n = 0;
        for row in Store::list_on(&mut conn, f)? {
            n += Store::delete_on(&mut conn, row.id)?;
        }
        Ok(n)
    }

    /// Resubmits the rows `f` selects as background jobs to `servers`,
    /// deleting each only after JOB_CREATED; `report` gets one line per row.
    /// Returns how many were replayed.
    ///
    /// # Errors
    /// The first row whose submission failed (named; it and the rows after
    /// it are kept), or a database error.
    pub fn replay(
        &self,
        f: &Filter,
        servers: &ServerList,
        report: &mut dyn FnMut(String),
    ) -> Result<u64, String> {
        let mut conn = self.connect()?;
        let mut client = Client::new(servers.clone(), crate::tls::client_options());
        let mut n = 0;
        for row in Store::list_on(&mut conn, f)? {
            let mut job = Job::new(row.function.as_str(), row.workload.clone());
            if let Some(u) = &row.unique_key {
                job = job.with_unique(u.clone());
            }
            let handle = client.submit_background(&job).map_err(|e| {
                format!(
                    "replay of dead letter {} (function {}) failed: {e}; the row is kept",
                    row.id, row.function
                )
            })?;
            Store::delete_on(&mut conn, row.id).map_err(|e| {
                format!(
                    "dead letter {} was resubmitted as {handle:?} but could not be deleted \
                     (a later replay sends it again): {e}",
                    row.id
                )
            })?;
            report(format!(
                "replayed {} function={} as {handle:?}",
                row.id, row.function
            ));
            n += 1;
        }
        Ok(n)
    }
}

/// Where a function's jobs that failed for good go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A row of a dead-letter table (`dead_letter = URL`).
    Table(Store),
    /// A background job of a Gearman function (`dead_letter_function`),
    /// submitted to `servers`; its workload is [`function_payload`].
    Function {
        /// The receiving function.
        name: String,
        /// The job servers.
        servers: ServerList,
    },
}

impl Destination {
    /// Writes or submits one dead letter.
    ///
    /// # Errors
    /// The database or job server did not take it (named).
    pub fn write(&self, row: &NewDeadLetter<'_>) -> Result<(), String> {
        match self {
            Destination::Table(t) => t.insert(row),
            Destination::Function { name, servers } => {
                let job = Job::new(
                    name.as_str(),
                    function_payload(row, crate::logging::unix_now()),
                );
                Client::new(servers.clone(), crate::tls::client_options())
                    .submit_background(&job)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// For log lines: the redacted URL, or `function NAME`.
    pub fn describe(&self) -> String {
        match self {
            Destination::Table(t) => t.redacted(),
            Destination::Function { name, .. } => format!("function {name}"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The workload a `dead_letter_function` receives: one JSON object,
/// `{"function", "unique_key_hex", "workload_hex", "last_error", "attempts",
/// "first_failed_at", "last_failed_at"}`; bytes as lower-case hex (binary
/// safe; `unique_key_hex` is `null` when the job had no key), times as Unix
/// seconds.
pub fn function_payload(row: &NewDeadLetter<'_>, now_unix: i64) -> Vec<u8> {
    serde_json::json!({
        "function": row.function,
        "unique_key_hex": (!row.unique_key.is_empty()).then(|| hex(row.unique_key)),
        "workload_hex": hex(row.workload),
        "last_error": row.last_error,
        "attempts": row.attempts,
        "first_failed_at": row.first_failed_unix,
        "last_failed_at": now_unix,
    })
    .to_string()
    .into_bytes()
}

/// One `list` output line: id, function, attempts, first and last failure,
/// unique key, workload size, last error (tab-separated; the key lossily as
/// UTF-8, tabs and newlines in the error escaped).
pub fn format_row(r: &DeadLetter) -> String {
    let esc = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
    };
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}B\t{}",
        r.id,
        r.function,
        r.attempts,
        r.first_failed_at,
        r.last_failed_at,
        r.unique_key
            .as_deref()
            .map_or_else(|| "-".to_string(), |u| esc(&String::from_utf8_lossy(u))),
        r.workload.len(),
        esc(&r.last_error)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_payload_is_json_with_hex_bytes() {
        let row = NewDeadLetter {
            function: "f",
            unique_key: b"",
            workload: b"\0\xff",
            last_error: "boom \"x\"",
            attempts: 3,
            first_failed_unix: 10,
        };
        let v: serde_json::Value = serde_json::from_slice(&function_payload(&row, 20)).unwrap();
        assert_eq!(v["workload_hex"], "00ff");
        assert!(v["unique_key_hex"].is_null());
        assert_eq!(v["last_error"], "boom \"x\"");
        assert_eq!(
            (
                v["attempts"].as_i64(),
                v["first_failed_at"].as_i64(),
                v["last_failed_at"].as_i64()
            ),
            (Some(3), Some(10), Some(20))
        );
    }
}
