//! TLS to job servers: the trust and identity settings of `tls://` entries,
//! and the messages for a server that does not pass.
//!
//! A [`TlsConfig`] is built once, when a configuration is read: the CA
//! bundle and the client certificate and key are read and checked then, so
//! a bad file is a configuration error that names the file, never a
//! failure at the first job. Connections then share it (an `Arc` inside).
//!
//! What a `tls://host[:port]` connection verifies, always (there is no
//! setting to turn any of it off):
//! - the server's certificate chain up to one of the trusted roots (the CA
//!   file's certificates, or the system's roots when no CA file is set);
//! - the validity dates of every certificate in the chain;
//! - that the certificate is for `host`: a host name against its DNS
//!   subject alternative names, an IP address against its IP address SANs
//!   (the subject's common name is not used);
//! - TLS 1.2 or 1.3 only, with rustls's default (modern) cipher suites.
//!
//! The crypto is rustls with its `ring` provider; nothing of OpenSSL is
//! loaded into the host process.

use crate::error::{Error, ErrorKind, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Trust (CA roots) and identity (client certificate) for `tls://` servers,
/// loaded and checked once. Cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<ClientConfig>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .finish()
    }
}

fn config_error(message: String) -> Error {
    Error::tls(ErrorKind::InvalidArgument, message)
}

/// An unset path: `None` or empty.
fn given(p: Option<&Path>) -> Option<&Path> {
    p.filter(|p| !p.as_os_str().is_empty())
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    // Read the file ourselves first: its own error (missing, unreadable)
    // names the file better than the PEM parser's.
    let bytes = std::fs::read(path)
        .map_err(|e| config_error(format!("cannot read the {what} {}: {e}", path.display())))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            config_error(format!(
                "the {what} {} is not valid PEM: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(config_error(format!(
            "the {what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = std::fs::read(path).map_err(|e| {
        config_error(format!(
            "cannot read the client key file {}: {e}",
            path.display()
        ))
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        config_error(format!(
            "the client key file {} holds no usable PEM private key \
             (PKCS#8, PKCS#1 RSA or SEC1 EC, unencrypted): {e}",
            path.display()
        ))
    })
}

/// The system's trust store, as rustls-native-certs finds it.
fn system_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(config_error(format!(
            "no usable CA certificate in the system's trust store{} (install the \
             ca-certificates package, or set a CA file)",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        )));
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsConfig {
    /// Loads trust and identity from PEM files.
    ///
    /// - `ca_file`: a bundle of one or more CA certificates the server's
    ///   chain must lead to. `None` or empty: the system's roots (see
    ///   [`TlsConfig::system`]).
    /// - `cert_file`, `key_file`: a client certificate (chain) and its
    ///   unencrypted private key, presented to servers that ask for one.
    ///   Both or neither.
    ///
    /// Every error is an [`ErrorKind::InvalidArgument`] naming the file and
    /// what is wrong with it (missing, unreadable, not PEM, no certificate,
    /// no key, a key that does not belong to the certificate, a half pair).
    pub fn load(
        ca_file: Option<&Path>,
        cert_file: Option<&Path>,
        key_file: Option<&Path>,
    ) -> Result<TlsConfig> {
        let (ca_file, cert_file, key_file) = (given(ca_file), given(cert_file), given(key_file));
        let roots = match ca_file {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for (i, c) in read_certs(path, "CA file")?.into_iter().enumerate() {
                    roots.add(c).map_err(|e| {
                        config_error(format!(
                            "certificate {} in the CA file {} is not a usable CA certificate: {e}",
                            i + 1,
                            path.display()
                        ))
                    })?;
                }
                roots
            }
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(format!("TLS set-up failed: {e}")))?
            .with_root_certificates(roots);
        let config = match (cert_file, key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "client certificate file")?;
                let key_der = read_key(key)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    config_error(format!(
                        "the client certificate file {} and key file {} cannot be used \
                             together: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), None) => {
                return Err(config_error(format!(
                    "a client certificate file ({}) is set without its key file",
                    cert.display()
                )))
            }
            (None, Some(key)) => {
                return Err(config_error(format!(
                    "a client key file ({}) is set without its certificate file",
                    key.display()
                )))
            }
        };
        Ok(TlsConfig {
            config: Arc::new(config),
            ca_file: ca_file.map(Path::to_path_buf),
            cert_file: cert_file.map(Path::to_path_buf),
        })
    }

    /// [`TlsConfig::load`] from settings given as text, where an empty
    /// string means unset. `Ok(None)` when all three are empty: `tls://`
    /// servers then use [`TlsConfig::system`].
    pub fn from_settings(ca_file: &str, cert_file: &str, key_file: &str) -> Result<Option<Self>> {
        if ca_file.is_empty() && cert_file.is_empty() && key_file.is_empty() {
            return Ok(None);
        }
        let p = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        TlsConfig::load(
            p(ca_file).as_deref(),
            p(cert_file).as_deref(),
            p(key_file).as_deref(),
        )
        .map(Some)
    }

    /// The system's roots and no client certificate: what a `tls://` server
    /// is checked against when no TLS configuration is given. Loaded once
    /// per process from the system's trust store (`SSL_CERT_FILE` /
    /// `SSL_CERT_DIR` if set, else the OpenSSL locations, on Debian
    /// `/etc/ssl/certs`); an error if it holds no usable certificate.
    pub fn system() -> Result<TlsConfig> {
        static SYSTEM: OnceLock<Result<TlsConfig>> = OnceLock::new();
        SYSTEM
            .get_or_init(|| TlsConfig::load(None, None, None))
            .clone()
    }

    /// The CA file, or `None` for the system's roots.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The client certificate file, if one is presented.
    pub fn cert_file(&self) -> Option<&Path> {
        self.cert_file.as_deref()
    }

    /// What the server is verified against, for messages.
    fn trust(&self) -> String {
        match &self.ca_file {
            Some(p) => format!("the CA file {}", p.display()),
            None => "the system's trusted roots".to_string(),
        }
    }

    /// A client session for `host` (a name or an IP address, the zone of
    /// an IPv6 address left out).
    pub(crate) fn start(&self, host: &str) -> Result<ClientConnection> {
        let host = host.split('%').next().unwrap_or(host);
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            Error::tls(
                ErrorKind::ConnectFailed,
                format!("{host:?} cannot be checked against a certificate: {e}"),
            )
        })?;
        ClientConnection::new(self.config.clone(), name)
            .map_err(|e| Error::tls(ErrorKind::ConnectFailed, format!("TLS set-up failed: {e}")))
    }

    /// A clear message for a TLS failure with `host`.
    pub(crate) fn explain(&self, host: &str, e: &rustls::Error) -> String {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        match e {
            E::InvalidCertificate(c) => match c {
                C::UnknownIssuer => format!(
                    "the server's certificate is not issued by a trusted CA \
                     (checked against {}): {e}",
                    self.trust()
                ),
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    format!("the server's certificate is not valid for {host:?}: {e}")
                }
                C::Expired | C::ExpiredContext { .. } => {
                    format!("the server's certificate has expired: {e}")
                }
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    format!("the server's certificate is not valid yet: {e}")
                }
                _ => format!("the server's certificate was refused: {e}"),
            },
            E::AlertReceived(a) => {
                let asks_cert = matches!(
                    a,
                    A::CertificateRequired
                        | A::HandshakeFailure
                        | A::BadCertificate
                        | A::UnknownCA
                        | A::CertificateUnknown
                        | A::AccessDenied
                );
                let why = match (&self.cert_file, asks_cert) {
                    (None, true) => {
                        "; the server probably requires a client certificate, and none is \
                         configured"
                            .to_string()
                    }
                    (Some(c), true) => format!(
                        "; the server probably does not accept the client certificate {}",
                        c.display()
                    ),
                    _ => String::new(),
                };
                format!("the server refused the TLS connection ({e}){why}")
            }
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. } => {
                format!("the server does not speak TLS (a plaintext port?): {e}")
            }
            _ => format!("TLS failed: {e}"),
        }
    }
}
