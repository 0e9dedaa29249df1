//! Benchmark of background dispatch from PostgreSQL triggers (issue 15),
//! side by side in one run: one private gearmand (`/usr/sbin/gearmand`, no
//! worker: background jobs queue inside it) and two private PostgreSQL
//! clusters, one plain and one started with `shared_preload_libraries =
//! gearman` (the configuration in which the extension's dispatcher runs).
//! Prints figures; asserts nothing. Delivery is checked by gearmand's admin
//! `status`: the function's queue must grow by exactly the jobs committed.
//!
//! Needs the release build of the extension installed into the PostgreSQL
//! in use (15, or the one `GEARMAN_TEST_PG_BINDIR` names);
//! `scripts/bench.d/pg-dispatch.sh` (`scripts/bench pg-dispatch`) does both
//! steps:
//!
//! ```text
//! cd gearman-pg
//! cargo pgrx install --release --pg-config /opt/postgresql-18/bin/pg_config
//! GEARMAN_TEST_PG_BINDIR=/opt/postgresql-18/bin cargo run --release --example bench_dispatch -- \
//!     [--sessions 8] [--rows 2000] [--rounds 1] [--single 5000] [--bulk 50000] \
//!     [--calls 10000] [--hashtable-buckets 1000003] [--pin]
//! ```
//!
//! `--pin` (2 CPUs or more): the PostgreSQL servers on CPU 0, gearmand, the
//! dispatcher and this client on CPU 1, so the job server and the
//! dispatcher do not compete with the backends (see [`pin`]).
//!
//! Parts:
//! 1. `--sessions` concurrent sessions (threads), each `--rows` single-row
//!    autocommit INSERTs, into (a) a plain table, (b) the same table with an
//!    AFTER INSERT FOR EACH ROW PL/pgSQL trigger that does nothing, (c) with
//!    a trigger calling `gman_do_background('bench_fn', NEW.payload)` under
//!    `gearman.dispatch = 'commit'`, (d) the same under `immediate`, (b') the
//!    no-op trigger on the preloaded cluster, (e) the `commit` trigger on
//!    the preloaded cluster (through the dispatcher) and (e') the same with
//!    `SET gearman.use_dispatcher = off` (each backend writes its own jobs,
//!    as without the preload), (f) on the preloaded cluster a trigger that
//!    does `PERFORM concat('bench_fn', NEW.payload)`: the same PL/pgSQL
//!    call of a function of the same arguments, without dispatching (what
//!    the MariaDB benchmark's `SET @ret = CONCAT(...)` trigger is there);
//!    `--rounds` rounds, phases alternating. Per
//!    phase: INSERTs/s, ratio to (b) (for (e) and (e') also to (b')),
//!    gearmand CPU per job (utime + stime of the gearmand process from
//!    `/proc/<pid>/stat` from the phase's start until gearmand queued its
//!    last job, divided by the jobs), the largest numbers of gearmand
//!    connections of PostgreSQL backends (client id `postgres-<pid>`) and
//!    of the dispatcher (`postgres-dispatcher-<pid>`) seen (the admin
//!    `workers` list, polled every 50 ms from another thread), the
//!    dispatcher process's CPU per job (utime + stime, as gearmand's; for
//!    (e) and (e'), whose sessions may or may not use it), the sessions'
//!    backends' CPU per INSERT (`/proc/<pid>/schedstat`), and jobs
//!    delivered vs committed; then the preloaded cluster's dispatcher
//!    counters (`gman_dispatch_status()`).
//! 2. One session, `--single` INSERTs per phase and round: µs per INSERT
//!    for (b), (c), (b'), (e), (e') (mean over the rounds, and each round),
//!    and the overheads (c)-(b), (e)-(b), (e)-(b'), (e')-(b').
//! 3. Bulk: `SELECT count(gman_do_background('bench_bulk', 'p'||i)) FROM
//!    generate_series(1, --bulk) i` in `commit` dispatch (one statement, its
//!    own transaction) on each cluster, timed until gearmand has queued
//!    every job, against the raw pipelined ceiling measured in the same run
//!    (the faster of a raw socket writing 1,000 submissions per write and
//!    gearman-core's `Client::submit_background_all`, both until every
//!    JOB_CREATED is read).
//! 4. Non-regression, 4 echo workers: `--calls` rows of per-row `gman_do`,
//!    and `--calls` jobs of `immediate` `gman_do_background` in one
//!    statement, on each cluster, per round.
//!
//! gearmand is started with `--hashtable-buckets 1000003` by default
//! (`commit` dispatch sends every job with a unique key, and gearmand's
//! default table of 991 buckets slows keyed jobs as they pile up; `0` keeps
//! gearmand's default).

mod common;

use common::{arg, create_extension, load_average, server_version, start_echo_workers};
use gearman_core::admin::Admin;
use gearman_core::{Client, Job, Options, ServerAddr, ServerList};
use gearman_testkit::{cpu_seconds, raw, Gearmand, Postgres};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// The function the triggers call.
const FUNCTION: &str = "bench_fn";
/// How long a phase waits for gearmand to have queued its jobs.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);

const SCHEMA: &str = "
    CREATE TABLE bench_plain (payload text);
    CREATE TABLE bench_noop (payload text);
    CREATE FUNCTION bench_noop() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RETURN NULL; END $$;
    CREATE TRIGGER bench_noop AFTER INSERT ON bench_noop
        FOR EACH ROW EXECUTE FUNCTION bench_noop();
    CREATE TABLE bench_trig (payload text);
    CREATE FUNCTION bench_job() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM gman_do_background('bench_fn', NEW.payload); RETURN NULL; END $$;
    CREATE TRIGGER bench_job AFTER INSERT ON bench_trig
        FOR EACH ROW EXECUTE FUNCTION bench_job();
    CREATE TABLE bench_concat (payload text);
    CREATE FUNCTION bench_concat() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM concat('bench_fn', NEW.payload); RETURN NULL; END $$;
    CREATE TRIGGER bench_concat AFTER INSERT ON bench_concat
        FOR EACH ROW EXECUTE FUNCTION bench_concat();";

/// gearmand, its admin connection for `status`, and both clusters.
struct Rig {
    g: Gearmand,
    admin: Admin,
    pid: u32,
    /// [plain cluster, preloaded cluster].
    pg: [Postgres; 2],
    /// The preloaded cluster's dispatcher process, if it has one.
    dispatcher_pid: Option<u32>,
}

impl Rig {
    /// Jobs gearmand holds for `function` (queued or running).
    fn queued(&mut self, function: &str) -> u64 {
        self.admin
            .status()
            .expect("gearmand status")
            .iter()
            .find(|f| f.function == function)
            .map_or(0, |f| f.total)
    }

    /// Polls `status` every `poll` until `function` holds `want` jobs or
    /// [`DELIVERY_DEADLINE`] passed; returns the last count.
    fn wait_queued(&mut self, function: &str, want: u64, poll: Duration) -> u64 {
        let t = Instant::now();
        loop {
            let q = self.queued(function);
            if q >= want || t.elapsed() > DELIVERY_DEADLINE {
                return q;
            }
            std::thread::sleep(poll);
        }
    }

    fn connect(&self, cluster: usize) -> postgres::Client {
        postgres::Client::connect(&self.pg[cluster].url(), postgres::NoTls).expect("connect")
    }
}

/// Polls gearmand's `workers` (one line per connection, with its client
/// id) every 50 ms and keeps the largest number of PostgreSQL backend
/// connections (client id `postgres-<pid>`) and of dispatcher connections
/// (`postgres-dispatcher-<pid>`) seen since the last [`ConnWatch::take`].
struct ConnWatch {
    max: Arc<[AtomicUsize; 2]>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConnWatch {
    fn start(addr: ServerAddr) -> ConnWatch {
        let max = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (max, stop) = (max.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut a = Admin::connect(&addr, Duration::from_secs(5)).expect("admin");
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(w) = a.workers() {
                        let dispatchers = w
                            .iter()
                            .filter(|w| w.client_id.starts_with("postgres-dispatcher-"))
                            .count();
                        let backends = w
                            .iter()
                            .filter(|w| w.client_id.starts_with("postgres-"))
                            .count()
                            - dispatchers;
                        max[0].fetch_max(backends, Ordering::Relaxed);
                        max[1].fetch_max(dispatchers, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        ConnWatch {
            max,
            stop,
            thread: Some(thread),
        }
    }

    /// The largest (backend, dispatcher) connection counts since the last
    /// call, and starts over.
    fn take(&self) -> (usize, usize) {
        (
            self.max[0].swap(0, Ordering::Relaxed),
            self.max[1].swap(0, Ordering::Relaxed),
        )
    }
}

impl Drop for ConnWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `sessions` new sessions of `cluster`, each running `set` first, then
/// `rows` single-row autocommit INSERTs into `table`; returns the wall
/// time from the moment all are connected until the last is done.
fn run_sessions(
    rig: &Rig,
    cluster: usize,
    table: &str,
    set: &str,
    sessions: usize,
    rows: usize,
    tag: &str,
) -> (Duration, f64) {
    let barrier = Arc::new(Barrier::new(sessions + 1));
    let mut backends = Vec::new();
    let threads: Vec<_> = (0..sessions)
        .map(|k| {
            let mut db = rig.connect(cluster);
            db.batch_execute(set).unwrap();
            let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
            backends.push(pid as u32);
            let stmt = db
                .prepare(&format!("INSERT INTO {table} (payload) VALUES ($1)"))
                .unwrap();
            let b = barrier.clone();
            let tag = format!("{tag}-s{k}-");
            std::thread::spawn(move || {
                b.wait();
                for i in 0..rows {
                    db.execute(&stmt, &[&format!("{tag}{i}")]).unwrap();
                }
                // Kept open until its CPU is read.
                db
            })
        })
        .collect();
    let on_cpu = |pids: &[u32]| pids.iter().map(|&p| on_cpu_ns(p)).sum::<u64>();
    let c0 = on_cpu(&backends);
    barrier.wait();
    let t = Instant::now();
    let dbs: Vec<_> = threads.into_iter().map(|th| th.join().unwrap()).collect();
    let wall = t.elapsed();
    let cpu = (on_cpu(&backends) - c0) as f64 / 1e9;
    drop(dbs);
    (wall, cpu)
}

/// Time a process has spent on a CPU, in ns (`/proc/<pid>/schedstat`:
/// nanosecond resolution, where `/proc/<pid>/stat` counts 10 ms ticks).
fn on_cpu_ns(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .expect("schedstat")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat's first field")
}

/// One INSERT phase: which cluster, table and session settings.
struct Phase {
    label: &'static str,
    cluster: usize,
    table: &'static str,
    set: &'static str,
}

impl Phase {
    fn dispatches(&self) -> bool {
        self.table == "bench_trig"
    }
}

/// What a phase measured (summed over rounds).
#[derive(Default, Clone)]
struct Measured {
    wall: Duration,
    cpu: f64,
    /// CPU seconds of the preloaded cluster's dispatcher process.
    dispatcher_cpu: f64,
    /// CPU seconds of the sessions' backends.
    backend_cpu: f64,
    rows: u64,
    /// Largest (backend, dispatcher) gearmand connection counts.
    max_conns: (usize, usize),
    delivered: u64,
}

/// Runs `phase` once; `expected` rows and, for a dispatching phase, as many
/// jobs.
fn measure(
    rig: &mut Rig,
    watch: &ConnWatch,
    phase: &Phase,
    sessions: usize,
    rows: usize,
    tag: &str,
    m: &mut Measured,
) {
    let expected = (sessions * rows) as u64;
    let q0 = rig.queued(FUNCTION);
    let c0 = cpu_seconds(rig.pid);
    let d0 = rig.dispatcher_pid.map_or(0.0, try_cpu_seconds);
    watch.take();
    let (wall, backend_cpu) = run_sessions(
        rig,
        phase.cluster,
        phase.table,
        phase.set,
        sessions,
        rows,
        tag,
    );
    m.wall += wall;
    m.backend_cpu += backend_cpu;
    let q = if phase.dispatches() {
        rig.wait_queued(FUNCTION, q0 + expected, Duration::from_millis(5))
    } else {
        rig.queued(FUNCTION)
    };
    m.cpu += cpu_seconds(rig.pid) - c0;
    m.dispatcher_cpu += rig.dispatcher_pid.map_or(0.0, try_cpu_seconds) - d0;
    m.rows += expected;
    let (b, d) = watch.take();
    m.max_conns = (m.max_conns.0.max(b), m.max_conns.1.max(d));
    m.delivered += q - q0;
}

/// `--pin`: the PostgreSQL servers (postmaster and every process, and so
/// every backend it starts later) on CPU 0; gearmand, the dispatcher and
/// this client on CPU 1. Shows what the hand-off costs the database's own
/// CPU when the job server and the dispatcher do not compete with the
/// backends for it (as with gearmand on another host and a spare core for
/// the dispatcher). Needs `taskset` (util-linux) and 2 CPUs or more.
fn pin(rig: &Rig) {
    fn taskset(cpu: &str, pid: u32) {
        let ok = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", cpu, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "taskset -a -p -c {cpu} {pid} failed");
    }
    for pg in &rig.pg {
        let pm = pg.pid().expect("postmaster pid");
        taskset("0", pm);
        let children = std::process::Command::new("pgrep")
            .args(["-P", &pm.to_string()])
            .output()
            .expect("pgrep");
        for c in String::from_utf8_lossy(&children.stdout).split_whitespace() {
            taskset("0", c.parse().expect("pgrep prints pids"));
        }
    }
    taskset("1", rig.pid);
    if let Some(d) = rig.dispatcher_pid {
        taskset("1", d);
    }
    taskset("1", std::process::id());
    println!(
        "pinned: PostgreSQL (both clusters) on CPU 0; gearmand, the dispatcher (pid {:?}) and \
         this client on CPU 1",
        rig.dispatcher_pid
    );
}

fn main() {
    let sessions = arg("--sessions", 8).max(1);
    let rows = arg("--rows", 2000).max(1);
    let rounds = arg("--rounds", 1).max(1);
    let single = arg("--single", 5000).max(1);
    let bulk = arg("--bulk", 50_000).max(1);
    let calls = arg("--calls", 10_000).max(1);
    let buckets = arg("--hashtable-buckets", 1_000_003);

    let g = if buckets > 0 {
        Gearmand::start_with(&["--hashtable-buckets", &buckets.to_string()])
    } else {
        Gearmand::start()
    };
    let addr = ServerAddr::parse(&g.addr()).unwrap();
    let mut admin = Admin::connect(&addr, Duration::from_secs(5)).expect("admin");
    let version = admin.version().unwrap_or_default();
    let pid = g.pid().expect("gearmand pid");
    let watch = ConnWatch::start(addr.clone());
    let servers = format!("gearman.servers={}", g.addr());
    let plain = Postgres::start_with(&[&servers]);
    let preload = Postgres::start_with(&["shared_preload_libraries=gearman", &servers]);
    let mut rig = Rig {
        g,
        admin,
        pid,
        pg: [plain, preload],
        dispatcher_pid: None,
    };
    for pg in &rig.pg {
        create_extension(pg);
        pg.psql(SCHEMA);
    }
    let mut db = [rig.connect(0), rig.connect(1)];
    let pg_version = server_version(&mut db[0]);
    let preloaded: String = db[1]
        .query_one("SHOW shared_preload_libraries", &[])
        .unwrap()
        .get(0);
    let dispatcher: Vec<(String, i32)> = db[1]
        .query(
            "SELECT backend_type, pid FROM pg_stat_activity WHERE backend_type ILIKE '%gearman%'",
            &[],
        )
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default();
    rig.dispatcher_pid = dispatcher.first().map(|d| d.1 as u32);
    let dispatcher: Vec<String> = dispatcher
        .iter()
        .map(|(t, pid)| format!("{t} (pid {pid})"))
        .collect();
    println!(
        "gearmand {version} at {} (--hashtable-buckets {}), no worker / PostgreSQL {pg_version}: \
         cluster 1 on port {} without preload, cluster 2 on port {} with \
         shared_preload_libraries = '{preloaded}' ({}); load average {} at the start",
        rig.g.addr(),
        if buckets > 0 {
            buckets.to_string()
        } else {
            "991, the default".into()
        },
        rig.pg[0].port(),
        rig.pg[1].port(),
        if dispatcher.is_empty() {
            "no gearman process in pg_stat_activity".to_string()
        } else {
            format!("in pg_stat_activity: {}", dispatcher.join(", "))
        },
        load_average()
    );
    if std::env::args().any(|a| a == "--pin") {
        pin(&rig);
    }

    // 1. Concurrent sessions.
    const COMMIT: &str = "SET gearman.dispatch = 'commit'";
    let phases = [
        Phase {
            label: "(a) plain table",
            cluster: 0,
            table: "bench_plain",
            set: COMMIT,
        },
        Phase {
            label: "(b) no-op PL/pgSQL trigger",
            cluster: 0,
            table: "bench_noop",
            set: COMMIT,
        },
        Phase {
            label: "(c) trigger, commit",
            cluster: 0,
            table: "bench_trig",
            set: COMMIT,
        },
        Phase {
            label: "(d) trigger, immediate",
            cluster: 0,
            table: "bench_trig",
            set: "SET gearman.dispatch = 'immediate'",
        },
        Phase {
            label: "(b') no-op trigger, preloaded",
            cluster: 1,
            table: "bench_noop",
            set: COMMIT,
        },
        Phase {
            label: "(e) trigger, commit, preloaded",
            cluster: 1,
            table: "bench_trig",
            set: COMMIT,
        },
        Phase {
            label: "(e') (e), use_dispatcher off",
            cluster: 1,
            table: "bench_trig",
            set: "SET gearman.dispatch = 'commit'; SET gearman.use_dispatcher = off",
        },
        Phase {
            label: "(f) PERFORM concat(), preloaded",
            cluster: 1,
            table: "bench_concat",
            set: COMMIT,
        },
    ];
    println!(
        "\n1. {sessions} concurrent sessions x {rows} single-row INSERTs (autocommit) x {rounds} \
         round(s) per phase, phases alternating"
    );
    let mut got = vec![Measured::default(); phases.len()];
    for r in 0..rounds {
        for (k, p) in phases.iter().enumerate() {
            let tag = format!("p1-r{r}-{k}");
            measure(&mut rig, &watch, p, sessions, rows, &tag, &mut got[k]);
        }
    }
    let rate = |m: &Measured| m.rows as f64 / m.wall.as_secs_f64();
    let (rb, rb2) = (rate(&got[1]), rate(&got[4]));
    println!(
        "   {:<31} {:>11} {:>9} {:>12} {:>14} {:>14} {:>13} {:>19}",
        "phase",
        "INSERTs/s",
        "vs (b)",
        "backend CPU",
        "gearmand CPU",
        "dispatcher CPU",
        "gearmand conns",
        "jobs delivered"
    );
    println!(
        "   {:<31} {:>11} {:>9} {:>12} {:>14} {:>14} {:>13} {:>19}",
        "", "", "", "per INSERT", "per job", "per job", "backends+disp", "/ committed"
    );
    for (p, m) in phases.iter().zip(&got) {
        let disp = if p.cluster == 1 && p.dispatches() && rig.dispatcher_pid.is_some() {
            format!("{:.1} µs", m.dispatcher_cpu * 1e6 / m.rows as f64)
        } else {
            "-".into()
        };
        let (cpu, jobs) = if p.dispatches() {
            (
                format!("{:.1} µs", m.cpu * 1e6 / m.rows as f64),
                format!(
                    "{} / {}{}",
                    m.delivered,
                    m.rows,
                    if m.delivered == m.rows {
                        ""
                    } else {
                        " MISSING"
                    }
                ),
            )
        } else {
            (
                format!("({:.0} ms)", m.cpu * 1e3),
                format!("{} / 0", m.delivered),
            )
        };
        println!(
            "   {:<31} {:>11.0} {:>9.2} {:>12} {:>14} {:>14} {:>13} {:>19}",
            p.label,
            rate(m),
            rate(m) / rb,
            format!("{:.1} µs", m.backend_cpu * 1e6 / m.rows as f64),
            cpu,
            disp,
            format!("{} + {}", m.max_conns.0, m.max_conns.1),
            jobs
        );
    }
    println!(
        "   on the preloaded cluster, vs (b'): (e) {:.2}, (e') {:.2}",
        rate(&got[5]) / rb2,
        rate(&got[6]) / rb2
    );
    println!(
        "   (e) vs (f), the trigger that PERFORMs a function of the same arguments without \
         dispatching: {:.2}; (f) vs (b'): {:.2}",
        rate(&got[5]) / rate(&got[7]),
        rate(&got[7]) / rb2
    );
    let per_row = |m: &Measured| m.backend_cpu / m.rows as f64;
    println!(
        "   backends' own CPU per INSERT, (b') over (e): {:.2} (the rate ratio (e) would reach \
         if gearmand and the dispatcher used no CPU of the database's)",
        per_row(&got[4]) / per_row(&got[5])
    );
    println!("   cluster 2: {}", dispatch_status(&mut db[1]));

    // 2. One session.
    println!(
        "\n2. one session, {single} single-row INSERTs (autocommit) per phase x {rounds} \
         round(s), phases alternating"
    );
    let single_phases = [&phases[1], &phases[2], &phases[4], &phases[5], &phases[6]];
    let mut got = vec![Measured::default(); single_phases.len()];
    let mut per_round = vec![Vec::new(); single_phases.len()];
    for r in 0..rounds {
        for (k, p) in single_phases.iter().enumerate() {
            let before = got[k].wall;
            let tag = format!("p2-r{r}-{k}");
            measure(&mut rig, &watch, p, 1, single, &tag, &mut got[k]);
            per_round[k].push((got[k].wall - before).as_secs_f64() * 1e6 / single as f64);
        }
    }
    let us: Vec<f64> = got
        .iter()
        .map(|m| m.wall.as_secs_f64() * 1e6 / m.rows as f64)
        .collect();
    for (k, p) in single_phases.iter().enumerate() {
        let rounds: Vec<String> = per_round[k].iter().map(|x| format!("{x:.1}")).collect();
        println!(
            "   {:<31} {:>7.1} µs/INSERT (rounds: {}){}",
            p.label,
            us[k],
            rounds.join(", "),
            if p.dispatches() {
                format!(
                    "; jobs delivered {} / {}, gearmand CPU {:.1} µs per job{}",
                    got[k].delivered,
                    got[k].rows,
                    got[k].cpu * 1e6 / got[k].rows as f64,
                    if p.cluster == 1 && rig.dispatcher_pid.is_some() {
                        format!(
                            ", dispatcher CPU {:.1} µs per job",
                            got[k].dispatcher_cpu * 1e6 / got[k].rows as f64
                        )
                    } else {
                        String::new()
                    }
                )
            } else {
                String::new()
            }
        );
    }
    println!(
        "   overhead (c)-(b) {:+.1} µs, (e)-(b) {:+.1} µs, (e)-(b') {:+.1} µs, (e')-(b') {:+.1} µs \
         per INSERT",
        us[1] - us[0],
        us[3] - us[0],
        us[3] - us[2],
        us[4] - us[2]
    );
    drop(watch);

    // 3. Bulk.
    println!(
        "\n3. bulk: {bulk} jobs in one statement, commit dispatch, vs the raw pipelined ceiling"
    );
    let raw = raw::pipelined_background(&rig.g.addr(), "bench_raw", bulk, 1000);
    let mut core = Client::new(
        ServerList::parse(&rig.g.addr()).unwrap(),
        Options::default(),
    );
    core.submit_background(&Job::new("bench_warm", "x"))
        .expect("submit");
    let jobs: Vec<Job> = (0..bulk)
        .map(|i| Job::new("bench_core", format!("p{i}")))
        .collect();
    let t = Instant::now();
    for r in core.submit_background_all(&jobs) {
        r.expect("submit_background_all");
    }
    let pipelined = t.elapsed();
    let per_s = |d: Duration| bulk as f64 / d.as_secs_f64();
    let ceiling = per_s(raw).max(per_s(pipelined));
    println!(
        "   raw socket, 1,000 submissions per write   {:>9.0} jobs/s",
        per_s(raw)
    );
    println!(
        "   core submit_background_all (pipelined)    {:>9.0} jobs/s",
        per_s(pipelined)
    );
    for (k, name) in ["cluster 1 (no preload)", "cluster 2 (preloaded)"]
        .into_iter()
        .enumerate()
    {
        db[k]
            .batch_execute("SET gearman.dispatch = 'commit'")
            .unwrap();
        let function = format!("bench_bulk{k}");
        let q0 = rig.queued(&function);
        let c0 = cpu_seconds(rig.pid);
        let sql = format!(
            "SELECT count(gman_do_background('{function}', 'p'||i)) \
             FROM generate_series(1, {bulk}) i"
        );
        let t = Instant::now();
        let n: i64 = db[k].query_one(sql.as_str(), &[]).unwrap().get(0);
        let returned = t.elapsed();
        let q = rig.wait_queued(&function, q0 + bulk as u64, Duration::from_millis(1));
        let all = t.elapsed();
        let cpu = cpu_seconds(rig.pid) - c0;
        assert_eq!(n as usize, bulk);
        println!(
            "   SQL commit, {name:<23} {:>9.0} jobs/s = {:.2} of the ceiling (statement returned \
             after {:.0} ms, all queued after {:.0} ms; delivered {} / {bulk}; gearmand CPU \
             {:.1} µs per job)",
            per_s(all),
            per_s(all) / ceiling,
            returned.as_secs_f64() * 1e3,
            all.as_secs_f64() * 1e3,
            q - q0,
            cpu * 1e6 / bulk as f64
        );
    }

    println!("   cluster 2: {}", dispatch_status(&mut db[1]));

    // 4. Non-regression: foreground gman_do and immediate dispatch.
    println!(
        "\n4. non-regression, {calls} calls per figure x {rounds} round(s), clusters \
         alternating, 4 echo workers"
    );
    let stops = start_echo_workers(&rig.g.addr(), "echo", 4);
    std::thread::sleep(Duration::from_millis(300));
    let mut fg = [Duration::ZERO; 2];
    let mut imm = [Duration::ZERO; 2];
    let mut delivered = [0u64; 2];
    for c in &mut db {
        c.batch_execute("SET gearman.dispatch = 'immediate'")
            .unwrap();
        c.query_one("SELECT gman_do('echo', 'warm')", &[]).unwrap();
    }
    for _ in 0..rounds {
        for k in 0..2 {
            let sql =
                format!("SELECT count(gman_do('echo', 'p'||i)) FROM generate_series(1, {calls}) i");
            let t = Instant::now();
            let n: i64 = db[k].query_one(sql.as_str(), &[]).unwrap().get(0);
            fg[k] += t.elapsed();
            assert_eq!(n as usize, calls);
            let function = format!("bench_imm{k}");
            let q0 = rig.queued(&function);
            let sql = format!(
                "SELECT count(gman_do_background('{function}', 'p'||i)) \
                 FROM generate_series(1, {calls}) i"
            );
            let t = Instant::now();
            let n: i64 = db[k].query_one(sql.as_str(), &[]).unwrap().get(0);
            imm[k] += t.elapsed();
            assert_eq!(n as usize, calls);
            delivered[k] += rig.queued(&function) - q0;
        }
    }
    let n = (calls * rounds) as f64;
    for (k, name) in ["cluster 1 (no preload)", "cluster 2 (preloaded)"]
        .into_iter()
        .enumerate()
    {
        println!(
            "   {name:<23} gman_do per row {:>7.0} calls/s; immediate gman_do_background {:>7.0} \
             jobs/s (delivered {} / {})",
            n / fg[k].as_secs_f64(),
            n / imm[k].as_secs_f64(),
            delivered[k],
            calls * rounds
        );
    }
    for s in &stops {
        s.stop();
    }
    println!("\nload average {} at the end", load_average());
}

/// [`cpu_seconds`] of a process that may have exited (0 then).
fn try_cpu_seconds(pid: u32) -> f64 {
    if std::path::Path::new(&format!("/proc/{pid}/stat")).exists() {
        cpu_seconds(pid)
    } else {
        0.0
    }
}

/// The preloaded cluster's dispatcher counters from `gman_dispatch_status()`
/// (cluster-wide), or the error when the installed extension has none.
fn dispatch_status(db: &mut postgres::Client) -> String {
    db.query_one(
        "SELECT format('dispatcher %s (pid %s, starts %s): handed off %s, sent %s, confirmed %s, \
                refused %s, unknown %s, unsent %s, lost %s, queued %s, full waits %s, \
                full timeouts %s', dispatcher, dispatcher_pid, dispatcher_starts, \
                cluster_handed_off, cluster_sent, cluster_confirmed, cluster_refused, \
                cluster_unknown, cluster_unsent, cluster_lost, cluster_queued, \
                cluster_full_waits, cluster_full_timeouts) FROM gman_dispatch_status()",
        &[],
    )
    .map(|r| r.get(0))
    .unwrap_or_else(|e| format!("gman_dispatch_status(): {e}"))
}
