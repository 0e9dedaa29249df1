//! `sql` functions: run a statement per job in PostgreSQL or MySQL/MariaDB.
//!
//! The workload is bound as the statement's one parameter (`$1` in
//! PostgreSQL, typed `text` or `bytea` per the function's `param`; `?` in
//! MySQL, sent as a byte string), never spliced into the SQL text. The result
//! is the first column of the first row (NULL or no rows: empty result), or
//! every row as a JSON object per line (`rows = "json_lines"`).
//!
//! Value text follows what the database itself would display
//! ([`super::values`]): `t`/`f` for PostgreSQL booleans, decimal integers,
//! `YYYY-MM-DD HH:MM:SS[.ffffff]` timestamps (UTC with `+00` for
//! `timestamptz`), `bytea` as its raw bytes (in JSON lines: `"\\x"` + hex).
//! PostgreSQL types without a conversion fail the job with a message asking
//! for a `::text` cast.
//!
//! Connections come from [`crate::db::pool`]: one pool per (database URL,
//! statement timeout), with the statement timeout set per session. A pooled
//! connection found broken is replaced and the statement retried once on a
//! fresh one.

use super::values::{my_to_bytes, my_to_json, PgValue};
use super::{Handler, JobError};
use crate::config::{ParamType, RowsMode, SqlSpec};
use crate::db::pool::{Conn, Pool, Pools};
use crate::db::{my_error, pg_error};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use std::collections::HashMap;
use std::sync::Arc;

/// Runs one statement per job.
#[derive(Debug)]
pub struct SqlHandler {
    spec: SqlSpec,
    pool: Arc<Pool>,
}

/// A statement error plus whether the connection is now unusable.
struct RunError {
    message: String,
    /// The connection broke: a pooled one is replaced and the job retried
    /// once.
    broken: bool,
    /// The connection is closed, the job not retried (a result past
    /// max_result_bytes left unread on it).
    discard: bool,
}

/// A failure inside the row loop: a driver error (classified once the rows
/// are dropped, with the client's state) or a finished [`RunError`].
enum PgFail {
    Pg(postgres::Error),
    Run(RunError),
}

impl From<postgres::Error> for PgFail {
    fn from(e: postgres::Error) -> PgFail {
        PgFail::Pg(e)
    }
}

/// The failure message for a result past `max_result_bytes`.
fn result_too_large(limit: usize) -> String {
    format!(
        "result is larger than {limit} bytes (the function's max_result_bytes); the rest \
         was discarded"
    )
}

impl SqlHandler {
    /// The handler for `spec`, using the shared pool of its database.
    pub fn new(spec: SqlSpec, pools: &Pools) -> SqlHandler {
        let pool = pools.get(&spec.database, spec.timeout);
        SqlHandler { spec, pool }
    }

    fn run_on(&self, conn: &mut Conn, workload: &[u8]) -> Result<Vec<u8>, RunError> {
        match conn {
            Conn::Pg(client, stmts) => self.run_pg(client, stmts, workload),
            Conn::My(c) => self.run_my(c, workload),
        }
    }

    fn run_pg(
        &self,
        client: &mut postgres::Client,
        stmts: &mut HashMap<(String, bool), postgres::Statement>,
        workload: &[u8],
    ) -> Result<Vec<u8>, RunError> {
        let fail = |e: postgres::Error, client: &postgres::Client| RunError {
            message: pg_error(&e),
            broken: client.is_closed() || e.is_closed(),
            discard: false,
        };
        let bytea = self.spec.param == ParamType::Bytea;
        let key = (self.spec.statement.clone(), bytea);
        let stmt = match stmts.get(&key) {
            Some(s) => s.clone(),
            None => {
                let ty = if bytea { Type::BYTEA } else { Type::TEXT };
                let s = client
                    .prepare_typed(&self.spec.statement, &[ty])
                    .map_err(|e| fail(e, client))?;
                stmts.insert(key, s.clone());
                s
            }
        };
        let text;
        let param: &(dyn ToSql + Sync) = if bytea {
            &workload
        } else {
            text = std::str::from_utf8(workload).map_err(|_| RunError {
                message: "workload is not valid UTF-8 (set param = \"bytea\" for binary workloads)"
                    .into(),
                broken: false,
                discard: false,
            })?;
            &text
        };
        // `$2`, when the statement has it, is the attempt (crate::retry).
        let attempt = crate::retry::current_attempt();
        let attempt_param: Box<dyn ToSql + Sync> = match stmt.params().get(1) {
            None => Box::new(None::<i32>),
            Some(t) if *t == Type::INT2 => Box::new(attempt as i16),
            Some(t) if *t == Type::INT4 => Box::new(attempt as i32),
            Some(t) if *t == Type::INT8 => Box::new(i64::from(attempt)),
            Some(t) if *t == Type::TEXT || *t == Type::VARCHAR => Box::new(attempt.to_string()),
            Some(t) => {
                return Err(RunError {
                    message: format!(
                        "$2 is the attempt number: it must be an integer or text, not {t} \
                         (write $2::int)"
                    ),
                    broken: false,
                    discard: false,
                })
            }
        };
        let both = [param, attempt_param.as_ref()];
        let params: &[&(dyn ToSql + Sync)] = match stmt.params().len() {
            0 => &[],
            1 => std::slice::from_ref(&param),
            _ => &both,
        };
        let limit = self.spec.max_result_bytes as usize;
        let rows_mode = self.spec.rows;
        // Rows are read one at a time as they arrive (never the whole
        // result at once), so max_result_bytes bounds memory.
        let res = (|| -> Result<Vec<u8>, PgFail> {
            let mut rows = client.query_raw(&stmt, params.iter().copied())?;
            let conv = |e: String| {
                PgFail::Run(RunError {
                    message: e,
                    broken: false,
                    discard: false,
                })
            };
            // Past the limit: the rest of the result is not read; the
            // connection, with its unread rows, is closed rather than reused.
            let too_large = || {
                PgFail::Run(RunError {
                    message: result_too_large(limit),
                    broken: false,
                    discard: true,
                })
            };
            match rows_mode {
                RowsMode::First => {
                    // (A row stream is never polled again after its end:
                    // tokio-postgres then reports "connection closed".)
                    let Some(row) = rows.next()? else {
                        return Ok(Vec::new());
                    };
                    let mut out = Vec::new();
                    if !row.is_empty() {
                        out = PgValue::from_row(&row, 0).map_err(conv)?.into_bytes();
                    }
                    if out.len() > limit {
                        return Err(too_large());
                    }
                    // The statement runs to its end; later rows are read and
                    // dropped one by one.
                    while rows.next()?.is_some() {}
                    Ok(out)
                }
                RowsMode::JsonLines => {
                    let mut out = Vec::new();
                    while let Some(row) = rows.next()? {
                        let mut obj = serde_json::Map::new();
                        for (i, col) in row.columns().iter().enumerate() {
                            let v = PgValue::from_row(&row, i).map_err(conv)?;
                            obj.insert(col.name().to_string(), v.into_json());
                        }
                        serde_json::to_writer(&mut out, &obj).map_err(|e| conv(e.to_string()))?;
                        out.push(b'\n');
                        if out.len() > limit {
                            return Err(too_large());
                        }
                    }
                    Ok(out)
                }
            }
        })();
        match res {
            Ok(v) => Ok(v),
            Err(PgFail::Run(e)) => Err(e),
            Err(PgFail::Pg(e)) => Err(fail(e, client)),
        }
    }

    fn run_my(&self, conn: &mut mysql::Conn, workload: &[u8]) -> Result<Vec<u8>, RunError> {
        use mysql::prelude::Queryable;
        let fail = |e: mysql::Error| RunError {
            broken: !matches!(e, mysql::Error::MySqlError(_)),
            discard: false,
            message: my_error(&e),
        };
        let limit = self.spec.max_result_bytes as usize;
        let stmt = conn.prep(&self.spec.statement).map_err(fail)?;
        let mut values = vec![mysql::Value::Bytes(workload.to_vec())];
        // The second `?`, when the statement has it, is the attempt (crate::retry).
        values.push(mysql::Value::UInt(u64::from(
            crate::retry::current_attempt(),
        )));
        values.truncate(usize::from(stmt.num_params()));
        let params = if values.is_empty() {
            mysql::Params::Empty
        } else {
            mysql::Params::Positional(values)
        };
        let mut result = conn.exec_iter(&stmt, params).map_err(fail)?;
        let mut out = Vec::new();
        let mut first_done = false;
        let columns = result.columns();
        let columns = columns.as_ref().to_vec();
        for row in result.by_ref() {
            let row = row.map_err(fail)?;
            match self.spec.rows {
                RowsMode::First => {
                    if !first_done && !columns.is_empty() {
                        out =
                            my_to_bytes(row.as_ref(0).unwrap_or(&mysql::Value::NULL), &columns[0]);
                    }
                    first_done = true;
                }
                RowsMode::JsonLines => {
                    let mut obj = serde_json::Map::new();
                    for (i, col) in columns.iter().enumerate() {
                        let v = row.as_ref(i).unwrap_or(&mysql::Value::NULL);
                        obj.insert(col.name_str().into_owned(), my_to_json(v, col));
                    }
                    serde_json::to_writer(&mut out, &obj).map_err(|e| RunError {
                        message: e.to_string(),
                        broken: false,
                        discard: false,
                    })?;
                    out.push(b'\n');
                }
            }
            if out.len() > limit {
                // Dropping the result reads the rest of it off the wire
                // row by row, keeping none; the connection is closed after.
                return Err(RunError {
                    message: result_too_large(limit),
                    broken: false,
                    discard: true,
                });
            }
        }
        Ok(out)
    }
}

impl Handler for SqlHandler {
    fn call(&self, workload: &[u8]) -> Result<Vec<u8>, JobError> {
        for attempt in 0..2 {
            let (mut conn, pooled) = match self.pool.take() {
                Some(c) => (c, true),
                None => (self.pool.connect().map_err(JobError::exception)?, false),
            };
            match self.run_on(&mut conn, workload) {
                Ok(v) => {
                    self.pool.give_back(conn);
                    return Ok(v);
                }
                Err(e) if e.discard => {
                    drop(conn);
                    return Err(JobError::exception(e.message));
                }
                Err(e) if e.broken => {
                    drop(conn);
                    if pooled && attempt == 0 {
                        log::debug!(
                            "pooled connection to {} was broken ({}); retrying on a new one",
                            self.spec.database.redacted(),
                            e.message
                        );
                        continue;
                    }
                    return Err(JobError::exception(e.message));
                }
                Err(e) => {
                    self.pool.give_back(conn);
                    return Err(JobError::exception(e.message));
                }
            }
        }
        Err(JobError::exception("database connection lost twice"))
    }
}
