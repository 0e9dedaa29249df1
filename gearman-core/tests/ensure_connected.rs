//! `Client::ensure_connected`: a reachability check without a round trip,
//! against real gearmand processes.

mod common;

use gearman_core::{ErrorKind, Job, ServerAddr};
use gearman_testkit::Gearmand;

fn addr(g: &Gearmand) -> ServerAddr {
    ServerAddr::parse(&g.addr()).unwrap()
}

#[test]
fn a_running_server_is_reachable_and_its_connection_is_reused() {
    let g = Gearmand::start();
    let mut c = common::client(&g.addr());
    assert_eq!(c.ensure_connected().unwrap(), addr(&g));
    assert_eq!(c.stats().connects, 1);
    assert_eq!(c.open_connections(), 1);
    // The cached connection is usable: no new connect.
    assert_eq!(c.ensure_connected().unwrap(), addr(&g));
    assert_eq!(c.stats().connects, 1);
    // And it carries jobs.
    c.submit_background(&Job::new("ec_reach", "x")).unwrap();
    assert_eq!(c.stats().connects, 1);
}

#[test]
fn close_connection_closes_that_server_only() {
    let a = Gearmand::start();
    let b = Gearmand::start();
    let mut c = common::client(&format!("{},{}", a.addr(), b.addr()));
    c.submit_background(&Job::new("cc_a", "x").with_unique("k1"))
        .unwrap();
    let list_b = gearman_core::ServerList::parse(&b.addr()).unwrap();
    assert_eq!(c.ensure_connected_on(&list_b).unwrap(), addr(&b));
    let first = if c.has_connection(&addr(&a)) {
        addr(&a)
    } else {
        addr(&b)
    };
    assert_eq!(c.open_connections(), if first == addr(&b) { 1 } else { 2 });
    c.close_connection(&addr(&b));
    assert!(!c.has_connection(&addr(&b)));
    assert_eq!(c.has_connection(&addr(&a)), first == addr(&a));
    // Closing a server with no connection does nothing.
    c.close_connection(&addr(&b));
    // The next use connects again.
    assert_eq!(c.ensure_connected_on(&list_b).unwrap(), addr(&b));
    assert!(c.has_connection(&addr(&b)));
}

#[test]
fn a_dead_server_is_skipped_for_the_next_one() {
    let mut dead = Gearmand::start();
    let alive = Gearmand::start();
    dead.kill();
    let mut c = common::client(&format!("{},{}", dead.addr(), alive.addr()));
    for _ in 0..3 {
        assert_eq!(c.ensure_connected().unwrap(), addr(&alive));
    }
    assert!(c.stats().connect_failures >= 1, "{:?}", c.stats());

    // Nothing reachable at all: an error, not a hang.
    let mut none = common::client(&dead.addr());
    let e = none.ensure_connected().unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::ConnectFailed, "{e}");
}

#[test]
fn a_cached_connection_to_a_server_that_went_away_is_replaced() {
    let mut g = Gearmand::start();
    let mut c = common::client(&g.addr());
    c.ensure_connected().unwrap();
    assert_eq!(c.stats().connects, 1);

    // Killed: the cached connection is seen closed, and the reconnect fails.
    g.kill();
    let e = c.ensure_connected().unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::ConnectFailed, "{e}");

    // Restarted: a fresh connection, which works. (The failed connect put the
    // server into back-off; with a single server it is tried anyway.)
    g.restart();
    assert_eq!(c.ensure_connected().unwrap(), addr(&g));
    assert_eq!(c.stats().connects, 2);
    c.submit_background(&Job::new("ec_restart", "x")).unwrap();
}

#[test]
fn a_restart_between_calls_is_detected_without_a_round_trip() {
    let mut g = Gearmand::start();
    let mut c = common::client(&g.addr());
    c.ensure_connected().unwrap();
    g.restart();
    // The old socket shows end-of-stream: replaced by a new connection.
    assert_eq!(c.ensure_connected().unwrap(), addr(&g));
    assert_eq!(c.stats().connects, 2);
    assert_eq!(c.stats().connect_failures, 0);
}

#[test]
fn ensure_connected_does_not_wait_for_deferred_confirmations_and_proves_no_answer() {
    let mut g = Gearmand::start();
    let mut c = common::client(&g.addr());
    c.ensure_connected().unwrap();
    // The first SUBMIT_JOB_BG on a connection is awaited; once answered,
    // the type is pipelined without waiting.
    c.submit_background_deferred(&[Job::new("ec_warm", "w")])
        .unwrap();
    assert_eq!(c.collect_deferred(false).confirmed, 1);
    // A stopped gearmand: the kernel still holds the connection open, so
    // the check passes although nothing will answer.
    g.pause();
    let jobs: Vec<Job> = (0..3)
        .map(|i| Job::new("ec_stopped", format!("j{i}")).with_unique(format!("u{i}")))
        .collect();
    c.submit_background_deferred(&jobs).unwrap();
    assert_eq!(c.deferred_written(), 4);
    assert_eq!(c.ensure_connected().unwrap(), addr(&g));
    c.submit_background_deferred(&jobs[..1]).unwrap();
    assert_eq!(c.deferred_written(), 5);
    let r = c.take_deferred_report();
    assert_eq!((r.confirmed, r.failed.len(), r.pending), (0, 0, 4), "{r:?}");

    // Killed before it read the jobs: each becomes a failure of unknown
    // outcome (connection lost), none is confirmed.
    g.kill();
    let r = c.collect_deferred(true);
    assert_eq!(r.confirmed, 0, "{r:?}");
    assert_eq!(r.pending, 0, "{r:?}");
    assert_eq!(r.failed.len(), 4, "{r:?}");
    for f in &r.failed {
        assert_eq!(f.error.kind(), &ErrorKind::ConnectionLost, "{f:?}");
        assert_eq!(f.function, "ec_stopped");
    }
    let e = c.ensure_connected().unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::ConnectFailed, "{e}");
}

#[test]
fn deferred_submissions_pipeline_behind_unconfirmed_ones() {
    let g = Gearmand::start();
    let mut c = common::client(&g.addr());
    for i in 0..50 {
        c.ensure_connected().unwrap();
        c.submit_background_deferred(&[Job::new("ec_pipe", format!("{i}"))])
            .unwrap();
    }
    assert_eq!(c.stats().connects, 1);
    assert_eq!(c.deferred_written(), 50);
    let r = c.collect_deferred(true);
    assert_eq!(
        (r.confirmed, r.failed.len(), r.pending),
        (50, 0, 0),
        "{r:?}"
    );
}
