//! A private PostgreSQL instance per test (15 by default, any major with
//! `GEARMAN_TEST_PG_BINDIR`).
//!
//! `initdb` into a fresh temporary directory, then `postgres` on a free
//! loopback port with its unix socket in that directory. PostgreSQL refuses to
//! run as root, so when the test runs as root the directory is handed to the
//! `postgres` OS user and every server program runs under that uid/gid.
//! The server is stopped (fast shutdown, then SIGKILL after 10 s) on drop.
//!
//! Authentication is `trust` for the superuser `postgres`; the database is
//! `postgres`. Server binaries come from `/usr/lib/postgresql/15/bin`
//! (Debian package `postgresql-15`), or from the directory named by the
//! environment variable `GEARMAN_TEST_PG_BINDIR` (for example
//! `/opt/postgresql-18/bin`, which `scripts/setup` installs); the server uses
//! the share and library directories of that installation, so an extension
//! installed there (`cargo pgrx install --pg-config <bindir>/pg_config`) is
//! available to `CREATE EXTENSION`.

use crate::process::{free_port, require_binary};
use std::ffi::CString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
const PACKAGE: &str = "postgresql-15";
/// Environment variable naming another PostgreSQL installation's `bin`
/// directory (it must hold `initdb`, `postgres`, `psql` and `pg_config`).
pub const BINDIR_ENV: &str = "GEARMAN_TEST_PG_BINDIR";
/// How long `start` waits for the server to accept queries.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A private PostgreSQL server (15, or the one in `GEARMAN_TEST_PG_BINDIR`) on a
/// free 127.0.0.1 port, stopped on drop.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    /// `(uid, gid)` the server runs as when the test runs as root.
    run_as: Option<(u32, u32)>,
    settings: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The `bin` directory of the PostgreSQL installation the tests use:
/// `$GEARMAN_TEST_PG_BINDIR` when set, else `/usr/lib/postgresql/15/bin`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os(BINDIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(BIN_DIR),
    }
}

/// `name` in [`bin_dir`]. With `GEARMAN_TEST_PG_BINDIR` set, only that
/// directory counts (never another PostgreSQL found on PATH).
///
/// # Panics
/// When the program is missing (names the package or the variable).
pub fn pg_binary(name: &str) -> PathBuf {
    match std::env::var_os(BINDIR_ENV) {
        Some(dir) if !dir.is_empty() => {
            let p = Path::new(&dir).join(name);
            if !p.is_file() {
                panic!(
                    "`{}` was not found ({BINDIR_ENV}={}): install that PostgreSQL \
                     (`sudo scripts/setup` installs PostgreSQL 18 into /opt/postgresql-18)",
                    p.display(),
                    Path::new(&dir).display()
                );
            }
            p
        }
        _ => require_binary(name, &[BIN_DIR], PACKAGE),
    }
}

/// `pg_config --<item>` of the installation in [`bin_dir`], e.g.
/// `pg_config("sharedir")` for the directory holding `extension/`.
///
/// # Panics
/// When `pg_config` is missing or fails.
pub fn pg_config(item: &str) -> PathBuf {
    let bin = pg_binary("pg_config");
    let out = Command::new(&bin)
        .arg(format!("--{item}"))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    if !out.status.success() {
        panic!(
            "{} --{item} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl Postgres {
    /// Starts a server with the default settings (plus `fsync=off`).
    ///
    /// # Panics
    /// When `initdb`/`postgres` are missing (names the Debian package), when
    /// `initdb` fails, or when the server does not accept queries within 30 s
    /// (the panic message carries the server log).
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// Starts a server with extra `name=value` settings, each passed as
    /// `-c name=value` (e.g. `["gearman.servers=127.0.0.1:4731"]`).
    pub fn start_with(settings: &[&str]) -> Postgres {
        let initdb = pg_binary("initdb");
        let dir = tempfile::Builder::new()
            .prefix("pg-")
            .tempdir_in("/tmp")
            .expect("temp dir for PostgreSQL");
        let run_as = postgres_user_if_root();
        if let Some((uid, gid)) = run_as {
            chown(dir.path(), uid, gid);
        }
        let mut pg = Postgres {
            port: 0,
            run_as,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            dir,
            child: None,
        };
        let out = pg
            .command(&initdb)
            .arg("-D")
            .arg(pg.data_dir())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", initdb.display()));
        if !out.status.success() {
            panic!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        pg.spawn();
        pg
    }

    /// A command that runs as the server's OS user.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
            // Avoid "could not change directory" warnings from a cwd under /root.
            cmd.current_dir(self.dir.path());
            cmd.env("HOME", self.dir.path());
        }
        cmd
    }

    fn spawn(&mut self) {
        for attempt in 0..5 {
            if attempt > 0 || self.port == 0 {
                self.port = free_port();
            }
            if self.launch(START_TIMEOUT) {
                return;
            }
        }
        panic!("PostgreSQL did not start; its log:\n{}", self.log());
    }

    /// Runs `postgres` on `self.port`; true once it answers queries.
    fn launch(&mut self, timeout: Duration) -> bool {
        let bin = pg_binary("postgres");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the PostgreSQL log file");
        let mut cmd = self.command(&bin);
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off"])
            .args(["-c", "logging_collector=off"]);
        for s in &self.settings {
            cmd.arg("-c").arg(s);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    // Exited (port taken, bad setting, ...).
                    self.child = None;
                    return false;
                }
            }
            if self.try_psql("SELECT 1").is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgresql://postgres@127.0.0.1:PORT/postgres`, accepted by the
    /// `postgres` crate's `Client::connect` and by libpq.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The same as a libpq key/value string:
    /// `host=127.0.0.1 port=PORT user=postgres dbname=postgres`.
    pub fn conn_string(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// The directory holding the unix socket (`.s.PGSQL.PORT`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Path of the server log (stdout and stderr of `postgres`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The postmaster's process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Runs `sql` with `psql` (`-X -A -t -q -v ON_ERROR_STOP=1`) over TCP
    /// and returns its stdout; `Err` carries stderr. Several statements
    /// separated by `;` run in one session.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let psql = pg_binary("psql");
        let out: Output = Command::new(&psql)
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", psql.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Like [`Postgres::try_psql`], with the output trimmed.
    ///
    /// # Panics
    /// When psql fails; the message carries psql's stderr.
    pub fn psql(&self, sql: &str) -> String {
        match self.try_psql(sql) {
            Ok(s) => s.trim_end().to_string(),
            Err(e) => panic!("psql failed for `{sql}`:\n{e}"),
        }
    }

    /// Stops the server: fast shutdown (SIGINT), SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        return;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    /// Kills the server at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..20 {
            if self.launch(START_TIMEOUT) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "PostgreSQL did not restart on port {}; log:\n{}",
            self.port,
            self.log()
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `(uid, gid)` of the `postgres` OS user when this process runs as root.
fn postgres_user_if_root() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns NULL or a pointer to a static passwd record,
    // read immediately; tests do not call getpwnam concurrently on this path
    // in a way that matters (only uid/gid are copied out).
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        panic!(
            "running as root, but there is no `postgres` OS user to run PostgreSQL as: \
             install the Debian package `{PACKAGE}` (run `sudo scripts/setup`)"
        );
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {} to the postgres user: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::Postgres;

    #[test]
    fn starts_answers_and_restarts() {
        let mut pg = Postgres::start();
        assert_eq!(pg.psql("SELECT 40 + 2"), "42");
        let port = pg.port();
        assert!(pg.url().contains(&format!(":{port}/")));
        pg.psql("CREATE TABLE t(x int); INSERT INTO t VALUES (7)");
        pg.restart();
        assert_eq!(pg.port(), port);
        assert_eq!(pg.psql("SELECT x FROM t"), "7");
        assert!(pg.try_psql("SELECT * FROM no_such_table").is_err());
        assert!(pg.log().contains("database system is ready"));
    }
}
