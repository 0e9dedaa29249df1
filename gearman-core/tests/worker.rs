//! The worker against a real gearmand: graceful stop, several servers,
//! unsolicited ERROR packets; against Perl's Gearman::Server (no
//! GRAB_JOB_UNIQ) and Python's gear.

mod common;

use common::{client, quick_worker_options, spawn, test_worker};
use gearman_core::worker::Worker;
use gearman_core::{Job, ServerList};
use gearman_testkit::{GearServer, Gearmand, PerlGearmand};
use std::time::{Duration, Instant};

#[test]
fn graceful_stop_finishes_the_running_job() {
    let g = Gearmand::start();
    let mut w = Worker::new(
        ServerList::parse(&g.addr()).unwrap(),
        quick_worker_options(),
    );
    let (started_tx, started) = std::sync::mpsc::channel();
    w.register("slow", move |j| {
        let _ = started_tx.send(());
        std::thread::sleep(Duration::from_millis(800));
        Ok(j.workload().to_vec())
    });
    let stop = w.stop_handle();
    let wt = std::thread::spawn(move || w.run());
    let mut c = client(&g.addr());
    let ct = std::thread::spawn(move || c.run(&Job::new("slow", "done")));
    // Stop once the handler runs the job.
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("the worker did not start the job within 10 s");
    stop.stop();
    assert_eq!(
        ct.join().unwrap().unwrap(),
        b"done",
        "the running job's result reached the client"
    );
    let t = Instant::now();
    wt.join().unwrap().unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    // Stopped: a new job is not taken.
    let mut c = client(&g.addr());
    c.options_mut().foreground_timeout = Some(Duration::from_millis(500));
    assert!(c.run(&Job::new("slow", "x")).unwrap_err().is_timeout());
}

#[test]
fn one_worker_serves_several_servers() {
    let g1 = Gearmand::start();
    let g2 = Gearmand::start();
    let _w = test_worker(&format!("{},{}", g1.addr(), g2.addr()));
    for g in [&g1, &g2] {
        let mut c = client(&g.addr());
        assert_eq!(c.run(&Job::new("reverse", "ab")).unwrap(), b"ba");
    }
}

#[test]
fn unsolicited_error_and_noop_packets_are_skipped() {
    // A scripted job server: answers the worker's GRAB with an ERROR (as
    // gearmand does for a late result, protocol.md 4.7) and a NOOP before
    // the JOB_ASSIGN_UNIQ. The worker must skip both and do the job.
    use gearman_core::proto::{decode, encode, Decoded, Magic, PacketType as T};
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut w = Worker::new(ServerList::parse(&addr).unwrap(), quick_worker_options());
    w.register("echo", |j| Ok(j.workload().to_vec()));
    let _w = spawn(w);
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut next = |s: &mut std::net::TcpStream| loop {
        if let Decoded::Packet(p, n) = decode(&buf, 1 << 20).unwrap() {
            buf.drain(..n);
            return p;
        }
        let mut c = [0u8; 4096];
        let n = s.read(&mut c).expect("worker packet");
        assert!(n > 0);
        buf.extend_from_slice(&c[..n]);
    };
    assert_eq!(next(&mut s).kind, T::CanDo);
    assert_eq!(next(&mut s).kind, T::GrabJobUniq);
    // The probe behind the first GRAB_JOB_UNIQ; never answered here: a
    // GRAB reply before it settles the question.
    assert_eq!(next(&mut s).kind, T::EchoReq);
    let mut out = Vec::new();
    encode(
        Magic::Res,
        T::Error,
        &[b"JOB_NOT_FOUND", b"Job given in work result not found"],
        &mut out,
    )
    .unwrap();
    encode(Magic::Res, T::Noop, &[], &mut out).unwrap();
    encode(
        Magic::Res,
        T::JobAssignUniq,
        &[b"H:fake:1", b"echo", b"", b"payload"],
        &mut out,
    )
    .unwrap();
    s.write_all(&out).unwrap();
    let done = next(&mut s);
    assert_eq!(done.kind, T::WorkComplete);
    assert_eq!(
        (done.arg(0), done.arg(1)),
        (&b"H:fake:1"[..], &b"payload"[..])
    );
    assert_eq!(next(&mut s).kind, T::GrabJobUniq, "and it grabs again");
}

/// A worker whose idle re-grab is an hour: an idle worker then takes a
/// new job only when the server wakes it with NOOP after PRE_SLEEP.
fn sleepy_worker(addr: &str) -> (common::RunningWorker, std::sync::mpsc::Receiver<Vec<u8>>) {
    let mut w = Worker::new(
        ServerList::parse(addr).unwrap(),
        gearman_core::worker::WorkerOptions {
            idle_regrab: Duration::from_secs(3600),
            ..quick_worker_options()
        },
    );
    let (uniq_tx, uniq_rx) = std::sync::mpsc::channel();
    let uniq_tx = std::sync::Mutex::new(uniq_tx);
    w.register("reverse", move |j| {
        let _ = uniq_tx.lock().unwrap().send(j.unique().to_vec());
        let mut v = j.workload().to_vec();
        v.reverse();
        Ok(v)
    });
    (spawn(w), uniq_rx)
}

/// Waits until the server's admin `status` lists a worker for `function`.
fn wait_registered(addr: &str, function: &str) {
    let a = ServerList::parse(addr).unwrap();
    let a = a.get(0).unwrap();
    let t = Instant::now();
    loop {
        let n = gearman_core::admin::Admin::connect(a, Duration::from_secs(2))
            .and_then(|mut c| c.status())
            .map(|rows| {
                rows.iter()
                    .find(|r| r.function == function)
                    .map_or(0, |r| r.workers)
            })
            .unwrap_or(0);
        if n > 0 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no worker for {function} registered on {addr} within 15 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Our client submits, our worker serves, on `addr`; twice, the second
/// time after the worker went to sleep (PRE_SLEEP), so only the server's
/// NOOP can wake it. Returns the unique keys the handler saw.
fn serve_twice_across_a_sleep(addr: &str) -> Vec<Vec<u8>> {
    let (_w, uniq) = sleepy_worker(addr);
    wait_registered(addr, "reverse");
    let mut c = client(addr);
    assert_eq!(
        c.run(&Job::new("reverse", "hello").with_unique("k1"))
            .unwrap(),
        b"olleh"
    );
    // Idle now: GRAB, NO_JOB, PRE_SLEEP. Give it time to fall asleep (if it
    // has not, the next GRAB takes the job and the test proves less, but
    // never fails falsely).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.run(&Job::new("reverse", &b"\x00bin\xffary"[..])).unwrap(),
        b"yra\xffnib\x00",
        "the sleeping worker was woken by NOOP and served the job"
    );
    uniq.try_iter().collect()
}

#[test]
fn the_worker_serves_on_the_perl_job_server() {
    // Gearman::Server answers GRAB_JOB_UNIQ with ERROR: the worker falls
    // back to GRAB_JOB on that connection (before: it waited for ever).
    let p = PerlGearmand::start();
    let seen = serve_twice_across_a_sleep(&p.addr());
    // GRAB_JOB's JOB_ASSIGN carries no unique key.
    assert_eq!(seen, vec![Vec::<u8>::new(), Vec::new()]);
}

#[test]
fn the_worker_serves_on_the_python_gear_server() {
    let g = GearServer::start();
    let seen = serve_twice_across_a_sleep(&g.addr());
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], b"k1", "gear answers GRAB_JOB_UNIQ");
}

#[test]
fn the_worker_still_grabs_with_unique_keys_on_gearmand() {
    let g = Gearmand::start();
    let seen = serve_twice_across_a_sleep(&g.addr());
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], b"k1");
}

#[test]
fn after_a_perl_server_restart_the_worker_probes_again_and_serves() {
    let mut p = PerlGearmand::start();
    let (_w, _uniq) = sleepy_worker(&p.addr());
    wait_registered(&p.addr(), "reverse");
    assert_eq!(
        client(&p.addr()).run(&Job::new("reverse", "ab")).unwrap(),
        b"ba"
    );
    p.restart();
    wait_registered(&p.addr(), "reverse");
    assert_eq!(
        client(&p.addr()).run(&Job::new("reverse", "cd")).unwrap(),
        b"dc"
    );
}

#[test]
fn a_server_that_drops_grab_job_uniq_silently_gets_grab_job() {
    // A scripted server that ignores GRAB_JOB_UNIQ without a reply (as some
    // servers do with packets they do not know) but answers the echo: the
    // worker must not wait for the GRAB reply; it grabs with GRAB_JOB.
    use gearman_core::proto::{decode, encode, Decoded, Magic, PacketType as T};
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut w = Worker::new(ServerList::parse(&addr).unwrap(), quick_worker_options());
    w.register("echo", |j| Ok(j.workload().to_vec()));
    let _w = spawn(w);
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut next = |s: &mut std::net::TcpStream| loop {
        if let Decoded::Packet(p, n) = decode(&buf, 1 << 20).unwrap() {
            buf.drain(..n);
            return p;
        }
        let mut c = [0u8; 4096];
        let n = s.read(&mut c).expect("worker packet");
        assert!(n > 0);
        buf.extend_from_slice(&c[..n]);
    };
    assert_eq!(next(&mut s).kind, T::CanDo);
    assert_eq!(next(&mut s).kind, T::GrabJobUniq);
    let echo = next(&mut s);
    assert_eq!(echo.kind, T::EchoReq);
    let mut out = Vec::new();
    encode(Magic::Res, T::EchoRes, &[echo.arg(0)], &mut out).unwrap();
    s.write_all(&out).unwrap();
    assert_eq!(next(&mut s).kind, T::GrabJob);
    out.clear();
    encode(
        Magic::Res,
        T::JobAssign,
        &[b"H:fake:2", b"echo", b"payload"],
        &mut out,
    )
    .unwrap();
    s.write_all(&out).unwrap();
    let done = next(&mut s);
    assert_eq!(done.kind, T::WorkComplete);
    assert_eq!(
        (done.arg(0), done.arg(1)),
        (&b"H:fake:2"[..], &b"payload"[..])
    );
    assert_eq!(next(&mut s).kind, T::GrabJob, "GRAB_JOB from then on");
}
