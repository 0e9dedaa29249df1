//! The demo's private servers and processes, stopped on drop.

use gearman_testkit::{Gearmand, MariaDb, MariaDbOptions, Postgres};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Process ids to stop if the demo is interrupted (Ctrl-C, SIGTERM): the
/// signal thread terminates them, the running recipe fails, and the normal
/// drop path then removes the temporary directories.
pub static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn register(pid: Option<u32>) {
    if let Some(p) = pid {
        CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }
}

/// Sends SIGTERM to every registered process.
pub fn terminate_children() {
    for &pid in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        // SAFETY: kill(2) with a pid we spawned; a stale pid is harmless
        // here (the process is ours or gone).
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

/// A child process killed on drop.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: as above; SIGTERM lets gearman-worker finish cleanly.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything the recipes run against.
#[derive(Debug)]
pub struct Env {
    /// The job server.
    pub gearmand: Gearmand,
    /// PostgreSQL 15 with `CREATE EXTENSION gearman` done in `postgres`.
    pub pg: Postgres,
    /// MariaDB with the UDFs installed in `test`.
    pub maria: MariaDb,
    worker: Option<Proc>,
    relay: Option<Proc>,
    bin_dir: PathBuf,
    dir: tempfile::TempDir,
}

/// Where the built binaries are: `GEARMAN_DEMO_BIN_DIR`, else the directory
/// of the running executable (`target/<profile>`, also from `deps/`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GEARMAN_DEMO_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

fn need(path: &Path, how: &str) -> Result<(), String> {
    if path.exists() {
        Ok(())
    } else {
        Err(format!("{} is missing: {how}", path.display()))
    }
}

impl Env {
    /// Starts gearmand, PostgreSQL and MariaDB, installs the extension and
    /// the UDFs, creates the recipes' tables and starts the worker.
    pub fn start() -> Result<Env, String> {
        let bin_dir = bin_dir();
        let worker_bin = bin_dir.join("gearman-worker");
        let udf = bin_dir.join("libgearman_mysql_udf.so");
        need(&worker_bin, "build it with `cargo build -p gearman-worker`")?;
        need(&udf, "build it with `cargo build -p gearman-mysql`")?;
        let dir = tempfile::Builder::new()
            .prefix("gearman-demo-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;

        let gearmand = Gearmand::start();
        register(gearmand.pid());
        let servers = gearmand.addr();

        let pg = Postgres::start_with(&[&format!("gearman.servers={servers}")]);
        register(pg.pid());
        pg.try_psql("CREATE EXTENSION IF NOT EXISTS gearman").map_err(|e| {
            format!(
                "CREATE EXTENSION gearman failed ({e}); install the extension first: \
                 `cd gearman-pg && cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config`"
            )
        })?;

        let udf_conf = dir.path().join("gearman-udf.toml");
        fs::write(&udf_conf, format!("servers = \"{servers}\"\n"))
            .map_err(|e| format!("writing {}: {e}", udf_conf.display()))?;
        let maria = MariaDb::start_with(MariaDbOptions {
            env: vec![(
                "GEARMAN_UDF_CONFIG".into(),
                udf_conf.to_string_lossy().into_owned(),
            )],
            ..MariaDbOptions::default()
        });
        register(maria.pid());
        maria.install_plugin(&udf);
        let install = fs::read_to_string(repo_file("sql/mysql/install.sql"))
            .map_err(|e| format!("reading sql/mysql/install.sql: {e}"))?;
        maria
            .sql(&install)
            .map_err(|e| format!("sql/mysql/install.sql: {e}"))?;

        let mut env = Env {
            gearmand,
            pg,
            maria,
            worker: None,
            relay: None,
            bin_dir,
            dir,
        };
        env.create_schema()?;
        env.start_worker()?;
        Ok(env)
    }

    /// A new PostgreSQL connection.
    pub fn pg(&self) -> Result<postgres::Client, String> {
        postgres::Client::connect(&self.pg.conn_string(), postgres::NoTls)
            .map_err(|e| format!("connecting to PostgreSQL: {e}"))
    }

    /// A new MariaDB connection to database `test`.
    pub fn my(&self) -> Result<mysql::Conn, String> {
        let opts = mysql::Opts::from_url(&self.maria.url()).map_err(|e| e.to_string())?;
        mysql::Conn::new(opts).map_err(|e| format!("connecting to MariaDB: {e}"))
    }

    fn create_schema(&self) -> Result<(), String> {
        let mut c = self.pg()?;
        c.batch_execute(
            "CREATE SCHEMA demo;
             CREATE TABLE demo.tweets (id bigserial PRIMARY KEY, payload text NOT NULL);
             CREATE TABLE demo.log_lines (id bigserial PRIMARY KEY, line text NOT NULL);
             CREATE TABLE demo.outbox_seen (id bigserial PRIMARY KEY, payload text NOT NULL);
             CREATE TABLE demo.pipe_input (id serial PRIMARY KEY, path text NOT NULL);
             CREATE TABLE demo.pipe_docs (id serial PRIMARY KEY, path text UNIQUE NOT NULL,
                                          words int NOT NULL, tsv tsvector NOT NULL);",
        )
        .map_err(|e| format!("creating the demo schema: {e}"))
    }

    /// The worker's configuration: every function the recipes use.
    fn worker_config(&self) -> String {
        let pg = self.pg.url();
        format!(
            r#"servers = ["{servers}"]
client_id = "gearman-demo"
log_level = "info"
shutdown_grace_ms = 5000

# Recipe 1: the cookbook's queue. Each payload is stored, so it can be counted.
[function.send_tweet]
sql = "INSERT INTO demo.tweets (payload) VALUES ($1)"
database = "{pg}"
concurrency = 2

# Recipe 2: scatter/gather over documents.
[function.word_count]
exec = ["wc", "-w"]
concurrency = 4

[function.checksum]
exec = ["sha256sum"]
concurrency = 4

[function.fulltext_count]
exec = ["sh", "-c", "grep -c -i -w license || true"]
concurrency = 4

# Recipe 3: map/reduce with gman_sum.
[function.length]
builtin = "length"
concurrency = 4

# Recipe 4: the log service.
[function.log_collect]
sql = "INSERT INTO demo.log_lines (line) VALUES ($1)"
database = "{pg}"
concurrency = 2

# Recipe 5: a pipeline; each step's statement submits the next step's job.
[function.pipe_fetch]
sql = "SELECT gman_do_background('pipe_transform', json_build_object('path', j->>'path', 'body', pg_read_file(j->>'path'))::text) FROM (SELECT $1::jsonb -> 'new' AS j) s"
database = "{pg}"
concurrency = 2

[function.pipe_transform]
sql = "SELECT gman_do_background('pipe_store', jsonb_build_object('path', j->>'path', 'words', array_length(regexp_split_to_array(trim(j->>'body'), '\\s+'), 1), 'tsv', to_tsvector('english', j->>'body'))::text) FROM (SELECT $1::jsonb AS j) s"
database = "{pg}"
concurrency = 2

[function.pipe_store]
sql = "INSERT INTO demo.pipe_docs (path, words, tsv) SELECT j->>'path', (j->>'words')::int, (j->>'tsv')::tsvector FROM (SELECT $1::jsonb AS j) s ON CONFLICT (path) DO NOTHING"
database = "{pg}"
concurrency = 2

# Recipe 6: the durable outbox.
[function.outbox_sink]
sql = "INSERT INTO demo.outbox_seen (payload) VALUES ($1)"
database = "{pg}"
concurrency = 2
"#,
            servers = self.gearmand.addr(),
        )
    }

    fn start_worker(&mut self) -> Result<(), String> {
        let conf = self.dir.path().join("worker.toml");
        fs::write(&conf, self.worker_config()).map_err(|e| format!("worker.toml: {e}"))?;
        let check = Command::new(self.bin_dir.join("gearman-worker"))
            .arg("--config")
            .arg(&conf)
            .arg("--check-config")
            .output()
            .map_err(|e| format!("gearman-worker --check-config: {e}"))?;
        if !check.status.success() {
            return Err(format!(
                "the demo's worker.toml is invalid: {}",
                String::from_utf8_lossy(&check.stderr)
            ));
        }
        let p = self.spawn("worker", &["--config", &conf.to_string_lossy()])?;
        self.worker = Some(p);
        // Wait until every function has a worker registered.
        self.wait_for_workers(&["send_tweet", "length", "pipe_store", "outbox_sink"])
    }

    fn spawn(&self, name: &'static str, args: &[&str]) -> Result<Proc, String> {
        let log = self.dir.path().join(format!("{name}.log"));
        let f = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(self.bin_dir.join("gearman-worker"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().map_err(|e| e.to_string())?)
            .stderr(f)
            .spawn()
            .map_err(|e| format!("starting gearman-worker {name}: {e}"))?;
        register(Some(child.id()));
        Ok(Proc { name, child, log })
    }

    /// Starts `gearman-worker relay` for PostgreSQL's `gearman.outbox`.
    pub fn start_relay(&mut self) -> Result<(), String> {
        let url = self.pg.url();
        let p = self.spawn(
            "relay",
            &[
                "relay",
                "--postgres",
                &url,
                "--server",
                &self.gearmand.addr(),
                "--poll-interval-ms",
                "200",
            ],
        )?;
        self.relay = Some(p);
        Ok(())
    }

    /// Waits until each function has at least one registered worker.
    pub fn wait_for_workers(&self, functions: &[&str]) -> Result<(), String> {
        let addr =
            gearman_core::ServerAddr::parse(&self.gearmand.addr()).map_err(|e| e.to_string())?;
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = gearman_core::admin::Admin::connect(&addr, Duration::from_secs(2))
                .and_then(|mut a| a.status())
                .map(|st| {
                    functions
                        .iter()
                        .all(|f| st.iter().any(|s| s.function == *f && s.workers > 0))
                })
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(format!(
                    "workers for {functions:?} did not register within 20 s; worker log:\n{}",
                    self.worker_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The worker's log so far.
    pub fn worker_log(&self) -> String {
        self.worker
            .as_ref()
            .map(|p| fs::read_to_string(&p.log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The relay's log so far.
    pub fn relay_log(&self) -> String {
        self.relay
            .as_ref()
            .map(|p| {
                format!(
                    "{}:\n{}",
                    p.name,
                    fs::read_to_string(&p.log).unwrap_or_default()
                )
            })
            .unwrap_or_default()
    }
}

/// A file of the repository (the demo runs from anywhere in the tree).
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(
    timeout: Duration,
    mut f: impl FnMut() -> Result<bool, String>,
) -> Result<bool, String> {
    let end = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(true);
        }
        if Instant::now() > end {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
