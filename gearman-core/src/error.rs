//! The one error type of the crate, with a kind, its cause and the retry
//! rule every failover site asks ([`Error::retry`]).

use std::fmt;
use std::sync::Arc;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A deadline passed: connect, one exchange, or the whole foreground wait.
    Timeout,
    /// The host's interrupt hook asked to stop (e.g. PostgreSQL query cancel).
    Interrupted,
    /// No connection could be made to the server: TCP failed, or, for a
    /// `tls://` server, the TLS handshake or the server's certificate did
    /// not pass ([`Error::is_tls`] tells those apart).
    ConnectFailed,
    /// The connection broke (closed or reset) during an exchange. For a
    /// foreground job the job may still run on the server; its result is lost.
    ConnectionLost,
    /// The job server answered with an ERROR packet (protocol.md 4.7).
    Server {
        /// The code, e.g. `QUEUE_ERROR`.
        code: String,
        /// The server's text, e.g. `Job queue is full`.
        text: String,
    },
    /// The worker reported WORK_FAIL (or the server failed the job). The
    /// message ends with the job's last WORK_WARNING, if any: how this
    /// crate's [`Worker`](crate::worker::Worker) sends a failure's message
    /// by default.
    JobFailed,
    /// The worker reported WORK_EXCEPTION; the data is the worker's message.
    /// Only seen by clients that set the `exceptions` option, and only from
    /// workers that send WORK_EXCEPTION (this crate's `Worker` only with
    /// `WorkerOptions::exceptions`).
    JobException(Vec<u8>),
    /// The peer sent bytes that are not the Gearman protocol.
    Protocol,
    /// The caller passed something that cannot be sent (checked before any I/O).
    InvalidArgument,
    /// The server list is empty.
    NoServers,
    /// A foreground job's result (WORK_DATA chunks and WORK_COMPLETE data)
    /// grew past [`Options::max_result`](crate::Options::max_result). The
    /// rest of that job's data is discarded; the connection is closed once
    /// the call ends.
    ResultTooLarge,
    /// A worker's result that had to be an integer (see
    /// [`Client::sum`](crate::Client::sum)) is not one.
    NotAnInteger,
    /// A sum of results does not fit a signed 64-bit integer.
    Overflow,
}

/// What a caller may do after an error, per [`Error::retry`]. The one rule
/// of the crate: every failover and retry site asks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// This server could not be used (refused or failed connect, or it sent
    /// bytes that are not the protocol): try the next server of the list.
    NextServer,
    /// The connection broke (closed or reset) in an exchange: reconnect and
    /// try once more (on the same server if it takes the connection, else
    /// the next); a second break moves on to the next server. Work sent on
    /// the broken connection may have been done: repeat a job only where at
    /// least once is wanted (give it a unique key so a repeat coalesces).
    Reconnect,
    /// Trying again cannot help, or may do the work twice: a server's ERROR
    /// reply, a job's failure, a bad argument, a deadline or an interrupt.
    GiveUp,
}

/// An error from the Gearman core: a [`ErrorKind`], a message and, where
/// known, the server it concerns.
///
/// [`std::error::Error::source`] gives the operating system's error of a
/// refused, failed or reset connection, where there was one.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    server: Option<String>,
    source: Option<Arc<std::io::Error>>,
    tls: bool,
}

impl PartialEq for Error {
    /// Kind, message and server; the cause is not compared.
    fn eq(&self, other: &Error) -> bool {
        self.kind == other.kind && self.message == other.message && self.server == other.server
    }
}

impl Eq for Error {}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            server: None,
            source: None,
            tls: false,
        }
    }

    /// A TLS failure: a `tls://` server that could not be verified, refused
    /// the handshake, or does not speak TLS; or a TLS configuration that
    /// cannot be used. [`ErrorKind::ConnectFailed`] unless `kind` says
    /// otherwise; [`Error::is_tls`] is true.
    pub(crate) fn tls(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            tls: true,
            ..Error::new(kind, message)
        }
    }

    /// Attaches the operating system's error that caused this one (returned
    /// by [`std::error::Error::source`]).
    pub fn with_source(mut self, source: std::io::Error) -> Error {
        self.source = Some(Arc::new(source));
        self
    }

    /// The operating system's error that caused this one, if any.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        self.source.as_deref()
    }

    /// How to retry after this error: the one rule every failover site of
    /// this crate (and of the database crates) asks.
    ///
    /// - [`Retry::NextServer`] for [`ErrorKind::ConnectFailed`] and
    ///   [`ErrorKind::Protocol`];
    /// - [`Retry::Reconnect`] for [`ErrorKind::ConnectionLost`];
    /// - [`Retry::GiveUp`] for everything else (server ERROR replies, job
    ///   failures and exceptions, bad arguments, no servers, too large
    ///   results, timeouts, interrupts).
    pub fn retry(&self) -> Retry {
        match self.kind {
            ErrorKind::ConnectFailed | ErrorKind::Protocol => Retry::NextServer,
            ErrorKind::ConnectionLost => Retry::Reconnect,
            _ => Retry::GiveUp,
        }
    }

    /// The caller's interrupt hook asked to stop.
    pub fn interrupted(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Interrupted, message)
    }

    /// An argument that cannot be sent.
    pub fn invalid_argument(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Protocol, message)
    }

    pub(crate) fn timeout(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Timeout, message)
    }

    pub(crate) fn lost(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::ConnectionLost, message)
    }

    /// Attaches the server (`host:port`) the error concerns, unless one is set.
    pub fn at(mut self, server: impl fmt::Display) -> Error {
        if self.server.is_none() {
            self.server = Some(server.to_string());
        }
        self
    }

    /// The same error with `context: ` put before its message (e.g. the
    /// setting a TLS file came from); kind, server and TLS mark are kept.
    pub fn with_context(mut self, context: impl fmt::Display) -> Error {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The kind of error.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The message, without the server.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The server (`host:port`) the error concerns, if known.
    pub fn server(&self) -> Option<&str> {
        self.server.as_deref()
    }

    /// A deadline passed.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// Whether the error comes from TLS: a `tls://` server whose certificate
    /// did not verify (unknown CA, wrong name, expired), that refused the
    /// handshake (e.g. without a client certificate it requires), that does
    /// not speak TLS, or whose handshake stalled; or a TLS configuration
    /// that cannot be loaded ([`ErrorKind::InvalidArgument`]).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host's interrupt hook stopped the wait.
    pub fn is_interrupted(&self) -> bool {
        self.kind == ErrorKind::Interrupted
    }

    /// The connection broke during an exchange.
    pub fn is_connection_lost(&self) -> bool {
        self.kind == ErrorKind::ConnectionLost
    }

    /// The server answered with an ERROR packet.
    pub fn is_server_error(&self) -> bool {
        matches!(self.kind, ErrorKind::Server { .. })
    }

    /// Whether trying again (another server, or a new connection) may
    /// succeed: [`Error::retry`] is not [`Retry::GiveUp`].
    pub fn is_retryable(&self) -> bool {
        self.retry() != Retry::GiveUp
    }

    /// The worker's exception data, for [`ErrorKind::JobException`].
    pub fn exception_data(&self) -> Option<&[u8]> {
        match &self.kind {
            ErrorKind::JobException(d) => Some(d),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Server { code, text } => write!(f, "job server error {code}: {text}")?,
            _ => f.write_str(&self.message)?,
        }
        if let Some(s) = &self.server {
            write!(f, " (server {s})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
