//! Smoke tests of the harness's job servers: each starts on its own port,
//! accepts a background job (JOB_CREATED with a handle) and is gone after
//! drop. Raw packets, so the harness is tested without the crates it serves.

use gearman_testkit::{GearServer, Gearmand, PerlGearmand};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const SUBMIT_JOB_BG: u32 = 18;
const JOB_CREATED: u32 = 8;

fn packet(kind: u32, args: &[&[u8]]) -> Vec<u8> {
    let data = args.join(&0u8);
    let mut p = b"\0REQ".to_vec();
    p.extend_from_slice(&kind.to_be_bytes());
    p.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    p.extend_from_slice(&data);
    p
}

/// Submits one background job and returns the type and data of the reply.
fn submit_bg(addr: &str) -> (u32, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&packet(SUBMIT_JOB_BG, &[b"smoke_fn", b"", b"payload"]))
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[..4], b"\0RES", "reply magic from {addr}");
    let kind = u32::from_be_bytes(head[4..8].try_into().unwrap());
    let len = u32::from_be_bytes(head[8..12].try_into().unwrap()) as usize;
    assert!(len < 4096, "reply of {len} bytes");
    let mut data = vec![0u8; len];
    s.read_exact(&mut data).unwrap();
    (kind, data)
}

fn assert_job_created(addr: &str) {
    let (kind, handle) = submit_bg(addr);
    assert_eq!(
        kind,
        JOB_CREATED,
        "reply {kind} ({:?})",
        String::from_utf8_lossy(&handle)
    );
    assert!(!handle.is_empty(), "empty job handle from {addr}");
}

fn refused(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

#[test]
fn the_c_gearmand_accepts_a_job() {
    let g = Gearmand::start();
    assert_job_created(&g.addr());
    // It is the C server: /usr/sbin/gearmand, whatever PATH says.
    let exe = std::fs::read_link(format!("/proc/{}/exe", g.pid().unwrap())).unwrap();
    assert_eq!(exe, std::path::Path::new(gearman_testkit::C_GEARMAND));
    let port = g.port();
    drop(g);
    assert!(refused(port), "gearmand still listens after drop");
}

#[test]
fn the_perl_job_server_accepts_a_job() {
    let mut p = PerlGearmand::start();
    assert_job_created(&p.addr());
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid().unwrap())).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains(gearman_testkit::PERL_GEARMAND),
        "{cmdline:?}"
    );
    // kill and restart keep the port.
    let port = p.port();
    p.kill();
    assert!(refused(port));
    p.restart();
    assert_eq!(p.port(), port);
    assert_job_created(&p.addr());
    drop(p);
    assert!(refused(port), "the Perl server still listens after drop");
}

#[test]
fn the_python_gear_server_accepts_a_job() {
    let g = GearServer::start();
    assert_job_created(&g.addr());
    let port = g.port();
    drop(g);
    assert!(refused(port), "geard still listens after drop");
}

#[test]
fn two_peers_of_a_kind_run_side_by_side() {
    let a = PerlGearmand::start();
    let b = PerlGearmand::start();
    let c = GearServer::start();
    let d = GearServer::start();
    let mut ports = vec![a.port(), b.port(), c.port(), d.port()];
    ports.dedup();
    assert_eq!(ports.len(), 4);
    for addr in [a.addr(), b.addr(), c.addr(), d.addr()] {
        assert_job_created(&addr);
    }
}
