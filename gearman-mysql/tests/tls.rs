//! The UDFs with `tls://` job servers, inside a real MariaDB, against the
//! TLS rig (a private gearmand behind a private stunnel4 that requires
//! client certificates on one of its ports; throwaway certificates).

mod common;

use common::*;
use gearman_core::{ServerAddr, ServerList};
use gearman_testkit::{TlsRig, TlsService};
use mysql::prelude::Queryable;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// MariaDB whose UDF configuration sends everything to the rig's
/// client-certificate port, with the rig's CA and client certificate.
fn start(rig: &TlsRig) -> (tempfile::TempDir, gearman_testkit::MariaDb) {
    let config = write_config(&format!(
        "servers = \"{}\"\nallow_servers_set = true\nconnect_timeout_ms = 1000\n\
         tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        rig.entry(TlsService::ClientCertRequired),
        rig.certs.ca().display(),
        rig.certs.client_cert().display(),
        rig.certs.client_key().display(),
    ));
    let db = start_db(&config, &[]);
    (config, db)
}

fn functions(rig: &TlsRig) -> Vec<String> {
    gearman_core::admin::Admin::connect(
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

fn udf_lines(db: &gearman_testkit::MariaDb, needle: &str) -> usize {
    db.error_log()
        .lines()
        .filter(|l| l.contains("gearman-mysql-udf:") && l.contains(needle))
        .count()
}

#[test]
fn gman_do_background_and_the_cookbook_trigger_through_tls() {
    let rig = TlsRig::start();
    let (_config, db) = start(&rig);
    let plain = ServerList::parse(&rig.gearmand.addr()).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let rev = handler(|ctx| {
        let mut v = ctx.workload().to_vec();
        v.reverse();
        Ok(v)
    });
    let _w = TestWorker::start(
        &plain,
        vec![("tls_rev", rev), ("send_tweet", recorder(&got))],
    );
    wait_until("workers", Duration::from_secs(15), || {
        let f = functions(&rig);
        f.iter().any(|f| f == "tls_rev") && f.iter().any(|f| f == "send_tweet")
    });
    let mut c = connect(&db);
    assert_eq!(
        one_str(&mut c, "SELECT gman_do('tls_rev', 'abc')").as_deref(),
        Some("cba")
    );
    // 1 MiB each way.
    let big = one(&mut c, "SELECT gman_do('tls_rev', REPEAT('xy', 524288))").unwrap();
    assert_eq!(big.len(), 1 << 20);
    assert!(big.starts_with(b"yx"));
    let h = one_str(
        &mut c,
        "SELECT gman_do_background('send_tweet', 'bg through tls')",
    )
    .expect("a job handle");
    assert!(h.starts_with("H:"), "{h}");

    c.query_drop(
        "CREATE TABLE blog_entries (id INT AUTO_INCREMENT PRIMARY KEY, \
         title VARCHAR(200), url VARCHAR(200)) DEFAULT CHARSET=utf8mb4",
    )
    .unwrap();
    // The cookbook trigger, verbatim.
    c.query_drop(r#"CREATE TRIGGER tweet_blog BEFORE INSERT ON blog_entries FOR EACH ROW SET @ret=gman_do_background('send_tweet', CONCAT(NEW.title, " - ", NEW.url));"#)
        .unwrap();
    let before = rig.gearmand.log().matches("Accepted connection").count();
    const N: usize = 100;
    for i in 0..N {
        c.exec_drop(
            "INSERT INTO blog_entries (title, url) VALUES (?, ?)",
            (format!("Ünïcödé {i}"), format!("http://example.com/{i}")),
        )
        .unwrap();
    }
    c.query_drop("INSERT INTO blog_entries (title, url) VALUES ('m1','u1'),('m2','u2')")
        .unwrap();
    let mut expected: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("Ünïcödé {i} - http://example.com/{i}").into_bytes())
        .collect();
    expected.push(b"m1 - u1".to_vec());
    expected.push(b"m2 - u2".to_vec());
    expected.push(b"bg through tls".to_vec());
    wait_until("the trigger's jobs", Duration::from_secs(30), || {
        got.lock().unwrap().len() >= expected.len()
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut seen = got.lock().unwrap().clone();
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected, "every payload once, byte for byte");
    // Pooled: the handshake is paid per connection, not per row (stunnel
    // opens one gearmand connection per TLS connection).
    let opened = rig.gearmand.log().matches("Accepted connection").count() - before;
    assert!(opened <= 2, "{N} inserts opened {opened} connections");
    // Server status through TLS too.
    let st = one_str(&mut c, "SELECT gman_server_status()").unwrap();
    assert!(st.contains("\"send_tweet\""), "{st}");
    assert!(st.contains("tls://127.0.0.1:"), "{st}");
}

#[test]
fn refusals_are_null_with_last_error_and_one_log_line_and_send_nothing() {
    let rig = TlsRig::start();
    let (_config, db) = start(&rig);
    let mut c = connect(&db);
    let plaintext = format!("tls://127.0.0.1:{}", rig.gearmand.port());
    for (i, (entry, want)) in [
        (
            rig.entry(TlsService::UntrustedCa),
            "the server's certificate is not issued by a trusted CA",
        ),
        (
            rig.entry(TlsService::WrongName),
            "the server's certificate is not valid for \"127.0.0.1\"",
        ),
        (
            rig.entry(TlsService::Expired),
            "the server's certificate has expired",
        ),
        // gearmand answers a ClientHello with an error line ("the server
        // does not speak TLS") or by closing ("closed the connection during
        // the TLS handshake"), depending on the bytes.
        (plaintext.clone(), "TLS"),
    ]
    .into_iter()
    .enumerate()
    {
        let set = one_str(&mut c, &format!("SELECT gman_servers_set('{entry}')"));
        assert_eq!(set.as_deref(), Some(entry.as_str()));
        let function = format!("tls_refused_{i}");
        for sql in [
            format!("SELECT gman_do('{function}', 'secret row')"),
            format!("SELECT gman_do_background('{function}', 'secret row')"),
        ] {
            let lines_before = udf_lines(&db, want);
            let t = Instant::now();
            let r = one(&mut c, &sql);
            let took = t.elapsed();
            assert_eq!(r, None, "{sql} through {entry}");
            assert!(took < Duration::from_secs(5), "{sql}: {took:?}");
            let e = last_error(&mut c).expect("gman_last_error()");
            assert!(e.contains(want), "{entry}: {e}");
            assert!(e.contains(&entry), "{entry}: names no server: {e}");
            assert_eq!(
                udf_lines(&db, want),
                lines_before + 1,
                "one error-log line per refused call:\n{}",
                db.error_log()
            );
        }
    }
    let known = functions(&rig);
    assert!(
        !known.iter().any(|f| f.starts_with("tls_refused")),
        "a refused job reached gearmand: {known:?}"
    );
    // A plaintext entry to the same gearmand still works (the list is
    // per entry), and so does the configured TLS entry again.
    let plain = ServerList::parse(&rig.gearmand.addr()).unwrap();
    let echo = handler(|ctx| Ok(ctx.workload().to_vec()));
    let _w = TestWorker::start(&plain, vec![("tls_echo", echo)]);
    wait_until("worker", Duration::from_secs(15), || {
        functions(&rig).iter().any(|f| f == "tls_echo")
    });
    one_str(
        &mut c,
        &format!(
            "SELECT gman_servers_set('{}')",
            rig.entry(TlsService::ClientCertRequired)
        ),
    );
    assert_eq!(
        one_str(&mut c, "SELECT gman_do('tls_echo', 'fine')").as_deref(),
        Some("fine")
    );
}

#[test]
fn a_bad_tls_file_makes_every_call_fail_naming_the_key_and_file() {
    let config =
        write_config("servers = \"tls://127.0.0.1:1\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n");
    let db = start_db(&config, &[]);
    let mut c = connect(&db);
    assert_eq!(one(&mut c, "SELECT gman_do('f', 'x')"), None);
    let e = last_error(&mut c).unwrap();
    assert!(
        e.contains("tls_ca_file") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
}
