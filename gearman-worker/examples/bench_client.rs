//! Load generator for the worker benchmark: submits foreground jobs from
//! several client threads, each keeping a window of jobs in flight
//! (`Client::run_all`), and prints jobs per second.
//!
//! `cargo run --release --example bench_client -- HOST:PORT FUNCTION JOBS [CLIENTS] [WINDOW] [PAYLOAD_BYTES]`
//! Defaults: 4 clients, window 16, payload 64 bytes. Every result is checked
//! against its workload (echo); a mismatch or failure exits 1.

use gearman_core::{Client, Job, Options, ServerList};
use std::time::{Duration, Instant};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 3 {
        eprintln!("usage: bench_client HOST:PORT FUNCTION JOBS [CLIENTS] [WINDOW] [PAYLOAD_BYTES]");
        std::process::exit(2);
    }
    let servers = ServerList::parse(&a[0]).unwrap_or_else(|e| {
        eprintln!("bench_client: {e}");
        std::process::exit(2)
    });
    let function = a[1].clone();
    let total: usize = a[2].parse().unwrap_or(10_000);
    let clients: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(4).max(1);
    let window: usize = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(16).max(1);
    let payload: usize = a.get(5).and_then(|s| s.parse().ok()).unwrap_or(64);
    let per_client = total.div_ceil(clients);

    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let servers = servers.clone();
            let function = function.clone();
            std::thread::spawn(move || -> Result<usize, String> {
                let opts = Options {
                    foreground_timeout: Some(Duration::from_secs(60)),
                    ..Options::default()
                };
                let mut client = Client::new(servers, opts);
                let mut done = 0;
                while done < per_client {
                    let n = window.min(per_client - done);
                    let jobs: Vec<Job> = (0..n)
                        .map(|i| {
                            let mut w = format!("c{c}j{}-", done + i).into_bytes();
                            w.resize(payload.max(w.len()), b'x');
                            Job::new(function.clone(), w)
                        })
                        .collect();
                    for (job, r) in jobs.iter().zip(client.run_all(&jobs)) {
                        match r {
                            Ok(v) if v == job.workload => {}
                            Ok(_) => return Err("result differs from workload".into()),
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    done += n;
                }
                Ok(done)
            })
        })
        .collect();
    let mut jobs = 0;
    for t in threads {
        match t.join() {
            Ok(Ok(n)) => jobs += n,
            Ok(Err(e)) => {
                eprintln!("bench_client: {e}");
                std::process::exit(1);
            }
            Err(_) => {
                eprintln!("bench_client: client thread panicked");
                std::process::exit(1);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "jobs={jobs} seconds={secs:.3} jobs_per_sec={:.0}",
        jobs as f64 / secs
    );
}
