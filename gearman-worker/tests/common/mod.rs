//! Helpers shared by the integration tests: run the built binary, submit
//! jobs, wait for registrations.
#![allow(dead_code)]

use gearman_core::admin::Admin;
use gearman_core::{Client, Options, ServerAddr, ServerList};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of the built `gearman-worker` binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gearman-worker")
}

/// A running `gearman-worker`; its stderr goes to a file; killed on drop.
pub struct WorkerProc {
    pub child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl WorkerProc {
    /// Spawns the binary with `args` (and extra environment).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> WorkerProc {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env_remove("GEARMAN_SERVERS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        WorkerProc {
            child,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (bounded by 30 s): (status, stdout, stderr).
pub fn run_to_end(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .env_remove("GEARMAN_SERVERS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gearman-worker {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, t1.join().unwrap(), t2.join().unwrap())
}

/// A client for one server with a foreground bound of 30 s.
pub fn client(addr: &str) -> Client {
    let opts = Options {
        foreground_timeout: Some(Duration::from_secs(30)),
        ..Options::default()
    };
    Client::new(ServerList::parse(addr).unwrap(), opts)
}

/// The text of a failed job's error: the worker's WORK_WARNING message
/// that precedes its WORK_FAIL (the worker's default way to report a
/// failure with a message). Panics on any other kind of error.
pub fn failure_text(e: &gearman_core::Error) -> String {
    assert!(
        matches!(e.kind(), gearman_core::ErrorKind::JobFailed),
        "expected a failed job, got {e:?}"
    );
    e.to_string()
}

/// A client that asked for exceptions (OPTION_REQ "exceptions").
pub fn client_with_exceptions(addr: &str) -> Client {
    let opts = Options {
        foreground_timeout: Some(Duration::from_secs(30)),
        exceptions: true,
        ..Options::default()
    };
    Client::new(ServerList::parse(addr).unwrap(), opts)
}

fn server_addr(addr: &str) -> ServerAddr {
    ServerList::parse(addr)
        .unwrap()
        .iter()
        .next()
        .unwrap()
        .clone()
}

/// Workers registered for `function` on `addr` (0 if unknown or unreachable).
pub fn workers_for(addr: &str, function: &str) -> u64 {
    let Ok(mut a) = Admin::connect(&server_addr(addr), Duration::from_secs(2)) else {
        return 0;
    };
    a.status()
        .map(|rows| {
            rows.iter()
                .find(|r| r.function == function)
                .map_or(0, |r| r.workers)
        })
        .unwrap_or(0)
}

/// Queued plus running jobs of `function` on `addr`.
pub fn queued(addr: &str, function: &str) -> u64 {
    let Ok(mut a) = Admin::connect(&server_addr(addr), Duration::from_secs(2)) else {
        return 0;
    };
    a.status()
        .map(|rows| {
            rows.iter()
                .find(|r| r.function == function)
                .map_or(0, |r| r.total)
        })
        .unwrap_or(0)
}

/// Waits until `n` workers are registered for `function`, or panics with `log`.
pub fn wait_workers(addr: &str, function: &str, n: u64, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if workers_for(addr, function) >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "{n} worker(s) for {function} did not register on {addr}; worker log:\n{}",
        log()
    );
}

/// Polls `cond` every 20 ms up to `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
