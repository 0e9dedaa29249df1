//! A private `gearmand` per test.

use crate::process::{free_port, require_binary, wait_for_port};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The C job server (Debian `gearman-job-server`). Always started by this
/// absolute path: Debian's `gearman-server` installs the Perl job server as
/// `/usr/bin/gearmand`, which may come first on PATH.
pub const C_GEARMAND: &str = "/usr/sbin/gearmand";

/// A private gearmand on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct Gearmand {
    port: u16,
    extra_args: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Gearmand {
    /// Starts gearmand with its defaults (memory queue, 4 I/O threads).
    pub fn start() -> Gearmand {
        Gearmand::start_with(&[])
    }

    /// Starts gearmand with extra command-line arguments (e.g. `["-j", "1"]`).
    pub fn start_with(args: &[&str]) -> Gearmand {
        let dir = tempfile::Builder::new()
            .prefix("gearmand-")
            .tempdir()
            .expect("temp dir for gearmand");
        let mut g = Gearmand {
            port: free_port(),
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            dir,
            child: None,
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        for attempt in 0..5 {
            if attempt > 0 {
                // The port was taken between picking and binding; pick another.
                self.port = free_port();
            }
            if self.launch(Duration::from_secs(10)) {
                return;
            }
        }
        panic!("gearmand did not start; its log:\n{}", self.log());
    }

    /// Runs gearmand on `self.port`; true once it accepts connections.
    fn launch(&mut self, timeout: Duration) -> bool {
        // The C server by absolute path: Debian's `gearman-server` (the Perl
        // server) installs another `gearmand` in /usr/bin.
        let bin = std::path::Path::new(C_GEARMAND);
        assert!(
            bin.is_file(),
            "the C job server {C_GEARMAND} is not installed: install the Debian package \
             `gearman-job-server` (run `sudo scripts/setup`, which installs every test dependency)"
        );
        let pid = self.dir.path().join("gearmand.pid");
        let child = Command::new(bin)
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .arg(format!("--log-file={}", self.log_path().display()))
            .arg(format!("--pid-file={}", pid.display()))
            .arg("--verbose=INFO")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {C_GEARMAND}: {e}"));
        let our_pid = child.id();
        self.child = Some(child);
        // Something accepting on the port is not enough: between picking a
        // free port and gearmand binding it, another process may take it
        // (gearmand then exits), and the tests would talk to a stranger.
        // Ask the listener for its pid.
        if wait_for_port(self.port, timeout) && listener_pid(self.port) == Some(our_pid) {
            return true;
        }
        self.kill();
        false
    }

    /// `127.0.0.1:PORT`, the form server lists take.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs Debian's `gearman` client (libgearman 1.1) against this server
    /// for one foreground job of `function` with `workload`, and returns its
    /// output. Fails the test if the client has not exited within 20 s (a
    /// libgearman client that does not match a reply waits for ever).
    pub fn run_gearman_cli(&self, function: &str, workload: &str) -> std::process::Output {
        let bin = require_binary("gearman", &["/usr/bin"], "gearman-tools");
        let port = self.port().to_string();
        let mut child = Command::new(bin)
            .args(["-h", "127.0.0.1", "-p", &port, "-f", function, workload])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting gearman");
        let t = std::time::Instant::now();
        while child.try_wait().expect("waiting for gearman").is_none() {
            if t.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`gearman -f {function}` still waited after 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("gearman's output")
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Path of gearmand's own log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gearmand.log")
    }

    /// The log so far (empty if none yet).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops gearmand with SIGSTOP and returns once every one of its
    /// threads is stopped (`kill` returns before that; a thread still
    /// running could answer one more packet). The kernel keeps accepting
    /// connections and bytes for it meanwhile. Undo with [`Gearmand::resume`].
    pub fn pause(&self) {
        let pid = self.pid().expect("gearmand is running");
        signal(pid, libc::SIGSTOP);
        let t = std::time::Instant::now();
        while !all_threads_stopped(pid) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "gearmand {pid} did not stop within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets a paused gearmand run again (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid().expect("gearmand is running"), libc::SIGCONT);
    }

    /// Kills the server (SIGKILL) and reaps it. The port stays reserved for
    /// [`Gearmand::restart`].
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (after [`Gearmand::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        // The old socket may linger briefly; retry for a few seconds.
        for _ in 0..20 {
            if self.launch(Duration::from_secs(5)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "gearmand did not restart on port {}; log:\n{}",
            self.port,
            self.log()
        );
    }
}

/// The pid of the gearmand listening on `127.0.0.1:port`, from its admin
/// `getpid` command (`OK <pid>`); `None` if the listener does not answer
/// like gearmand within two seconds.
fn listener_pid(port: u16) -> Option<u32> {
    use std::io::{BufRead, BufReader, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"getpid\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.trim().strip_prefix("OK ")?.trim().parse().ok()
}

impl Drop for Gearmand {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(pid, sig) };
    assert!(
        rc == 0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Whether every thread of `pid` is stopped (state `T` in /proc).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // `tid (comm) S ...`: the state follows the last ')'.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
    })
}
