//! Faults: dead and restarted servers, several servers, and a scripted fake
//! server that misbehaves. Every case ends in an error, never a hang or panic.

mod common;

use common::{client, test_worker};
use gearman_core::{ErrorKind, Job, Options, ServerList};
use gearman_testkit::Gearmand;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

#[test]
fn gearmand_killed_while_a_foreground_job_waits() {
    let mut g = Gearmand::start();
    let mut c = client(&g.addr());
    let t = std::thread::spawn(move || {
        let r = c.run(&Job::new("nobody_serves_this", "x"));
        (r, Instant::now())
    });
    // Kill gearmand once it holds the job (the client is then waiting).
    let addr = gearman_core::ServerAddr::parse(&g.addr()).unwrap();
    let t0 = Instant::now();
    while !gearman_core::admin::Admin::connect(&addr, Duration::from_secs(2))
        .and_then(|mut a| a.status())
        .unwrap()
        .iter()
        .any(|f| f.function == "nobody_serves_this" && f.total == 1)
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "job not queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Instant::now();
    g.kill();
    let (r, ended) = t.join().unwrap();
    let e = r.unwrap_err();
    assert!(e.is_connection_lost(), "{e}");
    let took = ended.duration_since(killed);
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} after the kill"
    );
}

#[test]
fn client_and_worker_recover_after_gearmand_restarts() {
    let mut g = Gearmand::start();
    let _w = test_worker(&g.addr());
    let mut c = client(&g.addr());
    assert_eq!(c.run(&Job::new("reverse", "abc")).unwrap(), b"cba");
    g.kill();
    let e = c.run(&Job::new("reverse", "abc")).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::ConnectFailed, "{e}");
    g.restart();
    // The client's cached connection is stale; the worker must reconnect
    // and register again (back-off up to 10 s, usually well under).
    let t = Instant::now();
    loop {
        match c.run(&Job::new("reverse", "abc")) {
            Ok(r) => {
                assert_eq!(r, b"cba");
                break;
            }
            Err(e) => assert!(t.elapsed() < Duration::from_secs(20), "{e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Background submission right after a restart works on the first try.
    g.restart();
    assert!(c.submit_background(&Job::new("reverse", "x")).is_ok());
}

#[test]
fn two_servers_one_down_every_job_gets_through_and_the_dead_one_is_not_retried_each_call() {
    let g = Gearmand::start();
    let dead = gearman_testkit::DeadPort::new();
    let list = format!("{},{}", dead.addr(), g.addr());
    let _w = test_worker(&g.addr());
    let mut c = client(&list);
    // Long enough that the dead server is not due again during the test,
    // however slow the machine.
    c.options_mut().retry_backoff = Duration::from_secs(600);
    for i in 0..100 {
        let h = c
            .submit_background(&Job::new("bg", format!("{i}")))
            .unwrap();
        assert_eq!(h.server.to_string(), g.addr());
    }
    for i in 0..20 {
        let u = format!("key-{i}");
        assert_eq!(
            c.run(&Job::new("echo", u.as_str()).with_unique(u.as_str()))
                .unwrap(),
            u.as_bytes()
        );
    }
    let s = c.stats();
    assert_eq!(
        s.connect_failures, 1,
        "the dead server is in back-off: {s:?}"
    );
    assert_eq!(s.connects, 1);
}

/// A fake job server: accepts one connection, reads the first request,
/// then sends `reply` and optionally closes.
fn fake_server(reply: Vec<u8>, close: bool) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(&reply);
            if !close {
                std::thread::sleep(Duration::from_secs(10));
            }
        }
    });
    addr
}

#[test]
fn a_fake_server_that_misbehaves_gives_errors_not_panics_or_hangs() {
    let cases: Vec<(&str, Vec<u8>, bool, ErrorKind)> = vec![
        (
            "garbage text",
            b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            true,
            ErrorKind::Protocol,
        ),
        (
            "bad magic",
            b"\0XYZ\0\0\0\x08\0\0\0\0".to_vec(),
            false,
            ErrorKind::Protocol,
        ),
        (
            "huge size field",
            b"\0RES\0\0\0\x08\xff\xff\xff\xf0".to_vec(),
            false,
            ErrorKind::Protocol,
        ),
        (
            "closes mid-packet",
            b"\0RES\0\0\0\x08\0\0\0\x10H:x".to_vec(),
            true,
            ErrorKind::ConnectionLost,
        ),
        ("closes at once", vec![], true, ErrorKind::ConnectionLost),
        ("never answers", vec![], false, ErrorKind::Timeout),
        (
            "unexpected packet type",
            b"\0RES\0\0\0\x0a\0\0\0\0".to_vec(),
            false,
            ErrorKind::Protocol,
        ),
    ];
    for (name, reply, close, want) in cases {
        let addr = fake_server(reply, close);
        let mut c = gearman_core::Client::new(
            ServerList::parse(&addr).unwrap(),
            Options {
                io_timeout: Duration::from_millis(800),
                foreground_timeout: Some(Duration::from_secs(2)),
                ..Options::default()
            },
        );
        let t = Instant::now();
        let e = c.run(&Job::new("f", "x")).unwrap_err();
        assert_eq!(e.kind(), &want, "{name}: {e}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{name} took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn a_fake_server_with_garbage_cannot_stop_a_worker() {
    // The worker reconnects after a protocol error instead of panicking.
    let addr = fake_server(b"\0RES\0\0\0\x63\0\0\0\0".to_vec(), true);
    let mut w = gearman_core::worker::Worker::new(
        ServerList::parse(&addr).unwrap(),
        common::quick_worker_options(),
    );
    w.register("f", |_| Ok(vec![]));
    let stop = w.stop_handle();
    let t = std::thread::spawn(move || w.run());
    std::thread::sleep(Duration::from_millis(500));
    stop.stop();
    assert!(t.join().unwrap().is_ok());
}
