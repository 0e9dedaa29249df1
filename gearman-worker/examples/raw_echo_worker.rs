//! The core's own raw worker loop, for the benchmark baseline: N
//! `gearman_core::worker::Worker`s (one thread each) serving `echo`, with no
//! logging, statistics or handler layer.
//!
//! `cargo run --release --example raw_echo_worker -- HOST:PORT [FUNCTION] [CONCURRENCY]`
//! Runs until killed.

use gearman_core::worker::{Worker, WorkerOptions};
use gearman_core::ServerList;

fn main() {
    let mut args = std::env::args().skip(1);
    let servers = args.next().unwrap_or_else(|| "127.0.0.1:4730".into());
    let function = args.next().unwrap_or_else(|| "echo".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let servers = match ServerList::parse(&servers) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("raw_echo_worker: {e}");
            std::process::exit(2);
        }
    };
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let mut w = Worker::new(servers.clone(), WorkerOptions::default());
            w.register(&function, |ctx| Ok(ctx.workload().to_vec()));
            std::thread::spawn(move || w.run())
        })
        .collect();
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            eprintln!("raw_echo_worker: {e}");
        }
    }
}
