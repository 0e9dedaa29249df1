//! `gearman.tls_ca_file`, `gearman.tls_cert_file`, `gearman.tls_key_file`
//! turned into the backend's TLS configuration for `tls://` servers.
//!
//! The files are read and checked when a call first needs them after the
//! settings changed (once per backend per change, never per job); a file
//! that is missing or unusable fails that call with an error naming the
//! setting and the file. New connections use the configuration in force;
//! connections already open stay as they were verified.

use crate::gucs;
use gearman_core::TlsConfig;
use std::cell::RefCell;

type Files = (String, String, String);

thread_local! {
    static LOADED: RefCell<Option<(Files, Option<TlsConfig>)>> = const { RefCell::new(None) };
}

/// The TLS configuration of the settings in force (`None`: all three are
/// empty, so `tls://` servers are verified against the system's roots).
pub fn current() -> gearman_core::Result<Option<TlsConfig>> {
    let files = gucs::tls_files();
    let hit = LOADED.with(|l| {
        l.borrow()
            .as_ref()
            .filter(|(f, _)| *f == files)
            .map(|(_, t)| t.clone())
    });
    if let Some(t) = hit {
        return Ok(t);
    }
    let loaded = TlsConfig::from_settings(&files.0, &files.1, &files.2).map_err(|e| {
        let msg = e.message().to_string();
        let names: Vec<&str> = [
            ("gearman.tls_ca_file", &files.0),
            ("gearman.tls_cert_file", &files.1),
            ("gearman.tls_key_file", &files.2),
        ]
        .into_iter()
        .filter(|(_, f)| !f.is_empty() && msg.contains(f.as_str()))
        .map(|(n, _)| n)
        .collect();
        if names.is_empty() {
            e.with_context("gearman.tls_ca_file/tls_cert_file/tls_key_file")
        } else {
            e.with_context(names.join("/"))
        }
    })?;
    // Errors are not kept: a fixed file is picked up by the next call.
    LOADED.with(|l| *l.borrow_mut() = Some((files, loaded.clone())));
    Ok(loaded)
}
