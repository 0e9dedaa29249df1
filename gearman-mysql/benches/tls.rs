//! Benchmark: the same work through a TLS terminator and in plaintext, in
//! one run against one private gearmand. The TLS path is a private stunnel4
//! in front of that gearmand (throwaway certificates from the test
//! harness), so its figures include the terminator's own hop (decrypt, a
//! second loopback connection, encrypt back). Not a test.
//!
//! Run: `cargo bench -p gearman-mysql --bench tls` (optionally
//! `-- --rows N --foreground N`). Prints one line per figure.
//!
//! Figures, each plaintext and TLS in alternating chunks (the same gearmand
//! queue length for both):
//! - core `Client::submit_background`, one round trip per job;
//! - core `Client::submit_background_all`, pipelined;
//! - MariaDB: `SELECT COUNT(gman_do_background('f', CONCAT('p', seq))) FROM
//!   seq_A_to_B`, the list switched with `gman_servers_set` between chunks
//!   (both lists' connections stay pooled);
//! - MariaDB foreground: `SELECT COUNT(gman_do('echo', seq))` with one
//!   in-process echo worker on the gearmand's plaintext port.

mod common;

use common::{arg, udf_library};
use gearman_core::worker::{Worker, WorkerOptions};
use gearman_core::{Client, Job, Options, ServerList, TlsConfig};
use gearman_testkit::{Gearmand, MariaDb, MariaDbOptions, Stunnel, TlsCerts, TlsService};
use mysql::prelude::Queryable;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn line(what: &str, n: usize, plain: Duration, tls: Duration, unit: &str) {
    let (p, t) = (rate(n, plain), rate(n, tls));
    println!(
        "{what}: {n} each; plaintext {p:.0} {unit}, TLS via stunnel {t:.0} {unit} ({:.0}% of plaintext)",
        100.0 * t / p
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("bench-tls: run with `cargo bench -p gearman-mysql --bench tls`");
        return;
    }
    let rows = arg(&args, "--rows", 100_000);
    let fg = arg(&args, "--foreground", 5_000);
    let rounds = 10usize;

    let g = Gearmand::start();
    let certs = TlsCerts::make();
    let stunnel = Stunnel::start(&certs, g.port());
    let plain_entry = g.addr();
    let tls_entry = stunnel.entry(TlsService::Good);
    let tls = TlsConfig::load(Some(&certs.ca()), None, None).unwrap();

    // Core, one round trip per job.
    let mut plain_c = Client::new(ServerList::parse(&plain_entry).unwrap(), Options::default());
    let mut tls_c = Client::new(
        ServerList::parse(&tls_entry).unwrap(),
        Options {
            tls: Some(tls.clone()),
            ..Options::default()
        },
    );
    let chunk = rows / rounds;
    let mut t = [Duration::ZERO; 2];
    for r in 0..rounds {
        for (k, c) in [&mut plain_c, &mut tls_c].into_iter().enumerate() {
            let t0 = Instant::now();
            for i in 0..chunk {
                c.submit_background(&Job::new("bench_core", format!("p{}", r * chunk + i)))
                    .expect("core submit");
            }
            t[k] += t0.elapsed();
        }
    }
    println!(
        "bench-tls: gearmand {plain_entry}, stunnel {tls_entry} (stunnel 5.68, TLS 1.3), one run"
    );
    line(
        "core submit_background (1 round trip/job)",
        chunk * rounds,
        t[0],
        t[1],
        "jobs/s",
    );

    // Core, pipelined.
    let mut t = [Duration::ZERO; 2];
    for r in 0..rounds {
        let jobs: Vec<Job> = (0..chunk)
            .map(|i| Job::new("bench_pipe", format!("p{}", r * chunk + i)))
            .collect();
        for (k, c) in [&mut plain_c, &mut tls_c].into_iter().enumerate() {
            let t0 = Instant::now();
            let res = c.submit_background_all(&jobs);
            t[k] += t0.elapsed();
            assert!(res.iter().all(|r| r.is_ok()));
        }
    }
    line(
        "core submit_background_all (pipelined)",
        chunk * rounds,
        t[0],
        t[1],
        "jobs/s",
    );

    // MariaDB.
    let conf_dir = tempfile::Builder::new()
        .prefix("bench-tls-conf-")
        .tempdir()
        .expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(conf_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = conf_dir.path().join("gearman-udf.toml");
    std::fs::write(
        &conf,
        format!(
            "servers = \"{plain_entry}\"\nallow_servers_set = true\ntls_ca_file = \"{}\"\n",
            certs.ca().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let db = MariaDb::start_with(MariaDbOptions {
        args: vec![],
        env: vec![("GEARMAN_UDF_CONFIG".into(), conf.display().to_string())],
        plugins: vec![udf_library()],
    });
    let install = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sql/mysql/install.sql"),
    )
    .unwrap();
    db.sql(&install).expect("install.sql");
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(&db.url()).unwrap()).unwrap();
    let mut t = [Duration::ZERO; 2];
    for r in 0..rounds {
        for (k, entry) in [&plain_entry, &tls_entry].into_iter().enumerate() {
            let _: Option<String> = conn
                .query_first(format!("SELECT gman_servers_set('{entry}')"))
                .unwrap();
            let (a, b) = (r * chunk + 1, (r + 1) * chunk);
            let t0 = Instant::now();
            let n: Option<u64> = conn
                .query_first(format!(
                    "SELECT COUNT(gman_do_background('bench_sql', CONCAT('p', seq))) FROM seq_{a}_to_{b}"
                ))
                .unwrap();
            t[k] += t0.elapsed();
            assert_eq!(
                n,
                Some(chunk as u64),
                "every row must have a handle ({entry})"
            );
        }
    }
    line(
        "MariaDB SELECT COUNT(gman_do_background(...)) FROM seq_1_to_N",
        chunk * rounds,
        t[0],
        t[1],
        "jobs/s",
    );

    // Foreground, one worker on the plaintext port.
    let mut w = Worker::new(
        ServerList::parse(&plain_entry).unwrap(),
        WorkerOptions::default(),
    );
    w.register("echo", |ctx| Ok(ctx.workload().to_vec()));
    let stop = w.stop_handle();
    let wt = std::thread::spawn(move || w.run());
    std::thread::sleep(Duration::from_millis(500));
    let fchunk = fg / rounds;
    let mut t = [Duration::ZERO; 2];
    for r in 0..rounds {
        for (k, entry) in [&plain_entry, &tls_entry].into_iter().enumerate() {
            let _: Option<String> = conn
                .query_first(format!("SELECT gman_servers_set('{entry}')"))
                .unwrap();
            let (a, b) = (r * fchunk + 1, (r + 1) * fchunk);
            let t0 = Instant::now();
            let n: Option<u64> = conn
                .query_first(format!(
                    "SELECT COUNT(gman_do('echo', seq)) FROM seq_{a}_to_{b}"
                ))
                .unwrap();
            t[k] += t0.elapsed();
            assert_eq!(n, Some(fchunk as u64));
        }
    }
    line(
        "MariaDB SELECT COUNT(gman_do('echo', seq)) (1 worker)",
        fchunk * rounds,
        t[0],
        t[1],
        "calls/s",
    );
    stop.stop();
    let _ = wt.join();
    drop(stunnel);
}
