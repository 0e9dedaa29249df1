//! The routing table and the semantics the database crates share (issue
//! 11): one connection per server across lists, the one job validator,
//! status and sum across the table, the deferred ledger's retry rule, and
//! errors that keep their cause and say how to retry.

mod common;

use common::test_worker;
use gearman_core::proto::{decode, encode, Decoded, Magic, PacketType};
use gearman_core::{
    Client, ErrorKind, Job, Options, Retry, Routing, ServerAddr, ServerList, MAX_UNIQUE,
};
use gearman_testkit::Gearmand;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn list(s: &str) -> ServerList {
    ServerList::parse(s).unwrap()
}

fn opts() -> Options {
    Options {
        foreground_timeout: Some(Duration::from_secs(10)),
        ..Options::default()
    }
}

/// Calls alternating between functions whose lists share a server open one
/// connection per server, not one per list; changing the table closes only
/// the connections to servers no list names any more.
#[test]
fn lists_share_one_connection_per_server() {
    let a = Gearmand::start();
    let b = Gearmand::start();
    let mut r = Routing::new(list(&a.addr()));
    r.set_function(b"on_b", Some(list(&b.addr()))).unwrap();
    r.set_function(b"on_ab", Some(list(&format!("{},{}", a.addr(), b.addr()))))
        .unwrap();
    let mut c = Client::with_routing(r, opts());
    for i in 0..10 {
        for f in ["on_default", "on_b", "on_ab"] {
            let h = c
                .submit_background(&Job::new(f, "x").with_unique(format!("{f}-{i}")))
                .unwrap();
            if f == "on_b" {
                assert_eq!(h.server.to_string(), b.addr(), "{f} goes to its list");
            }
            if f == "on_default" {
                assert_eq!(h.server.to_string(), a.addr(), "{f} goes to the default");
            }
        }
    }
    assert_eq!(c.stats().connects, 2, "one connection per server");
    assert_eq!(c.open_connections(), 2);
    // Both gearmands see exactly one client connection each.
    for g in [&a, &b] {
        let addr = ServerAddr::parse(&g.addr()).unwrap();
        let mut adm = gearman_core::admin::Admin::connect(&addr, Duration::from_secs(5)).unwrap();
        let conns = adm.workers().unwrap().len();
        // Ours plus the admin connection itself.
        assert_eq!(conns, 2, "{}", g.addr());
    }
    // Dropping the lists that name B closes B's connection only.
    let mut r = c.routing().clone();
    r.set_function(b"on_b", None).unwrap();
    c.set_routing(r.clone());
    assert_eq!(c.open_connections(), 2, "on_ab still names B");
    r.set_function(b"on_ab", None).unwrap();
    c.set_routing(r);
    assert_eq!(c.open_connections(), 1, "no list names B");
    c.submit_background(&Job::new("on_b", "x")).unwrap();
    assert_eq!(c.stats().connects, 2, "A's connection was kept");
    // set_servers changes the default list only.
    c.set_function_servers(b"on_b", Some(list(&b.addr())))
        .unwrap();
    c.set_servers(list(&b.addr()));
    assert_eq!(c.routing().lookup(b"on_b"), &list(&b.addr()));
    assert_eq!(c.open_connections(), 0, "A is named by no list");
    assert!(c.set_function_servers(b"bad name", None).is_err());
}

/// One validator; each message starts with the argument it concerns.
#[test]
fn the_job_validator_names_the_argument() {
    let long = vec![b'u'; MAX_UNIQUE + 1];
    type Case<'a> = (&'a [u8], Option<&'a [u8]>, &'a str);
    let cases: [Case<'_>; 6] = [
        (b"", None, "function name is empty"),
        (
            b"a b",
            None,
            "function name \"a b\" contains a space at byte 1",
        ),
        (
            b"nl\n",
            None,
            "function name \"nl\\n\" contains a newline at byte 2",
        ),
        (
            &[b'f'; 513],
            None,
            "function name is 513 bytes; at most 512 are allowed",
        ),
        (
            b"f",
            Some(&long),
            "unique key is 64 bytes; at most 63 are allowed",
        ),
        (b"f", Some(b"a\0b"), "unique key contains a NUL byte"),
    ];
    for (f, u, want) in cases {
        let e = Job::from_args(f, "w", u).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidArgument);
        assert!(e.to_string().starts_with(want), "{e} / {want}");
        assert_eq!(e.retry(), Retry::GiveUp);
    }
    let j = Job::from_args(b"f", "w", Some(b"")).unwrap();
    assert_eq!(j.unique, None, "an empty unique key is none");
    let j = Job::from_args(b"f", "w", Some(&[b'k'; MAX_UNIQUE])).unwrap();
    assert_eq!(j.unique_bytes().len(), MAX_UNIQUE);
    let k = gearman_core::new_unique_key();
    assert_eq!(k.len(), 36);
    assert_eq!(k.matches('-').count(), 4);
    assert_eq!(&k[14..15], "4", "version 4: {k}");
    assert_ne!(k, gearman_core::new_unique_key());
}

/// Status by handle or unique key walks the table: a unique key sent
/// through a function's own list is found there; admin status covers
/// every server with queued = waiting (total - running).
#[test]
fn status_and_server_status_across_the_table() {
    let a = Gearmand::start();
    let b = Gearmand::start();
    let mut r = Routing::new(list(&a.addr()));
    r.set_function(b"parity_f", Some(list(&b.addr()))).unwrap();
    let mut c = Client::with_routing(r, opts());
    let mut handles = Vec::new();
    for i in 0..3 {
        let job = Job::new("parity_f", "x").with_unique(format!("pk-{i}"));
        handles.push(c.submit_background(&job).unwrap());
    }
    let s = c.job_status("pk-1").unwrap();
    assert!(s.known && !s.running, "{s:?}");
    assert_eq!(s.waiting, Some(0));
    let s = c.job_status(&handles[0].handle).unwrap();
    assert!(s.known && s.waiting.is_none(), "{s:?}");
    // A handle this client did not receive is asked of every server.
    let mut other = Client::with_routing(c.routing().clone(), opts());
    let s = other.job_status(&handles[2].handle).unwrap();
    assert!(s.known, "{s:?}");
    let s = other.job_status("H:nowhere:1").unwrap();
    assert!(!s.known);
    assert!(!other.job_status("no-such-key").unwrap().known);
    let e = other.job_status("").unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidArgument);
    let e = other.job_status(&"k".repeat(64)).unwrap_err();
    assert!(e.to_string().starts_with("unique key is 64 bytes"), "{e}");

    let st = c.server_status();
    assert_eq!(st.len(), 2, "every server of the table");
    assert_eq!(st[0].0.to_string(), a.addr());
    let (_, fs) = &st[1];
    let f = fs
        .as_ref()
        .unwrap()
        .iter()
        .find(|f| f.function == "parity_f")
        .unwrap();
    assert_eq!((f.queued(), f.running, f.workers), (3, 0, 0));
}

/// The sum runs every job at once across lists, parses each result, adds
/// with overflow checked, and names what went wrong.
#[test]
fn sum_across_lists() {
    let a = Gearmand::start();
    let b = Gearmand::start();
    let _wa = test_worker(&a.addr());
    let _wb = test_worker(&b.addr());
    let mut r = Routing::new(list(&a.addr()));
    r.set_function(b"reverse", Some(list(&b.addr()))).unwrap();
    let mut c = Client::with_routing(r, opts());
    let jobs = [
        Job::new("echo", " 40 "),
        Job::new("reverse", "2"),
        Job::new("echo", "-1"),
        Job::new("reverse", "1"),
    ];
    assert_eq!(c.sum(&jobs).unwrap(), Some(42));
    assert_eq!(c.sum(&[]).unwrap(), None);
    let e = c
        .sum(&[Job::new("echo", "1"), Job::new("echo", "one")])
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::NotAnInteger);
    assert!(
        e.to_string()
            .contains("function echo: the worker's result \"one\" is not an integer"),
        "{e}"
    );
    let e = c
        .sum(&[
            Job::new("echo", i64::MAX.to_string()),
            Job::new("echo", "1"),
        ])
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Overflow);
    let e = c.sum(&[Job::new("fail", "1")]).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::JobFailed);
    // Skipping failed jobs (PostgreSQL's on_error = warning).
    let mut skipped = Vec::new();
    let s = c
        .sum_with(
            &[
                Job::new("echo", "5"),
                Job::new("fail", ""),
                Job::new("echo", "x"),
            ],
            |i, _| {
                skipped.push(i);
                Ok(())
            },
        )
        .unwrap();
    assert_eq!((s, skipped), (Some(5), vec![1, 2]));
    assert_eq!(c.stats().connects, 2);
}

/// A scripted server whose first connection closes on the first
/// submission without answering; later connections answer JOB_CREATED.
fn flaky_server() -> (ServerAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = ServerAddr::parse(&l.local_addr().unwrap().to_string()).unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&conns);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 65536];
                let mut k = 0u32;
                loop {
                    while let Ok(Decoded::Packet(p, used)) = decode(&buf, 1 << 20) {
                        buf.drain(..used);
                        if p.kind != PacketType::SubmitJobBg {
                            continue;
                        }
                        if n == 0 {
                            return; // closes without answering
                        }
                        k += 1;
                        let mut out = Vec::new();
                        let h = format!("H:flaky:{k}");
                        encode(
                            Magic::Res,
                            PacketType::JobCreated,
                            &[h.as_bytes()],
                            &mut out,
                        )
                        .unwrap();
                        if s.write_all(&out).is_err() {
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
    (addr, conns)
}

/// The ledger's retry rule: a deferred job whose connection broke within
/// the call is written once more on a new connection, and its first
/// failure is not reported.
#[test]
fn deferred_retry_rule_writes_a_broken_job_once_more() {
    let (addr, conns) = flaky_server();
    let mut c = Client::new(ServerList::single(addr.clone()), opts());
    c.submit_background_deferred(&[Job::new("f", "1").with_unique("k1")])
        .unwrap();
    let report = c.collect_deferred(true);
    assert_eq!(report.confirmed, 1, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(c.deferred_written(), 1);
    assert_eq!(conns.load(Ordering::SeqCst), 2, "reconnected once");

    // The one-job form answers with the job's own fate.
    let (addr, conns) = flaky_server();
    let mut c = Client::new(ServerList::single(addr), opts());
    c.submit_background_deferred_one(&Job::new("f", "1"))
        .unwrap();
    let report = c.collect_deferred(true);
    assert_eq!((report.confirmed, report.failed.len()), (1, 0));
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

/// A refused connection is ConnectFailed with the OS error as its source
/// and says "next server"; a reset connection keeps ECONNRESET and says
/// "reconnect".
#[test]
fn errors_keep_their_cause_and_say_how_to_retry() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let mut c = Client::new(list(&format!("127.0.0.1:{port}")), opts());
    let e = c.run(&Job::new("f", "x")).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::ConnectFailed, "{e}");
    assert_eq!(e.retry(), Retry::NextServer);
    let src = std::error::Error::source(&e).expect("a source");
    let io = src.downcast_ref::<std::io::Error>().expect("an io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);

    // A server that resets the connection on the first request.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut b = [0u8; 12];
            let _ = s.read_exact(&mut b);
            std::thread::sleep(Duration::from_millis(50));
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            use std::os::fd::AsRawFd;
            // SAFETY: a valid socket and a linger struct of the right size.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            drop(s);
        }
    });
    let mut c = Client::new(list(&addr.to_string()), opts());
    let e = c.run(&Job::new("f", "x")).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::ConnectionLost, "{e}");
    assert_eq!(e.retry(), Retry::Reconnect);
    let io = e.io_error().expect("the OS error is kept");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
}

/// One call's results have a total budget: past it the job whose data
/// would cross it fails (ResultTooLarge, "in all"); the others go on.
#[test]
fn a_set_holds_at_most_max_total_result_bytes() {
    let g = Gearmand::start();
    let _w = test_worker(&g.addr());
    let mut c = Client::new(
        list(&g.addr()),
        Options {
            max_total_result: Some(10),
            ..opts()
        },
    );
    let jobs: Vec<Job> = (0..5).map(|_| Job::new("echo", "abcd")).collect();
    let r = c.run_all(&jobs);
    let ok = r.iter().filter(|x| x.is_ok()).count();
    assert_eq!(ok, 2, "{r:?}");
    for e in r.iter().filter_map(|x| x.as_ref().err()) {
        assert_eq!(e.kind(), &ErrorKind::ResultTooLarge, "{e}");
        assert!(e.to_string().contains("exceeded 10 bytes in all"), "{e}");
    }
    // The budget is per call: the next call starts from zero.
    assert_eq!(
        c.run_all(&jobs[..2]).iter().filter(|x| x.is_ok()).count(),
        2
    );
    let nums: Vec<Job> = (0..5).map(|_| Job::new("echo", "1234")).collect();
    let e = c.sum(&nums).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::ResultTooLarge, "{e}");
}
