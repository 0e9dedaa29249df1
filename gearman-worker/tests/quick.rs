//! Quick mode (`-f NAME -- COMMAND`) and CLI behaviour, against a private gearmand.

mod common;

use common::*;
use gearman_core::{ErrorKind, Job};
use gearman_testkit::{Gearmand, PerlGearmand};
use std::time::Duration;

#[test]
fn quick_mode_serves_a_real_command() {
    let g = Gearmand::start();
    let w = WorkerProc::spawn(&["-s", &g.addr(), "-f", "reverse", "--", "rev"], &[]);
    wait_workers(&g.addr(), "reverse", 1, &|| w.log());
    let mut c = client(&g.addr());
    assert_eq!(c.run(&Job::new("reverse", "hello\n")).unwrap(), b"olleh\n");
    // Byte-exact: the workload without a trailing newline stays without one.
    assert_eq!(c.run(&Job::new("reverse", "abc")).unwrap(), b"cba");
}

#[test]
fn quick_mode_serves_on_the_perl_job_server() {
    // Perl's Gearman::Server answers GRAB_JOB_UNIQ with ERROR; the worker
    // grabs with GRAB_JOB there (before: it logged the ERROR and never
    // served a job).
    let p = PerlGearmand::start();
    let w = WorkerProc::spawn(&["-s", &p.addr(), "-f", "reverse", "--", "rev"], &[]);
    wait_workers(&p.addr(), "reverse", 1, &|| w.log());
    let mut c = client(&p.addr());
    assert_eq!(c.run(&Job::new("reverse", "hello\n")).unwrap(), b"olleh\n");
    assert_eq!(c.run(&Job::new("reverse", "abc")).unwrap(), b"cba");
}

/// A quick-mode worker for `bad`: a command that writes `broken` to stderr
/// and exits 4; registered when this returns.
fn failing_worker(g: &Gearmand, flags: &[&str]) -> WorkerProc {
    let addr = g.addr();
    let mut args = vec!["-s", addr.as_str()];
    args.extend_from_slice(flags);
    args.extend([
        "-f",
        "bad",
        "--",
        "sh",
        "-c",
        "cat >/dev/null; echo broken >&2; exit 4",
    ]);
    let w = WorkerProc::spawn(&args, &[]);
    wait_workers(&addr, "bad", 1, &|| w.log());
    w
}

#[test]
fn quick_mode_nonzero_exit_fails_the_job() {
    let g = Gearmand::start();
    let w = failing_worker(&g, &[]);
    // Every client gets a failure (WORK_WARNING with stderr, then
    // WORK_FAIL), whether or not it asked for exceptions; ours shows stderr.
    let e = client(&g.addr()).run(&Job::new("bad", "x")).unwrap_err();
    assert!(failure_text(&e).contains(": broken"), "{e}");
    let e = client_with_exceptions(&g.addr())
        .run(&Job::new("bad", "x"))
        .unwrap_err();
    assert!(failure_text(&e).contains(": broken"), "{e}");
    // Debian's `gearman` client (libgearman) gets it at once too.
    let out = g.run_gearman_cli("bad", "x");
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failed"),
        "{out:?}"
    );
    // Failures are logged at warn with function and handle.
    assert!(
        wait_until(Duration::from_secs(5), || w
            .log()
            .contains("WARN  job failed function=bad handle=")),
        "{}",
        w.log()
    );
}

#[test]
fn with_exceptions_stderr_goes_out_as_work_exception() {
    let g = Gearmand::start();
    let _w = failing_worker(&g, &["--exceptions"]);
    // A client that asked for exceptions gets stderr as the exception data.
    let e = client_with_exceptions(&g.addr())
        .run(&Job::new("bad", "x"))
        .unwrap_err();
    match e.kind() {
        ErrorKind::JobException(data) => assert_eq!(data, b"broken\n"),
        other => panic!("expected an exception, got {other:?}"),
    }
    // One that did not gets gearmand's converted WORK_FAIL.
    let e = client(&g.addr()).run(&Job::new("bad", "x")).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::JobFailed), "{e:?}");
}

#[test]
fn quick_mode_serves_several_servers_and_functions() {
    let g1 = Gearmand::start();
    let g2 = Gearmand::start();
    let w = WorkerProc::spawn(
        &[
            "-s",
            &g1.addr(),
            "-s",
            &g2.addr(),
            "-f",
            "up",
            "-f",
            "up2",
            "--",
            "tr",
            "a-z",
            "A-Z",
        ],
        &[],
    );
    wait_workers(&g1.addr(), "up", 1, &|| w.log());
    wait_workers(&g2.addr(), "up2", 1, &|| w.log());
    assert_eq!(
        client(&g1.addr()).run(&Job::new("up", "abc")).unwrap(),
        b"ABC"
    );
    assert_eq!(
        client(&g2.addr()).run(&Job::new("up", "xyz")).unwrap(),
        b"XYZ"
    );
    assert_eq!(client(&g2.addr()).run(&Job::new("up2", "q")).unwrap(), b"Q");
}

#[test]
fn gearman_servers_env_is_the_fallback() {
    let g = Gearmand::start();
    let w = WorkerProc::spawn(
        &["-f", "cat", "--", "cat"],
        &[("GEARMAN_SERVERS", &g.addr())],
    );
    wait_workers(&g.addr(), "cat", 1, &|| w.log());
    assert_eq!(
        client(&g.addr()).run(&Job::new("cat", "env")).unwrap(),
        b"env"
    );
}

#[test]
fn jobs_from_debian_gearman_client_are_served() {
    let g = Gearmand::start();
    let w = WorkerProc::spawn(&["-s", &g.addr(), "-f", "reverse", "--", "rev"], &[]);
    wait_workers(&g.addr(), "reverse", 1, &|| w.log());
    let gearman = ["/usr/bin/gearman"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("/usr/bin/gearman missing: install the Debian package gearman-tools")
        });
    let port = g.port().to_string();
    let out = std::process::Command::new(gearman)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-f",
            "reverse",
            "--",
            "gearman tool",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "loot namraeg"
    );
    // Background job from the tool (-b) is served too: watch the worker log.
    let out = std::process::Command::new(gearman)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-b",
            "-f",
            "reverse",
            "--",
            "bg",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(wait_until(Duration::from_secs(10), || queued(
        &g.addr(),
        "reverse"
    ) == 0));
}

#[test]
fn missing_command_is_a_usage_error() {
    let (st, _, err) = run_to_end(&["-s", "127.0.0.1:1", "-f", "x"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("COMMAND"), "{err}");
}

#[test]
fn check_config_accepts_the_example_and_names_a_bad_key() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/worker.example.toml");
    let (st, out, err) = run_to_end(&["--config", example, "--check-config"]);
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(out.contains("configuration ok"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let bad = write_file(
        dir.path(),
        "bad.toml",
        "[function.echo]\nbuiltin = \"echo\"\nconcurency = 3\n",
    );
    let (st, _, err) = run_to_end(&["--config", bad.to_str().unwrap(), "--check-config"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("concurency"), "{err}");

    let bad = write_file(
        dir.path(),
        "bad2.toml",
        "[function.x]\nexec = [\"cat\"]\ntimeout_ms = -1\n",
    );
    let (st, _, err) = run_to_end(&["--config", bad.to_str().unwrap()]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("timeout_ms"), "{err}");

    let (st, _, err) = run_to_end(&["--config", "/no/such/file.toml", "--check-config"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("/no/such/file.toml"), "{err}");
}
