//! Throughput of the client against a private gearmand, side by side with a
//! raw-socket loop (the ceiling). Run: `cargo bench -p gearman-core --bench throughput`
//! (or `scripts/bench`). Prints jobs per second; asserts nothing.

use gearman_core::worker::Worker;
use gearman_core::{Client, Job, Options, ServerList};
use gearman_testkit::{raw, Gearmand};
use std::time::{Duration, Instant};

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is ignored.
    let n: usize = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let g = Gearmand::start();
    let addr = g.addr();
    let list = ServerList::parse(&addr).unwrap();
    println!(
        "gearman-core throughput, {n} jobs each, private gearmand {} on {addr}",
        version(&addr)
    );

    let jobs: Vec<Job> = (0..n)
        .map(|i| Job::new("client_bg", format!("p{i}")))
        .collect();
    // Warm up the server's allocator and our connection.
    let mut c = Client::new(list.clone(), Options::default());
    for j in jobs.iter().take(1000) {
        c.submit_background(j).unwrap();
    }

    let raw_s = raw::serial_background(&addr, "raw_serial", n);
    let t = Instant::now();
    for j in &jobs {
        c.submit_background(j).unwrap();
    }
    let ours_s = t.elapsed();
    let raw_p = raw::pipelined_background(&addr, "raw_pipe", n, 1000);
    let t = Instant::now();
    let r = c.submit_background_all(&jobs);
    let ours_p = t.elapsed();
    assert!(r.iter().all(|x| x.is_ok()));

    println!(
        "{:<58} {:>12}",
        "background submission (one connection)", "jobs/s"
    );
    println!(
        "{:<58} {:>12.0}",
        "raw socket, one round trip per job (ceiling)",
        rate(n, raw_s)
    );
    println!(
        "{:<58} {:>12.0}  ({:.0}% of raw)",
        "Client::submit_background, one round trip per job",
        rate(n, ours_s),
        100.0 * raw_s.as_secs_f64() / ours_s.as_secs_f64()
    );
    println!(
        "{:<58} {:>12.0}",
        "raw socket, pipelined 1000 per write",
        rate(n, raw_p)
    );
    println!(
        "{:<58} {:>12.0}  ({:.0}% of raw pipelined)",
        "Client::submit_background_all (window 1024)",
        rate(n, ours_p),
        100.0 * raw_p.as_secs_f64() / ours_p.as_secs_f64()
    );

    let t = Instant::now();
    c.submit_background_deferred(&jobs).unwrap();
    let rep = c.collect_deferred(true);
    let ours_d = t.elapsed();
    assert_eq!(rep.confirmed as usize, n);
    println!(
        "{:<58} {:>12.0}  ({:.0}% of raw pipelined)",
        "Client::submit_background_deferred + collect_deferred",
        rate(n, ours_d),
        100.0 * raw_p.as_secs_f64() / ours_d.as_secs_f64()
    );

    // Foreground round trips with our worker.
    let mut w = Worker::new(list.clone(), Default::default());
    w.register("echo", |j| Ok(j.workload().to_vec()));
    let stop = w.stop_handle();
    let wt = std::thread::spawn(move || w.run());
    let fg = n / 4;
    for _ in 0..100 {
        c.run(&Job::new("echo", "warm")).unwrap();
    }
    let t = Instant::now();
    for i in 0..fg {
        c.run(&Job::new("echo", format!("{i}"))).unwrap();
    }
    let d = t.elapsed();
    println!(
        "{:<58} {:>12.0}",
        "foreground round trips (Client::run, our worker)",
        rate(fg, d)
    );
    stop.stop();
    let _ = wt.join();
}

fn version(addr: &str) -> String {
    let a = gearman_core::ServerAddr::parse(addr).unwrap();
    gearman_core::admin::Admin::connect(&a, Duration::from_secs(2))
        .and_then(|mut a| a.version())
        .unwrap_or_default()
}
