//! The raw pipelined ceiling the benchmarks compare against: background
//! submissions written straight to a socket, many per write, with their
//! own minimal packet framing (not gearman-core's codec, so the reference
//! does not depend on the code it measures).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// SUBMIT_JOB_BG (protocol.md: packet type 18).
const SUBMIT_JOB_BG: u32 = 18;
/// JOB_CREATED (packet type 8).
const JOB_CREATED: u32 = 8;

/// Appends one request packet: `\0REQ`, type and body length (big-endian
/// u32), then the arguments joined by NUL bytes.
fn request(out: &mut Vec<u8>, kind: u32, args: &[&[u8]]) {
    let len: usize = args.iter().map(|a| a.len()).sum::<usize>() + args.len() - 1;
    out.extend_from_slice(b"\0REQ");
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&u32::try_from(len).expect("packet fits").to_be_bytes());
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(a);
    }
}

/// Reads responses until `n` JOB_CREATED have arrived (panics on any
/// other packet, a closed connection or an I/O error).
fn read_job_created(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) {
    let mut got = 0;
    let mut chunk = vec![0u8; 1 << 16];
    while got < n {
        while buf.len() >= 12 {
            let kind = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
            let len = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes")) as usize;
            if buf.len() < 12 + len {
                break;
            }
            assert_eq!(kind, JOB_CREATED, "unexpected packet type {kind}");
            buf.drain(..12 + len);
            got += 1;
            if got == n {
                return;
            }
        }
        let r = s.read(&mut chunk).expect("read from the job server");
        assert!(r > 0, "the job server closed the connection");
        buf.extend_from_slice(&chunk[..r]);
    }
}

/// `n` background jobs of `function` (workloads `p0`, `p1`, ..., no unique
/// key) on one new connection to `addr`, `per_write` submissions per
/// write, each write's JOB_CREATED replies read before the next write.
/// Returns the time from the first write until the last reply (the
/// packets are built before).
pub fn pipelined_background(addr: &str, function: &str, n: usize, per_write: usize) -> Duration {
    let per_write = per_write.max(1);
    let mut s = TcpStream::connect(addr).expect("connect to the job server");
    s.set_nodelay(true).expect("TCP_NODELAY");
    let writes: Vec<Vec<u8>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(per_write)
        .map(|c| {
            let mut out = Vec::new();
            for i in c {
                let w = format!("p{i}");
                request(
                    &mut out,
                    SUBMIT_JOB_BG,
                    &[function.as_bytes(), b"", w.as_bytes()],
                );
            }
            out
        })
        .collect();
    let mut buf = Vec::new();
    let t = Instant::now();
    for (k, w) in writes.iter().enumerate() {
        s.write_all(w).expect("write to the job server");
        read_job_created(&mut s, &mut buf, per_write.min(n - k * per_write));
    }
    t.elapsed()
}

/// [`pipelined_background`] with one submission per write: each job waits
/// for its JOB_CREATED before the next is written.
pub fn serial_background(addr: &str, function: &str, n: usize) -> Duration {
    pipelined_background(addr, function, n, 1)
}
