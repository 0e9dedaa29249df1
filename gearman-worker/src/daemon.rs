//! The supervisor: worker threads per function, signals, reload, drain.
//!
//! Each function with concurrency N gets N core [`Worker`]s, each on its own
//! thread with its own connections, so N jobs of it run at once. A set of
//! worker threads started from one configuration is a *generation*.
//!
//! Signals (signal-hook, handled on the main thread, checked every 50 ms):
//! - SIGTERM or SIGINT: graceful stop. Every worker is asked to stop
//!   ([`StopHandle::stop`]): it takes no new job, finishes and reports the
//!   running one. The process exits 0 once all are done, or 1 when the grace
//!   period (`shutdown_grace_ms`) runs out first (running commands are then
//!   killed; gearmand requeues their jobs).
//! - A second SIGTERM or SIGINT during that drain: stop at once (commands
//!   killed, exit 1; gearmand requeues the running jobs).
//! - SIGHUP (daemon mode): re-read the file. If it is valid, a new
//!   generation starts and the old one is stopped gracefully: running jobs
//!   finish and report; new jobs go to the new workers. While the old jobs
//!   finish, a function may briefly run more than its concurrency. An invalid
//!   file is logged and the old configuration keeps running.

use crate::config::{self, Config};
use crate::db::pool::Pools;
use crate::handlers::{self, exec};
use crate::logging::{self, Stats};
use gearman_core::worker::{StopHandle, Worker, WorkerOptions};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the supervisor checks signals and threads.
const TICK: Duration = Duration::from_millis(50);
/// Pause before a worker whose run loop returned an error is rebuilt.
const RESTART_PAUSE: Duration = Duration::from_secs(2);

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every running job finished (exit 0).
    Drained,
    /// Grace period ran out, or a second signal stopped it at once (exit 1).
    Forced,
}

/// Stop control of one worker thread: its current core worker's handle and
/// a flag that also covers the moments between two core workers.
#[derive(Debug, Default)]
struct Slot {
    handle: Mutex<Option<StopHandle>>,
    stopping: AtomicBool,
}

impl Slot {
    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let g = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = g.as_ref() {
            h.stop();
        }
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// The worker threads started from one configuration.
#[derive(Debug)]
pub struct Generation {
    slots: Vec<Arc<Slot>>,
    threads: Vec<JoinHandle<()>>,
}

impl Generation {
    /// Starts `concurrency` worker threads for every function of `cfg`.
    pub fn start(cfg: &Config, pools: &Pools, stats: &Arc<Stats>) -> Generation {
        let mut slots = Vec::new();
        let mut threads = Vec::new();
        for f in &cfg.functions {
            let handler = handlers::build(f, pools);
            let observe = handlers::Observe::for_spec(f, &cfg.servers);
            for i in 0..f.concurrency {
                let slot = Arc::new(Slot::default());
                let servers = cfg.servers.clone();
                let opts = WorkerOptions {
                    client_id: cfg.client_id.clone(),
                    exceptions: cfg.exceptions,
                    tls: cfg.tls.config(),
                    ..WorkerOptions::default()
                };
                let name = f.name.clone();
                let handler = handler.clone();
                let stats = stats.clone();
                let observe = observe.clone();
                let s = slot.clone();
                let t = std::thread::Builder::new()
                    .name(format!("w-{}-{i}", f.name))
                    .spawn(move || loop {
                        let mut w = Worker::new(servers.clone(), opts.clone());
                        w.register(
                            &name,
                            handlers::wrap_observed(
                                handler.clone(),
                                stats.clone(),
                                observe.clone(),
                            ),
                        );
                        {
                            let mut g = s.handle.lock().unwrap_or_else(|p| p.into_inner());
                            if s.is_stopping() {
                                return;
                            }
                            *g = Some(w.stop_handle());
                        }
                        let res = w.run();
                        if s.is_stopping() {
                            return;
                        }
                        match res {
                            Ok(()) => log::warn!("worker for {name} returned; restarting it"),
                            Err(e) => {
                                log::error!("worker for {name} stopped: {e}; restarting it")
                            }
                        }
                        let until = Instant::now() + RESTART_PAUSE;
                        while Instant::now() < until {
                            if s.is_stopping() {
                                return;
                            }
                            std::thread::sleep(TICK);
                        }
                    });
                match t {
                    Ok(t) => {
                        slots.push(slot);
                        threads.push(t);
                    }
                    Err(e) => log::error!("cannot start a worker thread for {}: {e}", f.name),
                }
            }
        }
        Generation { slots, threads }
    }

    /// Asks every worker to stop after its running job (non-blocking).
    pub fn stop(&self) {
        for s in &self.slots {
            s.stop();
        }
    }

    /// True when every thread has returned.
    pub fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Joins threads that have returned; keeps the others.
    fn reap(&mut self) {
        let mut keep = Vec::new();
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            } else {
                keep.push(t);
            }
        }
        self.threads = keep;
    }

    /// Number of worker threads.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when there are no worker threads.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Runs the daemon until a signal stops it.
///
/// `reload_from` is the config file (daemon mode) re-read on SIGHUP, with the
/// `-s` overrides and a function applying the other flag overrides.
///
/// # Errors
/// Registering the signal handlers failed.
pub fn run(
    cfg: Config,
    reload_from: Option<(PathBuf, Vec<String>)>,
    overrides: &dyn Fn(Config) -> Config,
) -> std::io::Result<Outcome> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let stats = Arc::new(Stats::default());
    let pools = Pools::default();
    logging::set_level(cfg.log_level);
    crate::tls::install(&cfg.tls);
    announce(&cfg);
    let mut current = Generation::start(&cfg, &pools, &stats);
    let mut grace = cfg.shutdown_grace;
    let mut retired: Vec<Generation> = Vec::new();
    let mut drain_deadline: Option<Instant> = None;

    let outcome = loop {
        for sig in signals.pending() {
            match sig {
                SIGTERM | SIGINT if drain_deadline.is_some() => {
                    log::warn!("second stop signal: stopping now; running jobs are requeued by the job server");
                    exec::kill_all();
                    stats.log_summary();
                    return Ok(Outcome::Forced);
                }
                SIGTERM | SIGINT => {
                    log::info!(
                        "stop signal: finishing running jobs (grace period {} ms; send it again to stop now)",
                        grace.as_millis()
                    );
                    current.stop();
                    for g in &retired {
                        g.stop();
                    }
                    drain_deadline = Some(Instant::now() + grace);
                }
                SIGHUP if drain_deadline.is_some() => {}
                SIGHUP => match &reload_from {
                    None => log::info!("SIGHUP: quick mode has no configuration file to reload"),
                    Some((path, servers)) => match config::load(path, servers) {
                        Err(e) => {
                            log::warn!("reload rejected, keeping the running configuration: {e}")
                        }
                        Ok(new_cfg) => {
                            let new_cfg = overrides(new_cfg);
                            logging::set_level(new_cfg.log_level);
                            crate::tls::install(&new_cfg.tls);
                            crate::logging::set_format(new_cfg.log_format);
                            if let Some(m) = crate::metrics::global() {
                                m.set_servers(new_cfg.servers.clone());
                            }
                            grace = new_cfg.shutdown_grace;
                            log::info!("reloaded {}", path.display());
                            announce(&new_cfg);
                            let next = Generation::start(&new_cfg, &pools, &stats);
                            let old = std::mem::replace(&mut current, next);
                            old.stop();
                            retired.push(old);
                        }
                    },
                },
                _ => {}
            }
        }
        for g in &mut retired {
            g.reap();
        }
        retired.retain(|g| !g.threads.is_empty());
        if let Some(deadline) = drain_deadline {
            if current.finished() && retired.iter().all(Generation::finished) {
                log::info!("all workers stopped");
                break Outcome::Drained;
            }
            if Instant::now() >= deadline {
                log::warn!(
                    "grace period over with {} command(s) still running: killing them; the job server requeues their jobs",
                    exec::running_count()
                );
                exec::kill_all();
                break Outcome::Forced;
            }
        } else if current.finished() && !current.is_empty() {
            log::error!("every worker thread has ended");
            break Outcome::Forced;
        }
        std::thread::sleep(TICK);
    };
    stats.log_summary();
    Ok(outcome)
}

fn announce(cfg: &Config) {
    for f in &cfg.functions {
        let what = match &f.backend {
            config::Backend::Builtin(b) => format!("builtin {b:?}").to_lowercase(),
            config::Backend::Exec(e) => format!("exec {:?}", e.argv),
            config::Backend::Sql(s) => format!("sql on {}", s.database.redacted()),
        };
        log::info!(
            "serving function={} concurrency={} via {what} on {}",
            f.name,
            f.concurrency,
            cfg.servers
        );
    }
}
