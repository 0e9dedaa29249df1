//! Test harness for the project's integration tests.
//!
//! Servers: [`Gearmand`] (the C job server, always `/usr/sbin/gearmand` by
//! absolute path), the peer job servers [`PerlGearmand`] (Perl's
//! Gearman::Server, `/usr/bin/gearmand`) and [`GearServer`] (Python's
//! `gear`), [`Postgres`] and [`MariaDb`]; the TLS rig [`TlsRig`]
//! (certificates from [`TlsCerts`], a private `stunnel4` as [`Stunnel`] in
//! front of a private gearmand).
//!
//! Each server type is started privately: its own temporary directory, a free
//! loopback port, its own log, and it is killed when the handle is dropped.
//! Tests never use a default port (4730, 5432, 3306) or a server they did not
//! start. A missing server binary is a test failure that names the Debian
//! package to install (run `scripts/setup`), never a silent skip.

mod gearmand;
mod mariadb;
mod overlap;
mod peers;
mod postgres;
mod process;
pub mod raw;
mod tls;

pub use gearmand::{Gearmand, C_GEARMAND};
pub use mariadb::{install_file, MariaDb, MariaDbOptions};
pub use overlap::Overlap;
pub use peers::{GearServer, PerlGearmand, GEAR_VENV, PERL_GEARMAND};
pub use postgres::Postgres;
/// `bin` directory, environment variable and `pg_config` of the PostgreSQL the tests use.
pub mod pg {
    pub use crate::postgres::{bin_dir, pg_binary, pg_config, BINDIR_ENV};
}
pub use process::{cpu_seconds, free_port, wait_for_port, BlackHole, DeadPort};
pub use tls::{Stunnel, TlsCerts, TlsRig, TlsService, STUNNEL};
