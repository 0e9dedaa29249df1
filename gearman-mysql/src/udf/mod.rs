//! What each SQL function does, one file per function (the three
//! priorities of a function share one), behind the traits [`Udf`] (one
//! value per row) and [`Aggregate`] (one value per group). The C entry
//! points are generated from these by the macros in [`export`], registered
//! in `lib.rs`.
//!
//! Adding a function: a file here with a type implementing [`Udf`], one
//! `export_udf!` line in `lib.rs`, and its `CREATE FUNCTION` / `DROP
//! FUNCTION` lines in `sql/mysql/install.sql` and `sql/mysql/uninstall.sql`.

pub mod export;
pub mod job;

pub mod gman_dispatch_status;
pub mod gman_do;
pub mod gman_do_background;
pub mod gman_do_background_at;
pub mod gman_do_many;
pub mod gman_job_status;
pub mod gman_last_error;
pub mod gman_server_status;
pub mod gman_servers_set;
pub mod gman_sum;

use crate::abi::{Arg, ItemResult, ROW_RESULT, STRING_RESULT};
use crate::runtime::set_last_error;

/// The arguments a function takes: for the usage text of argument errors
/// and the count check at `_init`.
#[derive(Debug, Clone, Copy)]
pub struct Signature {
    /// The arguments as shown after the name, e.g. `"(function, workload [, unique])"`.
    pub usage: &'static str,
    /// Fewest arguments.
    pub min: usize,
    /// Most arguments.
    pub max: usize,
}

impl Signature {
    /// `name` with its arguments, as shown in errors.
    pub fn usage(&self, name: &str) -> String {
        format!("{name}{}", self.usage)
    }

    /// Checks the argument count and that no argument is a row value; every
    /// argument is converted to a string (numbers and dates become the text
    /// the server would display for them).
    pub fn check(&self, name: &str, types: &[ItemResult]) -> Result<Vec<ItemResult>, String> {
        let usage = self.usage(name);
        if types.len() < self.min || types.len() > self.max {
            let want = if self.min == self.max {
                format!("{}", self.min)
            } else {
                format!("{} or {}", self.min, self.max)
            };
            return Err(format!(
                "{usage} takes {want} argument{}, got {}",
                if self.max == 1 { "" } else { "s" },
                types.len()
            ));
        }
        if let Some(i) = types.iter().position(|&t| t == ROW_RESULT) {
            return Err(format!(
                "{usage}: argument {} is a row value, not a scalar",
                i + 1
            ));
        }
        Ok(vec![STRING_RESULT; types.len()])
    }
}

/// A function returning one string per row.
pub trait Udf: Send + 'static {
    /// The arguments it takes.
    fn signature(&self) -> Signature;

    /// `_init`: validates the call-site's arguments (count, types, and
    /// whatever the configuration forbids) and returns the types the server
    /// converts them to before each row. An error fails the statement with
    /// that message.
    fn init(&mut self, name: &str, types: &[ItemResult]) -> Result<Vec<ItemResult>, String> {
        self.signature().check(name, types)
    }

    /// Whether a statement calling it starts with a clean last error for
    /// its connection (all but `gman_last_error()`).
    fn clears_last_error(&self) -> bool {
        true
    }

    /// One row: `Ok(Some(bytes))`, `Ok(None)` for SQL NULL without error,
    /// `Err(message)` for a failed row (NULL, the message without the
    /// function name goes to `gman_last_error()` and the log).
    fn process(&mut self, site: &mut Site, args: &[Arg<'_>]) -> Result<Option<Vec<u8>>, String>;
}

/// An aggregate function returning one integer per group.
pub trait Aggregate: Send + 'static {
    /// The arguments it takes.
    fn signature(&self) -> Signature;

    /// `_init`, as [`Udf::init`].
    fn init(&mut self, name: &str, types: &[ItemResult]) -> Result<Vec<ItemResult>, String> {
        self.signature().check(name, types)
    }

    /// Starts a group.
    fn clear(&mut self);

    /// One row of the group.
    fn add(&mut self, args: &[Arg<'_>]);

    /// Adding a row failed inside the library (a panic): the group fails.
    fn add_failed(&mut self, msg: String);

    /// The group's value: `Ok(None)` is SQL NULL without error.
    fn result(&mut self, site: &mut Site) -> Result<Option<i64>, String>;
}

/// What the library keeps per call-site (one function call in one
/// statement), whatever the function: owned by the server through
/// `UDF_INIT.ptr` together with the function's own state.
#[derive(Debug)]
pub struct Site {
    /// The SQL function name.
    pub name: &'static str,
    /// Rows (or groups) processed.
    pub calls: u64,
    /// Rows that failed.
    pub failures: u64,
    /// The last failure of this call-site.
    pub last_failure: Option<String>,
    /// The result buffer returned to the server (valid until the next row).
    pub result: Vec<u8>,
    /// Pipelined background jobs written by this call-site (their
    /// confirmations are collected at the end of the statement).
    pub pipelined: u64,
}

impl Site {
    /// New state for one call-site.
    pub fn new(name: &'static str) -> Site {
        Site {
            name,
            calls: 0,
            failures: 0,
            last_failure: None,
            result: Vec::new(),
            pipelined: 0,
        }
    }

    /// Records a failure (the message names the function): kept for
    /// `gman_last_error()` and the statement's log line.
    pub fn fail(&mut self, msg: String) {
        self.failures += 1;
        set_last_error(&msg);
        self.last_failure = Some(msg);
    }

    /// The one error-log line for this call-site, if any row failed.
    pub fn summary(&self) -> Option<String> {
        let last = self.last_failure.as_ref()?;
        if self.calls <= 1 && self.failures <= 1 {
            return Some(last.clone());
        }
        let prefix = format!("{}: ", self.name);
        let text = last.strip_prefix(&prefix).unwrap_or(last);
        Some(format!(
            "{}: {} of {} calls failed in this statement; last error: {text}",
            self.name, self.failures, self.calls
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::INT_RESULT;

    #[test]
    fn argument_counts_are_checked_with_usage() {
        let s = gman_do::Do(gearman_core::Priority::Normal).signature();
        let e = s.check("gman_do", &[STRING_RESULT]).unwrap_err();
        assert!(e.contains("gman_do(function, workload [, unique])"), "{e}");
        assert!(e.contains("2 or 3 arguments, got 1"), "{e}");
        let s = gman_last_error::LastError.signature();
        assert!(s.check("gman_last_error", &[INT_RESULT]).is_err());
        let s = gman_sum::Sum::default().signature();
        assert!(s.check("gman_sum", &[STRING_RESULT; 3]).is_err());
        assert!(gman_do::Do(gearman_core::Priority::Low)
            .signature()
            .check("gman_do", &[STRING_RESULT, ROW_RESULT])
            .is_err());
    }
}
