//! Peer job servers that nobody here wrote, each private like [`Gearmand`]
//! (a temporary directory, a free loopback port, killed on drop):
//!
//! - [`PerlGearmand`]: Perl's Gearman::Server (Debian `gearman-server`),
//!   whose script is `/usr/bin/gearmand` (the C server is
//!   `/usr/sbin/gearmand`; this type runs the Perl one through `perl`, so it
//!   can never start the C one by mistake).
//! - [`GearServer`]: Python's `gear` job server (OpenStack's `gear` from
//!   PyPI), its `geard` from the virtualenv `scripts/setup` makes at
//!   [`GEAR_VENV`].
//!
//! A missing peer fails the test with a message to run `scripts/setup`.
//!
//! [`Gearmand`]: crate::Gearmand

use crate::process::{free_port, listener_owned_by, wait_for_port};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The Perl job server's script, installed by Debian's `gearman-server`.
pub const PERL_GEARMAND: &str = "/usr/bin/gearmand";

/// The virtualenv holding Python's `gear` (made by `scripts/setup`).
pub const GEAR_VENV: &str = "/opt/gearman-sql/venv";

/// How a peer is started: program and arguments for a given port and
/// temporary directory.
trait Launch {
    const NAME: &'static str;
    fn command(port: u16, dir: &Path) -> Command;
}

/// One running peer: the shared part of [`PerlGearmand`] and [`GearServer`].
#[derive(Debug)]
struct Peer {
    name: &'static str,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Peer {
    fn start<L: Launch>() -> Peer {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", L::NAME))
            .tempdir()
            .expect("temp dir for a peer job server");
        let mut p = Peer {
            name: L::NAME,
            port: free_port(),
            dir,
            child: None,
        };
        for attempt in 0..5 {
            if attempt > 0 {
                // The port was taken between picking and binding; pick another.
                p.port = free_port();
            }
            if p.launch::<L>(Duration::from_secs(20)) {
                return p;
            }
        }
        panic!("{} did not start; its log:\n{}", p.name, p.log());
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.name))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs the server on `self.port`; true once it accepts connections on
    /// a socket that is its own (not a stranger that took the port).
    fn launch<L: Launch>(&mut self, timeout: Duration) -> bool {
        let log = fs::File::create(self.log_path()).expect("creating the peer's log");
        let mut cmd = L::command(self.port, self.dir.path());
        let child = cmd
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} ({cmd:?}): {e}", self.name));
        let pid = child.id();
        self.child = Some(child);
        if wait_for_port(self.port, timeout) && listener_owned_by(pid, self.port) {
            return true;
        }
        self.kill();
        false
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart<L: Launch>(&mut self) {
        self.kill();
        for _ in 0..20 {
            if self.launch::<L>(Duration::from_secs(10)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} did not restart on port {}; log:\n{}",
            self.name,
            self.port,
            self.log()
        );
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Defines the public type for one peer with the common methods.
macro_rules! peer_type {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $ty(Peer);

        impl $ty {
            /// Starts the server on a free loopback port; returns once it
            /// accepts connections. Fails the test (naming `scripts/setup`)
            /// when the server is not installed.
            pub fn start() -> $ty {
                $ty(Peer::start::<$ty>())
            }

            /// `127.0.0.1:PORT`, the form server lists take.
            pub fn addr(&self) -> String {
                format!("127.0.0.1:{}", self.0.port)
            }

            /// The TCP port.
            pub fn port(&self) -> u16 {
                self.0.port
            }

            /// Path of the server's log (its stdout and stderr).
            pub fn log_path(&self) -> PathBuf {
                self.0.log_path()
            }

            /// The log so far (empty if none yet).
            pub fn log(&self) -> String {
                self.0.log()
            }

            /// The process id, while running.
            pub fn pid(&self) -> Option<u32> {
                self.0.child.as_ref().map(|c| c.id())
            }

            /// Kills the server (SIGKILL) and reaps it; the port stays
            /// reserved for [`Self::restart`].
            pub fn kill(&mut self) {
                self.0.kill();
            }

            /// Starts the server again on the same port.
            pub fn restart(&mut self) {
                self.0.restart::<$ty>();
            }
        }
    };
}

peer_type!(
    /// A private Perl Gearman::Server (Debian `gearman-server`, run as
    /// `perl /usr/bin/gearmand`), killed on drop. It knows the packets of
    /// the original Perl implementation only: no GRAB_JOB_UNIQ, no
    /// SUBMIT_JOB_EPOCH or SUBMIT_JOB_SCHED (it answers ERROR
    /// `server_error`), no admin `getpid`.
    PerlGearmand
);

impl Launch for PerlGearmand {
    const NAME: &'static str = "perl-gearmand";
    fn command(port: u16, _dir: &Path) -> Command {
        if !Path::new(PERL_GEARMAND).is_file() {
            panic!(
                "the Perl job server {PERL_GEARMAND} is not installed: install the \
                 Debian package `gearman-server` (run `sudo scripts/setup`, which \
                 installs every test dependency)"
            );
        }
        let perl = Path::new("/usr/bin/perl");
        assert!(
            perl.is_file(),
            "/usr/bin/perl is missing: run `sudo scripts/setup`"
        );
        let mut c = Command::new(perl);
        c.arg(PERL_GEARMAND)
            .arg(format!("--port={port}"))
            .arg("--listen=127.0.0.1");
        c
    }
}

peer_type!(
    /// A private Python `gear` job server (`geard -d` from the virtualenv
    /// at [`GEAR_VENV`]), killed on drop. It logs warnings and errors only
    /// (per-packet logging would grow without bound under load).
    GearServer
);

impl Launch for GearServer {
    const NAME: &'static str = "geard";
    fn command(port: u16, dir: &Path) -> Command {
        let geard = Path::new(GEAR_VENV).join("bin/geard");
        if !geard.is_file() {
            panic!(
                "Python's gear job server ({}) is not installed: run \
                 `sudo scripts/setup`, which installs `gear` from PyPI into the \
                 virtualenv {GEAR_VENV}",
                geard.display()
            );
        }
        let conf = dir.join("logging.conf");
        let log = dir.join("geard-python.log");
        fs::write(&conf, logging_conf(&log)).expect("writing geard's logging config");
        let mut c = Command::new(geard);
        c.arg("-d")
            .arg("-p")
            .arg(port.to_string())
            .arg("--listen-address")
            .arg("127.0.0.1")
            .arg("--log-config")
            .arg(conf);
        c
    }
}

/// A Python `logging.config.fileConfig` file: WARNING and above to `log`.
fn logging_conf(log: &Path) -> String {
    // Python string literal: the temp path has no quotes or backslashes,
    // but escape them anyway.
    let path = log
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('\'', "\\'");
    format!(
        "[loggers]\nkeys=root\n\n[handlers]\nkeys=file\n\n[formatters]\nkeys=plain\n\n\
         [logger_root]\nlevel=WARNING\nhandlers=file\n\n\
         [handler_file]\nclass=FileHandler\nformatter=plain\nargs=('{path}',)\n\n\
         [formatter_plain]\nformat=%(asctime)s %(levelname)s %(name)s: %(message)s\n"
    )
}

impl GearServer {
    /// What `gear` itself logged (warnings and errors), as opposed to
    /// [`GearServer::log`] (the process's stdout and stderr).
    pub fn python_log(&self) -> String {
        fs::read_to_string(self.0.dir.path().join("geard-python.log")).unwrap_or_default()
    }
}
