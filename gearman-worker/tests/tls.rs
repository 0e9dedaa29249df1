//! The worker and the relay with `tls://` job servers, against the TLS rig
//! (a private gearmand behind a private stunnel4, throwaway certificates).

mod common;

use common::*;
use gearman_core::worker::{StopHandle, Worker, WorkerOptions};
use gearman_core::{Job, ServerList};
use gearman_testkit::{Postgres, TlsRig, TlsService};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn path(p: std::path::PathBuf) -> String {
    p.display().to_string()
}

#[test]
fn quick_mode_serves_through_tls_with_a_client_certificate() {
    let rig = TlsRig::start();
    let (ca, cert, key) = (
        path(rig.certs.ca()),
        path(rig.certs.client_cert()),
        path(rig.certs.client_key()),
    );
    let entry = rig.entry(TlsService::ClientCertRequired);
    let w = WorkerProc::spawn(
        &[
            "-s",
            &entry,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "-f",
            "tls_rev",
            "--",
            "rev",
        ],
        &[],
    );
    let plain = rig.gearmand.addr();
    wait_workers(&plain, "tls_rev", 1, &|| w.log());
    let mut c = client(&plain);
    assert_eq!(c.run(&Job::new("tls_rev", "hello\n")).unwrap(), b"olleh\n");
}

#[test]
fn daemon_mode_reads_the_tls_keys_of_its_file() {
    let rig = TlsRig::start();
    let dir = tempfile::tempdir().unwrap();
    let conf = write_file(
        dir.path(),
        "worker.toml",
        &format!(
            "servers = \"{}\"\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\n\
             tls_key_file = \"{}\"\n[function.tls_echo]\nbuiltin = \"echo\"\n",
            rig.entry(TlsService::ClientCertRequired),
            rig.certs.ca().display(),
            rig.certs.client_cert().display(),
            rig.certs.client_key().display(),
        ),
    );
    let conf = path(conf);
    let (st, out, err) = run_to_end(&["--config", &conf, "--check-config"]);
    assert!(st.success(), "{out}{err}");
    assert!(out.contains("TLS CA file"), "{out}");
    let w = WorkerProc::spawn(&["--config", &conf], &[]);
    let plain = rig.gearmand.addr();
    wait_workers(&plain, "tls_echo", 1, &|| w.log());
    assert_eq!(
        client(&plain)
            .run(&Job::new("tls_echo", "through tls"))
            .unwrap(),
        b"through tls"
    );
}

#[test]
fn bad_tls_files_are_usage_errors_naming_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let m = path(missing.clone());
    // Flags.
    let (st, _, err) = run_to_end(&[
        "-s",
        "tls://127.0.0.1:1",
        "--tls-ca",
        &m,
        "-f",
        "x",
        "--",
        "cat",
    ]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("--tls-ca") && err.contains(&m), "{err}");
    let certs = gearman_testkit::TlsCerts::make();
    let cert = path(certs.client_cert());
    let (st, _, err) = run_to_end(&["--tls-cert", &cert, "-f", "x", "--", "cat"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains("--tls-cert") && err.contains("without its key file"),
        "{err}"
    );
    // File keys.
    let conf = write_file(
        dir.path(),
        "w.toml",
        &format!(
            "servers = \"tls://127.0.0.1:1\"\ntls_ca_file = \"{m}\"\n\
             [function.x]\nbuiltin = \"echo\"\n"
        ),
    );
    let (st, _, err) = run_to_end(&["--config", &path(conf), "--check-config"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("tls_ca_file") && err.contains(&m), "{err}");
    // A scheme other than tls:// is refused, naming the entry.
    let (st, _, err) = run_to_end(&["-s", "ssl://127.0.0.1:1", "-f", "x", "--", "cat"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("ssl://127.0.0.1:1"), "{err}");
}

#[test]
fn a_refused_tls_server_is_logged_and_retried_and_never_served() {
    let rig = TlsRig::start();
    let ca = path(rig.certs.ca());
    let entry = rig.entry(TlsService::UntrustedCa);
    let w = WorkerProc::spawn(
        &[
            "-s",
            &entry,
            "--tls-ca",
            &ca,
            "-f",
            "tls_never",
            "--",
            "cat",
        ],
        &[],
    );
    let line = format!(
        "worker cannot connect to {entry}: the server's certificate is not issued by a trusted CA"
    );
    assert!(
        wait_until(Duration::from_secs(20), || w.log().matches(&line).count()
            >= 2),
        "no repeated TLS refusal line: {}",
        w.log()
    );
    assert_eq!(workers_for(&rig.gearmand.addr(), "tls_never"), 0);
    // Fixed by trusting the right CA: the same worker binary then serves.
    drop(w);
    let good = rig.entry(TlsService::Good);
    let w = WorkerProc::spawn(
        &["-s", &good, "--tls-ca", &ca, "-f", "tls_never", "--", "cat"],
        &[],
    );
    wait_workers(&rig.gearmand.addr(), "tls_never", 1, &|| w.log());
}

/// The gearman-pg extension's outbox SQL without the extension-only calls
/// (as in tests/relay.rs).
fn postgres_with_outbox() -> Postgres {
    let sql = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../gearman-pg/sql/outbox.sql"
    ))
    .unwrap();
    let ddl = sql
        .lines()
        .filter(|l| !l.contains("pg_extension_config_dump"))
        .collect::<Vec<_>>()
        .join("\n");
    let pg = Postgres::start();
    pg.psql(&ddl);
    pg
}

struct Collector {
    seen: Arc<Mutex<Vec<String>>>,
    stop: StopHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    fn start(addr: &str, function: &str) -> Collector {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut w = Worker::new(ServerList::parse(addr).unwrap(), WorkerOptions::default());
        w.register(function, move |ctx| {
            s.lock()
                .unwrap()
                .push(String::from_utf8_lossy(ctx.workload()).into_owned());
            Ok(Vec::new())
        });
        let stop = w.stop_handle();
        let thread = Some(std::thread::spawn(move || w.run().unwrap()));
        Collector { seen, stop, thread }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn the_relay_drains_a_postgres_outbox_through_tls() {
    let rig = TlsRig::start();
    let pg = postgres_with_outbox();
    let collector = Collector::start(&rig.gearmand.addr(), "tls_outbox");
    pg.psql(
        "INSERT INTO gearman.outbox (function, workload)
           SELECT 'tls_outbox', convert_to('row-' || i, 'UTF8') FROM generate_series(1, 200) i",
    );
    let (ca, cert, key) = (
        path(rig.certs.ca()),
        path(rig.certs.client_cert()),
        path(rig.certs.client_key()),
    );
    let entry = rig.entry(TlsService::ClientCertRequired);
    let r = WorkerProc::spawn(
        &[
            "relay",
            "--poll-interval-ms",
            "200",
            "--postgres",
            &pg.url(),
            "-s",
            &entry,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(60), || collector
            .seen
            .lock()
            .unwrap()
            .len()
            >= 200
            && pg.psql("SELECT count(*) FROM gearman.outbox") == "0"),
        "delivered {}, relay log:\n{}",
        collector.seen.lock().unwrap().len(),
        r.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut seen = collector.seen.lock().unwrap().clone();
    seen.sort();
    let mut want: Vec<String> = (1..=200).map(|i| format!("row-{i}")).collect();
    want.sort();
    assert_eq!(seen, want, "each row exactly once");
}

#[test]
fn the_relay_keeps_rows_when_the_tls_server_is_refused() {
    let rig = TlsRig::start();
    let pg = postgres_with_outbox();
    pg.psql("INSERT INTO gearman.outbox (function, workload) VALUES ('tls_kept', 'x')");
    let ca = path(rig.certs.ca());
    let entry = rig.entry(TlsService::Expired);
    let r = WorkerProc::spawn(
        &[
            "relay",
            "--poll-interval-ms",
            "200",
            "--postgres",
            &pg.url(),
            "-s",
            &entry,
            "--tls-ca",
            &ca,
        ],
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(20), || r
            .log()
            .contains("certificate has expired")),
        "{}",
        r.log()
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM gearman.outbox WHERE failed_at IS NULL"),
        "1",
        "{}",
        r.log()
    );
    assert_eq!(queued(&rig.gearmand.addr(), "tls_kept"), 0);
}
