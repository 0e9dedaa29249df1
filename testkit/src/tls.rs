//! The TLS rig: throwaway certificates made with the `openssl` command, and
//! a private `stunnel4` terminating TLS in front of a private gearmand.
//!
//! [`TlsCerts::make`] writes, into its own temporary directory:
//! - a CA the tests trust (`ca.pem`), and a second CA nobody trusts;
//! - a server certificate for `localhost` and `127.0.0.1` from the trusted
//!   CA, the same names from the untrusted CA, the same names from the
//!   trusted CA but expired (valid 2020-01-01 to 2021-01-01), and one from
//!   the trusted CA for another name only (`gearman.invalid`);
//! - a client certificate from the trusted CA, and one from the untrusted CA.
//!
//! All keys are ECDSA P-256, PKCS#8 PEM, unencrypted. The directory and its
//! files are world-readable (throwaway test keys): mariadbd runs as `mysql`
//! and PostgreSQL as `postgres`, and both read these files.
//!
//! [`Stunnel::start`] runs one stunnel with one service per
//! [`TlsService`], each on its own free loopback port, all forwarding to
//! the same backend port.

use crate::gearmand::Gearmand;
use crate::process::{free_port, listener_owned_by, require_binary};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Certificates for the TLS tests, in a temporary directory removed on drop.
#[derive(Debug)]
pub struct TlsCerts {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let bin = require_binary("openssl", &["/usr/bin"], "openssl");
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const SERVER_EXT: &str = "basicConstraints=critical,CA:FALSE\n\
    keyUsage=critical,digitalSignature\n\
    extendedKeyUsage=serverAuth\n\
    subjectAltName=DNS:localhost,IP:127.0.0.1\n";
const WRONG_NAME_EXT: &str = "basicConstraints=critical,CA:FALSE\n\
    keyUsage=critical,digitalSignature\n\
    extendedKeyUsage=serverAuth\n\
    subjectAltName=DNS:gearman.invalid\n";
const CLIENT_EXT: &str = "basicConstraints=critical,CA:FALSE\n\
    keyUsage=critical,digitalSignature\n\
    extendedKeyUsage=clientAuth\n";
const CA_EXT: &str = "basicConstraints=critical,CA:TRUE\n\
    keyUsage=critical,keyCertSign,cRLSign\n\
    subjectKeyIdentifier=hash\n";

impl TlsCerts {
    /// Makes every certificate (about a dozen `openssl` runs).
    pub fn make() -> TlsCerts {
        let dir = tempfile::Builder::new()
            .prefix("tls-certs-")
            .tempdir()
            .expect("temp dir for certificates");
        let d = dir.path();
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(d.join("server.ext"), SERVER_EXT).unwrap();
        fs::write(d.join("wrongname.ext"), WRONG_NAME_EXT).unwrap();
        fs::write(d.join("client.ext"), CLIENT_EXT).unwrap();
        fs::write(d.join("ca.ext"), CA_EXT).unwrap();
        let newkey = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for (ca, cn) in [
            ("ca", "gearman-sql test CA"),
            ("other-ca", "gearman-sql untrusted CA"),
        ] {
            let (key, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN={cn}"),
            );
            let mut a = vec!["req", "-x509"];
            a.extend(newkey);
            a.extend([
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "3650",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(d, &a);
        }
        // name, signing CA, extensions, common name
        for (name, ca, ext, cn) in [
            ("server", "ca", "server.ext", "localhost"),
            ("untrusted-server", "other-ca", "server.ext", "localhost"),
            ("wrongname-server", "ca", "wrongname.ext", "gearman.invalid"),
            ("client", "ca", "client.ext", "gearman-sql test client"),
            (
                "untrusted-client",
                "other-ca",
                "client.ext",
                "gearman-sql untrusted client",
            ),
            ("expired-server", "ca", "server.ext", "localhost"),
        ] {
            let (key, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let subj = format!("/CN={cn}");
            let mut a = vec!["req"];
            a.extend(newkey);
            a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(d, &a);
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            if name == "expired-server" {
                // `openssl x509` sets no past start date; `openssl ca` does.
                fs::create_dir_all(d.join("ca-db")).unwrap();
                fs::write(d.join("ca-db/index.txt"), "").unwrap();
                fs::write(d.join("ca-db/serial"), "1000\n").unwrap();
                fs::write(
                    d.join("ca.cnf"),
                    "[ca]\ndefault_ca = test\n[test]\ndatabase = ca-db/index.txt\n\
                     serial = ca-db/serial\nnew_certs_dir = ca-db\ndefault_md = sha256\n\
                     policy = any\nunique_subject = no\n[any]\ncommonName = supplied\n\
                     [ext]\nbasicConstraints=critical,CA:FALSE\n\
                     keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n\
                     subjectAltName=DNS:localhost,IP:127.0.0.1\n",
                )
                .unwrap();
                openssl(
                    d,
                    &[
                        "ca",
                        "-batch",
                        "-config",
                        "ca.cnf",
                        "-cert",
                        &ca_pem,
                        "-keyfile",
                        &ca_key,
                        "-in",
                        &csr,
                        "-out",
                        &pem,
                        "-startdate",
                        "20200101000000Z",
                        "-enddate",
                        "20210101000000Z",
                        "-extensions",
                        "ext",
                        "-notext",
                    ],
                );
            } else {
                openssl(
                    d,
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &csr,
                        "-CA",
                        &ca_pem,
                        "-CAkey",
                        &ca_key,
                        "-CAcreateserial",
                        "-out",
                        &pem,
                        "-days",
                        "3650",
                        "-sha256",
                        "-extfile",
                        ext,
                    ],
                );
            }
        }
        for f in fs::read_dir(d).unwrap().flatten() {
            if f.path().is_file() {
                fs::set_permissions(f.path(), fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        TlsCerts { dir }
    }

    /// A file of the set by name (`ca.pem`, `server.key`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA the tests trust (PEM).
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// The CA nobody trusts (PEM).
    pub fn other_ca(&self) -> PathBuf {
        self.path("other-ca.pem")
    }

    /// The client certificate from the trusted CA (PEM).
    pub fn client_cert(&self) -> PathBuf {
        self.path("client.pem")
    }

    /// The key of [`TlsCerts::client_cert`] (PKCS#8 PEM).
    pub fn client_key(&self) -> PathBuf {
        self.path("client.key")
    }

    /// A client certificate from the untrusted CA, and its key.
    pub fn untrusted_client(&self) -> (PathBuf, PathBuf) {
        (
            self.path("untrusted-client.pem"),
            self.path("untrusted-client.key"),
        )
    }
}

/// The services of the rig's stunnel: each a TLS listener in front of the
/// same backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsService {
    /// A certificate for `localhost` and `127.0.0.1` from the trusted CA.
    Good,
    /// As `Good`, and requires a client certificate from the trusted CA
    /// (stunnel `verify = 2`).
    ClientCertRequired,
    /// A certificate for the right names from the CA nobody trusts.
    UntrustedCa,
    /// A certificate for the right names from the trusted CA, expired on
    /// 2021-01-01.
    Expired,
    /// A certificate from the trusted CA for `gearman.invalid` only.
    WrongName,
}

impl TlsService {
    /// Every service.
    pub const ALL: [TlsService; 5] = [
        TlsService::Good,
        TlsService::ClientCertRequired,
        TlsService::UntrustedCa,
        TlsService::Expired,
        TlsService::WrongName,
    ];

    fn section(self) -> (&'static str, &'static str, &'static str) {
        match self {
            TlsService::Good => ("good", "server", ""),
            TlsService::ClientCertRequired => ("client-cert-required", "server", "ca.pem"),
            TlsService::UntrustedCa => ("untrusted-ca", "untrusted-server", ""),
            TlsService::Expired => ("expired", "expired-server", ""),
            TlsService::WrongName => ("wrong-name", "wrongname-server", ""),
        }
    }
}

/// A private stunnel4 (Debian `stunnel4`), killed on drop.
#[derive(Debug)]
pub struct Stunnel {
    dir: tempfile::TempDir,
    child: Option<Child>,
    ports: Vec<(TlsService, u16)>,
    backend: u16,
}

/// The stunnel binary of Debian's `stunnel4`.
pub const STUNNEL: &str = "/usr/bin/stunnel4";

impl Stunnel {
    /// Starts stunnel with every [`TlsService`] on free loopback ports,
    /// each forwarding to `127.0.0.1:backend_port`.
    pub fn start(certs: &TlsCerts, backend_port: u16) -> Stunnel {
        assert!(
            Path::new(STUNNEL).is_file(),
            "{STUNNEL} is not installed: install the Debian package `stunnel4` \
             (run `sudo scripts/setup`, which installs every test dependency)"
        );
        let dir = tempfile::Builder::new()
            .prefix("stunnel-")
            .tempdir()
            .expect("temp dir for stunnel");
        let mut s = Stunnel {
            dir,
            child: None,
            ports: Vec::new(),
            backend: backend_port,
        };
        for _ in 0..5 {
            if s.launch(certs) {
                return s;
            }
        }
        panic!("stunnel did not start; its log:\n{}", s.log());
    }

    fn launch(&mut self, certs: &TlsCerts) -> bool {
        self.kill();
        self.ports = TlsService::ALL.iter().map(|&t| (t, free_port())).collect();
        let d = self.dir.path();
        let mut conf = format!(
            "foreground = yes\npid = {}\noutput = {}\ndebug = 6\nsyslog = no\n",
            d.join("stunnel.pid").display(),
            self.log_path().display()
        );
        for (svc, port) in &self.ports {
            let (name, cert, ca) = svc.section();
            conf += &format!(
                "\n[{name}]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{}\n\
                 cert = {}\nkey = {}\n",
                self.backend,
                certs.path(&format!("{cert}.pem")).display(),
                certs.path(&format!("{cert}.key")).display(),
            );
            if !ca.is_empty() {
                conf += &format!("CAfile = {}\nverify = 2\n", certs.path(ca).display());
            }
        }
        let conf_path = d.join("stunnel.conf");
        fs::write(&conf_path, conf).unwrap();
        let child = Command::new(STUNNEL)
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {STUNNEL}: {e}"));
        let pid = child.id();
        self.child = Some(child);
        // Ready once stunnel itself holds every listener (a port taken by
        // someone else between picking and binding makes stunnel exit).
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if self.ports.iter().all(|(_, p)| listener_owned_by(pid, *p)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The port of `service`.
    pub fn port(&self, service: TlsService) -> u16 {
        self.ports
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, p)| *p)
            .expect("every service has a port")
    }

    /// `tls://127.0.0.1:PORT` for `service`.
    pub fn entry(&self, service: TlsService) -> String {
        format!("tls://127.0.0.1:{}", self.port(service))
    }

    /// `tls://localhost:PORT` for `service` (the certificate's DNS name).
    pub fn entry_by_name(&self, service: TlsService) -> String {
        format!("tls://localhost:{}", self.port(service))
    }

    /// Path of stunnel's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("stunnel.log")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills stunnel (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private gearmand, certificates and a stunnel in front of the gearmand:
/// the whole TLS rig in one value. Dropped in reverse order of start.
#[derive(Debug)]
pub struct TlsRig {
    /// The TLS terminator (drop first).
    pub stunnel: Stunnel,
    /// The job server behind it, plaintext on its own port.
    pub gearmand: Gearmand,
    /// The certificates.
    pub certs: TlsCerts,
}

impl TlsRig {
    /// Starts gearmand, makes the certificates, starts stunnel.
    pub fn start() -> TlsRig {
        let gearmand = Gearmand::start();
        let certs = TlsCerts::make();
        let stunnel = Stunnel::start(&certs, gearmand.port());
        TlsRig {
            stunnel,
            gearmand,
            certs,
        }
    }

    /// `tls://127.0.0.1:PORT` of `service`.
    pub fn entry(&self, service: TlsService) -> String {
        self.stunnel.entry(service)
    }
}
