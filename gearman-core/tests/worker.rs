//! The worker against a real gearmand: graceful stop, several servers,
//! unsolicited ERROR packets.

mod common;

use common::{client, quick_worker_options, spawn, test_worker};
use gearman_core::worker::Worker;
use gearman_core::{Job, ServerList};
use gearman_testkit::Gearmand;
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
