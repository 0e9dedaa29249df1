//! protocol.md section 15: gearmand 1.1.20 behaviours read from its source,
//! pinned here against the live server with raw packets.

use gearman_core::proto::{
    decode, encode, Decoded, Magic, Packet, PacketType as T, DEFAULT_MAX_PACKET,
};
use gearman_testkit::Gearmand;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A raw protocol connection for pinning server behaviour.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn new(g: &Gearmand) -> Raw {
        let s = TcpStream::connect(g.addr()).unwrap();
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }
    fn send(&mut self, kind: T, args: &[&[u8]]) {
        let mut out = Vec::new();
        encode(Magic::Req, kind, args, &mut out).unwrap();
        self.s.write_all(&out).unwrap();
    }
    fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }
    /// Next packet within `t`, or None on timeout; panics on close.
    fn recv_within(&mut self, t: Duration) -> Option<Packet> {
        self.try_recv(t).expect("connection closed")
    }
    /// Ok(None) on timeout, Err(()) on close.
    fn try_recv(&mut self, t: Duration) -> Result<Option<Packet>, ()> {
        let end = Instant::now() + t;
        loop {
            if let Decoded::Packet(p, n) = decode(&self.buf, DEFAULT_MAX_PACKET).unwrap() {
                self.buf.drain(..n);
                return Ok(Some(p));
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return Err(()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Err(()),
            }
        }
    }
    fn recv(&mut self) -> Packet {
        self.recv_within(Duration::from_secs(5))
            .expect("a packet within 5 s")
    }
    /// Waits for the server to close the connection.
    fn closed_within(&mut self, t: Duration) -> bool {
        let end = Instant::now() + t;
        while Instant::now() < end {
            if self.try_recv(Duration::from_millis(100)).is_err() {
                return true;
            }
        }
        false
    }
    /// The raw bytes of the next packet (to see exactly what came).
    fn recv_raw_packet(&mut self) -> Vec<u8> {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if self.buf.len() >= 12 {
                let size =
                    u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]])
                        as usize;
                if self.buf.len() >= 12 + size {
                    return self.buf.drain(..12 + size).collect();
                }
            }
            assert!(Instant::now() < end, "no packet");
            self.s
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => panic!("closed"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
    }
}

fn admin_line(g: &Gearmand, line: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(g.addr()).unwrap();
    s.write_all(line).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&chunk[..n]);
                if out.ends_with(b"\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    out
}

fn handle_of(p: &Packet) -> Vec<u8> {
    assert_eq!(p.kind, T::JobCreated, "{p:?}");
    p.arg(0).to_vec()
}

#[test]
fn p01_unique_of_64_bytes_is_broken_so_the_client_caps_at_63() {
    let g = Gearmand::start();
    let u64b = vec![b'u'; 64];
    let mut c = Raw::new(&g);
    c.send(T::SubmitJobBg, &[b"f64", &u64b, b"payload"]);
    let a = handle_of(&c.recv());
    c.send(T::SubmitJobBg, &[b"f64", &u64b, b"payload"]);
    let b = handle_of(&c.recv());
    assert_ne!(a, b, "a 64-byte unique does not coalesce");
    // 65 bytes: refused with ARGUMENT_TOO_LARGE.
    c.send(T::SubmitJobBg, &[b"f64", &[b'u'; 65], b"payload"]);
    let e = c.recv();
    assert_eq!((e.kind, e.arg(0)), (T::Error, &b"ARGUMENT_TOO_LARGE"[..]));
    // The worker sees 63 bytes of unique and a spurious leading NUL in data.
    let mut w = Raw::new(&g);
    w.send(T::CanDo, &[b"f64"]);
    w.send(T::GrabJobUniq, &[]);
    let j = w.recv();
    assert_eq!(j.kind, T::JobAssignUniq);
    assert_eq!(j.arg(2).len(), 63);
    assert_eq!(j.arg(3), b"\0payload");
    // GET_STATUS_UNIQUE with 64 bytes: protocol.md 4.2 expected a dropped
    // connection; the live server neither answers nor closes: the request
    // is silently lost, and a client waiting for it would hang.
    let mut s = Raw::new(&g);
    s.send(T::GetStatusUnique, &[&u64b]);
    assert_eq!(
        s.try_recv(Duration::from_secs(2)),
        Ok(None),
        "no reply, no close"
    );
}

#[test]
fn p02_exception_reaches_a_client_without_the_option_as_work_fail_with_trailing_nul() {
    let g = Gearmand::start();
    let mut c = Raw::new(&g);
    c.send(T::SubmitJob, &[b"exc", b"", b"x"]);
    let h = handle_of(&c.recv());
    let mut w = Raw::new(&g);
    w.send(T::CanDo, &[b"exc"]);
    w.send(T::GrabJobUniq, &[]);
    assert_eq!(w.recv().kind, T::JobAssignUniq);
    w.send(T::WorkException, &[&h, b"boom"]);
    let raw = c.recv_raw_packet();
    let mut want = Vec::new();
    encode(
        Magic::Res,
        T::WorkFail,
        &[&[h.as_slice(), b"\0"].concat()],
        &mut want,
    )
    .unwrap();
    assert_eq!(raw, want, "WORK_FAIL carries the handle plus a NUL");
}

#[test]
fn p03_same_connection_submitting_a_unique_twice_gets_every_packet_twice() {
    let g = Gearmand::start();
    let mut c = Raw::new(&g);
    c.send(T::SubmitJob, &[b"dup", b"k", b"x"]);
    c.send(T::SubmitJob, &[b"dup", b"k", b"x"]);
    let h1 = handle_of(&c.recv());
    let h2 = handle_of(&c.recv());
    assert_eq!(h1, h2);
    let mut w = Raw::new(&g);
    w.send(T::CanDo, &[b"dup"]);
    w.send(T::GrabJobUniq, &[]);
    assert_eq!(w.recv().kind, T::JobAssignUniq);
    w.send(T::WorkData, &[&h1, b"d"]);
    w.send(T::WorkComplete, &[&h1, b"r"]);
    let kinds: Vec<T> = (0..4).map(|_| c.recv().kind).collect();
    assert_eq!(
        kinds,
        [T::WorkData, T::WorkData, T::WorkComplete, T::WorkComplete]
    );
}

#[test]
fn p04_status_res_unique_echoes_the_unique_and_counts_waiting_clients() {
    let g = Gearmand::start();
    let mut c = Raw::new(&g);
    c.send(T::SubmitJob, &[b"su", b"my-key", b"x"]);
    handle_of(&c.recv());
    let mut q = Raw::new(&g);
    q.send(T::GetStatusUnique, &[b"my-key"]);
    let r = q.recv();
    assert_eq!(r.kind, T::StatusResUnique);
    assert_eq!(r.arg(0), b"my-key");
    assert_eq!(r.arg(1), b"1");
    // protocol.md 4.2 says 1.1.20 never counts waiting clients; the live
    // Debian 1.1.20 does: one foreground client waits here.
    assert_eq!(r.arg(5), b"1", "waiting clients");
}

#[test]
fn p05_grab_job_all_on_a_normal_job_returns_job_assign_uniq() {
    let g = Gearmand::start();
    let mut c = Raw::new(&g);
    c.send(T::SubmitJobBg, &[b"ga", b"u1", b"x"]);
    handle_of(&c.recv());
    let mut w = Raw::new(&g);
    w.send(T::CanDo, &[b"ga"]);
    w.send(T::GrabJobAll, &[]);
    let j = w.recv();
    assert_eq!(j.kind, T::JobAssignUniq);
    assert_eq!(
        (j.arg(1), j.arg(2), j.arg(3)),
        (&b"ga"[..], &b"u1"[..], &b"x"[..])
    );
}

#[test]
fn p06_can_do_with_a_trailing_nul_never_matches() {
    let g = Gearmand::start();
    let mut c = Raw::new(&g);
    c.send(T::SubmitJobBg, &[b"nul", b"", b"x"]);
    handle_of(&c.recv());
    let mut w = Raw::new(&g);
    w.send(T::CanDo, &[b"nul\0"]);
    w.send(T::GrabJobUniq, &[]);
    assert_eq!(w.recv().kind, T::NoJob);
}

#[test]
fn p07_answering_noop_with_pre_sleep_leaves_the_worker_asleep() {
    let g = Gearmand::start();
    let mut w = Raw::new(&g);
    w.send(T::CanDo, &[b"sl"]);
    w.send(T::PreSleep, &[]);
    let mut c = Raw::new(&g);
    c.send(T::SubmitJobBg, &[b"sl", b"", b"1"]);
    handle_of(&c.recv());
    assert_eq!(w.recv().kind, T::Noop);
    // Wrong answer: PRE_SLEEP instead of GRAB. The job is runnable, so the
    // server may answer with another NOOP; but a second job brings no NOOP
    // once one was sent since the last GRAB.
    w.send(T::PreSleep, &[]);
    let extra = w.recv_within(Duration::from_millis(500));
    c.send(T::SubmitJobBg, &[b"sl", b"", b"2"]);
    handle_of(&c.recv());
    let after = w.recv_within(Duration::from_millis(800));
    assert!(
        extra.is_none() || after.is_none(),
        "a worker that never GRABs is not woken for every job: {extra:?} {after:?}"
    );
    // GRAB gets the work.
    w.send(T::GrabJobUniq, &[]);
    let mut p = w.recv();
    while p.kind == T::Noop {
        p = w.recv();
    }
    assert_eq!(p.kind, T::JobAssignUniq);
}

#[test]
fn p08_a_due_epoch_job_wakes_nobody() {
    let g = Gearmand::start();
    let mut w = Raw::new(&g);
    w.send(T::CanDo, &[b"ep"]);
    w.send(T::GrabJobUniq, &[]);
    assert_eq!(w.recv().kind, T::NoJob);
    w.send(T::PreSleep, &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let when = (now + 2).to_string();
    let mut c = Raw::new(&g);
    c.send(T::SubmitJobEpoch, &[b"ep", b"", when.as_bytes(), b"x"]);
    handle_of(&c.recv());
    // Submission of a future job: a NOOP may come at once (the server wakes
    // sleepers for any new job), but none arrives when the time comes.
    let first = w.recv_within(Duration::from_millis(500));
    if first.is_some() {
        w.send(T::GrabJobUniq, &[]);
        assert_eq!(w.recv().kind, T::NoJob, "not before its time");
        w.send(T::PreSleep, &[]);
    }
    let due = w.recv_within(Duration::from_secs(4));
    if let Some(p) = &due {
        // PRE_SLEEP with a job of this function queued answers with NOOP at
        // once in 1.1.20 (the check ignores the epoch), not at the due time.
        assert_eq!(p.kind, T::Noop);
    }
    // Only a GRAB after the due time gets the job: wait until the clock has
    // passed it (the wait above may have ended early with that NOOP).
    let due_at = std::time::UNIX_EPOCH + Duration::from_secs(now + 3);
    while std::time::SystemTime::now() < due_at {
        std::thread::sleep(Duration::from_millis(50));
    }
    w.send(T::GrabJobUniq, &[]);
    let mut p = w.recv();
    while p.kind == T::Noop {
        p = w.recv();
    }
    assert_eq!(p.kind, T::JobAssignUniq);
}

#[test]
fn p09_client_disconnect_after_coalescing_onto_a_background_job_cancels_it() {
    let g = Gearmand::start();
    let mut bg = Raw::new(&g);
    bg.send(T::SubmitJobBg, &[b"co", b"shared", b"x"]);
    let h = handle_of(&bg.recv());
    {
        let mut fg = Raw::new(&g);
        fg.send(T::SubmitJob, &[b"co", b"shared", b"y"]);
        assert_eq!(handle_of(&fg.recv()), h);
        // The foreground client leaves.
    }
    // Give gearmand up to 5 s to handle the disconnect (admin `status`
    // shows the job gone); the GRAB below checks the outcome either way.
    let t = std::time::Instant::now();
    let addr = gearman_core::ServerAddr::parse(&g.addr()).unwrap();
    let queued = || {
        gearman_core::admin::Admin::connect(&addr, Duration::from_secs(2))
            .and_then(|mut a| a.status())
            .map(|st| st.iter().any(|f| f.function == "co" && f.total > 0))
            .unwrap_or(true)
    };
    while t.elapsed() < Duration::from_secs(5) && queued() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut w = Raw::new(&g);
    w.send(T::CanDo, &[b"co"]);
    w.send(T::GrabJobUniq, &[]);
    let got = w.recv();
    assert_eq!(
        got.kind,
        T::NoJob,
        "the background job was dropped with its coalesced listener"
    );
}

#[test]
fn p10_admin_quirks() {
    let g = Gearmand::start();
    assert!(admin_line(&g, b"shutdown\r\n").starts_with(b"ERR UNKNOWN_COMMAND"));
    assert_eq!(admin_line(&g, b"create function abcdef\n"), b"OK\r\n");
    let status = admin_line(&g, b"status\r\n");
    let text = String::from_utf8_lossy(&status);
    assert!(
        text.contains("abcde\t"),
        "bare LF cuts the last character: {text:?}"
    );
    assert!(!text.contains("abcdef\t"));
    let six = admin_line(&g, b"a b c d e f\r\n");
    assert!(
        six.is_empty(),
        "six words close the connection: {:?}",
        String::from_utf8_lossy(&six)
    );
}

#[test]
fn p11_leading_fields_over_8_kib_close_the_connection() {
    let g = Gearmand::start();
    let mut c = Raw::new(&g);
    let name = vec![b'f'; 9000];
    c.send(T::SubmitJobBg, &[&name, b"", b"x"]);
    assert!(c.closed_within(Duration::from_secs(3)));
}

#[test]
fn p12_job_retries() {
    // -j 1: the first worker disconnect drops the job; its client gets WORK_FAIL.
    let g = Gearmand::start_with(&["-j", "1"]);
    let mut c = Raw::new(&g);
    c.send(T::SubmitJob, &[b"rt", b"", b"x"]);
    let h = handle_of(&c.recv());
    {
        let mut w = Raw::new(&g);
        w.send(T::CanDo, &[b"rt"]);
        w.send(T::GrabJobUniq, &[]);
        assert_eq!(w.recv().kind, T::JobAssignUniq);
    }
    let p = c.recv();
    assert_eq!((p.kind, p.arg(0)), (T::WorkFail, h.as_slice()));
    // -j 0 (default): requeued after every disconnect.
    let g = Gearmand::start();
    let mut c = Raw::new(&g);
    c.send(T::SubmitJob, &[b"rt", b"", b"x"]);
    handle_of(&c.recv());
    for i in 0..3 {
        let mut w = Raw::new(&g);
        w.send(T::CanDo, &[b"rt"]);
        // gearmand requeues the job when it has handled the previous
        // worker's disconnect, which may come after this GRAB: then NO_JOB,
        // and the requeue wakes this worker (PRE_SLEEP, NOOP).
        let t = std::time::Instant::now();
        loop {
            w.send(T::GrabJobUniq, &[]);
            let mut p = w.recv();
            while p.kind == T::Noop {
                p = w.recv();
            }
            if p.kind == T::JobAssignUniq {
                break;
            }
            assert_eq!(p.kind, T::NoJob);
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "worker {i}: the job was not requeued within 10 s"
            );
            w.send(T::PreSleep, &[]);
            let _ = w.recv_within(Duration::from_millis(500));
        }
    }
    assert!(
        c.recv_within(Duration::from_millis(300)).is_none(),
        "no failure sent"
    );
}

#[test]
fn raw_packets_with_res_magic_or_response_types_get_errors_not_a_close() {
    let g = Gearmand::start();
    let mut c = Raw::new(&g);
    let mut out = Vec::new();
    encode(Magic::Res, T::EchoReq, &[b"x"], &mut out).unwrap();
    c.send_raw(&out);
    let e = c.recv();
    assert_eq!((e.kind, e.arg(0)), (T::Error, &b"INVALID_MAGIC"[..]));
    c.send(T::Noop, &[]);
    let e = c.recv();
    assert_eq!((e.kind, e.arg(0)), (T::Error, &b"INVALID_COMMAND"[..]));
    c.send(T::EchoReq, &[b"still here"]);
    assert_eq!(c.recv().arg(0), b"still here");
}
