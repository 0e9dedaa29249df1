//! The configuration file, read once when the library is first used in a
//! server process.
//!
//! Path: `$GEARMAN_UDF_CONFIG` if set (non-empty), else
//! `/etc/mysql/gearman-udf.toml`. A missing file at the default path means
//! "all defaults"; a missing file named by `GEARMAN_UDF_CONFIG`, or a file that
//! does not parse, is an error that every function then reports (the library
//! never falls back to defaults silently, which could unlock `gman_servers_set`
//! or send jobs to the wrong place).
//!
//! ```toml
//! servers = "127.0.0.1:4730"      # default job servers ("host[:port],...")
//! connect_timeout_ms = 2000       # one TCP connect, within the call's bound below
//! io_timeout_ms = 5000            # whole bound of a background call, gman_job_status(), gman_server_status()
//! foreground_timeout_ms = 30000   # whole bound of gman_do* and a gman_sum group; 0 = no bound on the result wait
//! allow_servers_set = false       # default: gman_servers_set() is refused (see below)
//! max_idle_connections = 64       # idle pooled clients kept, all server lists together
//! idle_timeout_ms = 60000         # an idle pooled client unused this long is closed
//! max_sum_rows = 100000           # rows one gman_sum group, elements one gman_do_many call may have
//! max_result_bytes = 16777216     # largest gman_do* result, gman_do_many output (bytes, 1 B to 1 GiB), see below
//! background_dispatch = "round_trip"  # or "pipelined", see below
//! dispatch_queue_jobs = 100000    # pipelined: most jobs waiting for the sender
//! dispatch_queue_bytes = 67108864 # pipelined: most bytes (function + workload + key) waiting
//! dispatch_linger_ms = 1          # pipelined: how long the sender lets a batch fill (0 to 1000)
//! tls_ca_file = ""                # PEM CA bundle for tls:// servers; "" = the system's roots
//! tls_cert_file = ""              # client certificate (PEM) for tls:// servers that require one
//! tls_key_file = ""               # its private key (PEM, unencrypted); both or neither
//!
//! [function_servers]              # per-function server lists
//! resize_image = "10.0.0.7:4730,10.0.0.8"
//! ```
//!
//! ## TLS: `tls://` servers
//!
//! A server entry `tls://host[:port]` (in `servers`, `[function_servers]`
//! and `gman_servers_set`) is reached over TLS (rustls; no OpenSSL is loaded
//! into mariadbd); `host[:port]` stays plaintext. The server's certificate
//! chain must lead to a CA of `tls_ca_file` (default: the system's roots,
//! `/etc/ssl/certs`), be within its validity dates, and name the entry's
//! host (DNS name) or IP address in its subject alternative names. None of
//! this can be turned off. `tls_cert_file` and `tls_key_file` give a client
//! certificate for servers that require one. The files are read once, when
//! this file is read, by the mariadbd process (user `mysql` must be able to
//! read them); a missing or unusable file makes the configuration unusable,
//! like any other error in this file, with a message naming the key and the
//! file. A server that fails verification, requires a client certificate
//! that is not configured, does not speak TLS, or stalls the handshake past
//! `connect_timeout_ms` fails the call like an unreachable server: NULL for
//! that row, one error-log line and `gman_last_error()` saying why (e.g.
//! `the server's certificate is not issued by a trusted CA ...`). Nothing is
//! ever sent to a `tls://` server in plaintext. The handshake is paid once
//! per pooled connection, not per call.
//!
//! ## Timeouts: one deadline per call
//!
//! Every `*_ms` key is in milliseconds, at most 86,400,000 (one day); a
//! larger value is refused when the file is read.
//!
//! Every call has one deadline from its start, and connecting, failing over
//! to the next server and waiting for replies all draw from it:
//! `foreground_timeout_ms` for `gman_do*`, a `gman_do_many` call (all its
//! jobs) and a `gman_sum` group (all its rows and server lists together), `io_timeout_ms` for a background
//! call (until JOB_CREATED, or until written in pipelined mode) and for the
//! walks of `gman_job_status()` and `gman_server_status()` over every
//! server and list (a server not reached in time is reported as an error
//! entry). Each TCP connect takes at most `connect_timeout_ms` of it; with
//! many unreachable servers the call ends at its deadline, not after one
//! connect timeout per server. A background call that timed out waiting
//! for JOB_CREATED may still have been queued: give such jobs a unique key
//! before retrying them. With `foreground_timeout_ms = 0` a foreground call
//! has no overall bound on its wait for the result (connecting and failing
//! over still end within `io_timeout_ms`).
//!
//! ## `max_result_bytes`
//!
//! The largest result a `gman_do*` call accepts: the WORK_DATA chunks and
//! the WORK_COMPLETE data of its job together, 16 MiB (16,777,216 bytes) by
//! default, MariaDB's largest UDF string result by default; at most 1 GiB
//! (`max_allowed_packet`'s limit). A job whose result grows past it fails
//! as soon as it does (the rest is read and dropped, never kept): that row
//! is NULL and `gman_last_error()` says `result of job H exceeded N bytes`.
//! It is also the result length the functions declare to the server.
//! `gman_do_many` accepts it per job, for all the results it gathers
//! together (the job whose result would cross it fails: `null` in its place,
//! named by `gman_last_error()`, and nothing more is held), and for its
//! whole output (the JSON array of all results): a longer output fails the
//! row.
//! `gman_sum` accepts at most [`SUM_RESULT_MAX`] bytes per row (an integer
//! as text), so a group holds at most `max_sum_rows` times that.
//!
//! ## Connection pool
//!
//! The library keeps the connections to the job servers open between calls,
//! in one pool shared by all sessions and all server lists (the default
//! list, per-function lists, lists set by `gman_servers_set`). Each call
//! uses one pooled client: it routes each job by its function through the
//! routing table and holds at most one connection per server, shared by
//! every list that names the server; it is returned to the pool afterwards.
//! Bounds:
//!
//! - idle: at most `max_idle_connections` idle clients (64), each with at
//!   most one connection per server of the routing table; returning a
//!   client to a full pool closes the least recently used idle one. A
//!   server named in many lists has one pooled connection per concurrent
//!   caller, not one per list; after `gman_servers_set` a pooled client
//!   keeps its connections to the servers some list still names.
//! - in use: one client per call running at that moment.
//! - time: an idle client unused for `idle_timeout_ms` (60 s) is closed at
//!   the next call of any session (there is no background thread).
//!   `max_idle_connections = 0` closes every client after its call.
//!
//! ## `allow_servers_set`
//!
//! `false` by default: `gman_servers_set()` then fails at `_init` (the
//! statement fails with `gman_servers_set is disabled: allow_servers_set =
//! false ...`) for every SQL user, root included, because UDFs need no
//! privilege and the server list it sets is process-wide: any user with
//! only USAGE could otherwise send every session's jobs, payloads included,
//! to a server of their choice. The server's administrator enables it by
//! writing `allow_servers_set = true` here (and restarting mariadbd or
//! reloading the library); the default server list and per-function lists
//! belong in this file (`servers`, `[function_servers]`) either way.
//!
//! ## `background_dispatch`
//!
//! How `gman_do_background`, `gman_do_high_background`,
//! `gman_do_low_background` and `gman_do_background_at` (`gman_do_epoch`)
//! hand their job to gearmand.
//! Read once when the library loads, like every setting here (restart
//! mariadbd to change it).
//!
//! - `"round_trip"` (the default): each call sends SUBMIT_JOB_BG and waits for
//!   gearmand's JOB_CREATED (one network round trip per row). The call
//!   returns the job handle (`H:host:n`); a refusal (e.g. `QUEUE_ERROR` from
//!   `maxqueue`) is that row's error: NULL for that row (see `gman_last_error()`).
//! - `"pipelined"`: each call hands its job to the library's one sender
//!   thread (per mariadbd process) and returns at once, without a socket
//!   call; the sender writes what is queued in pipelined batches (when
//!   1,000 jobs are queued or the oldest has waited `dispatch_linger_ms`,
//!   1 ms by default), one
//!   connection per job server shared by every session (client id
//!   `gearman-mysql-udf-dispatcher`), so triggers of many connections cost
//!   gearmand one write per batch instead of one per row. No job handle
//!   exists yet, so the call returns the job's unique key: the caller's,
//!   or a generated one (36 characters, UUID-shaped) when none was given;
//!   `gman_job_status()` accepts it. The sender's queue holds at most
//!   `dispatch_queue_jobs` jobs (100,000) and `dispatch_queue_bytes` bytes
//!   (64 MiB: function, workload and key lengths); when it is full a call
//!   waits for room at most `io_timeout_ms` and then fails its row (NULL,
//!   `gman_last_error()`: `dispatcher queue full: ...`). A call also fails
//!   its row for an invalid job. When no server of a job's list accepts a
//!   connection, its jobs wait in the queue (retried every 200 ms, each
//!   server with its connect back-off) and are written once one does: they
//!   are not dropped for their age, the queue fills, and then calls fail
//!   as above. The first job of each kind (background, scheduled) on each
//!   new sender connection is written alone and its confirmation awaited
//!   (within `io_timeout_ms`), so a server that ignores a packet type
//!   (Python `gear` ignores SUBMIT_JOB_EPOCH) is found out before anything
//!   is pipelined behind it; such a job is then of unknown fate. A job
//!   that gearmand refuses, or whose confirmation does not arrive within
//!   `io_timeout_ms` of its write or whose connection is lost first (fate
//!   unknown: it may have been queued; the connection is then closed), is
//!   reported by the sender: one error-log line per batch with the counts
//!   (`pipelined background dispatch: N jobs not confirmed; R refused ...;
//!   U of unknown fate ...`), and in `gman_last_error()` of the connection
//!   that submitted the job (only of that one; the last 16,384 submitters
//!   are remembered); the row that submitted it has already returned its
//!   key. `gman_dispatch_status()` shows the counts and the sender's queue.
//!   `DROP FUNCTION` of every UDF leaves the library loaded (it pins itself
//!   when the sender starts) and the sender running; at server shutdown
//!   the sender writes what it can of its queue within `io_timeout_ms`,
//!   logs what it could not (`pipelined dispatch stopped ...: ... never
//!   sent`), and is joined. What is queued or unconfirmed is lost if
//!   mariadbd crashes. Use it where throughput matters more than a per-row
//!   answer (bulk `SELECT`s, busy triggers), or use the outbox
//!   (`sql/mysql/outbox.sql`) where no job may be lost.
//!   Every pipelined job carries a unique key, and gearmand 1.1 looks unique
//!   keys up in hash tables of `--hashtable-buckets` buckets (991 by
//!   default): with hundreds of thousands of jobs queued, each submission
//!   costs gearmand noticeably more than one without a key; start gearmand
//!   with a larger `--hashtable-buckets` for such deep queues.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default path of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/mysql/gearman-udf.toml";
/// The environment variable that overrides [`DEFAULT_PATH`].
pub const ENV_VAR: &str = "GEARMAN_UDF_CONFIG";

/// Default connect timeout: 2 s.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Default I/O timeout of one exchange: 5 s.
pub const DEFAULT_IO_TIMEOUT_MS: u64 = 5_000;
/// Default bound of a foreground call (`gman_do*`, `gman_sum`): 30 s.
pub const DEFAULT_FOREGROUND_TIMEOUT_MS: u64 = 30_000;
/// Default number of idle pooled clients kept (all server lists together).
pub const DEFAULT_MAX_IDLE: usize = 64;
/// Default [`Config::max_result_bytes`]: 16 MiB.
pub const DEFAULT_MAX_RESULT: u64 = gearman_core::DEFAULT_MAX_RESULT as u64;
/// Largest `max_result_bytes`: 1 GiB.
pub const MAX_MAX_RESULT: u64 = 1 << 30;
/// Largest result of one `gman_sum` row's job (an integer as text).
pub const SUM_RESULT_MAX: usize = gearman_core::SUM_RESULT_MAX;
/// Default idle time after which a pooled client is closed: 60 s.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default cap on the rows one `gman_sum` group collects.
pub const DEFAULT_MAX_SUM_ROWS: usize = 100_000;

/// How background jobs are handed to gearmand (see the module docs).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackgroundDispatch {
    /// Wait for JOB_CREATED per call; return the job handle (default).
    #[default]
    RoundTrip,
    /// Write the submission and return the unique key; confirmations are
    /// collected later.
    Pipelined,
}

/// The parsed configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Default server list; `None` means `127.0.0.1:4730`.
    #[serde(default)]
    pub servers: Option<String>,
    /// Per-function server lists.
    #[serde(default)]
    pub function_servers: BTreeMap<String, String>,
    #[serde(default = "d_connect")]
    pub connect_timeout_ms: u64,
    #[serde(default = "d_io")]
    pub io_timeout_ms: u64,
    #[serde(default = "d_fg")]
    pub foreground_timeout_ms: u64,
    /// Whether `gman_servers_set()` may change the routing (default false).
    #[serde(default)]
    pub allow_servers_set: bool,
    /// Idle pooled clients kept, all server lists together (see the
    /// module docs, "Connection pool").
    #[serde(default = "d_idle")]
    pub max_idle_connections: usize,
    /// An idle pooled client unused for this long is closed (at the next
    /// call of any session).
    #[serde(default = "d_idle_timeout")]
    pub idle_timeout_ms: u64,
    #[serde(default = "d_sum_rows")]
    pub max_sum_rows: usize,
    /// Largest `gman_do*` result in bytes (see the module docs).
    #[serde(default = "d_max_result")]
    pub max_result_bytes: u64,
    /// `"round_trip"` (default) or `"pipelined"`.
    #[serde(default)]
    pub background_dispatch: BackgroundDispatch,
    /// Pipelined dispatch: most jobs in the sender's queue (1 to 10^7).
    #[serde(default = "d_queue_jobs")]
    pub dispatch_queue_jobs: u64,
    /// Pipelined dispatch: most bytes in the sender's queue (1 B to 1 GiB).
    #[serde(default = "d_queue_bytes")]
    pub dispatch_queue_bytes: u64,
    /// Pipelined dispatch: how long the sender lets a batch fill before
    /// writing it (0 to 1000 ms; a batch of 1,000 jobs goes at once).
    #[serde(default = "d_linger")]
    pub dispatch_linger_ms: u64,
    /// PEM CA bundle for `tls://` servers; empty: the system's roots.
    #[serde(default)]
    pub tls_ca_file: String,
    /// Client certificate (PEM) for `tls://` servers; empty: none.
    #[serde(default)]
    pub tls_cert_file: String,
    /// The client certificate's key (PEM, unencrypted); empty: none.
    #[serde(default)]
    pub tls_key_file: String,
}

/// Default [`Config::dispatch_linger_ms`]: 1 ms.
pub const DEFAULT_DISPATCH_LINGER_MS: u64 = 1;

fn d_linger() -> u64 {
    DEFAULT_DISPATCH_LINGER_MS
}

/// Default [`Config::dispatch_queue_jobs`].
pub const DEFAULT_DISPATCH_QUEUE_JOBS: u64 = 100_000;
/// Default [`Config::dispatch_queue_bytes`]: 64 MiB.
pub const DEFAULT_DISPATCH_QUEUE_BYTES: u64 = 64 << 20;

fn d_queue_jobs() -> u64 {
    DEFAULT_DISPATCH_QUEUE_JOBS
}
fn d_queue_bytes() -> u64 {
    DEFAULT_DISPATCH_QUEUE_BYTES
}

fn d_connect() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn d_io() -> u64 {
    DEFAULT_IO_TIMEOUT_MS
}
fn d_fg() -> u64 {
    DEFAULT_FOREGROUND_TIMEOUT_MS
}
fn d_idle() -> usize {
    DEFAULT_MAX_IDLE
}
fn d_idle_timeout() -> u64 {
    DEFAULT_IDLE_TIMEOUT_MS
}
fn d_max_result() -> u64 {
    DEFAULT_MAX_RESULT
}
fn d_sum_rows() -> usize {
    DEFAULT_MAX_SUM_ROWS
}

impl Default for Config {
    fn default() -> Self {
        Config {
            servers: None,
            function_servers: BTreeMap::new(),
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            io_timeout_ms: DEFAULT_IO_TIMEOUT_MS,
            foreground_timeout_ms: DEFAULT_FOREGROUND_TIMEOUT_MS,
            allow_servers_set: false,
            max_idle_connections: DEFAULT_MAX_IDLE,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            max_sum_rows: DEFAULT_MAX_SUM_ROWS,
            max_result_bytes: DEFAULT_MAX_RESULT,
            background_dispatch: BackgroundDispatch::RoundTrip,
            dispatch_queue_jobs: DEFAULT_DISPATCH_QUEUE_JOBS,
            dispatch_queue_bytes: DEFAULT_DISPATCH_QUEUE_BYTES,
            dispatch_linger_ms: DEFAULT_DISPATCH_LINGER_MS,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

/// Largest value of every `*_ms` key: one day.
pub const MAX_MS: u64 = 86_400_000;

impl Config {
    /// Parses the text of a configuration file.
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        if c.connect_timeout_ms == 0 || c.io_timeout_ms == 0 {
            return Err("connect_timeout_ms and io_timeout_ms must be > 0".into());
        }
        for (key, ms) in [
            ("connect_timeout_ms", c.connect_timeout_ms),
            ("io_timeout_ms", c.io_timeout_ms),
            ("foreground_timeout_ms", c.foreground_timeout_ms),
            ("idle_timeout_ms", c.idle_timeout_ms),
        ] {
            // A deadline is now + the setting: far larger values would
            // overflow Instant and fail every call.
            if ms > MAX_MS {
                return Err(format!(
                    "{key} = {ms} is out of range (at most {MAX_MS}, one day)"
                ));
            }
        }
        if c.max_result_bytes == 0 || c.max_result_bytes > MAX_MAX_RESULT {
            return Err(format!(
                "max_result_bytes = {} is out of range (1 to {MAX_MAX_RESULT})",
                c.max_result_bytes
            ));
        }
        if c.dispatch_queue_jobs == 0 || c.dispatch_queue_jobs > 10_000_000 {
            return Err(format!(
                "dispatch_queue_jobs = {} is out of range (1 to 10000000)",
                c.dispatch_queue_jobs
            ));
        }
        if c.dispatch_linger_ms > 1000 {
            return Err(format!(
                "dispatch_linger_ms = {} is out of range (0 to 1000)",
                c.dispatch_linger_ms
            ));
        }
        if c.dispatch_queue_bytes == 0 || c.dispatch_queue_bytes > MAX_MAX_RESULT {
            return Err(format!(
                "dispatch_queue_bytes = {} is out of range (1 to {MAX_MAX_RESULT})",
                c.dispatch_queue_bytes
            ));
        }
        Ok(c)
    }

    /// The TLS configuration of `tls_ca_file`, `tls_cert_file` and
    /// `tls_key_file`, read and checked now; `None` when all are empty.
    /// The error names the key and the file.
    pub fn tls(&self) -> Result<Option<gearman_core::TlsConfig>, String> {
        gearman_core::TlsConfig::from_settings(
            &self.tls_ca_file,
            &self.tls_cert_file,
            &self.tls_key_file,
        )
        .map_err(|e| {
            let msg = e.message();
            let keys: Vec<&str> = [
                ("tls_ca_file", &self.tls_ca_file),
                ("tls_cert_file", &self.tls_cert_file),
                ("tls_key_file", &self.tls_key_file),
            ]
            .into_iter()
            .filter(|(_, f)| !f.is_empty() && msg.contains(f.as_str()))
            .map(|(k, _)| k)
            .collect();
            if keys.is_empty() {
                format!("tls_ca_file/tls_cert_file/tls_key_file: {msg}")
            } else {
                format!("{}: {msg}", keys.join("/"))
            }
        })
    }

    /// The foreground bound, `None` when configured as 0 (unbounded).
    pub fn foreground_timeout(&self) -> Option<Duration> {
        (self.foreground_timeout_ms > 0).then(|| Duration::from_millis(self.foreground_timeout_ms))
    }

    /// Where the file is looked for, and whether its absence is an error.
    pub fn location() -> (PathBuf, bool) {
        match std::env::var_os(ENV_VAR) {
            Some(p) if !p.is_empty() => (PathBuf::from(p), true),
            _ => (PathBuf::from(DEFAULT_PATH), false),
        }
    }

    /// Reads the file at `path`. `required`: a missing file is an error.
    /// Returns the config and whether a file was read.
    pub fn load_from(path: &Path, required: bool) -> Result<(Config, bool), String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text)
                .map(|c| (c, true))
                .map_err(|e| format!("configuration file {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok((Config::default(), false))
            }
            Err(e) => Err(format!("configuration file {}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_queue_limits_are_checked() {
        let c = Config::parse("dispatch_queue_jobs = 10\ndispatch_queue_bytes = 4096").unwrap();
        assert_eq!((c.dispatch_queue_jobs, c.dispatch_queue_bytes), (10, 4096));
        for bad in [
            "dispatch_queue_jobs = 0",
            "dispatch_queue_jobs = 10000001",
            "dispatch_queue_bytes = 0",
            "dispatch_queue_bytes = 1073741825",
            "dispatch_linger_ms = 1001",
        ] {
            let e = Config::parse(bad).unwrap_err();
            assert!(e.contains("out of range"), "{bad}: {e}");
        }
    }

    #[test]
    fn tls_keys_are_read_and_a_bad_file_names_its_key() {
        let c = Config::parse("tls_ca_file = \"/nonexistent/ca.pem\"").unwrap();
        let e = c.tls().unwrap_err();
        assert!(e.starts_with("tls_ca_file: "), "{e}");
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let c = Config::parse("tls_key_file = \"/k.pem\"").unwrap();
        let e = c.tls().unwrap_err();
        assert!(
            e.starts_with("tls_key_file: ") && e.contains("without its certificate"),
            "{e}"
        );
        assert!(Config::default().tls().unwrap().is_none());
        assert!(Config::parse("tls_ca = \"x\"").is_err(), "unknown key");
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert_eq!(
            Config::default().foreground_timeout(),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn servers_set_is_off_unless_enabled() {
        assert!(!Config::default().allow_servers_set);
        assert!(!Config::parse("servers = \"a\"").unwrap().allow_servers_set);
        assert!(
            Config::parse("allow_servers_set = true")
                .unwrap()
                .allow_servers_set
        );
    }

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            "servers = \"a:1,b\"\nallow_servers_set = false\nforeground_timeout_ms = 0\n\
             [function_servers]\nf = \"c:3\"\n",
        )
        .unwrap();
        assert_eq!(c.servers.as_deref(), Some("a:1,b"));
        assert!(!c.allow_servers_set);
        assert_eq!(c.foreground_timeout(), None);
        assert_eq!(c.function_servers["f"], "c:3");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Config::parse("allow_server_set = false").is_err());
        assert!(Config::parse("connect_timeout_ms = 0").is_err());
        // Timeouts past one day would overflow a deadline (now + value).
        for key in [
            "connect_timeout_ms",
            "io_timeout_ms",
            "foreground_timeout_ms",
            "idle_timeout_ms",
        ] {
            let e = Config::parse(&format!("{key} = 9223372036854775807")).unwrap_err();
            assert!(e.contains(key) && e.contains("out of range"), "{e}");
            assert!(Config::parse(&format!("{key} = {MAX_MS}")).is_ok());
        }
        assert!(Config::parse("servers = 5").is_err());
        assert!(Config::parse("background_dispatch = \"later\"").is_err());
        assert!(Config::parse("max_result_bytes = 0").is_err());
        assert!(Config::parse("max_result_bytes = 1073741825").is_err());
        assert_eq!(
            Config::parse("max_result_bytes = 1024")
                .unwrap()
                .max_result_bytes,
            1024
        );
    }

    #[test]
    fn background_dispatch_defaults_to_round_trip() {
        assert_eq!(
            Config::default().background_dispatch,
            BackgroundDispatch::RoundTrip
        );
        assert_eq!(
            Config::parse("background_dispatch = \"round_trip\"")
                .unwrap()
                .background_dispatch,
            BackgroundDispatch::RoundTrip
        );
        assert_eq!(
            Config::parse("background_dispatch = \"pipelined\"")
                .unwrap()
                .background_dispatch,
            BackgroundDispatch::Pipelined
        );
    }

    #[test]
    fn missing_file_is_an_error_only_when_named() {
        let p = Path::new("/nonexistent/gearman-udf.toml");
        assert!(Config::load_from(p, true).is_err());
        assert!(!Config::load_from(p, false).unwrap().1);
    }
}
