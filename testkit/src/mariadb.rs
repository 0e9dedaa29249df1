//! A private MariaDB server per test.
//!
//! `mariadb-install-db` into a temporary datadir, then `mariadbd --no-defaults`
//! with its own loopback port, socket, `--plugin-dir` and error log
//! (`--user=mysql` when running as root). Never `mysqld_safe`: it would restart
//! a crashed server and hide the crash. The server is killed on drop.
//!
//! Accounts: `root@localhost` (socket, no password) and `root@127.0.0.1` (TCP,
//! no password); a database `test` exists.

use crate::process::{free_port, require_binary, wait_for_port};
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start a [`MariaDb`].
#[derive(Debug, Clone, Default)]
pub struct MariaDbOptions {
    /// Extra `mariadbd` arguments, e.g. `--max-allowed-packet=64M`.
    pub args: Vec<String>,
    /// Extra environment variables for `mariadbd` (e.g. a UDF's config path).
    pub env: Vec<(String, String)>,
    /// Shared libraries copied into the plugin dir before the server starts.
    pub plugins: Vec<PathBuf>,
}

/// A private mariadbd, killed on drop.
#[derive(Debug)]
pub struct MariaDb {
    port: u16,
    opts: MariaDbOptions,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Bound on one `mariadb` CLI invocation made by [`MariaDb::sql`].
const SQL_TIMEOUT: Duration = Duration::from_secs(120);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// uid/gid of the `mysql` system user (created by the mariadb-server package).
fn mysql_ids() -> (u32, u32) {
    let name = CString::new("mysql").expect("no NUL");
    // SAFETY: name is a valid C string; getpwnam returns null or a pointer to static storage
    // that we read immediately.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "system user `mysql` is missing: install the Debian package `mariadb-server` (run `sudo scripts/setup`)"
    );
    // SAFETY: pw is non-null.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn chown_to_mysql(path: &Path) {
    if !is_root() {
        return;
    }
    let (uid, gid) = mysql_ids();
    let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path without NUL");
    // SAFETY: c is a valid C string.
    let rc = unsafe { libc::chown(c.as_ptr(), uid, gid) };
    assert_eq!(
        rc,
        0,
        "chown {} to mysql: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Copies `src` to `dest_dir` as a *new inode* (write a temp file, then
/// rename), the way `install` does; never overwrites a loaded library in place.
pub fn install_file(src: &Path, dest_dir: &Path) -> PathBuf {
    let name = src.file_name().expect("a file name");
    let dest = dest_dir.join(name);
    let tmp = dest_dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    fs::copy(src, &tmp)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", src.display(), tmp.display()));
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).expect("chmod 0644");
    fs::rename(&tmp, &dest).unwrap_or_else(|e| panic!("renaming into {}: {e}", dest.display()));
    dest
}

impl MariaDb {
    /// Starts a server with default options.
    pub fn start() -> MariaDb {
        MariaDb::start_with(MariaDbOptions::default())
    }

    /// Starts a server: fresh datadir, free port, plugins installed.
    pub fn start_with(opts: MariaDbOptions) -> MariaDb {
        let dir = tempfile::Builder::new()
            .prefix("mariadb-")
            .tempdir()
            .expect("temp dir for mariadb");
        {
            use std::os::unix::fs::PermissionsExt;
            // mariadbd runs as `mysql`: it must reach the directory.
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
                .expect("chmod temp dir");
        }
        chown_to_mysql(dir.path());
        let plugin_dir = dir.path().join("plugin");
        fs::create_dir(&plugin_dir).expect("plugin dir");
        for p in &opts.plugins {
            install_file(p, &plugin_dir);
        }
        let datadir = dir.path().join("data");
        fs::create_dir(&datadir).expect("datadir");
        chown_to_mysql(&datadir);
        // A private tmpdir: internal temporary tables never meet another
        // instance's (or another test's /tmp clean-up).
        let tmpdir = dir.path().join("tmp");
        fs::create_dir(&tmpdir).expect("tmpdir");
        chown_to_mysql(&tmpdir);

        let install = require_binary("mariadb-install-db", &["/usr/bin"], "mariadb-server");
        let mut cmd = Command::new(&install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .arg(format!("--tmpdir={}", tmpdir.display()))
            .stdin(Stdio::null());
        if is_root() {
            cmd.arg("--user=mysql");
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", install.display()));
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let mut m = MariaDb {
            port: free_port(),
            opts,
            dir,
            child: None,
        };
        m.spawn();
        m.run_cli(
            None,
            "CREATE DATABASE IF NOT EXISTS test; \
             CREATE USER IF NOT EXISTS root@'127.0.0.1'; \
             GRANT ALL PRIVILEGES ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;",
        )
        .unwrap_or_else(|e| panic!("bootstrapping accounts: {e}"));
        m
    }

    fn spawn(&mut self) {
        for attempt in 0..5 {
            if attempt > 0 {
                self.port = free_port();
            }
            if self.launch(Duration::from_secs(60)) {
                return;
            }
        }
        panic!(
            "mariadbd did not start; its error log:\n{}",
            self.error_log()
        );
    }

    fn launch(&mut self, timeout: Duration) -> bool {
        let bin = require_binary("mariadbd", &["/usr/sbin"], "mariadb-server");
        let _ = fs::remove_file(self.socket());
        let mut cmd = Command::new(&bin);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.datadir().display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("mariadbd.pid").display()
            ))
            .arg(format!("--plugin-dir={}", self.plugin_dir().display()))
            .arg(format!("--log-error={}", self.error_log_path().display()))
            .arg(format!(
                "--tmpdir={}",
                self.dir.path().join("tmp").display()
            ))
            .arg("--skip-name-resolve")
            .arg("--skip-log-bin")
            .arg("--innodb-buffer-pool-size=64M")
            .arg("--innodb-log-file-size=32M")
            .arg("--innodb-flush-log-at-trx-commit=2")
            .args(&self.opts.args)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            cmd.arg("--user=mysql");
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.process_running() {
                break;
            }
            if self.socket().exists() && wait_for_port(self.port, Duration::from_millis(100)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }

    fn process_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `mysql://root@127.0.0.1:PORT/test`, for the `mysql` client crate.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/test", self.port)
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Unix socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mariadbd.sock")
    }

    /// The `--plugin-dir` (holds UDF libraries).
    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.path().join("plugin")
    }

    /// The datadir.
    pub fn datadir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Copies a library into the plugin dir as a new inode (like `install`).
    /// Returns the file name to use in `CREATE FUNCTION ... SONAME`.
    pub fn install_plugin(&self, lib: &Path) -> String {
        let dest = install_file(lib, &self.plugin_dir());
        dest.file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned()
    }

    /// Path of the server's error log.
    pub fn error_log_path(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    /// The error log so far.
    pub fn error_log(&self) -> String {
        fs::read(self.error_log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The server's process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs and answers `SELECT 1`.
    pub fn is_alive(&mut self) -> bool {
        self.process_running()
            && self
                .sql("SELECT 1")
                .map(|s| s.trim() == "1")
                .unwrap_or(false)
    }

    /// Runs SQL through the `mariadb` command-line client over the socket as
    /// root in database `test` (batch mode, no column names). Returns stdout,
    /// or the client's stderr when it fails. Bounded by two minutes.
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        self.run_cli(Some("test"), sql)
    }

    fn run_cli(&self, database: Option<&str>, sql: &str) -> Result<String, String> {
        let bin = require_binary("mariadb", &["/usr/bin"], "mariadb-client");
        let mut child = Command::new(&bin)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-u", "root", "--batch", "--skip-column-names"])
            .args(database.map(|d| format!("--database={d}")))
            .arg("-e")
            .arg(sql)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = stdout.read_to_end(&mut v);
            v
        });
        let err_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = stderr.read_to_end(&mut v);
            v
        });
        let deadline = Instant::now() + SQL_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "mariadb client timed out after {SQL_TIMEOUT:?}: {sql}"
                    ));
                }
            }
        };
        let out = out_t.join().unwrap_or_default();
        let err = err_t.join().unwrap_or_default();
        if status.success() {
            Ok(String::from_utf8_lossy(&out).into_owned())
        } else {
            Err(String::from_utf8_lossy(&err).into_owned())
        }
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGTERM (clean shutdown), SIGKILL after 30 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts the server again: same datadir, same port if free.
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..20 {
            if self.launch(Duration::from_secs(60)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("mariadbd did not restart; error log:\n{}", self.error_log());
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}
