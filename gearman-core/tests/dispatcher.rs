//! The dispatcher against a real gearmand: jobs from many threads arrive
//! exactly once over one connection, back-pressure when the queue is full,
//! jobs wait while gearmand is down, stop flushes, panics are caught, and
//! the counters add up.

mod common;

use gearman_core::admin::Admin;
use gearman_core::dispatcher::{Dispatcher, DispatcherOptions, DispatcherStats, Reachability};
use gearman_core::{DeferredReport, ErrorKind, Job, Options, Routing, ServerAddr, ServerList};
use gearman_testkit::Gearmand;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn admin(addr: &str) -> Admin {
    Admin::connect(&ServerAddr::parse(addr).unwrap(), Duration::from_secs(5)).unwrap()
}

fn queued(addr: &str, function: &str) -> u64 {
    admin(addr)
        .status()
        .unwrap()
        .into_iter()
        .find(|s| s.function == function)
        .map_or(0, |s| s.total)
}

fn opts() -> DispatcherOptions {
    DispatcherOptions {
        client: Options {
            client_id: Some("dispatcher-test".into()),
            retry_backoff: Duration::from_millis(50),
            io_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            ..Options::default()
        },
        retry_interval: Duration::from_millis(50),
        ..DispatcherOptions::default()
    }
}

fn start(addr: &str, o: DispatcherOptions) -> Dispatcher {
    Dispatcher::start(Routing::new(ServerList::parse(addr).unwrap()), o).unwrap()
}

fn soon(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// `submitted = sent + unsent + queued` once nothing is in the sender's
/// hands, and `sent = confirmed + refused + unknown + pending`.
fn assert_adds_up(s: &DispatcherStats) {
    assert_eq!(s.submitted, s.sent + s.unsent + s.queued, "{s:?}");
    assert_eq!(
        s.sent,
        s.confirmed + s.refused + s.unknown + s.pending(),
        "{s:?}"
    );
}

#[test]
fn jobs_from_many_threads_arrive_exactly_once_over_one_connection() {
    let g = Gearmand::start();
    let d = Arc::new(start(&g.addr(), opts()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                for i in 0..250 {
                    // No unique key: a duplicate would be queued twice.
                    let jobs = vec![
                        Job::new("disp_many", format!("{t}-{i}-a")),
                        Job::new("disp_many", format!("{t}-{i}-b")),
                    ];
                    d.submit(jobs, soon(10)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(d.flush(soon(20)), "{:?}", d.stats());
    let s = d.stats();
    assert_eq!(s.submitted, 4000);
    assert_eq!(s.sent, 4000);
    assert_eq!(s.confirmed, 4000, "{s:?}");
    assert_eq!((s.refused, s.unknown, s.unsent, s.queued), (0, 0, 0, 0));
    assert_eq!(s.oldest_age, None);
    assert_eq!(s.servers.len(), 1);
    assert_eq!(s.servers[0].1, Reachability::Up);
    assert_adds_up(&s);
    assert_eq!(queued(&g.addr(), "disp_many"), 4000);
    // One gearmand connection for all eight threads.
    let conns = admin(&g.addr())
        .workers()
        .unwrap()
        .into_iter()
        .filter(|w| w.client_id == "dispatcher-test")
        .count();
    assert_eq!(conns, 1);
    assert!(d.stop(soon(5)));
    assert!(d.is_stopped());
}

#[test]
fn a_full_queue_pushes_back_then_fails_at_the_deadline() {
    // Nothing listens there: every job waits in the queue.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let d = start(
        &dead,
        DispatcherOptions {
            max_jobs: 10,
            max_bytes: 1000,
            ..opts()
        },
    );
    for i in 0..10 {
        d.submit(vec![Job::new("f", format!("{i}"))], soon(5))
            .unwrap();
    }
    let t = Instant::now();
    let r = d.submit(
        vec![Job::new("f", "one more")],
        Instant::now() + Duration::from_millis(300),
    );
    let e = r.expect_err(&format!("{:?}", d.stats()));
    assert!(t.elapsed() < Duration::from_millis(1500), "bounded wait");
    assert_eq!(*e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        e.to_string().contains("dispatcher queue full: 10 jobs"),
        "{e}"
    );
    let s = d.stats();
    assert_eq!(s.submitted, 10);
    assert!(s.queued_bytes <= 1000);
    assert!(s.oldest_age.is_some());
    // Too large for the queue at all, and invalid jobs: refused at once.
    let e = d
        .submit(vec![Job::new("f", vec![b'x'; 2000])], soon(5))
        .unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(
        e.to_string()
            .contains("exceed the dispatcher queue's limits"),
        "{e}"
    );
    let e = d
        .submit(vec![Job::new("bad name", "")], soon(5))
        .unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::InvalidArgument, "{e}");
    // submit_to_taking leaves the jobs with the caller on any error (to
    // offer them again), and takes them only when queued.
    let list = ServerList::parse(&dead).unwrap();
    let mut two = vec![Job::new("f", "a"), Job::new("f", "b")];
    let e = d
        .submit_to_taking(&list, &mut two, Instant::now() + Duration::from_millis(50))
        .unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::Timeout, "{e}");
    assert_eq!(two.len(), 2, "kept after a timeout");
    let mut bad = vec![Job::new("f", "ok"), Job::new("bad name", "")];
    let e = d.submit_to_taking(&list, &mut bad, soon(5)).unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(bad.len(), 2, "kept after a refusal");
    assert_eq!(d.stats().submitted, 10);
    // The server was tried and found down.
    let t = Instant::now();
    while d.stats().servers[0].1 != Reachability::Down {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    // Stop: nothing could be written; everything is unsent.
    let t = Instant::now();
    assert!(d.stop(Instant::now() + Duration::from_millis(300)));
    assert!(t.elapsed() < Duration::from_secs(5), "bounded stop");
    let s = d.stats();
    assert_eq!((s.sent, s.unsent, s.queued), (0, 10, 0), "{s:?}");
    assert_adds_up(&s);
    let e = d.submit(vec![Job::new("f", "late")], soon(1)).unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::Interrupted, "{e}");
}

#[test]
fn jobs_wait_while_gearmand_is_down_and_go_once_it_is_back() {
    let mut g = Gearmand::start();
    let d = start(&g.addr(), opts());
    d.submit(vec![Job::new("disp_down", "before")], soon(5))
        .unwrap();
    assert!(d.flush(soon(10)));
    g.kill();
    let jobs: Vec<Job> = (0..50)
        .map(|i| Job::new("disp_down", format!("{i}")))
        .collect();
    d.submit(jobs, soon(5)).unwrap();
    // They wait: flush cannot finish while the server is down.
    assert!(!d.flush(Instant::now() + Duration::from_millis(500)));
    let s = d.stats();
    assert_eq!(s.servers[0].1, Reachability::Down, "{s:?}");
    assert_eq!(s.queued, 50, "{s:?}");
    assert!(s.oldest_age.is_some());
    g.restart();
    assert!(d.flush(soon(20)), "{:?}", d.stats());
    let s = d.stats();
    assert_eq!(s.confirmed, 51, "{s:?}");
    assert_eq!((s.refused, s.unknown, s.unsent, s.queued), (0, 0, 0, 0));
    assert_eq!(s.servers[0].1, Reachability::Up);
    assert_adds_up(&s);
    // The restarted gearmand (no persistent queue) holds the 50.
    assert_eq!(queued(&g.addr(), "disp_down"), 50);
    assert!(d.stop(soon(5)));
}

#[test]
fn stop_flushes_what_is_queued() {
    let g = Gearmand::start();
    let d = start(&g.addr(), opts());
    let jobs: Vec<Job> = (0..3000)
        .map(|i| Job::new("disp_stop", format!("{i}")))
        .collect();
    d.submit(jobs, soon(5)).unwrap();
    assert!(d.stop(soon(20)));
    let s = d.stats();
    assert_eq!(s.confirmed, 3000, "{s:?}");
    assert_eq!((s.unsent, s.unknown, s.queued, s.pending()), (0, 0, 0, 0));
    assert_adds_up(&s);
    assert_eq!(queued(&g.addr(), "disp_stop"), 3000);
    // Stopping again is harmless.
    assert!(d.stop(soon(1)));
}

#[test]
fn refusals_are_counted_and_reported_with_their_keys() {
    let g = Gearmand::start();
    let mut c = common::client(&g.addr());
    c.submit_background(&Job::new("disp_capped", "creates it"))
        .unwrap();
    admin(&g.addr()).maxqueue("disp_capped", Some(4)).unwrap();
    let failed: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let f2 = failed.clone();
    let d = start(
        &g.addr(),
        DispatcherOptions {
            on_report: Some(Arc::new(move |r: &DeferredReport| {
                let mut f = f2.lock().unwrap();
                f.extend(r.failed.iter().map(|x| x.unique.clone()));
            })),
            ..opts()
        },
    );
    let jobs: Vec<Job> = (0..7)
        .map(|i| Job::new("disp_capped", "").with_unique(format!("u{i}")))
        .collect();
    d.submit(jobs, soon(5)).unwrap();
    assert!(d.flush(soon(10)));
    let s = d.stats();
    assert_eq!((s.confirmed, s.refused, s.unknown), (3, 4, 0), "{s:?}");
    assert_adds_up(&s);
    let f = failed.lock().unwrap().clone();
    assert_eq!(
        f,
        [
            b"u3".to_vec(),
            b"u4".to_vec(),
            b"u5".to_vec(),
            b"u6".to_vec()
        ]
    );
}

#[test]
fn a_panic_on_the_sender_is_caught_and_the_sender_goes_on() {
    let g = Gearmand::start();
    let calls = Arc::new(AtomicU64::new(0));
    let c2 = calls.clone();
    let d = start(
        &g.addr(),
        DispatcherOptions {
            on_report: Some(Arc::new(move |_r: &DeferredReport| {
                if c2.fetch_add(1, Ordering::AcqRel) == 0 {
                    panic!("a hook bug");
                }
            })),
            ..opts()
        },
    );
    d.submit(vec![Job::new("disp_panic", "first")], soon(5))
        .unwrap();
    let t = Instant::now();
    while d.stats().panics == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", d.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    d.submit(vec![Job::new("disp_panic", "second")], soon(5))
        .unwrap();
    assert!(d.flush(soon(10)), "{:?}", d.stats());
    let s = d.stats();
    assert_eq!(s.panics, 1);
    // The first job was confirmed before the hook panicked on its report.
    assert_eq!(s.confirmed, 2, "{s:?}");
    assert_adds_up(&s);
    assert_eq!(queued(&g.addr(), "disp_panic"), 2);
    assert!(d.stop(soon(5)));
}

/// A paused gearmand accepts the connection but never answers the first
/// job written on it, which the ledger awaits within the call's deadline;
/// the rest of the batch cannot be written in that call. Those jobs go back
/// to the queue (they were once counted unsent and dropped) and are written
/// once gearmand runs again.
#[test]
fn jobs_not_written_by_a_call_go_back_to_the_queue() {
    let g = Gearmand::start();
    let mut o = opts();
    o.client.io_timeout = Duration::from_millis(500);
    let d = start(&g.addr(), o);
    g.pause();
    let jobs: Vec<Job> = (0..20)
        .map(|i| Job::new("disp_paused", format!("{i}")))
        .collect();
    d.submit(jobs, soon(5)).unwrap();
    let t = Instant::now();
    while d.stats().unknown == 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", d.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = d.stats();
    assert_eq!(s.unsent, 0, "{s:?}");
    assert!(s.queued > 0, "the rest waits: {s:?}");
    g.resume();
    assert!(d.flush(soon(20)), "{:?}", d.stats());
    let s = d.stats();
    assert_eq!(s.unsent, 0, "{s:?}");
    assert_eq!(s.sent, 20, "each written once: {s:?}");
    assert_eq!(s.confirmed + s.unknown, 20, "{s:?}");
    assert_adds_up(&s);
    // The unknown-fate probes were queued after all once gearmand ran.
    let t = Instant::now();
    while queued(&g.addr(), "disp_paused") < 20 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(queued(&g.addr(), "disp_paused"), 20);
    assert!(d.stop(soon(5)));
}

/// With `linger`, the sender lets a batch fill: a lone job waits, a full
/// batch goes at once, and flush does not wait for the linger.
#[test]
fn linger_lets_a_batch_fill_and_a_full_batch_or_flush_ends_it() {
    let g = Gearmand::start();
    let d = start(
        &g.addr(),
        DispatcherOptions {
            linger: Duration::from_secs(600),
            batch: 5,
            ..opts()
        },
    );
    d.submit(vec![Job::new("disp_linger", "alone")], soon(5))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.stats().queued, 1, "lingering: {:?}", d.stats());
    assert!(d.flush(soon(10)), "flush ends the linger: {:?}", d.stats());
    assert_eq!(d.stats().confirmed, 1);
    let jobs: Vec<Job> = (0..5)
        .map(|i| Job::new("disp_linger", format!("{i}")))
        .collect();
    d.submit(jobs, soon(5)).unwrap();
    let t = Instant::now();
    while d.stats().confirmed < 6 {
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", d.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_adds_up(&d.stats());
    assert_eq!(queued(&g.addr(), "disp_linger"), 6);
    assert!(d.stop(soon(5)));
}

/// Jobs of a list none of whose servers can be reached wait apart: they
/// do not hold up the jobs of other lists queued behind them, even when
/// there are more of them than one batch (they used to fill every batch
/// from the front of the queue and starve the rest).
#[test]
fn an_unreachable_list_does_not_hold_up_the_others() {
    let g = Gearmand::start();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut routing = Routing::new(ServerList::parse(&g.addr()).unwrap());
    routing
        .set_function(b"to_dead", Some(ServerList::parse(&dead).unwrap()))
        .unwrap();
    let d = Dispatcher::start(routing, DispatcherOptions { batch: 5, ..opts() }).unwrap();
    let mut jobs: Vec<Job> = (0..20)
        .map(|i| Job::new("to_dead", format!("{i}")))
        .collect();
    jobs.extend((0..7).map(|i| Job::new("disp_live", format!("{i}"))));
    d.submit(jobs, soon(5)).unwrap();
    let t = Instant::now();
    while d.stats().confirmed < 7 {
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", d.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = d.stats();
    assert_eq!(s.queued, 20, "the dead list's jobs wait: {s:?}");
    assert_adds_up(&s);
    assert_eq!(queued(&g.addr(), "disp_live"), 7);
    let reach: Vec<Reachability> = s.servers.iter().map(|(_, r)| *r).collect();
    assert_eq!(reach, [Reachability::Up, Reachability::Down], "{s:?}");
    // Stop: the waiting jobs are unsent, nothing else.
    assert!(d.stop(Instant::now() + Duration::from_millis(300)));
    let s = d.stats();
    assert_eq!((s.confirmed, s.unsent, s.queued), (7, 20, 0), "{s:?}");
    assert_adds_up(&s);
}

fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn reach(s: &DispatcherStats, addr: &str) -> Option<Reachability> {
    s.servers
        .iter()
        .find(|(a, _)| a.to_string() == addr)
        .map(|(_, r)| *r)
}

/// `submit_to` sends every job of the call to the given list, whatever
/// the routing table says; its servers join `stats().servers`; a dead
/// list of its own waits apart; and jobs of one list keep their call order
/// whether they came routed or with the list given (one batch, one group).
#[test]
fn submit_to_sends_to_the_given_list_in_call_order() {
    let a = Gearmand::start();
    let b = Gearmand::start();
    let dead = dead_addr();
    let d = start(
        &a.addr(),
        DispatcherOptions {
            linger: Duration::from_secs(600),
            ..opts()
        },
    );
    let la = ServerList::parse(&a.addr()).unwrap();
    let lb = ServerList::parse(&b.addr()).unwrap();
    let ldead = ServerList::parse(&dead).unwrap();
    assert_eq!(d.stats().servers.len(), 1);
    // Routed (to a) and given (a, b, the dead one), interleaved in one batch.
    d.submit(vec![Job::new("disp_order", "0")], soon(5))
        .unwrap();
    d.submit_to(&lb, vec![Job::new("disp_to", "b0")], soon(5))
        .unwrap();
    d.submit_to(
        &la,
        vec![Job::new("disp_order", "1"), Job::new("disp_order", "2")],
        soon(5),
    )
    .unwrap();
    d.submit_to(&ldead, vec![Job::new("disp_order", "never")], soon(5))
        .unwrap();
    d.submit(vec![Job::new("disp_order", "3")], soon(5))
        .unwrap();
    d.submit_to(&lb, vec![Job::new("disp_to", "b1")], soon(5))
        .unwrap();
    d.submit_to(&la, vec![Job::new("disp_order", "4")], soon(5))
        .unwrap();
    let s = d.stats();
    assert_eq!(s.submitted, 8, "{s:?}");
    let servers: Vec<String> = s.servers.iter().map(|(a, _)| a.to_string()).collect();
    assert_eq!(servers, [a.addr(), b.addr(), dead.clone()], "{s:?}");
    // Invalid jobs and limits as for `submit`: nothing queued.
    let e = d
        .submit_to(
            &lb,
            vec![Job::new("disp_to", "ok"), Job::new("bad name", "")],
            soon(5),
        )
        .unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(d.stats().submitted, 8);
    // The dead list's job cannot be flushed; the rest goes.
    assert!(!d.flush(Instant::now() + Duration::from_secs(2)));
    let s = d.stats();
    assert_eq!((s.confirmed, s.queued), (7, 1), "{s:?}");
    assert_adds_up(&s);
    assert_eq!(reach(&s, &a.addr()), Some(Reachability::Up), "{s:?}");
    assert_eq!(reach(&s, &b.addr()), Some(Reachability::Up), "{s:?}");
    assert_eq!(reach(&s, &dead), Some(Reachability::Down), "{s:?}");
    assert_eq!(queued(&a.addr(), "disp_order"), 5);
    assert_eq!(queued(&a.addr(), "disp_to"), 0);
    assert_eq!(queued(&b.addr(), "disp_to"), 2);
    assert_eq!(queued(&b.addr(), "disp_order"), 0);
    // A new routing table does not drop the given lists' servers.
    d.set_routing(Routing::new(la.clone()));
    let servers: Vec<String> = d
        .stats()
        .servers
        .iter()
        .map(|(a, _)| a.to_string())
        .collect();
    assert_eq!(servers, [a.addr(), b.addr(), dead.clone()]);
    // The order gearmand hands the jobs to one worker: the call order.
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let g2 = got.clone();
    let mut w = gearman_core::worker::Worker::new(la.clone(), common::quick_worker_options());
    w.register(
        "disp_order",
        move |j: &mut gearman_core::worker::JobContext<'_>| {
            g2.lock()
                .unwrap()
                .push(String::from_utf8_lossy(j.workload()).into_owned());
            Ok(Vec::new())
        },
    );
    let _w = common::spawn(w);
    let t = Instant::now();
    while got.lock().unwrap().len() < 5 {
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", got);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*got.lock().unwrap(), ["0", "1", "2", "3", "4"]);
    assert!(d.stop(Instant::now() + Duration::from_millis(300)));
    let s = d.stats();
    assert_eq!((s.confirmed, s.unsent), (7, 1), "{s:?}");
}

fn wait_reach(d: &Dispatcher, addr: &str, want: Reachability, secs: u64) {
    let t = Instant::now();
    while reach(&d.stats(), addr) != Some(want) {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{addr} not {want:?} within {secs} s: {:?}",
            d.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server of a list that another server of the list serves shows Down
/// once a connect to it failed, and Up again once it is back, with
/// nothing queued: the sender probes Down servers while idle (it used to
/// leave the first Unknown and, once Down, Down until jobs were written
/// to it).
#[test]
fn a_down_server_shows_up_again_with_nothing_queued() {
    let mut a = Gearmand::start();
    let b = Gearmand::start();
    let list = format!("{},{}", a.addr(), b.addr());
    let d = start(&list, opts());
    a.kill();
    for i in 0..20 {
        // No unique key: round robin, so `a` is tried.
        d.submit(vec![Job::new("disp_probe", format!("{i}"))], soon(5))
            .unwrap();
        assert!(d.flush(soon(10)), "{:?}", d.stats());
    }
    let s = d.stats();
    assert_eq!((s.confirmed, s.queued), (20, 0), "{s:?}");
    assert_adds_up(&s);
    assert_eq!(queued(&b.addr(), "disp_probe"), 20);
    assert_eq!(reach(&s, &b.addr()), Some(Reachability::Up), "{s:?}");
    wait_reach(&d, &a.addr(), Reachability::Down, 10);
    a.restart();
    wait_reach(&d, &a.addr(), Reachability::Up, 10);
    let s = d.stats();
    assert_eq!((s.submitted, s.queued), (20, 0), "nothing written: {s:?}");
    assert!(d.stop(soon(5)));
}

/// The one server of the routing table goes away, a job waits for it;
/// the server comes back on the same port: it shows Up within a bounded
/// poll, with nothing more submitted, and the waiting job arrives.
#[test]
fn a_server_back_on_its_port_shows_up_and_gets_the_waiting_job() {
    let mut g = Gearmand::start();
    let d = start(&g.addr(), opts());
    g.kill();
    d.submit(vec![Job::new("disp_back", "waited")], soon(5))
        .unwrap();
    wait_reach(&d, &g.addr(), Reachability::Down, 10);
    assert_eq!(d.stats().queued, 1);
    g.restart();
    wait_reach(&d, &g.addr(), Reachability::Up, 10);
    assert!(d.flush(soon(10)), "{:?}", d.stats());
    let s = d.stats();
    assert_eq!((s.submitted, s.confirmed, s.queued), (1, 1, 0), "{s:?}");
    assert_adds_up(&s);
    assert_eq!(queued(&g.addr(), "disp_back"), 1);
    assert!(d.stop(soon(5)));
}

/// What a scripted job server received: (connection number, packet type,
/// workload).
type Received = Arc<Mutex<Vec<(usize, gearman_core::proto::PacketType, String)>>>;

/// A scripted job server: on its first connection it confirms the first
/// SUBMIT_JOB_BG and closes the connection on the next submission
/// (unanswered); on every later connection it confirms SUBMIT_JOB_BG and
/// never answers SUBMIT_JOB_EPOCH (as a server without scheduled jobs).
fn break_then_ignore_epoch() -> (String, Received) {
    use gearman_core::proto::{decode, encode, Decoded, Magic, PacketType as T};
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let got: Received = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        for (n, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { return };
            let g = g.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut confirmed = 0;
                loop {
                    let Ok(k) = s.read(&mut chunk) else { return };
                    if k == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    while let Ok(Decoded::Packet(p, used)) = decode(&buf, 1 << 20) {
                        buf.drain(..used);
                        if p.kind != T::SubmitJobBg && p.kind != T::SubmitJobEpoch {
                            continue;
                        }
                        let workload = p.args.last().cloned().unwrap_or_default();
                        g.lock().unwrap().push((
                            n,
                            p.kind,
                            String::from_utf8_lossy(&workload).into_owned(),
                        ));
                        if n == 0 && confirmed == 1 {
                            return; // closed, unanswered
                        }
                        if p.kind == T::SubmitJobBg {
                            let mut out = Vec::new();
                            let h = format!("H:fake:{n}:{confirmed}");
                            encode(Magic::Res, T::JobCreated, &[h.as_bytes()], &mut out).unwrap();
                            if s.write_all(&out).is_err() {
                                return;
                            }
                            confirmed += 1;
                        }
                    }
                }
            });
        }
    });
    (addr, got)
}

/// The jobs a write call did not write are exactly those requeued: here
/// the middle one (its connection broke, and its second write found the
/// call's deadline spent by a later job's unanswered SUBMIT_JOB_EPOCH). The
/// dispatcher used to requeue the last jobs in write order instead: the
/// epoch job went twice and the broken one was lost.
#[test]
fn exactly_the_jobs_a_call_did_not_write_are_queued_again() {
    let (addr, got) = break_then_ignore_epoch();
    let failed: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let f2 = failed.clone();
    let mut o = opts();
    o.client.io_timeout = Duration::from_secs(1);
    o.client.max_in_flight = 1;
    o.linger = Duration::from_secs(600);
    o.on_report = Some(Arc::new(move |r: &DeferredReport| {
        let mut f = f2.lock().unwrap();
        f.extend(r.failed.iter().map(|x| x.unique.clone()));
    }));
    let d = start(&addr, o);
    let epoch = 4_000_000_000i64;
    d.submit(
        vec![
            Job::new("disp_exact", "0").with_unique("k0"),
            Job::new("disp_exact", "1").with_unique("k1"),
            Job::new("disp_exact", "2")
                .with_unique("k2")
                .with_epoch(epoch),
        ],
        soon(5),
    )
    .unwrap();
    assert!(d.flush(soon(20)), "{:?}", d.stats());
    let s = d.stats();
    assert_eq!(s.sent, 3, "each written once: {s:?}");
    assert_eq!((s.confirmed, s.unknown, s.unsent), (2, 1, 0), "{s:?}");
    assert_adds_up(&s);
    assert_eq!(*failed.lock().unwrap(), [b"k2".to_vec()]);
    let mut times: Vec<(String, usize)> = Vec::new();
    for (_, _, w) in got.lock().unwrap().iter() {
        match times.iter_mut().find(|(x, _)| x == w) {
            Some((_, n)) => *n += 1,
            None => times.push((w.clone(), 1)),
        }
    }
    times.sort();
    let want = [
        ("0".to_string(), 1),
        ("1".to_string(), 2),
        ("2".to_string(), 1),
    ];
    assert_eq!(times, want, "{:?}", got.lock().unwrap());
    assert!(d.stop(soon(5)));
}

/// The ledger itself: `submit_background_deferred_on_tracked` names the
/// job it did not write (the middle one), and counts the others written.
#[test]
fn the_ledger_names_the_jobs_it_did_not_write() {
    let (addr, _got) = break_then_ignore_epoch();
    let list = ServerList::parse(&addr).unwrap();
    let mut c = gearman_core::Client::new(
        list.clone(),
        Options {
            io_timeout: Duration::from_secs(1),
            max_in_flight: 1,
            ..Options::default()
        },
    );
    let jobs = vec![
        Job::new("f", "0"),
        Job::new("f", "1"),
        Job::new("f", "2").with_epoch(4_000_000_000),
    ];
    let w = c
        .submit_background_deferred_on_tracked(&list, &jobs)
        .unwrap();
    assert_eq!(w.unwritten, [1], "{w:?}");
    let e = w.error.expect("the deadline error");
    assert_eq!(*e.kind(), ErrorKind::Timeout, "{e}");
    assert_eq!(c.deferred_written(), 2);
    let r = c.collect_deferred(true);
    assert_eq!((r.confirmed, r.failed.len(), r.pending), (1, 1, 0), "{r:?}");
    assert!(r.failed[0].error.is_timeout(), "{r:?}");
    // Invalid jobs: an error, nothing written.
    let e = c
        .submit_background_deferred_on_tracked(&list, &[Job::new("bad name", "")])
        .unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(c.deferred_written(), 2);
}

#[test]
fn stop_taking_returns_the_jobs_not_written_instead_of_counting_them_unsent() {
    let dead = dead_addr();
    let d = start(&dead, opts());
    let list = ServerList::parse(&dead).unwrap();
    d.submit_to(&list, vec![Job::new("f", "1"), Job::new("f", "2")], soon(5))
        .unwrap();
    d.submit(vec![Job::new("g", "3")], soon(5)).unwrap();
    // Let the sender try (and park them) before it stops.
    wait_reach(&d, &dead, Reachability::Down, 10);
    let left = d.stop_taking(Instant::now() + Duration::from_millis(300));
    assert!(d.is_stopped());
    let got: Vec<(Option<String>, &[u8])> = left
        .iter()
        .map(|(l, j)| (l.as_ref().map(ToString::to_string), &j.workload[..]))
        .collect();
    let l = Some(list.to_string());
    assert_eq!(
        got,
        [(l.clone(), &b"1"[..]), (l.clone(), b"2"), (l, b"3")],
        "oldest first, with their list"
    );
    let s = d.stats();
    assert_eq!((s.sent, s.unsent, s.queued), (0, 0, 0), "{s:?}");
    // A second stop gives nothing more.
    assert!(d.stop_taking(Instant::now()).is_empty());
}
