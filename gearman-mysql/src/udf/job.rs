//! A job from SQL arguments, and the text of a job's error.

use crate::abi::Arg;
use gearman_core::Job;

/// Longest unique key gearmand accepts (it silently cuts longer ones; we refuse).
pub const MAX_UNIQUE: usize = 63;

/// Builds and checks the job of `(function, workload [, ...])`: argument 0
/// is the function name (not NULL, not empty, no NUL), argument 1 the
/// workload (NULL is empty), argument `unique_at` the unique key if present
/// (NULL or empty: none; at most [`MAX_UNIQUE`] bytes, no NUL).
pub fn from_args(args: &[Arg<'_>], unique_at: usize) -> Result<Job, String> {
    let function = match args.first().and_then(Arg::to_bytes) {
        None => return Err("function name is NULL".into()),
        Some(f) if f.is_empty() => return Err("function name is empty".into()),
        Some(f) => f,
    };
    if function.contains(&0) {
        return Err("function name contains a NUL byte".into());
    }
    let workload = args.get(1).and_then(Arg::to_bytes).unwrap_or_default();
    let mut job = Job::new(function, workload);
    if let Some(u) = args.get(unique_at).and_then(Arg::to_bytes) {
        check_unique(&u)?;
        if !u.is_empty() {
            job = job.with_unique(u);
        }
    }
    job.validate().map_err(|e| e.to_string())?;
    Ok(job)
}

/// A unique key: at most [`MAX_UNIQUE`] bytes, no NUL.
pub fn check_unique(u: &[u8]) -> Result<(), String> {
    if u.len() > MAX_UNIQUE {
        return Err(format!(
            "unique key is {} bytes, the limit is {MAX_UNIQUE}",
            u.len()
        ));
    }
    if u.contains(&0) {
        return Err("unique key contains a NUL byte".into());
    }
    Ok(())
}

/// The error of a job, naming its function.
pub fn describe(job: &Job, e: &gearman_core::Error) -> String {
    format!("function '{}': {e}", String::from_utf8_lossy(&job.function))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_arguments_are_validated() {
        assert!(from_args(&[Arg::Null, Arg::Null], 2)
            .unwrap_err()
            .contains("NULL"));
        assert!(from_args(&[Arg::Bytes(b""), Arg::Null], 2)
            .unwrap_err()
            .contains("empty"));
        let j = from_args(&[Arg::Bytes(b"f"), Arg::Null], 2).unwrap();
        assert!(j.workload.is_empty());
        let long = [b'u'; 64];
        let e = from_args(&[Arg::Bytes(b"f"), Arg::Null, Arg::Bytes(&long)], 2).unwrap_err();
        assert!(e.contains("64 bytes"), "{e}");
        let j = from_args(
            &[Arg::Bytes(b"f"), Arg::Bytes(b"\0x\0"), Arg::Bytes(b"")],
            2,
        )
        .unwrap();
        assert_eq!(j.workload, b"\0x\0");
        assert_eq!(j.unique, None);
    }
}
