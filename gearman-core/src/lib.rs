//! `gearman-core`: a blocking Gearman client, worker and admin library.
//!
//! It speaks the Gearman protocol as gearmand 1.1.20 implements it (see
//! `protocol.md` in the design docs) and knows nothing of any database. The
//! PostgreSQL extension, the MySQL UDF library and the companion worker are
//! thin layers over it.
//!
//! - [`proto`]: sans-IO codec for packets 1 to 42 and admin lines.
//! - [`Client`]: foreground/background jobs at three priorities, unique keys,
//!   scheduled jobs, status, concurrent task sets and pipelined submission,
//!   over several servers with health tracking and routing by unique key.
//!   Each job goes to its function's list in the client's [`Routing`] table
//!   (a default list and per-function lists), one connection per server
//!   shared by every list.
//! - The semantics both database crates share, in one place: the job
//!   validator ([`Job::from_args`]), unique keys ([`new_unique_key`]),
//!   status by handle or unique key across the table
//!   ([`Client::job_status`]), admin status of every server
//!   ([`Client::server_status`]), the concurrent sum ([`Client::sum`]), the
//!   deferred-dispatch ledger and its retry rule
//!   ([`Client::submit_background_deferred`]), and the one retry rule of
//!   errors ([`Error::retry`]).
//! - [`worker::Worker`]: register, grab, sleep/wake, report, reconnect, stop.
//! - [`Dispatcher`]: a sender thread that takes background jobs from any
//!   number of threads through a bounded in-memory queue and writes them
//!   pipelined, one connection per job server.
//! - [`admin::Admin`]: `status`, `workers`, `show jobs`, `maxqueue`, ...
//! - [`TlsConfig`]: `tls://host[:port]` servers are reached over TLS
//!   (rustls), the server verified (chain, dates, name) and never a byte
//!   sent in plaintext; no setting turns verification off.
//!
//! Every wait is bounded: each call has one deadline from its start
//! (foreground or exchange timeout, optionally an absolute
//! [`Options::deadline`]) that connecting, failing over and waiting draw
//! from, and an optional interrupt hook is called between waits of at most
//! 50 ms. What is taken from the wire is bounded too: packets
//! ([`Options::max_packet`]), job handles, names and keys (protocol errors
//! past their limits), and each foreground result ([`Options::max_result`]).

pub mod admin;
mod client;
mod conn;
pub mod dispatcher;
mod error;
pub mod handoff;
mod job;
pub mod proto;
mod routing;
mod servers;
mod tls;
pub mod worker;

pub use client::{
    Client, ClientStats, DeferredFailure, DeferredReport, DeferredWrite, KeyStatus, Options,
    DEFAULT_MAX_RESULT, SUM_RESULT_MAX,
};
pub use conn::{Connection, Interrupt};
pub use dispatcher::{Dispatcher, DispatcherOptions, DispatcherStats};
pub use error::{Error, ErrorKind, Result, Retry};
pub use job::{
    first_known, new_unique_key, new_unique_key_in, validate_function_name, Event, Job, JobHandle,
    JobStatus, Known, Priority, UniqueStatus, MAX_FUNCTION, MAX_UNIQUE,
};
pub use routing::Routing;
pub use servers::{Router, ServerAddr, ServerList, DEFAULT_PORT};
pub use tls::TlsConfig;
