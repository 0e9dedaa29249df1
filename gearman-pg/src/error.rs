//! Core errors as PostgreSQL errors: SQLSTATE, message, detail, hint.
//!
//! | core `ErrorKind`            | SQLSTATE | name                                        |
//! |-----------------------------|----------|---------------------------------------------|
//! | `ConnectFailed`, `NoServers`| `08001`  | sqlclient_unable_to_establish_sqlconnection |
//! | `ConnectionLost`            | `08006`  | connection_failure                          |
//! | `Timeout`                   | `57014`  | query_canceled                              |
//! | `Interrupted`               | `57014`  | query_canceled (PostgreSQL's own cancel error is raised first) |
//! | `Server`                    | `58000`  | system_error                                |
//! | `JobFailed`, `JobException` | `38000`  | external_routine_exception                  |
//! | `Protocol`                  | `08P01`  | protocol_violation                          |
//! | `InvalidArgument`           | `22023`  | invalid_parameter_value                     |
//! | `ResultTooLarge`            | `54000`  | program_limit_exceeded                      |
//!
//! `gearman.on_error = warning` turns each into a WARNING with the same
//! message, detail and hint, and the function returns NULL.

use crate::gucs::{self, OnError};
use gearman_core::{Error, ErrorKind};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// A failure ready to be reported to the client.
#[derive(Debug, Clone)]
pub struct GmError {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl GmError {
    /// A new error with a message and no detail or hint.
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> GmError {
        GmError {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// Invalid SQL-level input (`22023`).
    pub fn invalid(message: impl Into<String>) -> GmError {
        GmError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
    }

    pub fn detail(mut self, d: impl Into<String>) -> GmError {
        self.detail = Some(d.into());
        self
    }

    pub fn hint(mut self, h: impl Into<String>) -> GmError {
        self.hint = Some(h.into());
        self
    }

    /// Maps a core error for a call of `function` against `servers`.
    pub fn from_core(err: &Error, function: &str, servers: &str) -> GmError {
        let server = err.server().unwrap_or(servers).to_string();
        let detail = format!("server: {server}, function: {function}");
        let (code, hint) = match err.kind() {
            ErrorKind::InvalidArgument if err.is_tls() => (
                PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
                "Set gearman.tls_ca_file (PEM CA bundle; empty: the system's roots), \
                 gearman.tls_cert_file and gearman.tls_key_file (client certificate and its \
                 unencrypted key, both or neither) to files the PostgreSQL server's \
                 operating-system user can read (superuser only)."
                    .to_string(),
            ),
            ErrorKind::ConnectFailed | ErrorKind::Timeout | ErrorKind::ConnectionLost
                if err.is_tls() =>
            {
                let (ca, cert, _) = gucs::tls_files();
                (
                    PgSqlErrorCode::ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                    format!(
                        "The tls:// job server was refused: nothing was sent to it. Check that \
                         the CA that issued its certificate is in {}, that the certificate \
                         names the host or IP address of the entry and is within its \
                         validity dates, that the port is a TLS port, and, for a server that \
                         requires a client certificate, gearman.tls_cert_file and \
                         gearman.tls_key_file ({}). Verification cannot be turned off.",
                        if ca.is_empty() {
                            "the system's roots (gearman.tls_ca_file is empty)".to_string()
                        } else {
                            format!("gearman.tls_ca_file ({ca})")
                        },
                        if cert.is_empty() {
                            "now empty"
                        } else {
                            "now set"
                        }
                    ),
                )
            }
            ErrorKind::ConnectFailed | ErrorKind::NoServers => (
                PgSqlErrorCode::ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                format!(
                    "Check that gearmand is running and reachable at {servers} \
                     (SHOW gearman.servers). Set gearman.on_error = 'warning' to get NULL \
                     instead of an error."
                ),
            ),
            ErrorKind::ConnectionLost => (
                PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
                "The job server closed the connection; the next call reconnects. \
                 A foreground job may still run on the server."
                    .to_string(),
            ),
            ErrorKind::Timeout => (
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
                format!(
                    "No result within gearman.timeout ({} ms) or the exchange timed out \
                     (connecting and failing over count against the same deadline). \
                     Check that a worker serves function \"{function}\" \
                     (SELECT * FROM gman_server_status()). A background job that timed out \
                     waiting for its confirmation may have been queued: retry it with a \
                     unique key, so that the retry coalesces instead of running twice.",
                    gucs::timeout_ms()
                ),
            ),
            ErrorKind::Interrupted => (
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
                "The wait was interrupted by a query cancel or statement_timeout.".to_string(),
            ),
            ErrorKind::Server { .. } => (
                PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
                "The job server refused the request; see its log.".to_string(),
            ),
            ErrorKind::JobFailed => (
                PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
                format!("The worker for function \"{function}\" reported that the job failed."),
            ),
            ErrorKind::JobException(_) => (
                PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
                format!("The worker for function \"{function}\" raised an exception."),
            ),
            ErrorKind::Protocol => (
                PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
                "The peer does not speak the Gearman protocol: check the port in gearman.servers."
                    .to_string(),
            ),
            ErrorKind::InvalidArgument => (
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "Function names are 1 to {} bytes without control characters or \
                     whitespace; unique keys are at most 63 bytes without NUL bytes.",
                    gearman_core::MAX_FUNCTION
                ),
            ),
            ErrorKind::ResultTooLarge if err.message().contains("in all") => (
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                "All results of one gman_do_many or gman_sum call together are held up to \
                 1GB; split the call into smaller ones."
                    .to_string(),
            ),
            ErrorKind::ResultTooLarge => (
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "The worker's result for function \"{function}\" is larger than \
                     gearman.max_result_size ({} bytes); raise it (at most 1GB) if such \
                     results are expected.",
                    gucs::max_result_size()
                ),
            ),
            _ => (
                PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
                "See the job server's log.".to_string(),
            ),
        };
        let mut detail = detail;
        if let Some(data) = err.exception_data() {
            detail.push_str(&format!(", exception: {}", String::from_utf8_lossy(data)));
        }
        GmError {
            code,
            message: format!("gearman: {err}"),
            detail: Some(detail),
            hint: Some(hint),
        }
    }

    fn into_report(self) -> ErrorReport {
        let mut r = ErrorReport::new(self.code, self.message, "gearman");
        if let Some(d) = self.detail {
            r = r.set_detail(d);
        }
        if let Some(h) = self.hint {
            r = r.set_hint(h);
        }
        r
    }

    /// Raises this as an ERROR. Does not return.
    pub fn raise(self) -> ! {
        self.into_report().report(PgLogLevel::ERROR);
        unreachable!("ERROR reports do not return")
    }

    /// Emits this as a WARNING.
    pub fn warn(self) {
        self.into_report().report(PgLogLevel::WARNING);
    }

    /// Per `gearman.on_error`: raises (error) or warns and returns (warning).
    pub fn report(self) {
        match gucs::on_error() {
            OnError::Error => self.raise(),
            OnError::Warning => self.warn(),
        }
    }
}

/// Turns a result into the SQL value: `Ok(v)` is `Some(v)`; an error is
/// raised, or with `gearman.on_error = warning` reported as a WARNING and
/// returned as `None` (SQL NULL).
pub fn or_report<T>(r: Result<T, GmError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            e.report();
            None
        }
    }
}

/// If the core stopped because of a pending query cancel or
/// statement_timeout, lets PostgreSQL raise its own error for it now (the
/// core is no longer on the stack). Returns if there was nothing to raise.
pub fn process_pending_interrupts(err: &Error) {
    if err.is_interrupted() {
        pg_sys::check_for_interrupts!();
    }
}
