//! Hostile and broken peers (issue 10): forged admin lines, over-long
//! fields, floods, black holes, servers that drop packets. Scripted fake
//! servers where a real server cannot misbehave so; real gearmand where it
//! can.

mod common;

use gearman_core::admin::Admin;
use gearman_core::proto::{encode, Magic, PacketType};
use gearman_core::{ErrorKind, Job, ServerAddr};
use gearman_testkit::Gearmand;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

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
