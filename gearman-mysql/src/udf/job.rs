//! A job from SQL arguments, and the text of a job's error.

use crate::abi::Arg;
use gearman_core::Job;

/// Builds and checks the job of `(function, workload [, ...])`: argument 0
/// is the function name (not NULL), argument 1 the workload (NULL is
/// empty), argument `unique_at` the unique key if present (NULL or empty:
/// none). The rest is gearman-core's one validator (`Job::from_args`), so
/// the messages are those of PostgreSQL too: `function name is empty`,
/// `unique key is 64 bytes; at most 63 are allowed ...`.
pub fn from_args(args: &[Arg<'_>], unique_at: usize) -> Result<Job, String> {
    let Some(function) = args.first().and_then(Arg::to_bytes) else {
        return Err("function name is NULL".into());
    };
    let workload = args.get(1).and_then(Arg::to_bytes).unwrap_or_default();
    let unique = args.get(unique_at).and_then(Arg::to_bytes);
    Job::from_args(&function, workload, unique.as_deref()).map_err(|e| e.to_string())
}

/// The error of a job, naming its function.
pub fn describe(job: &Job, e: &gearman_core::Error) -> String {
    format!("function '{}': {e}", job.function_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_arguments_are_validated() {
        assert!(from_args(&[Arg::Null, Arg::Null], 2)
            .unwrap_err()
            .contains("NULL"));
        assert_eq!(
            from_args(&[Arg::Bytes(b""), Arg::Null], 2).unwrap_err(),
            "function name is empty"
        );
        let j = from_args(&[Arg::Bytes(b"f"), Arg::Null], 2).unwrap();
        assert!(j.workload.is_empty());
        let long = [b'u'; 64];
        let e = from_args(&[Arg::Bytes(b"f"), Arg::Null, Arg::Bytes(&long)], 2).unwrap_err();
        assert!(
            e.starts_with("unique key is 64 bytes; at most 63 are allowed"),
            "{e}"
        );
        let j = from_args(
            &[Arg::Bytes(b"f"), Arg::Bytes(b"\0x\0"), Arg::Bytes(b"")],
            2,
        )
        .unwrap();
        assert_eq!(j.workload, b"\0x\0");
        assert_eq!(j.unique, None);
    }
}
