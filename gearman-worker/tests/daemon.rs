//! Daemon mode (`--config`) against a private gearmand: built-ins, exec,
//! concurrency, signals, reload, faults.

mod common;

use common::*;
use gearman_core::worker::{Worker, WorkerOptions};
use gearman_core::{ErrorKind, Job, ServerList};
use gearman_testkit::Gearmand;
use gearman_worker::handlers::{self, Handler, JobError};
use gearman_worker::logging::Stats;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn start_daemon(g: &Gearmand, body: &str) -> (WorkerProc, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "servers = [\"{}\"]\nlog_level = \"debug\"\n{body}",
        g.addr()
    );
    let cfg = write_file(dir.path(), "worker.toml", &text);
    let w = WorkerProc::spawn(&["--config", cfg.to_str().unwrap()], &[]);
    (w, dir, cfg)
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

#[test]
fn a_command_writing_past_max_result_bytes_fails_its_job_at_once() {
    // `yes` writes for ever and the function has no timeout: before, the
    // job ran until the client gave up (the worker read and discarded
    // stdout for ever); now it fails at the cap, with the cap named.
    let g = Gearmand::start();
    let (w, _d, _) = start_daemon(
        &g,
        r#"
[function.flood]
exec = ["yes", "0123456789abcdef"]
timeout_ms = 0
max_result_bytes = 4096
[function.small]
exec = ["head", "-c", "4096", "/dev/zero"]
max_result_bytes = 4096
"#,
    );
    for f in ["flood", "small"] {
        wait_workers(&g.addr(), f, 1, &|| w.log());
    }
    let mut c = client(&g.addr());
    // Exactly the cap is allowed.
    assert_eq!(c.run(&Job::new("small", "")).unwrap(), vec![0u8; 4096]);
    let e = c.run(&Job::new("flood", "")).unwrap_err();
    let m = failure_text(&e);
    assert!(
        m.contains("wrote more than 4096 bytes to stdout") && m.contains("max_result_bytes"),
        "{m}"
    );
    // Memory stayed bounded and the worker goes on serving.
    assert!(peak_rss(w.pid()) < 64 << 20, "{} bytes", peak_rss(w.pid()));
    assert_eq!(c.run(&Job::new("small", "")).unwrap().len(), 4096);
}

#[test]
fn builtins_and_exec_are_served() {
    let g = Gearmand::start();
    let (w, _d, _) = start_daemon(
        &g,
        r#"
[function.echo]
builtin = "echo"
[function.reverse]
builtin = "reverse"
[function.length]
builtin = "length"
[function.env_cwd]
exec = ["sh", "-c", "printf '%s %s ' \"$GREETING\" \"$(pwd)\"; cat"]
env = { GREETING = "hi" }
cwd = "/tmp"
"#,
    );
    for f in ["echo", "reverse", "length", "env_cwd"] {
        wait_workers(&g.addr(), f, 1, &|| w.log());
    }
    let mut c = client(&g.addr());
    assert_eq!(c.run(&Job::new("echo", b"a\0b".to_vec())).unwrap(), b"a\0b");
    assert_eq!(
        c.run(&Job::new("reverse", "stressed")).unwrap(),
        b"desserts"
    );
    assert_eq!(c.run(&Job::new("length", "héllo")).unwrap(), b"6");
    assert_eq!(
        c.run(&Job::new("env_cwd", "body")).unwrap(),
        b"hi /tmp body"
    );
    // One debug line per job with function, handle and duration.
    assert!(
        wait_until(Duration::from_secs(5), || w
            .log()
            .contains("job done function=length handle=")),
        "{}",
        w.log()
    );
}

#[test]
fn exec_timeout_kills_the_child_and_fails_the_job() {
    let g = Gearmand::start();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let (w, _d, _) = start_daemon(
        &g,
        &format!(
            "[function.slow]\nexec = [\"sh\", \"-c\", \"echo $$ > {}; exec sleep 30\"]\ntimeout_ms = 2000\n",
            pidfile.display()
        ),
    );
    wait_workers(&g.addr(), "slow", 1, &|| w.log());
    let start = Instant::now();
    let e = client(&g.addr()).run(&Job::new("slow", "")).unwrap_err();
    let took = start.elapsed();
    let m = failure_text(&e);
    assert!(m.contains("timed out after 2000 ms"), "{m}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        wait_until(Duration::from_secs(3), || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.is_empty() || stat.contains(") Z ")
        }),
        "child {pid} still runs"
    );
    // The daemon keeps serving after the timeout.
    assert!(w.log().contains("timed out"), "{}", w.log());
}

#[test]
fn crashing_command_fails_one_job_and_the_daemon_keeps_serving() {
    let g = Gearmand::start();
    let (w, _d, _) = start_daemon(
        &g,
        "[function.fragile]\nexec = [\"sh\", \"-c\", \"x=$(cat); if [ \\\"$x\\\" = crash ]; then kill -SEGV $$; fi; printf ok:%s \\\"$x\\\"\"]\n",
    );
    wait_workers(&g.addr(), "fragile", 1, &|| w.log());
    let mut c = client(&g.addr());
    let e = c.run(&Job::new("fragile", "crash")).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::JobFailed), "{e:?}");
    assert_eq!(c.run(&Job::new("fragile", "fine")).unwrap(), b"ok:fine");
    assert!(w.log().contains("killed by signal 11"), "{}", w.log());
}

/// Panics on the workload "panic", echoes anything else.
#[derive(Debug)]
struct PanicsSometimes;

impl Handler for PanicsSometimes {
    fn call(&self, workload: &[u8]) -> Result<Vec<u8>, JobError> {
        if workload == b"panic" {
            panic!("handler bug");
        }
        Ok(workload.to_vec())
    }
}

#[test]
fn handler_panic_fails_one_job_and_the_worker_keeps_serving() {
    let g = Gearmand::start();
    let stats = Arc::new(Stats::default());
    let mut worker = Worker::new(
        ServerList::parse(&g.addr()).unwrap(),
        WorkerOptions::default(),
    );
    worker.register(
        "p",
        handlers::wrap(Arc::new(PanicsSometimes), stats.clone()),
    );
    let stop = worker.stop_handle();
    let t = std::thread::spawn(move || worker.run());
    wait_workers(&g.addr(), "p", 1, &String::new);
    let mut c = client(&g.addr());
    let e = c.run(&Job::new("p", "panic")).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::JobFailed), "{e:?}");
    assert_eq!(c.run(&Job::new("p", "after")).unwrap(), b"after");
    let snap = stats.snapshot();
    assert_eq!((snap["p"].ok, snap["p"].failed), (1, 1));
    stop.stop();
    t.join().unwrap().unwrap();
}

#[test]
fn concurrency_n_runs_n_slow_jobs_at_once() {
    let g = Gearmand::start();
    // Each command leaves a file in `gate` and waits (at most 10 s) until
    // four are there: it prints `together` only if four ran at once.
    let gate = tempfile::tempdir().unwrap();
    let script = format!(
        "touch {d}/$$; i=0; while [ $(ls {d} | wc -l) -lt 4 ]; do \
         i=$((i+1)); if [ $i -gt 200 ]; then echo alone; exit 0; fi; sleep 0.05; done; \
         echo together",
        d = gate.path().display()
    );
    let (w, _d, _) = start_daemon(
        &g,
        &format!(
            "[function.slow]\nexec = [\"sh\", \"-c\", {}]\nconcurrency = 4\n",
            toml_string(&script)
        ),
    );
    wait_workers(&g.addr(), "slow", 4, &|| w.log());
    let jobs: Vec<Job> = (0..4).map(|i| Job::new("slow", format!("j{i}"))).collect();
    let results = client(&g.addr()).run_all(&jobs);
    for r in results {
        assert_eq!(r.unwrap(), b"together\n");
    }
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[test]
fn sigterm_during_a_two_second_job_completes_it_and_exits_zero() {
    let g = Gearmand::start();
    let (mut w, _d, _) = start_daemon(
        &g,
        "[function.two]\nexec = [\"sh\", \"-c\", \"sleep 2; printf done:; cat\"]\n",
    );
    wait_workers(&g.addr(), "two", 1, &|| w.log());
    let addr = g.addr();
    let t = std::thread::spawn(move || client(&addr).run(&Job::new("two", "x")));
    // Wait until the job is running at the worker, then SIGTERM.
    assert!(wait_until(Duration::from_secs(5), || w
        .log()
        .contains("two")
        && running(&g.addr(), "two") == 1));
    w.signal(libc::SIGTERM);
    assert_eq!(t.join().unwrap().unwrap(), b"done:x");
    let st = w
        .wait_exit(Duration::from_secs(10))
        .expect("worker did not exit");
    assert_eq!(st.code(), Some(0), "{}", w.log());
    let log = w.log();
    assert!(log.contains("summary: function=two jobs=1 ok=1"), "{log}");
}

fn running(addr: &str, function: &str) -> u64 {
    let a = gearman_core::ServerList::parse(addr).unwrap();
    let Ok(mut admin) =
        gearman_core::admin::Admin::connect(a.iter().next().unwrap(), Duration::from_secs(2))
    else {
        return 0;
    };
    admin
        .status()
        .map(|rows| {
            rows.iter()
                .find(|r| r.function == function)
                .map_or(0, |r| r.running)
        })
        .unwrap_or(0)
}

#[test]
fn second_sigterm_stops_at_once_and_the_job_is_requeued() {
    let g = Gearmand::start();
    let (mut w, _d, _) = start_daemon(&g, "[function.long]\nexec = [\"sleep\", \"30\"]\n");
    wait_workers(&g.addr(), "long", 1, &|| w.log());
    client(&g.addr())
        .submit_background(&Job::new("long", ""))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || running(
        &g.addr(),
        "long"
    ) == 1));
    w.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "exited on the first SIGTERM"
    );
    w.signal(libc::SIGINT);
    let st = w
        .wait_exit(Duration::from_secs(5))
        .expect("no exit after the second signal");
    assert_eq!(st.code(), Some(1), "{}", w.log());
    // gearmand requeues the job of the vanished worker.
    assert!(
        wait_until(Duration::from_secs(5), || running(&g.addr(), "long") == 0
            && queued(&g.addr(), "long") == 1),
        "running {}, total {}, workers: {:?}\n{}",
        running(&g.addr(), "long"),
        queued(&g.addr(), "long"),
        gearman_core::admin::Admin::connect(
            gearman_core::ServerList::parse(&g.addr())
                .unwrap()
                .iter()
                .next()
                .unwrap(),
            Duration::from_secs(2)
        )
        .and_then(|mut a| a.workers()),
        w.log()
    );
}

#[test]
fn gearmand_restart_under_load_every_later_job_is_served() {
    let mut g = Gearmand::start();
    let (w, _d, _) = start_daemon(&g, "[function.echo]\nbuiltin = \"echo\"\nconcurrency = 2\n");
    wait_workers(&g.addr(), "echo", 2, &|| w.log());
    // Load before the restart.
    let jobs: Vec<Job> = (0..50)
        .map(|i| Job::new("echo", format!("before{i}")))
        .collect();
    for r in client(&g.addr()).run_all(&jobs) {
        r.unwrap();
    }
    let addr = g.addr();
    let loader = std::thread::spawn(move || {
        // Keeps submitting through the restart; errors are expected meanwhile.
        let mut c = client(&addr);
        for i in 0..200 {
            let _ = c.submit_background(&Job::new("echo", format!("load{i}")));
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    g.restart();
    loader.join().unwrap();
    wait_workers(&g.addr(), "echo", 2, &|| w.log());
    let jobs: Vec<Job> = (0..300)
        .map(|i| Job::new("echo", format!("after{i}")))
        .collect();
    let results = client(&g.addr()).run_all(&jobs);
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), format!("after{i}").into_bytes());
    }
}

#[test]
fn sighup_reloads_without_dropping_the_running_job() {
    let g = Gearmand::start();
    let (w, _d, cfg) = start_daemon(
        &g,
        "[function.old]\nexec = [\"sh\", \"-c\", \"sleep 2; printf old:; cat\"]\n",
    );
    wait_workers(&g.addr(), "old", 1, &|| w.log());
    let addr = g.addr();
    let t = std::thread::spawn(move || client(&addr).run(&Job::new("old", "x")));
    assert!(wait_until(Duration::from_secs(5), || running(
        &g.addr(),
        "old"
    ) == 1));

    // An invalid file is rejected and the running configuration stays.
    std::fs::write(
        &cfg,
        format!(
            "servers = [\"{}\"]\n[function.new]\nbuiltin = \"nope\"\n",
            g.addr()
        ),
    )
    .unwrap();
    w.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || w
            .log()
            .contains("reload rejected")),
        "{}",
        w.log()
    );

    std::fs::write(
        &cfg,
        format!(
            "servers = [\"{}\"]\n[function.new]\nbuiltin = \"reverse\"\n",
            g.addr()
        ),
    )
    .unwrap();
    w.signal(libc::SIGHUP);
    wait_workers(&g.addr(), "new", 1, &|| w.log());
    assert_eq!(
        client(&g.addr()).run(&Job::new("new", "abc")).unwrap(),
        b"cba"
    );
    // The job that was running when the reload came still completes.
    assert_eq!(t.join().unwrap().unwrap(), b"old:x");
    // Afterwards the old function is no longer registered.
    assert!(
        wait_until(Duration::from_secs(10), || workers_for(&g.addr(), "old")
            == 0),
        "{}",
        w.log()
    );
}

#[test]
fn grace_period_over_kills_the_command_and_exits_one() {
    let g = Gearmand::start();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let (mut w, _d, _) = start_daemon(
        &g,
        &format!(
            "shutdown_grace_ms = 500\n[function.stuck]\nexec = [\"sh\", \"-c\", \"echo $$ > {}; exec sleep 60\"]\n",
            pidfile.display()
        ),
    );
    wait_workers(&g.addr(), "stuck", 1, &|| w.log());
    client(&g.addr())
        .submit_background(&Job::new("stuck", ""))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || pidfile.exists()
        && running(&g.addr(), "stuck") == 1));
    let start = Instant::now();
    w.signal(libc::SIGTERM);
    let st = w
        .wait_exit(Duration::from_secs(10))
        .expect("no exit after the grace period");
    assert_eq!(st.code(), Some(1), "{}", w.log());
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert!(w.log().contains("grace period over"), "{}", w.log());
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    assert!(wait_until(Duration::from_secs(3), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.is_empty() || stat.contains(") Z ")
    }));
    // gearmand puts the job back in the queue.
    assert!(wait_until(Duration::from_secs(5), || queued(
        &g.addr(),
        "stuck"
    ) == 1
        && running(&g.addr(), "stuck") == 0));
}

#[test]
fn database_passwords_stay_out_of_logs_and_job_errors() {
    let g = Gearmand::start();
    // Port 1: nothing listens, so every job fails while connecting.
    let (w, _d, _) = start_daemon(
        &g,
        "[function.q]\nsql = \"SELECT $1\"\n\
         database = \"postgres://u:UserS3cret@127.0.0.1:1/app?sslmode=disable&password=QueryS3cret\"\n",
    );
    wait_workers(&g.addr(), "q", 1, &|| w.log());
    let e = client(&g.addr()).run(&Job::new("q", "x")).unwrap_err();
    let m = failure_text(&e);
    assert!(
        m.contains("connecting to postgres://u:***@127.0.0.1:1/app"),
        "{m}"
    );
    assert!(m.contains("password=***"), "{m}");
    assert!(
        wait_until(Duration::from_secs(5), || w.log().contains("job failed")),
        "{}",
        w.log()
    );
    for text in [m, w.log()] {
        assert!(!text.contains("S3cret"), "a password leaked: {text}");
    }
}
