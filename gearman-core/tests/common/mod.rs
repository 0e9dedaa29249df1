//! Shared pieces of the core's integration tests.
#![allow(dead_code)]

use gearman_core::admin::Admin;
use gearman_core::worker::{JobContext, StopHandle, WorkError, WorkResult, Worker, WorkerOptions};
use gearman_core::{Client, Options, ServerList};
use std::thread::JoinHandle;
use std::time::Duration;

/// A worker running on its own thread; stopped and joined on drop.
pub struct RunningWorker {
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts `worker` on a thread.
pub fn spawn(worker: Worker) -> RunningWorker {
    let stop = worker.stop_handle();
    let thread = std::thread::spawn(move || worker.run().expect("worker setup"));
    RunningWorker {
        stop,
        thread: Some(thread),
    }
}

pub fn quick_worker_options() -> WorkerOptions {
    WorkerOptions {
        idle_regrab: Duration::from_millis(500),
        ..WorkerOptions::default()
    }
}

/// A worker with the test functions: reverse, echo, fail, exception,
/// sleep_ms (workload = milliseconds, result = workload), chunks (sends
/// WORK_DATA/WARNING/STATUS then completes).
pub fn test_worker(servers: &str) -> RunningWorker {
    let mut w = Worker::new(ServerList::parse(servers).unwrap(), quick_worker_options());
    w.register("reverse", |j: &mut JobContext<'_>| {
        let mut v = j.workload().to_vec();
        v.reverse();
        Ok(v)
    });
    w.register("echo", |j: &mut JobContext<'_>| Ok(j.workload().to_vec()));
    w.register("fail", |_j: &mut JobContext<'_>| Err(WorkError::Fail));
    w.register("exception", |_j: &mut JobContext<'_>| {
        Err(WorkError::Exception(b"boom".to_vec()))
    });
    w.register("panic", |_j: &mut JobContext<'_>| -> WorkResult {
        panic!("handler bug")
    });
    w.register("sleep_ms", |j: &mut JobContext<'_>| {
        let ms: u64 = String::from_utf8_lossy(j.workload()).parse().unwrap_or(0);
        std::thread::sleep(Duration::from_millis(ms));
        Ok(j.workload().to_vec())
    });
    w.register("chunks", |j: &mut JobContext<'_>| {
        j.send_status(1, 3).unwrap();
        j.send_data(b"ab").unwrap();
        j.send_warning(b"careful").unwrap();
        j.send_data(b"cd").unwrap();
        j.send_status(3, 3).unwrap();
        Ok(b"ef".to_vec())
    });
    // Return only once every server lists this worker for every function, so
    // that a test reading admin status right away sees it (CI once caught
    // `gearadmin --status` and our parse taken half-way through CAN_DO).
    let before = worker_counts(servers);
    let running = spawn(w);
    let t = std::time::Instant::now();
    loop {
        let now = worker_counts(servers);
        let done = now.iter().zip(&before).all(|(n, b)| {
            TEST_FUNCTIONS
                .iter()
                .all(|f| n.get(*f).copied().unwrap_or(0) > b.get(*f).copied().unwrap_or(0))
        });
        if done {
            return running;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "test worker did not register on {servers} within 10 s: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

const TEST_FUNCTIONS: [&str; 7] = [
    "reverse",
    "echo",
    "fail",
    "exception",
    "panic",
    "sleep_ms",
    "chunks",
];

/// Per server in `servers`, the number of workers gearmand lists per
/// function (admin `status`).
fn worker_counts(servers: &str) -> Vec<std::collections::HashMap<String, u64>> {
    ServerList::parse(servers)
        .unwrap()
        .iter()
        .map(|a| {
            Admin::connect(a, Duration::from_secs(2))
                .unwrap()
                .status()
                .unwrap()
                .into_iter()
                .map(|s| (s.function, s.workers))
                .collect()
        })
        .collect()
}

pub fn client(servers: &str) -> Client {
    Client::new(
        ServerList::parse(servers).unwrap(),
        Options {
            io_timeout: Duration::from_secs(5),
            foreground_timeout: Some(Duration::from_secs(20)),
            ..Options::default()
        },
    )
}
