//! The client against a real gearmand.

mod common;

use common::{client, test_worker};
use gearman_core::admin::Admin;
use gearman_core::worker::{JobContext, WorkError, Worker, WorkerOptions};
use gearman_core::{ErrorKind, Event, Job, Options, Priority, ServerList};
use gearman_testkit::Gearmand;
use std::time::{Duration, Instant};

#[test]
fn foreground_at_all_priorities() {
    let g = Gearmand::start();
    let _w = test_worker(&g.addr());
    let mut c = client(&g.addr());
    for p in [Priority::High, Priority::Normal, Priority::Low] {
        let r = c
            .run(&Job::new("reverse", "hello").with_priority(p))
            .unwrap();
        assert_eq!(r, b"olleh", "{p:?}");
    }
    assert_eq!(c.open_connections(), 1, "one connection reused");
}

#[test]
fn background_at_all_priorities_reaches_worker() {
    let g = Gearmand::start();
    let mut c = client(&g.addr());
    let mut handles = Vec::new();
    for p in [Priority::High, Priority::Normal, Priority::Low] {
        let h = c
            .submit_background(&Job::new("bgcount", p.as_str()).with_priority(p))
            .unwrap();
        assert!(h.handle.starts_with("H:"), "{h}");
        assert_eq!(h.server.to_string(), g.addr());
        handles.push(h);
    }
    // Queued, nobody serving: the server knows them, not running.
    for h in &handles {
        let s = c.status(h).unwrap();
        assert!(s.known && !s.running, "{s:?}");
    }
    let mut a = Admin::connect(handles[0].server(), Duration::from_secs(5)).unwrap();
    let ps = a.priority_status().unwrap();
    let row = ps.iter().find(|r| r.function == "bgcount").unwrap();
    assert_eq!((row.high, row.normal, row.low), (1, 1, 1));
    // A worker drains them in priority order (one function: per-queue priority).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let mut w = gearman_core::worker::Worker::new(
        ServerList::parse(&g.addr()).unwrap(),
        common::quick_worker_options(),
    );
    w.register("bgcount", move |j| {
        s2.lock()
            .unwrap()
            .push(String::from_utf8_lossy(j.workload()).into_owned());
        Ok(vec![])
    });
    let _w = common::spawn(w);
    let t = Instant::now();
    while seen.lock().unwrap().len() < 3 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(*seen.lock().unwrap(), ["high", "normal", "low"]);
    // Finished jobs become unknown once their WORK_COMPLETE has reached
    // gearmand (just after the handler returned).
    for h in &handles {
        let t = Instant::now();
        while c.status(h).unwrap().known {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "job {h:?} still known 10 s after it ran"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

trait ServerOf {
    fn server(&self) -> &gearman_core::ServerAddr;
}
impl ServerOf for gearman_core::JobHandle {
    fn server(&self) -> &gearman_core::ServerAddr {
        &self.server
    }
}

#[test]
fn binary_16mib_workload_round_trips() {
    let g = Gearmand::start();
    let _w = test_worker(&g.addr());
    let mut c = client(&g.addr());
    let mut data = vec![0u8; 16 << 20];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8; // includes NULs
    }
    data[0] = 0;
    let r = c.run(&Job::new("echo", data.clone())).unwrap();
    assert_eq!(r.len(), data.len());
    assert!(r == data, "16 MiB binary workload changed in transit");
}

#[test]
fn data_warning_status_events_and_joined_result() {
    let g = Gearmand::start();
    let _w = test_worker(&g.addr());
    let mut c = client(&g.addr());
    let mut events = Vec::new();
    let r = c
        .run_with(&Job::new("chunks", ""), &mut |e| events.push(e))
        .unwrap();
    assert_eq!(r, b"abcdef");
    assert_eq!(
        events,
        vec![
            Event::Status {
                numerator: 1,
                denominator: 3
            },
            Event::Data(b"ab".to_vec()),
            Event::Warning(b"careful".to_vec()),
            Event::Data(b"cd".to_vec()),
            Event::Status {
                numerator: 3,
                denominator: 3
            },
        ]
    );
}

#[test]
fn failures_and_exceptions() {
    let g = Gearmand::start();
    let _w = test_worker(&g.addr());
    let mut c = client(&g.addr());
    let e = c.run(&Job::new("fail", "x")).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::JobFailed);
    // By default the worker reports an exception as WORK_WARNING(message)
    // then WORK_FAIL: a plain failure for every client, the message in ours.
    let e = c.run(&Job::new("exception", "x")).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::JobFailed, "{e}");
    assert!(e.to_string().contains(": boom"), "{e}");
    // A panicking handler fails its job; the worker keeps serving.
    let e = c.run(&Job::new("panic", "x")).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::JobFailed, "{e}");
    assert!(
        e.to_string().contains("handler panicked: handler bug"),
        "{e}"
    );
    assert_eq!(c.run(&Job::new("reverse", "ab")).unwrap(), b"ba");
    let exceptions_client = || {
        gearman_core::Client::new(
            ServerList::parse(&g.addr()).unwrap(),
            Options {
                exceptions: true,
                foreground_timeout: Some(Duration::from_secs(10)),
                ..Options::default()
            },
        )
    };
    // A client that asks for exceptions gets the same failure from it.
    let e = exceptions_client()
        .run(&Job::new("exception", "x"))
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::JobFailed, "{e}");
    assert!(e.to_string().contains(": boom"), "{e}");
}

#[test]
fn a_worker_with_exceptions_on_sends_work_exception() {
    let g = Gearmand::start();
    let mut w = Worker::new(
        ServerList::parse(&g.addr()).unwrap(),
        WorkerOptions {
            exceptions: true,
            ..common::quick_worker_options()
        },
    );
    w.register("exception", |_j: &mut JobContext<'_>| {
        Err(WorkError::Exception(b"boom".to_vec()))
    });
    let _w = common::spawn(w);
    // A client with the option gets WORK_EXCEPTION and its data.
    let mut cx = gearman_core::Client::new(
        ServerList::parse(&g.addr()).unwrap(),
        Options {
            exceptions: true,
            foreground_timeout: Some(Duration::from_secs(10)),
            ..Options::default()
        },
    );
    let e = cx.run(&Job::new("exception", "x")).unwrap_err();
    assert_eq!(e.exception_data(), Some(&b"boom"[..]), "{e}");
    // One without it gets gearmand's converted WORK_FAIL (handle with a
    // trailing NUL, protocol.md 4.6), which we match all the same.
    let e = client(&g.addr())
        .run(&Job::new("exception", "x"))
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::JobFailed, "{e}");
}

#[test]
fn coalescing_by_unique_key() {
    let g = Gearmand::start();
    let mut c = client(&g.addr());
    let a = c
        .submit_background(&Job::new("slow", "first").with_unique("same-key"))
        .unwrap();
    let b = c
        .submit_background(&Job::new("slow", "second").with_unique("same-key"))
        .unwrap();
    assert_eq!(a, b, "same unique key coalesces into one job");
    let d = c
        .submit_background(&Job::new("slow", "third").with_unique("other"))
        .unwrap();
    assert_ne!(a, d);
    let s = c.status_by_unique(b"same-key").unwrap();
    assert!(s.known && !s.running);
    assert_eq!(
        s.waiting, 0,
        "gearmand 1.1.20 always reports 0 waiting clients"
    );
    assert!(!c.status_by_unique(b"never-submitted").unwrap().known);
    // Foreground coalescing within one task set: both get the one result.
    let _w = test_worker(&g.addr());
    let jobs = vec![
        Job::new("sleep_ms", "300").with_unique("fg-same"),
        Job::new("sleep_ms", "300").with_unique("fg-same"),
    ];
    let r = c.run_all(&jobs);
    assert_eq!(r[0].as_ref().unwrap(), b"300");
    assert_eq!(r[1].as_ref().unwrap(), b"300");
}

#[test]
fn invalid_jobs_rejected_before_sending() {
    let g = Gearmand::start();
    let mut c = client(&g.addr());
    let long = "u".repeat(64);
    for job in [
        Job::new("", "x"),
        Job::new("a\0b", "x"),
        Job::new("f", "x").with_unique(long.as_str()),
        Job::new("f", "x").with_unique("a\0b"),
        Job::new("f".repeat(513), "x"),
    ] {
        let e = c.submit_background(&job).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidArgument, "{e}");
    }
    assert_eq!(c.open_connections(), 0, "nothing was sent");
    assert!(c
        .submit_background(&Job::new("f", "x").with_unique("u".repeat(63)))
        .is_ok());
    let e = c.run(&Job::new("f", "x").with_epoch(1)).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidArgument);
}

#[test]
fn epoch_job_runs_after_its_time() {
    let g = Gearmand::start();
    let mut c = client(&g.addr());
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 2;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let s2 = seen.clone();
    let mut w = gearman_core::worker::Worker::new(
        ServerList::parse(&g.addr()).unwrap(),
        common::quick_worker_options(),
    );
    w.register("later", move |_j| {
        *s2.lock().unwrap() = Some(std::time::SystemTime::now());
        Ok(vec![])
    });
    let _w = common::spawn(w);
    std::thread::sleep(Duration::from_millis(200));
    let h = c
        .submit_background(&Job::new("later", "x").with_epoch(when))
        .unwrap();
    assert!(c.status(&h).unwrap().known);
    let t = Instant::now();
    while seen.lock().unwrap().is_none() && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ran = seen
        .lock()
        .unwrap()
        .expect("the epoch job ran (worker re-grabs while idle)");
    let ran_at = ran.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(ran_at >= when, "ran at {ran_at}, scheduled for {when}");
}

#[test]
fn task_set_runs_concurrently_in_input_order() {
    let g = Gearmand::start();
    // Four workers; each job waits until all four run at once, then sleeps
    // its workload's milliseconds, so results arrive in another order than
    // the input's.
    let overlap = gearman_testkit::Overlap::new(4);
    let _workers: Vec<_> = (0..4)
        .map(|_| {
            let mut w = Worker::new(
                ServerList::parse(&g.addr()).unwrap(),
                common::quick_worker_options(),
            );
            let o = overlap.clone();
            w.register("overlap_sleep_ms", move |j: &mut JobContext<'_>| {
                let ms: u64 = String::from_utf8_lossy(j.workload()).parse().unwrap();
                o.run(|| std::thread::sleep(Duration::from_millis(ms)));
                Ok(j.workload().to_vec())
            });
            common::spawn(w)
        })
        .collect();
    let mut c = client(&g.addr());
    let jobs: Vec<Job> = [400, 100, 300, 200]
        .iter()
        .map(|ms| Job::new("overlap_sleep_ms", ms.to_string()))
        .collect();
    let r = c.run_all(&jobs);
    let got: Vec<Vec<u8>> = r.into_iter().map(|x| x.unwrap()).collect();
    assert_eq!(
        got,
        [
            b"400".to_vec(),
            b"100".to_vec(),
            b"300".to_vec(),
            b"200".to_vec()
        ]
    );
    assert_eq!(overlap.peak(), 4, "the four jobs did not run at once");
}

#[test]
fn pipelined_background_submissions_report_refusals_per_job() {
    let g = Gearmand::start();
    let mut a = Admin::connect(
        &gearman_core::ServerAddr::parse(&g.addr()).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap();
    let mut c = client(&g.addr());
    // `maxqueue` on a function the server does not know yet does nothing
    // (protocol.md 10): the limit only holds once the function exists.
    a.maxqueue("capped", Some(1)).unwrap();
    c.submit_background(&Job::new("capped", "creates the function"))
        .unwrap();
    c.submit_background(&Job::new("capped", "over the ignored limit"))
        .unwrap();
    a.maxqueue("capped", Some(5)).unwrap();
    let jobs: Vec<Job> = (0..8)
        .map(|i| Job::new("capped", format!("j{i}")))
        .collect();
    let r = c.submit_background_all(&jobs);
    assert!(r[..3].iter().all(|x| x.is_ok()), "{r:?}");
    for x in &r[3..] {
        let e = x.as_ref().unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Server { code, .. } if code == "QUEUE_ERROR"),
            "{e}"
        );
    }
    // The connection is still in step after refusals.
    let many: Vec<Job> = (0..5000)
        .map(|i| Job::new("bulk", format!("p{i}")))
        .collect();
    let r = c.submit_background_all(&many);
    assert_eq!(r.iter().filter(|x| x.is_ok()).count(), 5000);
    let st = a.status().unwrap();
    assert_eq!(
        st.iter().find(|s| s.function == "bulk").unwrap().total,
        5000
    );
}

#[test]
fn foreground_timeout_when_no_worker() {
    let g = Gearmand::start();
    let mut c = gearman_core::Client::new(
        ServerList::parse(&g.addr()).unwrap(),
        Options {
            foreground_timeout: Some(Duration::from_millis(300)),
            ..Options::default()
        },
    );
    let t = Instant::now();
    let e = c.run(&Job::new("nobody", "x")).unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The timed-out connection was dropped; the client still works.
    assert!(c.submit_background(&Job::new("nobody", "y")).is_ok());
}

#[test]
fn interrupt_hook_stops_a_wait() {
    let g = Gearmand::start();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f2 = flag.clone();
    let mut c = gearman_core::Client::new(
        ServerList::parse(&g.addr()).unwrap(),
        Options {
            interrupt: Some(std::sync::Arc::new(move || {
                if f2.load(std::sync::atomic::Ordering::SeqCst) {
                    Err(gearman_core::Error::interrupted("canceled by user"))
                } else {
                    Ok(())
                }
            })),
            // Only so that a broken hook fails the test instead of hanging it.
            foreground_timeout: Some(Duration::from_secs(20)),
            ..Options::default()
        },
    );
    let f3 = flag.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        f3.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let t = Instant::now();
    let e = c.run(&Job::new("nobody", "x")).unwrap_err();
    assert!(e.is_interrupted(), "{e}");
    // The hook is asked every 50 ms; the bound only rules out a wait that
    // ignores it.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    flag.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(c.submit_background(&Job::new("nobody", "y")).is_ok());
}

#[test]
fn reachability_check() {
    let g = Gearmand::start();
    let mut c = client(&g.addr());
    assert_eq!(c.check_reachable().unwrap().to_string(), g.addr());
    let dead = gearman_testkit::DeadPort::new();
    let mut c = client(&dead.addr());
    let e = c.check_reachable().unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::ConnectFailed, "{e}");
}
