//! Interoperability with Debian's C tools (package gearman-tools): our
//! client with `gearman -w` as worker, `gearman` as client of our worker,
//! and `gearadmin --status` against our admin parser.

mod common;

use gearman_core::admin::{parse_status, Admin};
use gearman_core::{Job, ServerAddr};
use gearman_testkit::Gearmand;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tool(name: &str) -> Command {
    let path = format!("/usr/bin/{name}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: install the Debian package gearman-tools (run scripts/setup)"
    );
    Command::new(path)
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn our_client_with_the_c_worker() {
    let g = Gearmand::start();
    let _w = KillOnDrop(
        tool("gearman")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &g.port().to_string(),
                "-w",
                "-f",
                "rev",
                "--",
                "rev",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut c = common::client(&g.addr());
    // Wait until the C worker has registered.
    let addr = ServerAddr::parse(&g.addr()).unwrap();
    let t = Instant::now();
    while !Admin::connect(&addr, Duration::from_secs(2))
        .unwrap()
        .status()
        .unwrap()
        .iter()
        .any(|s| s.function == "rev" && s.workers > 0)
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "gearman -w did not register"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.run(&Job::new("rev", "hello\n")).unwrap(), b"olleh\n");
    let r = c.run_all(&[Job::new("rev", "abc\n"), Job::new("rev", "xyz\n")]);
    assert_eq!(r[0].as_ref().unwrap(), b"cba\n");
    assert_eq!(r[1].as_ref().unwrap(), b"zyx\n");
}

#[test]
fn the_c_client_with_our_worker() {
    let g = Gearmand::start();
    let _w = common::test_worker(&g.addr());
    let out = tool("gearman")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &g.port().to_string(),
            "-t",
            "10000",
            "-f",
            "reverse",
            "hello world",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dlrow olleh");
    // Background mode through the C client, counted at our worker.
    let out = tool("gearman")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &g.port().to_string(),
            "-b",
            "-f",
            "echo",
            "bg",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Debian's `gearman` client (libgearman 1.1, which does not ask for
/// exceptions) gets a prompt failure from our worker for a handler that
/// reports an exception or panics. Sent as WORK_EXCEPTION, gearmand would
/// forward a WORK_FAIL with a NUL after the handle that libgearman does not
/// match, and the client would wait for ever (seen in a trial on 2026-12-02).
#[test]
fn the_c_client_gets_a_prompt_failure_for_exceptions_and_panics() {
    let g = Gearmand::start();
    let _w = common::test_worker(&g.addr());
    for function in ["exception", "panic", "fail"] {
        let out = g.run_gearman_cli(function, "x");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{function}: {out:?}");
        assert!(err.contains("failed"), "{function}: {err}");
    }
}

#[test]
fn gearadmin_status_agrees_with_our_admin_parse() {
    let g = Gearmand::start();
    let _w = common::test_worker(&g.addr());
    let mut c = common::client(&g.addr());
    for i in 0..3 {
        c.submit_background(&Job::new("queued_only", format!("{i}")))
            .unwrap();
    }
    let addr = ServerAddr::parse(&g.addr()).unwrap();
    let ours = Admin::connect(&addr, Duration::from_secs(2))
        .unwrap()
        .status()
        .unwrap();
    let out = tool("gearadmin")
        .args(["-h", "127.0.0.1", "-p", &g.port().to_string(), "--status"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines = gearman_core::admin::split_list(&out.stdout).unwrap();
    let theirs = parse_status(&lines).unwrap();
    let mut a = ours.clone();
    let mut b = theirs;
    a.sort_by(|x, y| x.function.cmp(&y.function));
    b.sort_by(|x, y| x.function.cmp(&y.function));
    assert_eq!(a, b);
    let q = a.iter().find(|s| s.function == "queued_only").unwrap();
    assert_eq!((q.total, q.running, q.workers, q.queued()), (3, 0, 0, 3));
    let r = a.iter().find(|s| s.function == "reverse").unwrap();
    assert_eq!(r.workers, 1);
    // The other admin commands parse too.
    let mut adm = Admin::connect(&addr, Duration::from_secs(2)).unwrap();
    // Debian reports its package version: `OK 1.1.20+ds`.
    assert!(adm.version().unwrap().starts_with("1.1.20"));
    assert_eq!(adm.getpid().unwrap(), g.pid().unwrap());
    let workers = adm.workers().unwrap();
    assert!(
        workers
            .iter()
            .any(|w| w.functions.contains(&"reverse".to_string())),
        "{workers:?}"
    );
    let jobs = adm.show_jobs().unwrap();
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    adm.cancel_job(&jobs[0].handle).unwrap();
    assert!(adm.cancel_job("H:nope:1").is_err());
}
