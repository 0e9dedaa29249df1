//! `gman_do_background_at(function, workload, run_at [, unique])` and its
//! older name `gman_do_epoch(function, workload, unix_seconds [, unique])`
//! (the same function; the argument is named as each name documented it):
//! a scheduled background job
//! (SUBMIT_JOB_EPOCH), its handle or unique key as
//! [`super::gman_do_background`].
//!
//! The time is Unix seconds (an integer, a number with no fraction, or its
//! text), or RFC 3339 text with `Z` or an offset (`'2026-12-03T10:00:00Z'`,
//! `'2026-12-03 11:00:00+01:00'`; a fraction of a second is dropped). A
//! DATETIME carries no time zone: it is refused, with the hint to pass
//! `UNIX_TIMESTAMP(x)`, which reads it in the session's time zone.

use super::gman_do_background::submit;
use super::{job, Signature, Site, Udf};
use crate::abi::{Arg, ItemResult, DECIMAL_RESULT, INT_RESULT, REAL_RESULT, STRING_RESULT};
use crate::runtime::runtime;

/// A background job run at a given time.
#[derive(Debug, Clone, Copy)]
pub struct At {
    /// The name of the time argument in messages.
    arg: &'static str,
    usage: &'static str,
}

impl At {
    /// `gman_do_background_at`.
    pub const RUN_AT: At = At {
        arg: "run_at",
        usage: "(function, workload, run_at [, unique])",
    };
    /// `gman_do_epoch`, its older name.
    pub const EPOCH: At = At {
        arg: "unix_seconds",
        usage: "(function, workload, unix_seconds [, unique])",
    };
}

impl Udf for At {
    fn signature(&self) -> Signature {
        Signature {
            usage: self.usage,
            min: 3,
            max: 4,
        }
    }

    fn init(&mut self, name: &str, types: &[ItemResult]) -> Result<Vec<ItemResult>, String> {
        let mut wanted = self.signature().check(name, types)?;
        // Integers stay integers; decimals and doubles are rounded by the
        // server; strings are parsed strictly at call time.
        wanted[2] = match types[2] {
            INT_RESULT | REAL_RESULT | DECIMAL_RESULT => INT_RESULT,
            _ => STRING_RESULT,
        };
        Ok(wanted)
    }

    fn process(&mut self, site: &mut Site, args: &[Arg<'_>]) -> Result<Option<Vec<u8>>, String> {
        let rt = runtime()?;
        let t = match args.get(2) {
            Some(Arg::Int(i)) => *i,
            Some(Arg::Real(r)) if r.fract() == 0.0 && r.abs() < 9.0e15 => *r as i64,
            Some(Arg::Bytes(b)) => seconds_of_text(self.arg, b)?,
            _ => return Err(format!("{} is NULL", self.arg)),
        };
        if t < 0 {
            return Err(format!("{} {t} is negative", self.arg));
        }
        let job = job::from_args(args, 3)?.with_epoch(t);
        submit(site, rt, job).map(Some)
    }
}

/// Unix seconds from text: an integer, or RFC 3339 with a zone.
fn seconds_of_text(arg: &str, b: &[u8]) -> Result<i64, String> {
    let text = String::from_utf8_lossy(b);
    let s = text.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    // RFC 3339 allows a space for the `T` (MariaDB writes one).
    let iso = match s.as_bytes().get(10) {
        Some(b' ') => format!("{}T{}", &s[..10], &s[11..]),
        _ => s.to_string(),
    };
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(&iso, rfc3339) {
        return Ok(t.unix_timestamp());
    }
    // The same without a zone (a DATETIME value): refused, not guessed.
    if time::OffsetDateTime::parse(&format!("{iso}Z"), rfc3339).is_ok() {
        return Err(format!(
            "{arg} '{s}' is a date and time without a time zone: pass \
             UNIX_TIMESTAMP('{s}') (read in the session's time zone), or RFC 3339 text \
             with Z or an offset, e.g. '2026-12-03T10:00:00Z'"
        ));
    }
    Err(format!(
        "{arg} '{s}' is not an integer (Unix seconds), nor RFC 3339 time with Z or an offset \
         (e.g. '2026-12-03T10:00:00Z')"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_becomes_text_except_the_seconds() {
        let mut at = At::EPOCH;
        let t = at
            .init(
                "gman_do_epoch",
                &[STRING_RESULT, STRING_RESULT, DECIMAL_RESULT],
            )
            .unwrap();
        assert_eq!(t, vec![STRING_RESULT, STRING_RESULT, INT_RESULT]);
        let t = at
            .init("gman_do_epoch", &[INT_RESULT, REAL_RESULT, STRING_RESULT])
            .unwrap();
        assert_eq!(t, vec![STRING_RESULT; 3]);
    }

    #[test]
    fn run_at_text_is_seconds_or_rfc3339_with_a_zone() {
        assert_eq!(
            seconds_of_text("run_at", b" 1700000000 "),
            Ok(1_700_000_000)
        );
        assert_eq!(
            seconds_of_text("run_at", b"2023-11-14T22:13:20Z"),
            Ok(1_700_000_000)
        );
        assert_eq!(
            seconds_of_text("run_at", b"2023-11-14 23:13:20.75+01:00"),
            Ok(1_700_000_000)
        );
        let e = seconds_of_text("run_at", b"2023-11-14 22:13:20").unwrap_err();
        assert!(
            e.contains("without a time zone") && e.contains("UNIX_TIMESTAMP"),
            "{e}"
        );
        let e = seconds_of_text("run_at", b"soon").unwrap_err();
        assert!(e.contains("run_at 'soon' is not an integer"), "{e}");
        let e = seconds_of_text("run_at", "2023-11-14é".as_bytes()).unwrap_err();
        assert!(e.contains("not an integer"), "{e}");
    }
}
