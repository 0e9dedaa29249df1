//! `gman_do_epoch(function, workload, unix_seconds [, unique])`: a
//! scheduled background job (SUBMIT_JOB_EPOCH), its handle or unique key
//! as [`super::gman_do_background`].

use super::gman_do_background::submit;
use super::{job, Signature, Site, Udf};
use crate::abi::{Arg, ItemResult, DECIMAL_RESULT, INT_RESULT, REAL_RESULT, STRING_RESULT};
use crate::runtime::runtime;

/// A background job run at a given time.
#[derive(Debug, Clone, Copy)]
pub struct At;

impl Udf for At {
    fn signature(&self) -> Signature {
        Signature {
            usage: "(function, workload, unix_seconds [, unique])",
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
            Some(Arg::Bytes(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    format!(
                        "unix_seconds '{}' is not an integer",
                        String::from_utf8_lossy(b)
                    )
                })?,
            _ => return Err("unix_seconds is NULL".into()),
        };
        if t < 0 {
            return Err(format!("unix_seconds {t} is negative"));
        }
        let job = job::from_args(args, 3)?.with_epoch(t);
        submit(site, rt, job).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_becomes_text_except_the_seconds() {
        let t = At
            .init(
                "gman_do_epoch",
                &[STRING_RESULT, STRING_RESULT, DECIMAL_RESULT],
            )
            .unwrap();
        assert_eq!(t, vec![STRING_RESULT, STRING_RESULT, INT_RESULT]);
        let t = At
            .init("gman_do_epoch", &[INT_RESULT, REAL_RESULT, STRING_RESULT])
            .unwrap();
        assert_eq!(t, vec![STRING_RESULT; 3]);
    }
}
