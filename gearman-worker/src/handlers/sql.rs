//! `sql` functions: run a statement per job in PostgreSQL or MySQL/MariaDB.
//!
//! The workload is bound as the statement's one parameter (`$1` in
//! PostgreSQL, typed `text` or `bytea` per the function's `param`; `?` in
//! MySQL, sent as a byte string), never spliced into the SQL text. The result
//! is the first column of the first row (NULL or no rows: empty result), or
//! every row as a JSON object per line (`rows = "json_lines"`).
//!
//! Value text follows what the database itself would display: `t`/`f` for
//! PostgreSQL booleans, decimal integers, `YYYY-MM-DD HH:MM:SS[.ffffff]`
//! timestamps (UTC with `+00` for `timestamptz`), `bytea` as its raw bytes
//! (in JSON lines: `"\\x"` + hex). PostgreSQL types without a conversion here
//! fail the job with a message asking for a `::text` cast.
//!
//! Connections come from [`crate::db::pool`]: one pool per (database URL,
//! statement timeout), with the statement timeout set per session. A pooled
//! connection found broken is replaced and the statement retried once on a
//! fresh one.

use super::{Handler, JobError};
use crate::config::{ParamType, RowsMode, SqlSpec};
use crate::db::pool::{Conn, Pool, Pools};
use crate::db::{my_error, pg_error};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{FromSql, ToSql, Type};
use std::collections::HashMap;
use std::fmt::Write as _;
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
                        let cell: PgCell = row.try_get(0).map_err(|e| conv(e.to_string()))?;
                        out = cell.to_bytes().map_err(conv)?;
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
                            let cell: PgCell = row.try_get(i).map_err(|e| conv(e.to_string()))?;
                            obj.insert(col.name().to_string(), cell.to_json().map_err(conv)?);
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

/// A PostgreSQL value as received (binary format) with its type.
#[derive(Debug, Clone)]
pub struct PgCell {
    ty: Type,
    raw: Option<Vec<u8>>,
}

impl<'a> FromSql<'a> for PgCell {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<PgCell, Box<dyn std::error::Error + Sync + Send>> {
        Ok(PgCell {
            ty: ty.clone(),
            raw: Some(raw.to_vec()),
        })
    }

    fn from_sql_null(ty: &Type) -> Result<PgCell, Box<dyn std::error::Error + Sync + Send>> {
        Ok(PgCell {
            ty: ty.clone(),
            raw: None,
        })
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn be<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("malformed binary value of {} bytes", raw.len()))
}

/// Microseconds since 2000-01-01 as `YYYY-MM-DD HH:MM:SS[.ffffff]`.
fn pg_timestamp(us: i64) -> String {
    if us == i64::MAX {
        return "infinity".into();
    }
    if us == i64::MIN {
        return "-infinity".into();
    }
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let mut s = pg_date_days(days);
    let _ = write!(
        s,
        " {:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 2000-01-01 as `YYYY-MM-DD`.
fn pg_date_days(days: i64) -> String {
    let (y, m, d) = civil_from_days(days + 10_957);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Binary NUMERIC to its text form.
fn pg_numeric(raw: &[u8]) -> Result<String, String> {
    if raw.len() < 8 {
        return Err("malformed numeric".into());
    }
    let rd = |i: usize| u16::from_be_bytes([raw[i], raw[i + 1]]);
    let ndigits = rd(0) as usize;
    let weight = rd(2) as i16 as i32;
    let sign = rd(4);
    let dscale = rd(6) as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    if raw.len() < 8 + 2 * ndigits {
        return Err("malformed numeric".into());
    }
    let digit = |i: i32| -> u16 {
        if i < 0 || i as usize >= ndigits {
            0
        } else {
            rd(8 + 2 * i as usize)
        }
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                let _ = write!(s, "{}", digit(i));
            } else {
                let _ = write!(s, "{:04}", digit(i));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(i));
            i += 1;
        }
        frac.truncate(dscale);
        s.push('.');
        s.push_str(&frac);
    }
    Ok(s)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("\\x");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl PgCell {
    /// The value's text form (see the module doc); NULL is empty.
    ///
    /// # Errors
    /// A type with no conversion here (the message suggests `::text`).
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let Some(raw) = &self.raw else {
            return Ok(Vec::new());
        };
        let raw = raw.as_slice();
        let t = &self.ty;
        Ok(match *t {
            Type::BYTEA
            | Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::UNKNOWN
            | Type::JSON
            | Type::XML
            | Type::CHAR => raw.to_vec(),
            Type::JSONB => raw.get(1..).unwrap_or_default().to_vec(),
            _ => self.to_text(raw)?.into_bytes(),
        })
    }

    fn to_text(&self, raw: &[u8]) -> Result<String, String> {
        let t = &self.ty;
        Ok(match *t {
            Type::BOOL => if raw.first() == Some(&1) { "t" } else { "f" }.to_string(),
            Type::INT2 => i16::from_be_bytes(be(raw)?).to_string(),
            Type::INT4 => i32::from_be_bytes(be(raw)?).to_string(),
            Type::INT8 => i64::from_be_bytes(be(raw)?).to_string(),
            Type::OID => u32::from_be_bytes(be(raw)?).to_string(),
            Type::FLOAT4 => f32::from_be_bytes(be(raw)?).to_string(),
            Type::FLOAT8 => f64::from_be_bytes(be(raw)?).to_string(),
            Type::NUMERIC => pg_numeric(raw)?,
            Type::TIMESTAMP => pg_timestamp(i64::from_be_bytes(be(raw)?)),
            Type::TIMESTAMPTZ => {
                let us = i64::from_be_bytes(be(raw)?);
                let s = pg_timestamp(us);
                if us == i64::MAX || us == i64::MIN {
                    s
                } else {
                    s + "+00"
                }
            }
            Type::DATE => match i32::from_be_bytes(be(raw)?) {
                i32::MAX => "infinity".into(),
                i32::MIN => "-infinity".into(),
                d => pg_date_days(d as i64),
            },
            Type::UUID => {
                let b: [u8; 16] = be(raw)?;
                let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
                format!(
                    "{}-{}-{}-{}-{}",
                    &h[0..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..32]
                )
            }
            Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::UNKNOWN
            | Type::JSON
            | Type::XML
            | Type::CHAR => String::from_utf8_lossy(raw).into_owned(),
            Type::JSONB => String::from_utf8_lossy(raw.get(1..).unwrap_or_default()).into_owned(),
            _ => {
                return Err(format!(
                    "result column has type {}, which gearman-worker does not convert; \
                     cast it to text in the statement (e.g. `col::text`)",
                    t.name()
                ))
            }
        })
    }

    /// The value as JSON: numbers and booleans as such, json/jsonb embedded,
    /// numeric and everything else as strings, bytea as `"\\x..."` hex.
    ///
    /// # Errors
    /// As [`PgCell::to_bytes`].
    pub fn to_json(&self) -> Result<serde_json::Value, String> {
        use serde_json::Value as J;
        let Some(raw) = &self.raw else {
            return Ok(J::Null);
        };
        let raw = raw.as_slice();
        Ok(match self.ty {
            Type::BOOL => J::Bool(raw.first() == Some(&1)),
            Type::INT2 => J::from(i16::from_be_bytes(be(raw)?)),
            Type::INT4 => J::from(i32::from_be_bytes(be(raw)?)),
            Type::INT8 => J::from(i64::from_be_bytes(be(raw)?)),
            Type::OID => J::from(u32::from_be_bytes(be(raw)?)),
            Type::FLOAT4 => J::from(f32::from_be_bytes(be(raw)?) as f64),
            Type::FLOAT8 => J::from(f64::from_be_bytes(be(raw)?)),
            Type::BYTEA => J::String(hex(raw)),
            Type::JSON | Type::JSONB => {
                let text = self.to_text(raw)?;
                serde_json::from_str(&text).unwrap_or(J::String(text))
            }
            _ => J::String(self.to_text(raw)?),
        })
    }
}

fn my_time_text(v: &mysql::Value, col: &mysql::Column) -> Option<String> {
    use mysql::consts::ColumnType;
    match *v {
        mysql::Value::Date(y, mo, d, h, mi, s, us) => {
            if col.column_type() == ColumnType::MYSQL_TYPE_DATE {
                Some(format!("{y:04}-{mo:02}-{d:02}"))
            } else if us != 0 {
                Some(format!(
                    "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}"
                ))
            } else {
                Some(format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}"))
            }
        }
        mysql::Value::Time(neg, days, h, mi, s, us) => {
            let hours = days * 24 + h as u32;
            let sign = if neg { "-" } else { "" };
            if us != 0 {
                Some(format!("{sign}{hours:02}:{mi:02}:{s:02}.{us:06}"))
            } else {
                Some(format!("{sign}{hours:02}:{mi:02}:{s:02}"))
            }
        }
        _ => None,
    }
}

/// A MySQL value as the bytes the server would display; NULL is empty.
pub fn my_to_bytes(v: &mysql::Value, col: &mysql::Column) -> Vec<u8> {
    match v {
        mysql::Value::NULL => Vec::new(),
        mysql::Value::Bytes(b) => b.clone(),
        mysql::Value::Int(i) => i.to_string().into_bytes(),
        mysql::Value::UInt(u) => u.to_string().into_bytes(),
        mysql::Value::Float(f) => f.to_string().into_bytes(),
        mysql::Value::Double(d) => d.to_string().into_bytes(),
        other => my_time_text(other, col).unwrap_or_default().into_bytes(),
    }
}

/// A MySQL value as JSON: numbers as numbers, binary-collation strings as
/// `"\\x..."` hex, other strings as text.
pub fn my_to_json(v: &mysql::Value, col: &mysql::Column) -> serde_json::Value {
    use serde_json::Value as J;
    const BINARY_CHARSET: u16 = 63;
    match v {
        mysql::Value::NULL => J::Null,
        mysql::Value::Bytes(b) => {
            if col.character_set() == BINARY_CHARSET
                && !matches!(
                    col.column_type(),
                    mysql::consts::ColumnType::MYSQL_TYPE_NEWDECIMAL
                        | mysql::consts::ColumnType::MYSQL_TYPE_DECIMAL
                )
            {
                J::String(hex(b))
            } else {
                J::String(String::from_utf8_lossy(b).into_owned())
            }
        }
        mysql::Value::Int(i) => J::from(*i),
        mysql::Value::UInt(u) => J::from(*u),
        mysql::Value::Float(f) => J::from(*f as f64),
        mysql::Value::Double(d) => J::from(*d),
        other => J::String(my_time_text(other, col).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [ndigits, weight as u16, sign, dscale] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_binary_to_text() {
        // 12345.678 = digits [1, 2345, 6780], weight 1, dscale 3
        assert_eq!(
            pg_numeric(&numeric(3, 1, 0, 3, &[1, 2345, 6780])).unwrap(),
            "12345.678"
        );
        // -0.0012 = digits [12], weight -1, dscale 4
        assert_eq!(
            pg_numeric(&numeric(1, -1, 0x4000, 4, &[12])).unwrap(),
            "-0.0012"
        );
        // 0.00000001 = digits [1], weight -2, dscale 8
        assert_eq!(
            pg_numeric(&numeric(1, -2, 0, 8, &[1])).unwrap(),
            "0.00000001"
        );
        // 10000 = digits [1], weight 1, dscale 0
        assert_eq!(pg_numeric(&numeric(1, 1, 0, 0, &[1])).unwrap(), "10000");
        assert_eq!(pg_numeric(&numeric(0, 0, 0, 2, &[])).unwrap(), "0.00");
        assert_eq!(pg_numeric(&numeric(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
    }

    #[test]
    fn timestamps_and_dates() {
        assert_eq!(pg_timestamp(0), "2000-01-01 00:00:00");
        assert_eq!(
            pg_timestamp(86_400_000_000 + 1_500_000),
            "2000-01-02 00:00:01.5"
        );
        assert_eq!(pg_timestamp(-1), "1999-12-31 23:59:59.999999");
        assert_eq!(pg_date_days(366), "2001-01-01");
    }

    #[test]
    fn cells_to_text_and_json() {
        let c = |ty: Type, raw: &[u8]| PgCell {
            ty,
            raw: Some(raw.to_vec()),
        };
        assert_eq!(
            c(Type::INT4, &42i32.to_be_bytes()).to_bytes().unwrap(),
            b"42"
        );
        assert_eq!(c(Type::BOOL, &[1]).to_bytes().unwrap(), b"t");
        assert_eq!(c(Type::BYTEA, b"\x00\xff").to_bytes().unwrap(), b"\x00\xff");
        assert_eq!(
            c(Type::JSONB, b"\x01{\"a\": 1}").to_bytes().unwrap(),
            b"{\"a\": 1}"
        );
        assert_eq!(
            c(Type::JSONB, b"\x01{\"a\": 1}").to_json().unwrap(),
            serde_json::json!({"a": 1})
        );
        assert_eq!(
            c(Type::BYTEA, b"\x00\xff").to_json().unwrap(),
            serde_json::json!("\\x00ff")
        );
        let null = PgCell {
            ty: Type::TEXT,
            raw: None,
        };
        assert_eq!(null.to_bytes().unwrap(), b"");
        assert_eq!(null.to_json().unwrap(), serde_json::Value::Null);
        let e = c(Type::POINT, &[0; 16]).to_bytes().unwrap_err();
        assert!(e.contains("point") && e.contains("::text"), "{e}");
    }
}
