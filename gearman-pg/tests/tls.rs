//! `tls://` job servers from SQL, over real connections: a private
//! PostgreSQL 15 with the installed extension, and the TLS rig (a private
//! gearmand behind a private stunnel4 that requires client certificates on
//! one port; throwaway certificates), with a worker on the gearmand's own
//! plaintext port.
//!
//! Needs the extension installed first, as for `tests/sql.rs`:
//! `cargo pgrx install -p gearman-pg --pg-config /usr/lib/postgresql/15/bin/pg_config`.

mod support;

use gearman_core::admin::Admin;
use gearman_core::ServerAddr;
use gearman_testkit::{Postgres, TlsRig, TlsService};
use std::time::{Duration, Instant};
use support::{handlers, Session, TestWorker, INSTALL_HINT};

/// PostgreSQL configured (server settings) for the rig's client-certificate
/// port, with the CA and the client certificate.
fn start(rig: &TlsRig) -> Postgres {
    start_with(rig, &[])
}

/// As [`start`], with more server settings.
fn start_with(rig: &TlsRig, more: &[&str]) -> Postgres {
    let mut settings = vec![
        format!(
            "gearman.servers={}",
            rig.entry(TlsService::ClientCertRequired)
        ),
        format!("gearman.tls_ca_file={}", rig.certs.ca().display()),
        format!(
            "gearman.tls_cert_file={}",
            rig.certs.client_cert().display()
        ),
        format!("gearman.tls_key_file={}", rig.certs.client_key().display()),
        "gearman.connect_timeout=1000".to_string(),
    ];
    settings.extend(more.iter().map(|m| m.to_string()));
    let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
    let pg = Postgres::start_with(&refs);
    if let Err(e) = pg.try_psql("CREATE EXTENSION gearman") {
        panic!("CREATE EXTENSION gearman failed: {e}\nHint: {INSTALL_HINT}");
    }
    pg
}

fn functions(rig: &TlsRig) -> Vec<String> {
    Admin::connect(
        &ServerAddr::new("127.0.0.1", rig.gearmand.port()),
        Duration::from_secs(2),
    )
    .unwrap()
    .status()
    .unwrap()
    .into_iter()
    .map(|s| s.function)
    .collect()
}

#[test]
fn every_dispatch_path_works_through_tls() {
    let rig = TlsRig::start();
    let pg = start(&rig);
    let w = TestWorker::start(&rig.gearmand.addr(), &["echo", "tls_bg"], handlers::echo);
    let mut s = Session::connect(&pg.url());
    assert_eq!(
        s.one("SELECT gman_do('echo', 'through tls')").as_deref(),
        Some("through tls")
    );
    assert_eq!(
        s.one("SELECT length(gman_do('echo', repeat('x', 1048576)))")
            .as_deref(),
        Some("1048576")
    );
    assert_eq!(
        s.one("SELECT gman_sum('echo', i::text) FROM generate_series(1, 100) i")
            .as_deref(),
        Some("5050")
    );
    let rows = s.rows("SELECT ordinality, result FROM gman_do_many('echo', ARRAY['a', 'b', 'c'])");
    let got: Vec<(Option<String>, Option<String>)> = rows
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("1".into()), Some("a".into())),
            (Some("2".into()), Some("b".into())),
            (Some("3".into()), Some("c".into())),
        ]
    );
    // Immediate: a job handle.
    s.exec("SET gearman.dispatch = 'immediate'");
    let h = s
        .one("SELECT gman_do_background('tls_bg', 'immediate')")
        .unwrap();
    assert!(h.starts_with("H:"), "{h}");
    w.wait_for_workload("immediate");
    // Commit mode: sent after COMMIT, not before, not after ROLLBACK.
    s.exec("SET gearman.dispatch = 'commit'");
    s.exec("BEGIN");
    s.one("SELECT gman_do_background('tls_bg', 'committed')");
    s.exec("COMMIT");
    s.exec("BEGIN");
    s.one("SELECT gman_do_background('tls_bg', 'rolled back')");
    s.exec("ROLLBACK");
    w.wait_for_workload("committed");
    s.exec("SET gearman.dispatch = 'immediate'");
    s.one("SELECT gman_do_background('tls_bg', 'marker')");
    w.wait_for_workload("marker");
    assert!(!w.workloads().iter().any(|x| x == "rolled back"));
    // Status through TLS.
    let st = s.rows("SELECT server, function FROM gman_server_status() WHERE function = 'echo'");
    assert_eq!(st.len(), 1, "{st:?}");
    assert!(
        st[0][0].as_deref().unwrap().starts_with("tls://127.0.0.1:"),
        "{st:?}"
    );
}

#[test]
fn refusals_are_sqlstate_errors_with_detail_and_hint_and_send_nothing() {
    let rig = TlsRig::start();
    let pg = start(&rig);
    let mut s = Session::connect(&pg.url());
    let plaintext = format!("tls://127.0.0.1:{}", rig.gearmand.port());
    let cases: Vec<(String, &str, &str)> = vec![
        (
            rig.entry(TlsService::UntrustedCa),
            "",
            "not issued by a trusted CA",
        ),
        (
            rig.entry(TlsService::WrongName),
            "",
            "is not valid for \"127.0.0.1\"",
        ),
        (
            rig.entry(TlsService::Expired),
            "",
            "certificate has expired",
        ),
        (
            rig.entry(TlsService::ClientCertRequired),
            "SET gearman.tls_cert_file = ''; SET gearman.tls_key_file = '';",
            "requires a client certificate, and none is configured",
        ),
        (
            // gearmand answers a ClientHello with an error line ("the
            // server does not speak TLS") or by closing ("closed the
            // connection during the TLS handshake"), depending on the bytes.
            plaintext, "", "TLS",
        ),
    ];
    for (i, (entry, setup, want)) in cases.into_iter().enumerate() {
        s.exec(&format!(
            "RESET ALL; {setup} SET gearman.servers = '{entry}'"
        ));
        for (mode, sql) in [
            (
                "immediate",
                format!("SELECT gman_do('tls_refused_{i}', 'secret')"),
            ),
            (
                "immediate",
                format!("SELECT gman_do_background('tls_refused_{i}', 'secret')"),
            ),
            (
                "commit",
                format!("SELECT gman_do_background('tls_refused_{i}', 'secret')"),
            ),
        ] {
            s.exec(&format!("SET gearman.dispatch = '{mode}'"));
            let t = Instant::now();
            let e = s.exec_err(&sql);
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{sql}: {:?}",
                t.elapsed()
            );
            assert_eq!(e.code, "08001", "{entry} {sql}: {e:?}");
            assert!(e.message.contains(want), "{entry}: {e:?}");
            assert!(e.detail.as_deref().unwrap_or("").contains(&entry), "{e:?}");
            assert!(
                e.hint
                    .as_deref()
                    .unwrap_or("")
                    .contains("gearman.tls_ca_file"),
                "{e:?}"
            );
        }
        // gman_servers_set takes tls:// too, with the same result.
        s.exec("RESET gearman.servers");
        s.one(&format!("SELECT gman_servers_set('{entry}')"));
        let e = s.exec_err(&format!("SELECT gman_do('tls_refused_{i}', 'secret')"));
        assert!(e.message.contains(want), "{e:?}");
    }
    let known = functions(&rig);
    assert!(
        !known.iter().any(|f| f.starts_with("tls_refused")),
        "a refused job reached gearmand: {known:?}"
    );
}

#[test]
fn tls_settings_are_superuser_only_and_bad_files_name_the_setting() {
    let rig = TlsRig::start();
    let pg = start(&rig);
    let mut s = Session::connect(&pg.url());
    s.exec("SET gearman.tls_ca_file = '/nonexistent/ca.pem'");
    let e = s.exec_err("SELECT gman_do('echo', 'x')");
    assert_eq!(e.code, "F0000", "{e:?}");
    assert!(
        e.message.contains("gearman.tls_ca_file") && e.message.contains("/nonexistent/ca.pem"),
        "{e:?}"
    );
    s.exec("RESET gearman.tls_ca_file; SET gearman.tls_key_file = ''");
    let e = s.exec_err("SELECT gman_do('echo', 'x')");
    assert_eq!(e.code, "F0000", "{e:?}");
    assert!(e.message.contains("without its key file"), "{e:?}");
    s.exec("RESET ALL");
    s.exec("CREATE ROLE app LOGIN; GRANT USAGE ON SCHEMA public TO app");
    s.exec("SET ROLE app");
    for setting in ["tls_ca_file", "tls_cert_file", "tls_key_file"] {
        let e = s.exec_err(&format!("SET gearman.{setting} = '/tmp/x.pem'"));
        assert_eq!(e.code, "42501", "{setting}: {e:?}");
    }
    s.exec("RESET ROLE");
}

/// With `shared_preload_libraries`, the dispatcher background worker sends
/// the commit-mode jobs of every session through TLS, with the server's
/// TLS settings (CA and client certificate), over one connection.
#[test]
fn the_dispatcher_sends_commit_jobs_through_tls() {
    let rig = TlsRig::start();
    let pg = start_with(&rig, &["shared_preload_libraries=gearman"]);
    let w = TestWorker::start(&rig.gearmand.addr(), &["tls_disp"], handlers::echo);
    let mut s = Session::connect(&pg.url());
    s.exec("BEGIN; SELECT gman_do_background('tls_disp', 'via-dispatcher'); COMMIT");
    s.exec("BEGIN; SELECT gman_do_background('tls_disp', 'rolled back'); ROLLBACK");
    s.exec("SELECT gman_do_background('tls_disp', 'second')");
    w.wait_for_workload("second");
    assert_eq!(w.workloads(), ["via-dispatcher", "second"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.rows(
            "SELECT handed_off, sent, dispatcher, cluster_confirmed FROM gman_dispatch_status()",
        );
        let row: Vec<&str> = r[0]
            .iter()
            .map(|v| v.as_deref().unwrap_or("NULL"))
            .collect();
        // This backend wrote nothing itself: both went to the dispatcher.
        assert_eq!(&row[..3], ["2", "0", "running"], "{row:?}");
        if row[3] == "2" {
            break;
        }
        assert!(Instant::now() < deadline, "not confirmed: {row:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
