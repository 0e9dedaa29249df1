//! Pipelined and deferred background submission: per-job refusals, lost
//! connections mid-batch, confirmations collected later.

mod common;

use gearman_core::admin::Admin;
use gearman_core::proto::{decode, encode, Decoded, Magic, PacketType as T};
use gearman_core::{ErrorKind, Job, ServerAddr};
use gearman_testkit::Gearmand;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

fn admin(g: &Gearmand) -> Admin {
    Admin::connect(
        &ServerAddr::parse(&g.addr()).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap()
}

fn capped(g: &Gearmand, c: &mut gearman_core::Client, name: &str, cap: u32) {
    c.submit_background(&Job::new(name, "creates the function"))
        .unwrap();
    admin(g).maxqueue(name, Some(cap)).unwrap();
}

#[test]
fn deferred_submissions_report_exactly_the_refused_jobs() {
    let g = Gearmand::start();
    let mut c = common::client(&g.addr());
    capped(&g, &mut c, "capped", 4);
    let jobs: Vec<Job> = (0..7)
        .map(|i| Job::new("capped", format!("j{i}")).with_unique(format!("u{i}")))
        .collect();
    c.submit_background_deferred(&jobs).unwrap();
    let r = c.collect_deferred(true);
    assert_eq!(r.confirmed, 3, "{r:?}");
    assert_eq!(r.pending, 0);
    let refused: Vec<Vec<u8>> = r.failed.iter().map(|f| f.unique.clone()).collect();
    assert_eq!(
        refused,
        [
            b"u3".to_vec(),
            b"u4".to_vec(),
            b"u5".to_vec(),
            b"u6".to_vec()
        ]
    );
    for f in &r.failed {
        assert!(matches!(f.error.kind(), ErrorKind::Server { code, .. } if code == "QUEUE_ERROR"));
        assert_eq!(f.function, "capped");
    }
    // Collected once: the report is reset.
    assert_eq!(c.collect_deferred(true), Default::default());
}

#[test]
fn deferred_confirmations_are_collected_on_the_next_use_of_the_connection() {
    let g = Gearmand::start();
    let mut c = common::client(&g.addr());
    for i in 0..50 {
        c.submit_background_deferred(&[Job::new("later", format!("{i}"))])
            .unwrap();
    }
    // A status query on the same connection first drains the 50 replies.
    let h = c.submit_background(&Job::new("later", "sync")).unwrap();
    assert!(c.status(&h).unwrap().known);
    let r = c.collect_deferred(false);
    assert_eq!((r.confirmed, r.failed.len(), r.pending), (50, 0, 0));
    let st = admin(&g).status().unwrap();
    assert_eq!(st.iter().find(|s| s.function == "later").unwrap().total, 51);
    assert_eq!(c.stats().connects, 1);
}

#[test]
fn ten_thousand_deferred_jobs_respect_the_in_flight_window() {
    let g = Gearmand::start();
    let mut c = common::client(&g.addr());
    c.options_mut().max_in_flight = 256;
    let jobs: Vec<Job> = (0..10_000)
        .map(|i| Job::new("bulk", format!("p{i}")))
        .collect();
    c.submit_background_deferred(&jobs).unwrap();
    let r = c.collect_deferred(true);
    assert_eq!((r.confirmed, r.failed.len(), r.pending), (10_000, 0, 0));
}

/// A fake server that confirms the first `ok` submissions, then closes.
fn confirm_then_close(ok: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = Vec::new();
        let mut seen = 0;
        let mut chunk = [0u8; 4096];
        while seen < ok {
            let n = s.read(&mut chunk).unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Decoded::Packet(p, used)) = decode(&buf, 1 << 20) {
                buf.drain(..used);
                if seen < ok && p.kind == T::SubmitJobBg {
                    let mut out = Vec::new();
                    encode(
                        Magic::Res,
                        T::JobCreated,
                        &[format!("H:fake:{seen}").as_bytes()],
                        &mut out,
                    )
                    .unwrap();
                    s.write_all(&out).unwrap();
                    seen += 1;
                }
            }
        }
        // Drop: the rest of the batch is never confirmed.
    });
    addr
}

#[test]
fn a_connection_lost_mid_batch_reports_every_unconfirmed_job_as_unknown() {
    let addr = confirm_then_close(3);
    let mut c = common::client(&addr);
    let jobs: Vec<Job> = (0..10).map(|i| Job::new("f", format!("{i}"))).collect();
    let r = c.submit_background_all(&jobs);
    for (i, x) in r.iter().enumerate() {
        if i < 3 {
            assert_eq!(x.as_ref().unwrap().handle, format!("H:fake:{i}"));
        } else {
            let e = x.as_ref().unwrap_err();
            assert!(e.is_connection_lost(), "job {i}: {e}");
        }
    }
    let addr = confirm_then_close(3);
    let mut c = common::client(&addr);
    let _ = c.submit_background_deferred(&jobs);
    let rep = c.collect_deferred(true);
    assert_eq!(rep.confirmed, 3);
    assert_eq!(rep.failed.len(), 7, "{rep:?}");
    assert!(rep.failed.iter().all(|f| f.error.is_connection_lost()));
}
