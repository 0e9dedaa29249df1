//! TLS to job servers (`tls://` entries) against the rig: a private
//! gearmand behind a private stunnel4, certificates from a throwaway CA.
//! Jobs, workers and admin through TLS; every refusal (untrusted CA, wrong
//! name, expired, missing client certificate, a plaintext server, a stalled
//! handshake) ends within the connect bound with a TLS error, and no job
//! reaches the gearmand behind.

mod common;

use common::{quick_worker_options, spawn, test_worker};
use gearman_core::admin::{status_all_with, Admin};
use gearman_core::worker::{Worker, WorkerOptions};
use gearman_core::{Client, ErrorKind, Job, Options, ServerAddr, ServerList, TlsConfig};
use gearman_testkit::{TlsRig, TlsService};
use std::path::Path;
use std::time::{Duration, Instant};

const CONNECT: Duration = Duration::from_millis(1500);

fn trusted(rig: &TlsRig) -> TlsConfig {
    TlsConfig::load(Some(&rig.certs.ca()), None, None).unwrap()
}

fn with_client_cert(rig: &TlsRig) -> TlsConfig {
    TlsConfig::load(
        Some(&rig.certs.ca()),
        Some(&rig.certs.client_cert()),
        Some(&rig.certs.client_key()),
    )
    .unwrap()
}

fn tls_client(servers: &str, tls: Option<TlsConfig>) -> Client {
    Client::new(
        ServerList::parse(servers).unwrap(),
        Options {
            connect_timeout: CONNECT,
            io_timeout: Duration::from_secs(5),
            foreground_timeout: Some(Duration::from_secs(20)),
            tls,
            ..Options::default()
        },
    )
}

/// The functions gearmand knows, from admin `status` on its plaintext port.
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
fn jobs_run_through_tls_and_the_handshake_is_paid_once() {
    let rig = TlsRig::start();
    let _w = test_worker(&rig.gearmand.addr());
    for entry in [
        rig.entry(TlsService::Good),
        rig.stunnel.entry_by_name(TlsService::Good),
    ] {
        let mut c = tls_client(&entry, Some(trusted(&rig)));
        assert_eq!(c.run(&Job::new("reverse", "abc")).unwrap(), b"cba");
        // Many at once, some large (several TLS records and socket buffers).
        let jobs: Vec<Job> = (0..40)
            .map(|i| {
                let n = if i % 10 == 0 { 3 << 20 } else { i * 7 };
                Job::new("echo", vec![b'a' + (i % 26) as u8; n])
            })
            .collect();
        let got = c.run_all(&jobs);
        for (j, r) in jobs.iter().zip(got) {
            assert_eq!(r.unwrap(), j.workload, "{entry}");
        }
        let h = c.submit_background(&Job::new("echo", "bg")).unwrap();
        assert!(!h.to_string().is_empty());
        let handles = c.submit_background_all(&[Job::new("echo", "1"), Job::new("echo", "2")]);
        assert!(handles.iter().all(|h| h.is_ok()), "{handles:?}");
        // Idle a while (session tickets and the like arrive), then reuse.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(c.run(&Job::new("reverse", "xy")).unwrap(), b"yx");
        assert_eq!(c.stats().connects, 1, "one connection, one handshake");
        assert_eq!(c.stats().connect_failures, 0);
    }
}

#[test]
fn a_worker_serves_through_tls_and_admin_works_through_tls() {
    let rig = TlsRig::start();
    let entry = rig.entry(TlsService::ClientCertRequired);
    let mut w = Worker::new(
        ServerList::parse(&entry).unwrap(),
        WorkerOptions {
            tls: Some(with_client_cert(&rig)),
            ..quick_worker_options()
        },
    );
    w.register("tls_upper", |j| Ok(j.workload().to_ascii_uppercase()));
    let _w = spawn(w);
    // A plaintext client on the gearmand itself gets the TLS worker's result.
    let mut plain = common::client(&rig.gearmand.addr());
    let t = Instant::now();
    loop {
        if functions(&rig).iter().any(|f| f == "tls_upper") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "worker never registered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        plain.run(&Job::new("tls_upper", "hello")).unwrap(),
        b"HELLO"
    );
    // And a TLS client with a client certificate.
    let mut c = tls_client(&entry, Some(with_client_cert(&rig)));
    assert_eq!(c.run(&Job::new("tls_upper", "tls")).unwrap(), b"TLS");
    // Admin through TLS.
    let tls = with_client_cert(&rig);
    let answers = status_all_with(
        [ServerAddr::parse(&entry).unwrap()],
        CONNECT,
        Instant::now() + Duration::from_secs(5),
        Some(&tls),
    );
    let st = answers[0].1.as_ref().unwrap();
    assert!(
        st.iter()
            .any(|s| s.function == "tls_upper" && s.workers == 1),
        "{st:?}"
    );
}

/// Runs a job against `entry` and expects a TLS refusal within the connect
/// bound; returns the message.
fn refused(entry: &str, tls: Option<TlsConfig>, function: &str) -> String {
    let mut c = tls_client(entry, tls);
    let t = Instant::now();
    let e = c.run(&Job::new(function, "secret row data")).unwrap_err();
    let took = t.elapsed();
    assert!(
        took < CONNECT * 5,
        "{entry}: the refusal took {took:?}, past 5x the connect timeout"
    );
    assert!(e.is_tls(), "{entry}: not a TLS error: {e:?}");
    assert_eq!(e.kind(), &ErrorKind::ConnectFailed, "{entry}: {e:?}");
    // Background submissions are refused the same way.
    let b = c
        .submit_background(&Job::new(function, "secret"))
        .unwrap_err();
    assert!(b.is_tls(), "{entry}: {b:?}");
    eprintln!("{entry}: {e}");
    e.to_string()
}

#[test]
fn refusals_are_clear_fast_and_send_no_job() {
    let rig = TlsRig::start();
    let cases: Vec<(String, Option<TlsConfig>, &str)> = vec![
        (
            rig.entry(TlsService::UntrustedCa),
            Some(trusted(&rig)),
            "not issued by a trusted CA (checked against the CA file",
        ),
        (
            // No configuration: the system's roots, which do not hold the
            // test CA.
            rig.entry(TlsService::Good),
            None,
            "not issued by a trusted CA (checked against the system's trusted roots",
        ),
        (
            // Trusting only the other CA.
            rig.entry(TlsService::Good),
            Some(TlsConfig::load(Some(&rig.certs.other_ca()), None, None).unwrap()),
            "not issued by a trusted CA",
        ),
        (
            rig.entry(TlsService::WrongName),
            Some(trusted(&rig)),
            "is not valid for \"127.0.0.1\"",
        ),
        (
            rig.stunnel.entry_by_name(TlsService::WrongName),
            Some(trusted(&rig)),
            "is not valid for \"localhost\"",
        ),
        (
            rig.entry(TlsService::Expired),
            Some(trusted(&rig)),
            "certificate has expired",
        ),
        (
            rig.entry(TlsService::ClientCertRequired),
            Some(trusted(&rig)),
            "requires a client certificate, and none is configured",
        ),
        (
            rig.entry(TlsService::ClientCertRequired),
            Some({
                let (cert, key) = rig.certs.untrusted_client();
                TlsConfig::load(Some(&rig.certs.ca()), Some(&cert), Some(&key)).unwrap()
            }),
            "does not accept the client certificate",
        ),
    ];
    for (i, (entry, tls, want)) in cases.into_iter().enumerate() {
        let function = format!("tls_refused_{i}");
        let msg = refused(&entry, tls, &function);
        assert!(msg.contains(want), "{entry}: {msg:?} lacks {want:?}");
        assert!(
            msg.contains(&entry),
            "{entry}: the error names no server: {msg}"
        );
    }
    // Nothing got through to the job server behind the terminator.
    let known = functions(&rig);
    assert!(
        !known.iter().any(|f| f.starts_with("tls_refused")),
        "a refused job reached gearmand: {known:?}"
    );
    // The good path still works on the same rig (the refusals broke nothing).
    let _w = test_worker(&rig.gearmand.addr());
    let mut c = tls_client(&rig.entry(TlsService::Good), Some(trusted(&rig)));
    assert_eq!(c.run(&Job::new("reverse", "ok")).unwrap(), b"ko");
}

#[test]
fn tls_to_a_plaintext_gearmand_sends_no_job() {
    let rig = TlsRig::start();
    let entry = format!("tls://127.0.0.1:{}", rig.gearmand.port());
    let msg = refused(&entry, Some(trusted(&rig)), "tls_plaintext_fn");
    assert!(
        msg.contains("does not speak TLS")
            || msg.contains("did not finish")
            || msg.contains("closed the connection during the TLS handshake"),
        "{msg}"
    );
    let known = functions(&rig);
    assert!(
        !known.iter().any(|f| f == "tls_plaintext_fn"),
        "the job reached the plaintext gearmand: {known:?}"
    );
    // What gearmand logged holds no workload byte.
    assert!(
        !rig.gearmand.log().contains("secret"),
        "{}",
        rig.gearmand.log()
    );
}

#[test]
fn a_stalled_handshake_fails_within_the_connect_timeout() {
    // Accepts (the kernel completes TCP) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let entry = format!("tls://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let certs = gearman_testkit::TlsCerts::make();
    let tls = TlsConfig::load(Some(&certs.ca()), None, None).unwrap();
    let msg = refused(&entry, Some(tls.clone()), "stalled");
    assert!(
        msg.contains("did not finish within the connect timeout"),
        "{msg}"
    );
    // A call deadline shorter than the connect timeout cuts the handshake:
    // a timeout, reported as such.
    let mut c = tls_client(&entry, Some(tls.clone()));
    c.options_mut().io_timeout = Duration::from_millis(300);
    let t = Instant::now();
    let e = c.submit_background(&Job::new("stalled", "x")).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(300) * 5,
        "{:?}",
        t.elapsed()
    );
    assert_eq!(e.kind(), &ErrorKind::Timeout, "{e:?}");
    // The interrupt hook is asked during the handshake too.
    let mut c = tls_client(&entry, Some(tls));
    c.options_mut().connect_timeout = Duration::from_secs(30);
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = asked.clone();
    c.options_mut().interrupt = Some(std::sync::Arc::new(move || {
        if a.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 5 {
            Err(gearman_core::Error::interrupted("cancelled by the test"))
        } else {
            Ok(())
        }
    }));
    let t = Instant::now();
    let e = c.run(&Job::new("stalled", "x")).unwrap_err();
    assert!(e.is_interrupted(), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn bad_tls_files_are_configuration_errors_naming_the_file() {
    let certs = gearman_testkit::TlsCerts::make();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let not_pem = dir.path().join("garbage.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let check = |r: gearman_core::Result<TlsConfig>, file: &Path, want: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidArgument, "{e:?}");
        assert!(e.is_tls());
        let m = e.to_string();
        assert!(
            m.contains(&file.display().to_string()),
            "{m} names no {file:?}"
        );
        assert!(m.contains(want), "{m} lacks {want:?}");
    };
    check(
        TlsConfig::load(Some(&missing), None, None),
        &missing,
        "cannot read the CA file",
    );
    check(
        TlsConfig::load(Some(&not_pem), None, None),
        &not_pem,
        "holds no PEM certificate",
    );
    check(
        TlsConfig::load(Some(&certs.ca()), Some(&certs.client_cert()), None),
        &certs.client_cert(),
        "without its key file",
    );
    check(
        TlsConfig::load(Some(&certs.ca()), None, Some(&certs.client_key())),
        &certs.client_key(),
        "without its certificate file",
    );
    check(
        TlsConfig::load(
            Some(&certs.ca()),
            Some(&certs.client_cert()),
            Some(&not_pem),
        ),
        &not_pem,
        "holds no usable PEM private key",
    );
    check(
        TlsConfig::load(Some(&certs.ca()), Some(&missing), Some(&certs.client_key())),
        &missing,
        "cannot read the client certificate file",
    );
    // A key that is not the certificate's.
    let (_, other_key) = certs.untrusted_client();
    check(
        TlsConfig::load(
            Some(&certs.ca()),
            Some(&certs.client_cert()),
            Some(&other_key),
        ),
        &other_key,
        "cannot be used together",
    );
    // Empty settings: no configuration (the system's roots).
    assert!(TlsConfig::from_settings("", "", "").unwrap().is_none());
    assert!(
        TlsConfig::from_settings(&certs.ca().display().to_string(), "", "")
            .unwrap()
            .is_some()
    );
    // The system's roots load on this machine (ca-certificates).
    TlsConfig::system().unwrap();
}

/// Large writes that fill the socket again and again while the other side
/// drains it: every byte goes through the TLS session, none raw beside it
/// (a raw byte would break the TLS stream at stunnel and the results).
#[test]
fn large_payloads_under_back_pressure_stay_inside_tls() {
    let rig = TlsRig::start();
    let _w = test_worker(&rig.gearmand.addr());
    let mut c = tls_client(&rig.entry(TlsService::Good), Some(trusted(&rig)));
    for round in 0..3u8 {
        let jobs: Vec<Job> = (0..6u8)
            .map(|i| {
                let v: Vec<u8> = (0..(6 << 20))
                    .map(|k: usize| (k as u8).wrapping_mul(31).wrapping_add(i ^ round))
                    .collect();
                Job::new("echo", v)
            })
            .collect();
        let got = c.run_all(&jobs);
        for (j, r) in jobs.iter().zip(got) {
            let r = r.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(r == j.workload, "round {round}: result differs");
        }
    }
    assert_eq!(c.stats().connects, 1);
}

/// A job server (behind stunnel) that answers the connect's ECHO and then
/// sends NOOP packets without pause: a call still ends by its deadline
/// (one read cannot run on for as long as the server keeps sending).
#[test]
fn a_server_that_never_stops_sending_cannot_hold_a_call_past_its_deadline() {
    use std::io::{Read, Write};
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in backend.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                // ECHO_REQ: 12-byte header, then the payload.
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_err() {
                    return;
                }
                let len = u32::from_be_bytes([head[8], head[9], head[10], head[11]]) as usize;
                let mut data = vec![0u8; len];
                if s.read_exact(&mut data).is_err() {
                    return;
                }
                let mut res = b"\0RES".to_vec();
                res.extend(17u32.to_be_bytes()); // ECHO_RES
                res.extend((len as u32).to_be_bytes());
                res.extend(&data);
                if s.write_all(&res).is_err() {
                    return;
                }
                let mut noop = b"\0RES".to_vec();
                noop.extend(6u32.to_be_bytes()); // NOOP
                noop.extend(0u32.to_be_bytes());
                let flood: Vec<u8> = noop.repeat(8192);
                while s.write_all(&flood).is_ok() {}
            });
        }
    });
    let certs = gearman_testkit::TlsCerts::make();
    let stunnel = gearman_testkit::Stunnel::start(&certs, port);
    let tls = TlsConfig::load(Some(&certs.ca()), None, None).unwrap();
    let mut c = tls_client(&stunnel.entry(TlsService::Good), Some(tls));
    c.options_mut().foreground_timeout = Some(Duration::from_secs(1));
    c.options_mut().io_timeout = Duration::from_secs(1);
    let t = Instant::now();
    let r = c.run(&Job::new("f", "x"));
    let took = t.elapsed();
    assert!(r.is_err(), "{r:?}");
    assert!(
        took < Duration::from_secs(5),
        "the call took {took:?}: {r:?}"
    );
}
