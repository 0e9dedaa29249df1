//! Result values of `sql` functions as text (`rows = "first"`) and JSON
//! (`rows = "json_lines"`), for both databases.
//!
//! PostgreSQL sends results in its binary format; they are decoded by
//! postgres-types (features `with-time-0_3`, `with-uuid-1`,
//! `with-serde_json-1`) and printed as PostgreSQL prints them: `t`/`f`,
//! decimal integers and floats, `YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS[.ffffff]`
//! (`+00` after a `timestamptz`, which is shown in UTC; ` BC` after years
//! before 1; `infinity`, `-infinity`), `HH:MM:SS[.ffffff]`, UUIDs in
//! hyphenated lower case, `json`/`jsonb` text as the server sent it, text
//! types and `bytea` as their bytes. NUMERIC is decoded here
//! ([`pg_numeric`]: no crate does it). Other types fail the job with a
//! message asking for a `::text` cast.
//!
//! MySQL sends text or typed values ([`my_to_bytes`], [`my_to_json`]).

use postgres::types::{FromSql, Type};
use serde_json::value::RawValue;
use std::fmt::Write as _;

/// One PostgreSQL result value, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum PgValue {
    /// SQL NULL.
    Null,
    /// `bytea`: raw bytes (text: the bytes; JSON: `"\\x"` + hex).
    Bytea(Vec<u8>),
    /// Text types (`text`, `varchar`, `char`, `name`, `xml`, unknown): the
    /// bytes the server sent.
    Text(Vec<u8>),
    /// `bool`.
    Bool(bool),
    /// `int2`, `int4`, `int8`, `oid`.
    Int(i64),
    /// `float4`, `float8`, with the value's text.
    Float(f64, String),
    /// `json`, `jsonb`: the document's text.
    Json(String),
    /// Everything shown as a string in JSON: numeric, dates and times, uuid.
    Other(String),
}

/// The undecoded bytes of a text-like value (text types are sent as
/// their bytes; nothing to decode).
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// PostgreSQL's text of a timestamp's or date's calendar part: years
/// before 1 as `YYYY-MM-DD BC` (year 0 is 1 BC).
fn pg_date(d: time::Date) -> (String, &'static str) {
    let y = d.year();
    let (year, era) = if y <= 0 { (1 - y, " BC") } else { (y, "") };
    (
        format!("{year:04}-{:02}-{:02}", u8::from(d.month()), d.day()),
        era,
    )
}

/// `HH:MM:SS[.ffffff]` (trailing zeros of the fraction dropped).
fn pg_time(t: time::Time) -> String {
    let mut s = format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second());
    let us = t.microsecond();
    if us != 0 {
        let f = format!("{us:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+00][ BC]`.
fn pg_timestamp(t: postgres::types::Timestamp<time::PrimitiveDateTime>, tz: bool) -> String {
    use postgres::types::Timestamp as T;
    match t {
        T::PosInfinity => "infinity".into(),
        T::NegInfinity => "-infinity".into(),
        T::Value(v) => {
            let (date, era) = pg_date(v.date());
            let zone = if tz { "+00" } else { "" };
            format!("{date} {}{zone}{era}", pg_time(v.time()))
        }
    }
}

fn get<'a, T: FromSql<'a>>(row: &'a postgres::Row, i: usize) -> Result<Option<T>, String> {
    row.try_get::<_, Option<T>>(i).map_err(|e| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(inner) = src {
            let _ = write!(s, ": {inner}");
            src = inner.source();
        }
        // E.g. a date past year 999999, beyond the `time` crate's range.
        s.push_str("; cast it to text in the statement (e.g. `col::text`)");
        s
    })
}

impl PgValue {
    /// Column `i` of `row`, decoded.
    ///
    /// # Errors
    /// A type with no conversion here (the message suggests `::text`), or
    /// a value the decoder refused.
    pub fn from_row(row: &postgres::Row, i: usize) -> Result<PgValue, String> {
        use postgres::types::{Date, Json, Timestamp};
        let ty = row.columns()[i].type_().clone();
        let v = match ty {
            Type::BYTEA => get::<Vec<u8>>(row, i)?.map(PgValue::Bytea),
            Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::UNKNOWN
            | Type::XML
            | Type::CHAR => get::<Raw<'_>>(row, i)?.map(|r| PgValue::Text(r.0.to_vec())),
            Type::BOOL => get::<bool>(row, i)?.map(PgValue::Bool),
            Type::INT2 => get::<i16>(row, i)?.map(|v| PgValue::Int(v.into())),
            Type::INT4 => get::<i32>(row, i)?.map(|v| PgValue::Int(v.into())),
            Type::INT8 => get::<i64>(row, i)?.map(PgValue::Int),
            Type::OID => get::<u32>(row, i)?.map(|v| PgValue::Int(v.into())),
            Type::FLOAT4 => get::<f32>(row, i)?.map(|v| PgValue::Float(v.into(), v.to_string())),
            Type::FLOAT8 => get::<f64>(row, i)?.map(|v| PgValue::Float(v, v.to_string())),
            Type::NUMERIC => match get::<Raw<'_>>(row, i)? {
                Some(r) => Some(PgValue::Other(pg_numeric(r.0)?)),
                None => None,
            },
            Type::TIMESTAMP => get::<Timestamp<time::PrimitiveDateTime>>(row, i)?
                .map(|t| PgValue::Other(pg_timestamp(t, false))),
            Type::TIMESTAMPTZ => get::<Timestamp<time::OffsetDateTime>>(row, i)?.map(|t| {
                let t = match t {
                    Timestamp::PosInfinity => Timestamp::PosInfinity,
                    Timestamp::NegInfinity => Timestamp::NegInfinity,
                    // Decoded as UTC: the wire value is microseconds since
                    // 2000-01-01 00:00 UTC.
                    Timestamp::Value(v) => {
                        Timestamp::Value(time::PrimitiveDateTime::new(v.date(), v.time()))
                    }
                };
                PgValue::Other(pg_timestamp(t, true))
            }),
            Type::DATE => get::<Date<time::Date>>(row, i)?.map(|d| {
                PgValue::Other(match d {
                    Date::PosInfinity => "infinity".into(),
                    Date::NegInfinity => "-infinity".into(),
                    Date::Value(d) => {
                        let (date, era) = pg_date(d);
                        date + era
                    }
                })
            }),
            Type::TIME => get::<time::Time>(row, i)?.map(|t| PgValue::Other(pg_time(t))),
            Type::UUID => get::<uuid::Uuid>(row, i)?.map(|u| PgValue::Other(u.to_string())),
            Type::JSON | Type::JSONB => {
                get::<Json<Box<RawValue>>>(row, i)?.map(|j| PgValue::Json(j.0.get().to_string()))
            }
            _ => {
                return Err(format!(
                    "result column has type {}, which gearman-worker does not convert; \
                     cast it to text in the statement (e.g. `col::text`)",
                    ty.name()
                ))
            }
        };
        Ok(v.unwrap_or(PgValue::Null))
    }

    /// The value's text form (see the module doc); NULL is empty.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            PgValue::Null => Vec::new(),
            PgValue::Bytea(b) | PgValue::Text(b) => b,
            PgValue::Bool(b) => if b { "t" } else { "f" }.into(),
            PgValue::Int(i) => i.to_string().into_bytes(),
            PgValue::Float(_, s) | PgValue::Json(s) | PgValue::Other(s) => s.into_bytes(),
        }
    }

    /// The value as JSON: numbers and booleans as such, json/jsonb embedded,
    /// numeric and everything else as strings, bytea as `"\\x..."` hex.
    pub fn into_json(self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            PgValue::Null => J::Null,
            PgValue::Bytea(b) => J::String(hex(&b)),
            PgValue::Text(b) => J::String(String::from_utf8_lossy(&b).into_owned()),
            PgValue::Bool(b) => J::Bool(b),
            PgValue::Int(i) => J::from(i),
            PgValue::Float(f, _) => J::from(f),
            PgValue::Json(s) => serde_json::from_str(&s).unwrap_or(J::String(s)),
            PgValue::Other(s) => J::String(s),
        }
    }
}

/// Binary NUMERIC to its text form, as PostgreSQL prints it (`NaN`,
/// `Infinity`, `-Infinity` included). Decoded here because no crate does:
/// postgres-types has no NUMERIC support, and rust_decimal (its usual
/// companion) holds 28 digits and no NaN or infinities, where NUMERIC holds
/// up to 131072 digits before the point.
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

/// `\\x` and lower-case hex, as PostgreSQL prints `bytea`.
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("\\x");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
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
        assert!(pg_numeric(&numeric(3, 0, 0, 0, &[1])).is_err());
    }

    #[test]
    fn values_to_text_and_json() {
        let both = |v: PgValue| (v.clone().into_bytes(), v.into_json());
        assert_eq!(both(PgValue::Null), (vec![], serde_json::Value::Null));
        assert_eq!(
            both(PgValue::Bytea(b"\x00\xff".to_vec())),
            (b"\x00\xff".to_vec(), serde_json::json!("\\x00ff"))
        );
        assert_eq!(
            both(PgValue::Bool(true)),
            (b"t".to_vec(), serde_json::json!(true))
        );
        assert_eq!(
            both(PgValue::Json("{\"a\": 1}".into())),
            (b"{\"a\": 1}".to_vec(), serde_json::json!({"a": 1}))
        );
        let d = time::Date::from_calendar_date(-43, time::Month::March, 15).unwrap();
        assert_eq!(pg_date(d), ("0044-03-15".to_string(), " BC"));
    }
}
