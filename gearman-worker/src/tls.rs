//! TLS for `tls://` job servers: the flags `--tls-ca`, `--tls-cert`,
//! `--tls-key` and the file keys `tls_ca_file`, `tls_cert_file`,
//! `tls_key_file`.
//!
//! The files are read and checked once, when the configuration is read (a
//! bad file is a configuration error naming the key and the file: exit
//! status 2 at start, a rejected reload on SIGHUP). Any `--tls-*` flag
//! replaces the file's three keys as a whole, as `-s` replaces `servers`.
//! Unset, a `tls://` server is verified against the system's roots and no
//! client certificate is presented. Verification cannot be turned off.
//!
//! The process has one TLS configuration, installed with [`install`]: the
//! daemon's workers, the relay, retries, dead-letter forwarding and replay,
//! and the `/metrics` probe all take it from [`current`].

use crate::config::ConfigError;
use gearman_core::{Options, TlsConfig};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// The three TLS files and the configuration loaded from them.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA bundle (PEM); `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM, unencrypted), with `cert_file`.
    pub key_file: Option<PathBuf>,
    loaded: Option<TlsConfig>,
}

impl PartialEq for TlsFiles {
    /// The same files (the loaded configuration follows from them).
    fn eq(&self, other: &TlsFiles) -> bool {
        (&self.ca_file, &self.cert_file, &self.key_file)
            == (&other.ca_file, &other.cert_file, &other.key_file)
    }
}

impl TlsFiles {
    /// Reads and checks the files. `names` are the keys or flags they came
    /// from (CA, certificate, key), for the error message. All `None` (or
    /// empty): no TLS configuration.
    ///
    /// # Errors
    /// A file that is missing, unreadable or unusable, or a certificate
    /// without its key (or the reverse): the message names the key or flag
    /// and the file.
    pub fn load(
        ca_file: Option<&Path>,
        cert_file: Option<&Path>,
        key_file: Option<&Path>,
        names: [&str; 3],
    ) -> Result<TlsFiles, ConfigError> {
        let keep = |p: Option<&Path>| {
            p.filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
        };
        let mut t = TlsFiles {
            ca_file: keep(ca_file),
            cert_file: keep(cert_file),
            key_file: keep(key_file),
            loaded: None,
        };
        if t.ca_file.is_none() && t.cert_file.is_none() && t.key_file.is_none() {
            return Ok(t);
        }
        t.loaded = Some(
            TlsConfig::load(
                t.ca_file.as_deref(),
                t.cert_file.as_deref(),
                t.key_file.as_deref(),
            )
            .map_err(|e| {
                // Name the key whose file the message is about.
                let msg = e.message();
                let files = [&t.ca_file, &t.cert_file, &t.key_file];
                let key = files
                    .iter()
                    .zip(names)
                    .filter(|(f, _)| {
                        f.as_ref()
                            .is_some_and(|f| msg.contains(&f.display().to_string()))
                    })
                    .map(|(_, n)| n)
                    .collect::<Vec<_>>();
                let key = if key.is_empty() {
                    names.join("/")
                } else {
                    key.join("/")
                };
                ConfigError::key(&key, msg)
            })?,
        );
        Ok(t)
    }

    /// The loaded configuration; `None` when no file is set.
    pub fn config(&self) -> Option<TlsConfig> {
        self.loaded.clone()
    }

    /// Whether any file is set.
    pub fn is_set(&self) -> bool {
        self.loaded.is_some()
    }
}

static CURRENT: RwLock<Option<TlsConfig>> = RwLock::new(None);

/// Makes `files` the process's TLS configuration (at start and on reload).
pub fn install(files: &TlsFiles) {
    *CURRENT.write().unwrap_or_else(|p| p.into_inner()) = files.config();
}

/// The process's TLS configuration (`None`: the system's roots).
pub fn current() -> Option<TlsConfig> {
    CURRENT.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Client options with the process's TLS configuration, the rest default.
pub fn client_options() -> Options {
    Options {
        tls: current(),
        ..Options::default()
    }
}
