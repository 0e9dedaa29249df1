//! Interoperability: jobs sent by the SQL functions of gearman-mysql
//! (`libgearman_mysql_udf.so` loaded into a private MariaDB) are served by
//! gearman-worker. The library is built here with `cargo build -p
//! gearman-mysql` into the same target directory as this test.

mod common;

use common::*;
use gearman_testkit::{Gearmand, MariaDb, MariaDbOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Builds gearman-mysql (debug) and returns the path of its library.
fn build_udf_library() -> PathBuf {
    let bin = PathBuf::from(bin());
    let profile_dir = bin.parent().unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap().to_path_buf();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-q", "-p", "gearman-mysql"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(&workspace)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building gearman-mysql failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = target_dir.join("debug").join("libgearman_mysql_udf.so");
    assert!(lib.exists(), "{} missing after the build", lib.display());
    lib
}

#[test]
fn jobs_from_gearman_mysql_udfs_are_served() {
    let g = Gearmand::start();
    let lib = build_udf_library();
    // mariadbd runs as `mysql`: the config file must be readable by it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = write_file(
        dir.path(),
        "gearman-udf.toml",
        &format!("servers = \"{}\"\n", g.addr()),
    );
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let db = MariaDb::start_with(MariaDbOptions {
        env: vec![("GEARMAN_UDF_CONFIG".into(), conf.display().to_string())],
        plugins: vec![lib],
        ..MariaDbOptions::default()
    });
    let install = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sql/mysql/install.sql"
    ))
    .unwrap();
    db.sql(&install).unwrap();

    let cfg = write_file(
        dir.path(),
        "worker.toml",
        &format!(
            "servers = [\"{}\"]\nlog_level = \"debug\"\n[function.reverse]\nbuiltin = \"reverse\"\n\
             [function.length]\nbuiltin = \"length\"\nconcurrency = 4\n\
             [function.upper]\nexec = [\"tr\", \"a-z\", \"A-Z\"]\n",
            g.addr()
        ),
    );
    let w = WorkerProc::spawn(&["--config", cfg.to_str().unwrap()], &[]);
    for f in ["reverse", "length", "upper"] {
        wait_workers(&g.addr(), f, 1, &|| w.log());
    }

    assert_eq!(
        db.sql("SELECT gman_do('reverse', 'Hello')").unwrap().trim(),
        "olleH"
    );
    assert_eq!(
        db.sql("SELECT gman_do_high('upper', 'abc')")
            .unwrap()
            .trim(),
        "ABC"
    );
    db.sql("CREATE TABLE words (w VARCHAR(20)); INSERT INTO words VALUES ('a'), ('bb'), ('ccc'), ('dddd')")
        .unwrap();
    assert_eq!(
        db.sql("SELECT gman_sum('length', w) FROM words")
            .unwrap()
            .trim(),
        "10"
    );
    // A background job from SQL reaches the worker too.
    let handle = db.sql("SELECT gman_do_background('upper', 'bg')").unwrap();
    assert!(handle.trim().starts_with("H:"), "{handle}");
    assert!(
        wait_until(Duration::from_secs(10), || w
            .log()
            .matches("job done function=upper handle=")
            .count()
            == 2),
        "{}",
        w.log()
    );
    assert!(
        db.error_log()
            .lines()
            .all(|l| !l.contains("[ERROR] gearman")),
        "{}",
        db.error_log()
    );
}
