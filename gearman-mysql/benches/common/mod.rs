//! What the MariaDB benchmarks share.

use std::path::PathBuf;

/// The number after `name` in `args`, or `default`.
pub fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The UDF library cargo built next to the benchmark binary.
pub fn udf_library() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let lib = exe
        .parent()
        .expect("deps dir")
        .join("libgearman_mysql_udf.so");
    assert!(lib.is_file(), "{} missing", lib.display());
    lib
}
