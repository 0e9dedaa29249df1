//! Benchmark (issue 13): background dispatch from PostgreSQL through a TLS
//! terminator next to the same in plaintext, one run, one private gearmand,
//! one private stunnel4 in front of it (throwaway certificates from the test
//! harness) and one private PostgreSQL (15, or the installation whose `bin`
//! directory `GEARMAN_TEST_PG_BINDIR` names). Prints figures; asserts
//! nothing. The TLS figures include the terminator's own hop.
//!
//! Needs the release build of the extension installed into that PostgreSQL
//! (`scripts/bench.d/tls.sh` does both steps):
//!
//! ```text
//! cd gearman-pg
//! cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config
//! cargo run --release --example bench_tls [-- --jobs 100000 --rounds 10]
//! # or PostgreSQL 18:
//! cargo pgrx install --release --pg-config /opt/postgresql-18/bin/pg_config
//! GEARMAN_TEST_PG_BINDIR=/opt/postgresql-18/bin cargo run --release --example bench_tls
//! ```
//!
//! Each round runs `SELECT count(gman_do_background('f', 'p'||i)) FROM
//! generate_series(1, jobs/rounds) i` once with `gearman.servers` plaintext
//! and once `tls://`, in `immediate` dispatch, then the same in `commit`
//! dispatch (each statement its own transaction: the jobs are sent after
//! COMMIT). The session keeps one connection per server, so the handshake
//! is paid once. A `commit` statement returns once the jobs are written
//! (their confirmations are read later), so `commit` is timed twice: until
//! the statement returns, and until `gman_dispatch_status()` shows every job
//! confirmed by gearmand.

mod common;

use common::{arg, create_extension, server_version};
use gearman_testkit::{Gearmand, Postgres, Stunnel, TlsCerts, TlsService};
use std::time::{Duration, Instant};

fn main() {
    let jobs = arg("--jobs", 100_000);
    let rounds = arg("--rounds", 10).max(1);
    let chunk = (jobs / rounds).max(1);
    let g = Gearmand::start();
    let certs = TlsCerts::make();
    let stunnel = Stunnel::start(&certs, g.port());
    let plain = g.addr();
    let tls = stunnel.entry(TlsService::Good);
    let pg = Postgres::start_with(&[
        &format!("gearman.servers={plain}"),
        &format!("gearman.tls_ca_file={}", certs.ca().display()),
    ]);
    create_extension(&pg);
    let mut db = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect");
    let version = server_version(&mut db);
    println!(
        "gearmand {plain}, stunnel {tls} / PostgreSQL {version} on port {}; {jobs} jobs per \
         figure in {rounds} alternating rounds",
        pg.port()
    );
    for mode in ["immediate", "commit"] {
        db.batch_execute(&format!("SET gearman.dispatch = '{mode}'"))
            .unwrap();
        let mut t = [Duration::ZERO; 2];
        let mut t_confirmed = [Duration::ZERO; 2];
        for r in 0..rounds {
            for (k, servers) in [&plain, &tls].into_iter().enumerate() {
                db.batch_execute(&format!("SET gearman.servers = '{servers}'"))
                    .unwrap();
                let q = format!(
                    "SELECT count(gman_do_background('f_{mode}', 'p'||i)) \
                     FROM generate_series({}, {}) i",
                    r * chunk + 1,
                    (r + 1) * chunk
                );
                let t0 = Instant::now();
                let n: i64 = db.query_one(q.as_str(), &[]).unwrap().get(0);
                t[k] += t0.elapsed();
                assert_eq!(n as usize, chunk);
                if mode == "commit" {
                    wait_confirmed(&mut db);
                    t_confirmed[k] += t0.elapsed();
                }
            }
        }
        let n = chunk * rounds;
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        let (p, s) = (rate(t[0]), rate(t[1]));
        println!(
            "SQL {mode:<9}: plaintext {p:>9.0} jobs/s, TLS via stunnel {s:>9.0} jobs/s \
             ({:.0}% of plaintext){}",
            100.0 * s / p,
            if mode == "commit" {
                " (statement returned: jobs written after COMMIT)"
            } else {
                ""
            }
        );
        if mode == "commit" {
            let (p, s) = (rate(t_confirmed[0]), rate(t_confirmed[1]));
            println!(
                "SQL commit, confirmed: plaintext {p:>9.0} jobs/s, TLS via stunnel {s:>9.0} \
                 jobs/s ({:.0}% of plaintext) (until gearmand confirmed every job)",
                100.0 * s / p
            );
        }
    }
    let st: String = db
        .query_one(
            "SELECT format('sent %s, confirmed %s, failed %s', sent, confirmed, failed) \
             FROM gman_dispatch_status()",
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or_else(|e| format!("gman_dispatch_status(): {e}"));
    println!("commit dispatch: {st}");
    drop(stunnel);
}

/// Polls `gman_dispatch_status()` (which takes the confirmations that have
/// arrived) until no job of this session awaits its confirmation.
fn wait_confirmed(db: &mut postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pending: i64 = db
            .query_one("SELECT pending FROM gman_dispatch_status()", &[])
            .unwrap()
            .get(0);
        if pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} jobs still unconfirmed after 120 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}
