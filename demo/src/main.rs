//! `gearman-demo`: runs the cookbook recipes end to end on private servers
//! and exits 0 only if every recipe produced the expected results.
//! Run it through `make demo`, which builds and installs everything first.

use gearman_demo::env::{terminate_children, Env};
use gearman_demo::recipes::{run_all, Scale};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let interrupted = Arc::new(AtomicBool::new(false));
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            let flag = Arc::clone(&interrupted);
            std::thread::spawn(move || {
                if signals.forever().next().is_some() {
                    flag.store(true, Ordering::SeqCst);
                    eprintln!("\ninterrupted: stopping the demo's servers");
                    terminate_children();
                }
            });
        }
        Err(e) => eprintln!("warning: cannot catch Ctrl-C ({e}); servers stop at exit only"),
    }
    // A server start cut short by Ctrl-C panics in the test harness (its
    // process died); after an interrupt that is expected, so say nothing.
    let default_hook = std::panic::take_hook();
    let quiet = Arc::clone(&interrupted);
    std::panic::set_hook(Box::new(move |info| {
        if !quiet.load(Ordering::SeqCst) {
            default_hook(info);
        }
    }));
    let code = run(&interrupted);
    std::process::exit(code);
}

fn run(interrupted: &AtomicBool) -> i32 {
    let t = Instant::now();
    println!("gearman-sql demo: the Gearman cookbook's recipes from SQL, on private servers");
    // The harness panics when a server fails to start; unwinding stops the
    // ones already started (their handles kill them on drop).
    let mut env = match std::panic::catch_unwind(Env::start) {
        _ if interrupted.load(Ordering::SeqCst) => {
            eprintln!("interrupted while starting the servers; servers stopped");
            return 130;
        }
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            eprintln!("setting up failed: {e}");
            return 1;
        }
        Err(_) => {
            eprintln!("setting up failed: a server did not start (see the message above)");
            return 1;
        }
    };
    println!(
        "gearmand {} | PostgreSQL 15 on port {} (extension gearman) | MariaDB on port {} \
         (libgearman_mysql_udf.so) | gearman-worker running; ready in {:.1} s\n",
        env.gearmand.addr(),
        env.pg.port(),
        env.maria.port(),
        t.elapsed().as_secs_f64()
    );
    let mut failed = 0;
    let results = run_all(&mut env, Scale::default(), interrupted, |name, r| {
        if interrupted.load(Ordering::SeqCst) {
            // The servers are going down: this recipe's outcome means nothing.
            return;
        }
        match r {
            Ok(rep) => {
                println!("{}  [ok]", rep.title);
                for l in &rep.lines {
                    println!("   {l}");
                }
            }
            Err(e) => {
                // Ctrl-C reaches the recipe's child processes (the whole
                // process group) as fast as it reaches us: give the signal
                // thread a moment before calling this a failure.
                std::thread::sleep(std::time::Duration::from_millis(300));
                if interrupted.load(Ordering::SeqCst) {
                    return;
                }
                failed += 1;
                println!("FAILED ({name}): {e}");
            }
        }
        println!();
    });
    drop(env);
    if interrupted.load(Ordering::SeqCst) {
        eprintln!("interrupted; servers stopped");
        return 130;
    }
    println!(
        "{} of {} recipes produced the expected results in {:.1} s; servers stopped.",
        results.len() - failed,
        results.len(),
        t.elapsed().as_secs_f64()
    );
    i32::from(failed > 0)
}
