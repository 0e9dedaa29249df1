//! Hostile and broken peers (issue 10): forged admin lines, over-long
//! fields, floods, black holes, servers that drop packets. Scripted fake
//! servers where a real server cannot misbehave so; real gearmand where it
//! can.

mod common;

use gearman_core::admin::Admin;
use gearman_core::proto::{decode, encode, Decoded, Magic, Packet, PacketType};
use gearman_core::{Client, ErrorKind, Job, Options, ServerAddr, ServerList};
use gearman_testkit::Gearmand;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a scripted job server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    packets: AtomicUsize,
}

/// A scripted binary job server: every request packet is passed to
/// `answer` with the connection's own counter of requests so far; the bytes
/// it returns are sent back (`None` closes the connection).
fn scripted(
    answer: impl Fn(&Packet, usize, &mut TcpStream) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> (ServerAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = ServerAddr::parse(&l.local_addr().unwrap().to_string()).unwrap();
    let seen = Arc::new(Seen::default());
    let answer = Arc::new(answer);
    let seen2 = Arc::clone(&seen);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            seen2.connections.fetch_add(1, Ordering::SeqCst);
            let answer = Arc::clone(&answer);
            let seen = Arc::clone(&seen2);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 65536];
                let mut n_req = 0;
                loop {
                    while let Ok(Decoded::Packet(p, used)) = decode(&buf, 64 << 20) {
                        buf.drain(..used);
                        seen.packets.fetch_add(1, Ordering::SeqCst);
                        n_req += 1;
                        match answer(&p, n_req, &mut s) {
                            Some(bytes) => {
                                if s.write_all(&bytes).is_err() {
                                    return;
                                }
                            }
                            None => return,
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn res(kind: PacketType, args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(Magic::Res, kind, args, &mut out).unwrap();
    out
}

fn is_submit(p: &Packet) -> bool {
    matches!(
        p.kind,
        PacketType::SubmitJob
            | PacketType::SubmitJobBg
            | PacketType::SubmitJobHigh
            | PacketType::SubmitJobHighBg
            | PacketType::SubmitJobLow
            | PacketType::SubmitJobLowBg
            | PacketType::SubmitJobEpoch
    )
}

fn quick(addr: &ServerAddr) -> Client {
    Client::new(
        ServerList::single(addr.clone()),
        Options {
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(2),
            foreground_timeout: Some(Duration::from_secs(3)),
            ..Options::default()
        },
    )
}

/// A scripted admin server: for each connection, answers each command line
/// with the text `answer(command)` returns.
fn admin_server(answer: fn(&str) -> Vec<u8>) -> ServerAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = ServerAddr::parse(&l.local_addr().unwrap().to_string()).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let cmd = String::from_utf8_lossy(&line).trim_end().to_string();
                        if s.write_all(&answer(&cmd)).is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

fn packet(kind: PacketType, args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(Magic::Req, kind, args, &mut out).unwrap();
    out
}

/// Issue 10 item 10: a function named "nl\n.\nx" forges a "." line and a
/// line that is not `name TAB n TAB n TAB n` in the `status` answer; every
/// other line must still come through, and the connection stays usable.
#[test]
fn admin_status_with_a_forged_line_keeps_every_other_line() {
    let addr = admin_server(|cmd| match cmd {
        "status" => b"good\t1\t0\t1\nnl\n.\nx\t0\t0\t1\nother\t2\t1\t1\n.\n".to_vec(),
        "workers" => b"30 127.0.0.1 - : good nl\n.\nx other\n31 127.0.0.1 w1 : other\n.\n".to_vec(),
        "show jobs" => b"H:h:1\t0\t0\t1\nbad line\n.\n".to_vec(),
        "prioritystatus" => b"good\t0\t1\t0\t1\nnl\n.\nx\t0\t0\t0\t1\n.\n".to_vec(),
        "version" => b"OK 1.1.20\n".to_vec(),
        _ => b"ERR UNKNOWN_COMMAND Unknown+server+command\n".to_vec(),
    });
    let mut a = Admin::connect(&addr, Duration::from_secs(5)).unwrap();
    let st = a.status().unwrap();
    let names: Vec<&str> = st.iter().map(|f| f.function.as_str()).collect();
    assert_eq!(names, ["good", "x", "other"]);
    assert_eq!((st[2].total, st[2].running, st[2].workers), (2, 1, 1));
    let w = a.workers().unwrap();
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(w[1].client_id, "w1");
    assert_eq!(a.show_jobs().unwrap().len(), 1);
    assert_eq!(a.priority_status().unwrap().len(), 2);
    // The same connection answers the next command in step.
    assert_eq!(a.version().unwrap(), "1.1.20");
}

/// The same through real gearmand: a raw CAN_DO registers a name with
/// newlines (gearmand accepts it); `status` and `workers` still list the
/// honest functions, and our own validators refuse such a name.
#[test]
fn real_gearmand_with_a_newline_in_a_registered_name() {
    let g = Gearmand::start();
    let addr = ServerAddr::parse(&g.addr()).unwrap();
    let mut raw = TcpStream::connect(g.addr()).unwrap();
    let mut bytes = packet(PacketType::CanDo, &[b"aaa"]);
    bytes.extend(packet(PacketType::CanDo, &[b"nl\n.\nx"]));
    bytes.extend(packet(PacketType::CanDo, &[b"zzz"]));
    raw.write_all(&bytes).unwrap();
    // Wait (bounded) until gearmand has taken all three registrations.
    let t = Instant::now();
    let status = loop {
        let st = Admin::connect(&addr, Duration::from_secs(5))
            .unwrap()
            .status()
            .expect("status must not fail on a forged line");
        if st.iter().any(|f| f.function == "zzz") && st.iter().any(|f| f.function == "aaa") {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not registered: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for f in ["aaa", "zzz"] {
        let s = status.iter().find(|s| s.function == f).unwrap();
        assert_eq!(s.workers, 1, "{status:?}");
    }
    let mut a = Admin::connect(&addr, Duration::from_secs(5)).unwrap();
    let workers = a.workers().expect("workers must not fail on a forged line");
    assert!(
        workers
            .iter()
            .any(|w| w.functions.iter().any(|f| f == "zzz")),
        "{workers:?}"
    );
    assert_eq!(a.version().unwrap().split('.').count(), 3);
    // Our side refuses such names everywhere it takes one.
    let mut c = common::client(&g.addr());
    let e = c.submit_background(&Job::new("nl\n.\nx", "w")).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidArgument, "{e}");
    let mut w = gearman_core::worker::Worker::new(
        gearman_core::ServerList::parse(&g.addr()).unwrap(),
        common::quick_worker_options(),
    );
    w.register("a b", |_| Ok(vec![]));
    assert_eq!(w.run().unwrap_err().kind(), &ErrorKind::InvalidArgument);
    drop(raw);
}

/// Issue 10 item 4: a JOB_CREATED carrying a 10 MiB "handle" is a protocol
/// error on every submission path, never a success.
#[test]
fn a_ten_mib_job_handle_is_a_protocol_error_not_a_success() {
    let huge = vec![b'H'; 10 << 20];
    let (addr, _) = scripted(move |p, _, _| {
        Some(if is_submit(p) {
            res(PacketType::JobCreated, &[&huge])
        } else if p.kind == PacketType::GetStatus {
            res(PacketType::StatusRes, &[&huge, b"1", b"0", b"0", b"0"])
        } else {
            Vec::new()
        })
    });
    let mut c = quick(&addr);
    let check = |r: gearman_core::Result<String>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.kind(), &ErrorKind::Protocol, "{what}: {e}");
        assert!(
            e.to_string().contains("job handle of 10485760 bytes"),
            "{what}: {e}"
        );
        assert!(
            e.to_string().len() < 300,
            "{what}: the message holds the handle"
        );
    };
    check(
        c.submit_background(&Job::new("f", "x")).map(|h| h.handle),
        "submit_background",
    );
    check(c.run(&Job::new("f", "x")).map(|_| String::new()), "run");
    let all = c.submit_background_all(&[Job::new("f", "1"), Job::new("f", "2")]);
    for r in all {
        check(r.map(|h| h.handle), "submit_background_all");
    }
    for r in c.run_all(&[Job::new("f", "1")]) {
        check(r.map(|_| String::new()), "run_all");
    }
    // The first SUBMIT_JOB_BG on a connection is awaited within the call:
    // its error is the call's, and the job is in the report as failed.
    let e = c
        .submit_background_deferred(&[Job::new("f", "1")])
        .unwrap_err();
    check(Err(e), "deferred call");
    let report = c.collect_deferred(true);
    assert_eq!(report.confirmed, 0, "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    check(Err(report.failed[0].error.clone()), "deferred");
    let h = gearman_core::JobHandle {
        server: addr.clone(),
        handle: "H:x:1".into(),
    };
    check(c.status(&h).map(|_| String::new()), "status");
}

/// Issue 10 item 4, worker side: a JOB_ASSIGN_UNIQ with an over-long
/// function name or unique key never reaches a handler; the worker drops
/// the connection and reconnects.
#[test]
fn a_job_assign_with_over_long_fields_never_reaches_the_handler() {
    for (function, unique) in [
        (vec![b'f'; 513], b"u".to_vec()),
        (b"f".to_vec(), vec![b'u'; 65]),
    ] {
        let (addr, seen) = scripted(move |p, _, _| {
            Some(match p.kind {
                PacketType::GrabJobUniq | PacketType::GrabJob => res(
                    PacketType::JobAssignUniq,
                    &[b"H:x:1", &function, &unique, b"w"],
                ),
                _ => Vec::new(),
            })
        });
        let calls = Arc::new(AtomicUsize::new(0));
        let calls2 = Arc::clone(&calls);
        let mut w = gearman_core::worker::Worker::new(
            ServerList::single(addr),
            common::quick_worker_options(),
        );
        w.register("f", move |_| {
            calls2.fetch_add(1, Ordering::SeqCst);
            Ok(vec![])
        });
        let stop = w.stop_handle();
        let t = std::thread::spawn(move || w.run());
        let start = Instant::now();
        while seen.connections.load(Ordering::SeqCst) < 2 {
            assert!(start.elapsed() < Duration::from_secs(10), "no reconnect");
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.stop();
        t.join().unwrap().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}

/// A scripted server that answers a foreground submission with JOB_CREATED
/// and then streams 1 MiB WORK_DATA packets, never a WORK_COMPLETE, until
/// the client goes away. Counts the packets it managed to send.
fn flooding_server() -> (ServerAddr, Arc<AtomicUsize>) {
    let sent = Arc::new(AtomicUsize::new(0));
    let sent2 = Arc::clone(&sent);
    let (addr, _) = scripted(move |p, n, s| {
        if !is_submit(p) {
            return Some(Vec::new());
        }
        let handle = format!("H:flood:{n}");
        s.write_all(&res(PacketType::JobCreated, &[handle.as_bytes()]))
            .ok()?;
        let chunk = res(
            PacketType::WorkData,
            &[handle.as_bytes(), &vec![b'x'; 1 << 20]],
        );
        // Bounded, so a client that keeps reading cannot keep this going.
        for _ in 0..200 {
            s.write_all(&chunk).ok()?;
            sent2.fetch_add(1, Ordering::SeqCst);
        }
        None
    });
    (addr, sent)
}

/// Issue 10 item 1: a result streamed as WORK_DATA without end fails the
/// call once it passes `max_result`, in run, run_with and run_all; the
/// rest is not accumulated (the call returns before the server is done
/// streaming, and run_with's events stop at the cap).
#[test]
fn a_flood_of_work_data_fails_at_max_result() {
    let cap = 4 << 20;
    let (addr, sent) = flooding_server();
    let mut c = quick(&addr);
    c.options_mut().max_result = cap;
    c.options_mut().foreground_timeout = Some(Duration::from_secs(60));
    let check = |r: gearman_core::Result<Vec<u8>>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.kind(), &ErrorKind::ResultTooLarge, "{what}: {e}");
        assert!(
            e.to_string().contains(&format!("exceeded {cap} bytes")),
            "{what}: {e}"
        );
        assert!(
            e.to_string().contains("result of job H:flood:"),
            "{what}: {e}"
        );
    };
    check(c.run(&Job::new("flood_fn", "x")), "run");
    let mut got = 0usize;
    check(
        c.run_with(&Job::new("flood_fn", "x"), &mut |ev| {
            if let gearman_core::Event::Data(d) = ev {
                got += d.len();
            }
        }),
        "run_with",
    );
    assert!(got <= cap, "events delivered {got} bytes past the cap");
    // run_all over two flooding servers (one job each, round-robin).
    let (addr2, sent2) = flooding_server();
    c.set_servers(ServerList::parse(&format!("{addr},{addr2}")).unwrap());
    let rs = c.run_all(&[Job::new("flood_fn", "a"), Job::new("flood_fn", "b")]);
    assert_eq!(rs.len(), 2);
    for r in rs {
        check(r, "run_all");
    }
    // Each call ended long before the servers' 200 MiB were sent.
    let total = sent.load(Ordering::SeqCst) + sent2.load(Ordering::SeqCst);
    assert!(total < 4 * 200, "the client read every packet: {total}");
    // The default cap is 16 MiB.
    assert_eq!(Options::default().max_result, 16 << 20);
}

/// A result up to `max_result` arrives whole even in one WORK_COMPLETE
/// larger than `max_packet`: the connection's packet limit follows the
/// result cap, so the documented cap (MySQL and PostgreSQL allow up to
/// 1 GiB) is reachable and not cut short by a protocol error.
#[test]
fn a_result_up_to_max_result_in_one_packet_is_not_refused_by_max_packet() {
    let big = vec![b'r'; 3 << 20];
    let reply = big.clone();
    let (addr, _) = scripted(move |p, _, _| {
        Some(if is_submit(p) {
            let mut b = res(PacketType::JobCreated, &[b"H:big:1"]);
            b.extend(res(PacketType::WorkComplete, &[b"H:big:1", &reply]));
            b
        } else {
            Vec::new()
        })
    });
    let mut c = quick(&addr);
    c.options_mut().max_packet = 1 << 20;
    c.options_mut().max_result = 4 << 20;
    assert_eq!(c.run(&Job::new("big_fn", "x")).unwrap(), big);
}

/// Two jobs of one `run_all` coalesced on one connection get every packet
/// twice. When their result passes `max_result`, both fail, and the second
/// copy of the terminal packet is dropped like the rest of their data: it
/// must not fail the other jobs still open on that connection.
#[test]
fn a_too_large_coalesced_result_does_not_fail_the_other_jobs_of_the_set() {
    let (addr, _) = scripted(move |p, n, _| {
        Some(match (is_submit(p), n) {
            (true, 1 | 2) => res(PacketType::JobCreated, &[b"H:x:1"]),
            (true, 3) => {
                let big = vec![b'd'; 600];
                let mut b = res(PacketType::JobCreated, &[b"H:x:2"]);
                for _ in 0..2 {
                    b.extend(res(PacketType::WorkData, &[b"H:x:1", &big]));
                }
                for _ in 0..2 {
                    b.extend(res(PacketType::WorkComplete, &[b"H:x:1", b""]));
                }
                b.extend(res(PacketType::WorkComplete, &[b"H:x:2", b"ok"]));
                b
            }
            _ => Vec::new(),
        })
    });
    let mut c = quick(&addr);
    c.options_mut().max_result = 512;
    let rs = c.run_all(&[
        Job::new("f", "a").with_unique("same"),
        Job::new("f", "b").with_unique("same"),
        Job::new("f", "c").with_unique("other"),
    ]);
    let kinds: Vec<_> = rs
        .iter()
        .map(|r| r.as_ref().map_err(|e| e.kind().clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            Err(ErrorKind::ResultTooLarge),
            Err(ErrorKind::ResultTooLarge),
            Ok(&b"ok".to_vec())
        ]
    );
}

/// Issue 10 item 2: one deadline per call from its start. With 20
/// black-holed servers, every call returns within its deadline (asserted
/// at < 3x, only to rule out one connect timeout per server), says the
/// deadline was reached and names the servers tried.
#[test]
fn twenty_black_holed_servers_cost_one_deadline_not_twenty_connect_timeouts() {
    let holes = gearman_testkit::BlackHole::many(20);
    let list = holes.iter().map(|h| h.addr()).collect::<Vec<_>>().join(",");
    let servers = ServerList::parse(&list).unwrap();
    let deadline = Duration::from_secs(1);
    let mut c = Client::new(
        servers.clone(),
        Options {
            connect_timeout: Duration::from_millis(300),
            io_timeout: deadline,
            foreground_timeout: Some(deadline),
            ..Options::default()
        },
    );
    let check = |what: &str, t: Instant, e: gearman_core::Error| {
        let took = t.elapsed();
        assert!(took < deadline * 3, "{what} took {took:?}");
        assert!(e.is_timeout(), "{what}: {e}");
        let m = e.to_string();
        assert!(m.contains("deadline reached"), "{what}: {m}");
        assert!(m.contains("tried 127.0.0.1:"), "{what}: {m}");
        assert!(m.contains("not tried"), "{what}: {m}");
    };
    let t = Instant::now();
    check("run", t, c.run(&Job::new("f", "x")).unwrap_err());
    // Servers whose connect timed out are now in back-off; all the others
    // still come first, so the next calls walk the list the same way.
    let t = Instant::now();
    check(
        "submit_background",
        t,
        c.submit_background(&Job::new("f", "x")).unwrap_err(),
    );
    let t = Instant::now();
    check("status_by_unique", t, c.status_by_unique(b"u").unwrap_err());
    let t = Instant::now();
    check("check_reachable", t, c.check_reachable().unwrap_err());
    let t = Instant::now();
    check("ensure_connected", t, c.ensure_connected().unwrap_err());
    let t = Instant::now();
    let e = c
        .submit_background_deferred(&[Job::new("f", "x")])
        .unwrap_err();
    check("submit_background_deferred", t, e);
    let t = Instant::now();
    for r in c.run_all(&[Job::new("f", "1"), Job::new("f", "2")]) {
        let e = r.unwrap_err();
        assert!(e.is_timeout(), "run_all: {e}");
    }
    assert!(t.elapsed() < deadline * 3, "run_all took {:?}", t.elapsed());

    // A connect timeout longer than the deadline is cut to the time left.
    let mut c = Client::new(
        servers.clone(),
        Options {
            connect_timeout: Duration::from_secs(5),
            io_timeout: deadline,
            foreground_timeout: Some(deadline),
            ..Options::default()
        },
    );
    let t = Instant::now();
    let e = c.run(&Job::new("f", "x")).unwrap_err();
    assert!(t.elapsed() < deadline * 3, "took {:?}", t.elapsed());
    assert!(
        e.is_timeout() && e.to_string().contains("deadline reached"),
        "{e}"
    );

    // The admin walk over every server, with one overall deadline.
    let t = Instant::now();
    let all = gearman_core::admin::status_all(
        servers.iter().cloned(),
        Duration::from_millis(300),
        Instant::now() + deadline,
    );
    assert!(
        t.elapsed() < deadline * 3,
        "status_all took {:?}",
        t.elapsed()
    );
    assert_eq!(all.len(), 20);
    assert!(all.iter().all(|(_, r)| r.is_err()));
    assert!(all.iter().any(|(_, r)| r
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("deadline reached")));
}

/// Issue 10 item 16: a submission that timed out waiting for JOB_CREATED
/// may still have been queued (a paused gearmand queues it when resumed):
/// the error says so.
#[test]
fn a_submission_timed_out_on_a_paused_gearmand_says_it_may_have_been_queued() {
    let g = Gearmand::start();
    let addr = ServerAddr::parse(&g.addr()).unwrap();
    let mut c = quick(&addr);
    c.options_mut().io_timeout = Duration::from_millis(500);
    c.options_mut().foreground_timeout = Some(Duration::from_millis(500));
    c.check_reachable().unwrap();
    g.pause();
    let bg = c.submit_background(&Job::new("later_bg", "x")).unwrap_err();
    let fg = c.run(&Job::new("later_fg", "x")).unwrap_err();
    g.resume();
    for (what, e) in [("background", bg), ("foreground", fg)] {
        assert!(e.is_timeout(), "{what}: {e}");
        assert!(
            e.to_string().contains("may have been queued"),
            "{what}: {e}"
        );
        assert!(e.to_string().contains("unique key"), "{what}: {e}");
    }
    // And it was queued: gearmand holds the background job now.
    let t = Instant::now();
    loop {
        let st = Admin::connect(&addr, Duration::from_secs(5))
            .unwrap()
            .status()
            .unwrap();
        if st.iter().any(|f| f.function == "later_bg" && f.total == 1) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{st:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server like Python `gear`: answers every submission with JOB_CREATED
/// except SUBMIT_JOB_EPOCH, which it drops without a reply.
fn ignores_epoch() -> ServerAddr {
    scripted(|p, n, _| {
        Some(match p.kind {
            PacketType::SubmitJobEpoch => Vec::new(),
            _ if is_submit(p) => res(PacketType::JobCreated, &[format!("H:g:{n}").as_bytes()]),
            PacketType::EchoReq => res(PacketType::EchoRes, &[p.arg(0)]),
            _ => Vec::new(),
        })
    })
    .0
}

fn epoch_job(u: &str) -> Job {
    Job::new("sched", "x")
        .with_unique(u)
        .with_epoch(4_000_000_000)
}

/// Issue 10 item 18 (b): a server that drops SUBMIT_JOB_EPOCH gives that
/// job an unknown fate ("may not support it") and a later JOB_CREATED is
/// never credited to it, in the deferred ledger and in task sets.
#[test]
fn a_dropped_submit_job_epoch_is_never_credited_with_a_later_job_created() {
    let addr = ignores_epoch();
    let mut c = quick(&addr);
    c.options_mut().io_timeout = Duration::from_millis(700);
    // Deferred (pipelined): the epoch job alone in one call, then two more.
    c.submit_background_deferred(&[epoch_job("e1")]).unwrap();
    c.submit_background_deferred(&[
        Job::new("f", "1").with_unique("b1"),
        Job::new("f", "2").with_unique("b2"),
    ])
    .unwrap();
    let r = c.collect_deferred(true);
    assert_eq!((r.confirmed, r.pending), (2, 0), "{r:?}");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].unique, b"e1", "{r:?}");
    assert!(r.failed[0].is_unknown_fate());
    assert_eq!(r.overdue(), 1);
    let m = r.failed[0].error.to_string();
    assert!(
        m.contains("SUBMIT_JOB_EPOCH") && m.contains("may not support"),
        "{m}"
    );
    assert!(m.contains("may have been"), "{m}");
    // Mixed in one deferred call: the epoch job's answer is awaited
    // before anything follows it, the others are all confirmed.
    let mut c = quick(&addr);
    c.options_mut().io_timeout = Duration::from_millis(700);
    c.submit_background_deferred(&[Job::new("f", "0").with_unique("b0"), epoch_job("e2")])
        .unwrap();
    let r = c.collect_deferred(true);
    assert_eq!(r.confirmed, 1, "{r:?}");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].unique, b"e2", "{r:?}");
    // Task sets: the epoch job fails; it is written after the others, so
    // they keep their own handles, in either input order.
    for order in [[0, 1], [1, 0]] {
        let jobs = [epoch_job("e3"), Job::new("f", "3").with_unique("b3")];
        let rs = c.submit_background_all(&[jobs[order[0]].clone(), jobs[order[1]].clone()]);
        let (e, ok) = if order[0] == 0 {
            (&rs[0], &rs[1])
        } else {
            (&rs[1], &rs[0])
        };
        let e = e.as_ref().unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(e.to_string().contains("may not support"), "{e}");
        assert!(ok.is_ok(), "{ok:?}");
    }
    // The same in one deferred call with the epoch job first.
    c.submit_background_deferred(&[epoch_job("e5"), Job::new("f", "5").with_unique("b5")])
        .unwrap();
    let r = c.collect_deferred(true);
    assert_eq!(r.confirmed, 1, "{r:?}");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].unique, b"e5", "{r:?}");
    let e = c.submit_background(&epoch_job("e4")).unwrap_err();
    assert!(
        e.is_timeout() && e.to_string().contains("may have been queued"),
        "{e}"
    );
    assert!(c.submit_background(&Job::new("f", "4")).is_ok());
}

/// Issue 10 item 18 (a): every owed confirmation has a deadline. A server
/// that answered once and then answers one byte a second does not keep the
/// next jobs pending: they are reported overdue, of unknown fate.
#[test]
fn owed_confirmations_from_a_server_that_drips_a_byte_a_second_become_overdue() {
    let (addr, _) = scripted(|p, n, s| {
        if !is_submit(p) {
            return Some(Vec::new());
        }
        let reply = res(PacketType::JobCreated, &[format!("H:d:{n}").as_bytes()]);
        if n == 1 {
            return Some(reply);
        }
        // One byte a second, until the client goes away.
        for b in reply {
            s.write_all(&[b]).ok()?;
            std::thread::sleep(Duration::from_secs(1));
        }
        Some(Vec::new())
    });
    let mut c = quick(&addr);
    c.options_mut().io_timeout = Duration::from_millis(1500);
    // The first is answered: SUBMIT_JOB_BG is pipelined from now on.
    c.submit_background_deferred(&[Job::new("f", "0")]).unwrap();
    assert_eq!(c.collect_deferred(true).confirmed, 1);
    c.submit_background_deferred(&[
        Job::new("f", "1").with_unique("d1"),
        Job::new("f", "2").with_unique("d2"),
    ])
    .unwrap();
    assert_eq!(c.deferred_pending(), 2);
    // Non-waiting collections while the server drips: pending until due.
    let t = Instant::now();
    let mut failed = Vec::new();
    loop {
        let r = c.collect_deferred(false);
        assert_eq!(r.confirmed, 0, "{r:?}");
        failed.extend(r.failed.iter().cloned());
        if r.pending == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still pending: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let units: Vec<&[u8]> = failed.iter().map(|f| f.unique.as_slice()).collect();
    assert_eq!(units, [&b"d1"[..], b"d2"]);
    assert!(
        failed
            .iter()
            .all(|f| f.error.is_timeout() && f.is_unknown_fate()),
        "{failed:?}"
    );
    assert!(
        failed[0].error.to_string().contains("no confirmation"),
        "{:?}",
        failed[0]
    );
}

/// Issue 10 item 18 against the real peers: Python `gear` drops
/// SUBMIT_JOB_EPOCH without a reply; the Perl Gearman::Server refuses it
/// with ERROR. Either way no later JOB_CREATED is credited to the epoch
/// job, and the other jobs are confirmed for what they are.
#[test]
fn real_gear_and_perl_servers_and_submit_job_epoch() {
    let gear = gearman_testkit::GearServer::start();
    let addr = ServerAddr::parse(&gear.addr()).unwrap();
    let mut c = quick(&addr);
    c.options_mut().io_timeout = Duration::from_secs(1);
    c.submit_background_deferred(&[epoch_job("ge1")]).unwrap();
    c.submit_background_deferred(&[
        Job::new("f", "1").with_unique("gb1"),
        Job::new("f", "2").with_unique("gb2"),
    ])
    .unwrap();
    let r = c.collect_deferred(true);
    assert_eq!((r.confirmed, r.pending, r.overdue()), (2, 0, 1), "{r:?}");
    assert_eq!(r.failed[0].unique, b"ge1", "{r:?}");
    assert!(
        r.failed[0].error.to_string().contains("may not support"),
        "{r:?}"
    );
    let rs = c.submit_background_all(&[Job::new("f", "3").with_unique("gb3"), epoch_job("ge2")]);
    assert!(rs[0].is_ok(), "{:?}", rs[0]);
    assert!(rs[1].as_ref().unwrap_err().is_timeout(), "{:?}", rs[1]);

    let perl = gearman_testkit::PerlGearmand::start();
    let addr = ServerAddr::parse(&perl.addr()).unwrap();
    let mut c = quick(&addr);
    c.submit_background_deferred(&[epoch_job("pe1"), Job::new("f", "1").with_unique("pb1")])
        .unwrap();
    let r = c.collect_deferred(true);
    assert_eq!((r.confirmed, r.pending, r.overdue()), (1, 0, 0), "{r:?}");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].unique, b"pe1", "{r:?}");
    assert!(r.failed[0].error.is_server_error(), "{r:?}");
}
