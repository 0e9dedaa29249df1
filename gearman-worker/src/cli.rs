//! Command-line flags (the raw, low-level form), turned into a run plan.
//!
//! ```text
//! gearman-worker -s HOST[:PORT] [-s ...] -f NAME [-f ...] [-n N] -- COMMAND [ARGS...]   quick mode
//! gearman-worker --config worker.toml [--check-config]                                  daemon mode
//! gearman-worker relay [--postgres URL] [--mysql URL] [-s HOST[:PORT]]                  outbox relay
//! ```

use crate::config::{
    self, Backend, Config, ConfigError, ExecSpec, FunctionSpec, DEFAULT_EXEC_TIMEOUT_MS,
    DEFAULT_MAX_RESULT_BYTES, DEFAULT_SHUTDOWN_GRACE_MS, MAX_CONCURRENCY, SERVERS_ENV,
};
use crate::logging::Level;
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Companion Gearman worker: serves functions by running commands, SQL
/// statements or built-ins, and relays database outbox tables to gearmand.
#[derive(Debug, Parser)]
#[command(
    name = "gearman-worker",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Exit status: 0 success (also after a graceful SIGTERM), 1 runtime failure or \
                  forced stop, 2 usage or configuration error.\n\
                  Servers: -s flags, else the config file's `servers`, else GEARMAN_SERVERS, \
                  else 127.0.0.1:4730."
)]
pub struct Cli {
    /// Job server `host[:port]` (port 4730 by default); repeat or comma-separate for several.
    #[arg(
        short = 's',
        long = "server",
        value_name = "HOST[:PORT]",
        global = true
    )]
    pub servers: Vec<String>,

    /// CA bundle (PEM) that `tls://` job servers are verified against
    /// (default: the system's roots). Any --tls-* flag replaces the file's
    /// tls_* keys.
    #[arg(long = "tls-ca", value_name = "FILE", global = true)]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for `tls://` job servers that ask for one
    /// (with --tls-key).
    #[arg(long = "tls-cert", value_name = "FILE", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM, unencrypted).
    #[arg(long = "tls-key", value_name = "FILE", global = true)]
    pub tls_key: Option<PathBuf>,

    /// Quick mode: function name to serve with COMMAND (repeatable).
    #[arg(short = 'f', long = "function", value_name = "NAME")]
    pub functions: Vec<String>,

    /// Daemon mode: TOML configuration file (see worker.example.toml).
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        conflicts_with = "functions"
    )]
    pub config: Option<PathBuf>,

    /// Validate the configuration file, print a summary and exit (0 valid, 2 invalid).
    #[arg(long, requires = "config")]
    pub check_config: bool,

    /// Quick mode: jobs run at once per function.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 1)]
    pub concurrency: u32,

    /// Quick mode: per-job timeout in milliseconds (0 = none).
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_EXEC_TIMEOUT_MS)]
    pub timeout_ms: u64,

    /// Client id sent to the job servers (overrides the file's `client_id`).
    #[arg(short = 'i', long, value_name = "ID", global = true)]
    pub client_id: Option<String>,

    /// Log level: error, warn, info, debug, trace (overrides the file's `log_level`).
    #[arg(long, value_name = "LEVEL", global = true, value_parser = crate::logging::parse_level)]
    pub log_level: Option<Level>,

    /// Shorthand for --log-level debug.
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,

    /// Quick mode: grace period for running jobs after SIGTERM, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,

    /// Report a failing job's message (a command's stderr, an SQL error) as
    /// WORK_EXCEPTION instead of WORK_WARNING + WORK_FAIL. Only for clients
    /// that all ask for exceptions: gearmand's conversion for the others
    /// leaves libgearman 1.1 clients (Debian's `gearman`) waiting.
    #[arg(long, global = true)]
    pub exceptions: bool,

    /// Serve `/metrics` (Prometheus) and `/healthz` over HTTP on HOST:PORT
    /// (overrides the file's `metrics_addr`; default off).
    #[arg(long, value_name = "HOST:PORT", global = true)]
    pub metrics_addr: Option<String>,

    /// Log line format: `text` or `json` (one object per line; overrides
    /// the file's `log_format`).
    #[arg(long, value_name = "FORMAT", global = true)]
    pub log_format: Option<crate::logging::LogFormat>,

    /// Quick mode: the command run per job (workload on stdin, stdout is the result).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,

    /// Subcommand.
    #[command(subcommand)]
    pub sub: Option<Sub>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Drain outbox tables (PostgreSQL `gearman.outbox`, MySQL `gearman_outbox`) into gearmand.
    Relay(RelayArgs),
    /// List, replay or purge the dead-letter table (`gearman.dead_letter` / `gearman_dead_letter`).
    #[command(name = "dead-letter")]
    DeadLetter(DeadLetterArgs),
}

/// `gearman-worker dead-letter ACTION`.
#[derive(Debug, Clone, Args)]
pub struct DeadLetterArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: DeadLetterAction,
}

/// The dead-letter actions.
#[derive(Debug, Clone, Subcommand)]
pub enum DeadLetterAction {
    /// Print the rows, one per line (tab-separated: id, function, attempts,
    /// first and last failure, unique key, workload size, last error).
    List(DeadLetterFilter),
    /// Resubmit the rows as background jobs; each row is deleted only after
    /// the job server confirmed its job.
    Replay(DeadLetterFilter),
    /// Delete the rows.
    Purge(DeadLetterFilter),
}

/// Which table and rows.
#[derive(Debug, Clone, Args)]
pub struct DeadLetterFilter {
    /// PostgreSQL database holding `gearman.dead_letter`.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "mysql",
        required_unless_present = "mysql"
    )]
    pub postgres: Option<String>,
    /// MySQL/MariaDB database holding `gearman_dead_letter`.
    #[arg(long, value_name = "URL")]
    pub mysql: Option<String>,
    /// Only rows of this function.
    #[arg(short = 'f', long, value_name = "NAME")]
    pub function: Option<String>,
    /// Only this row id (repeatable).
    #[arg(long, value_name = "ID")]
    pub id: Vec<i64>,
}

/// Flags of `gearman-worker relay`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// PostgreSQL URL whose `gearman.outbox` table is drained (LISTEN gearman_outbox + polling).
    #[arg(long, value_name = "URL")]
    pub postgres: Vec<String>,

    /// MySQL/MariaDB URL whose `gearman_outbox` table is drained (polling).
    #[arg(long, value_name = "URL")]
    pub mysql: Vec<String>,

    /// Polling interval in milliseconds (MySQL always; PostgreSQL between notifications).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub poll_interval_ms: u64,

    /// Rows fetched, submitted (pipelined) and deleted per transaction.
    #[arg(long, value_name = "ROWS", default_value_t = 100)]
    pub batch_size: u32,

    /// ERROR answers from the job servers after which a row is set aside
    /// (failed_at set; lost connections and timeouts do not count; a row that
    /// cannot be sent at all is set aside at once). At least 1.
    #[arg(
        long,
        value_name = "N",
        default_value_t = crate::relay::DEFAULT_MAX_ATTEMPTS,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_attempts: u32,
}

impl Cli {
    /// The effective log level: `--log-level`, else `-v` (debug), else `file`.
    pub fn effective_level(&self, file: Level) -> Level {
        match (self.log_level, self.verbose) {
            (Some(l), _) => l,
            (None, true) => Level::Debug,
            (None, false) => file,
        }
    }

    /// The TLS files from `--tls-ca`, `--tls-cert`, `--tls-key`, read and
    /// checked; `None` when no such flag is given.
    ///
    /// # Errors
    /// A bad file, naming the flag and the file.
    pub fn tls_override(&self) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
        if self.tls_ca.is_none() && self.tls_cert.is_none() && self.tls_key.is_none() {
            return Ok(None);
        }
        crate::tls::TlsFiles::load(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            ["--tls-ca", "--tls-cert", "--tls-key"],
        )
        .map(Some)
    }

    /// [`Cli::apply_overrides`], and the TLS files of the flags (from
    /// [`Cli::tls_override`]) in place of the file's.
    pub fn apply_overrides_with_tls(
        &self,
        cfg: Config,
        tls: Option<&crate::tls::TlsFiles>,
    ) -> Config {
        let mut cfg = self.apply_overrides(cfg);
        if let Some(t) = tls {
            cfg.tls = t.clone();
        }
        cfg
    }

    /// Checks the flags every mode shares (`--client-id`).
    ///
    /// # Errors
    /// The bad flag, named.
    pub fn check_common(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.client_id {
            config::check_client_id(id).map_err(|e| ConfigError::key("-i/--client-id", e))?;
        }
        if let Some(a) = &self.metrics_addr {
            config::check_metrics_addr(a).map_err(|e| ConfigError::key("--metrics-addr", e))?;
        }
        Ok(())
    }

    /// The quick-mode configuration built from flags.
    ///
    /// # Errors
    /// No function, no command, a bad server or out-of-range number; the
    /// message names the flag.
    pub fn quick_config(&self) -> Result<Config, ConfigError> {
        if self.functions.is_empty() {
            return Err(ConfigError::new(
                "nothing to do: give -f NAME -- COMMAND (quick mode), --config FILE (daemon mode) \
                 or `relay` (see --help)",
            ));
        }
        if self.command.is_empty() {
            return Err(ConfigError::key(
                "COMMAND",
                "quick mode needs a command after `--`, e.g. `-f reverse -- rev`",
            ));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(ConfigError::key(
                "-n/--concurrency",
                format!("must be between 1 and {MAX_CONCURRENCY}"),
            ));
        }
        if self.timeout_ms > config::MAX_TIMEOUT_MS {
            return Err(ConfigError::key("--timeout-ms", "more than one day"));
        }
        if !config::program_exists(
            &self.command[0],
            std::env::var("PATH").ok().as_deref(),
            None,
        ) {
            return Err(ConfigError::key(
                "COMMAND",
                format!(
                    "program `{}` not found (or not executable)",
                    self.command[0]
                ),
            ));
        }

        let servers = config::resolve_servers(
            &self.servers,
            None,
            std::env::var(SERVERS_ENV).ok().as_deref(),
        )?;
        let mut functions = Vec::new();
        for name in &self.functions {
            config::check_function_name(name).map_err(|e| ConfigError::key("-f/--function", e))?;
            functions.push(FunctionSpec {
                name: name.clone(),
                concurrency: self.concurrency,
                backend: Backend::Exec(ExecSpec {
                    argv: self.command.clone(),
                    env: BTreeMap::new(),
                    clear_env: false,
                    cwd: None,
                    timeout: (self.timeout_ms > 0).then(|| Duration::from_millis(self.timeout_ms)),
                    max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
                }),
                retry: crate::retry::RetryPolicy::default(),
                dead_letter: None,
                dead_letter_function: None,
            });
        }
        Ok(Config {
            servers,
            client_id: self.client_id.clone(),
            log_level: self.effective_level(Level::Info),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            exceptions: self.exceptions,
            metrics_addr: self.metrics_addr.clone(),
            log_format: self.log_format.unwrap_or_default(),
            tls: self.tls_override()?.unwrap_or_default(),
            functions,
        })
    }

    /// Applies flag overrides (`--client-id`, `--log-level`, `-v`,
    /// `--exceptions`, `--metrics-addr`, `--log-format`) to a file
    /// configuration.
    pub fn apply_overrides(&self, mut cfg: Config) -> Config {
        if self.client_id.is_some() {
            cfg.client_id = self.client_id.clone();
        }
        cfg.log_level = self.effective_level(cfg.log_level);
        cfg.exceptions |= self.exceptions;
        if self.metrics_addr.is_some() {
            cfg.metrics_addr = self.metrics_addr.clone();
        }
        if let Some(f) = self.log_format {
            cfg.log_format = f;
        }
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("gearman-worker").chain(args.iter().copied()))
    }

    #[test]
    fn quick_mode_flags_and_command() {
        let cli = parse(&[
            "-s",
            "127.0.0.1:4731",
            "-s",
            "h2",
            "-f",
            "reverse",
            "--",
            "rev",
            "-x",
        ])
        .unwrap();
        let cfg = cli.quick_config().unwrap();
        assert_eq!(cfg.servers.to_string(), "127.0.0.1:4731,h2:4730");
        assert_eq!(cfg.functions.len(), 1);
        let Backend::Exec(e) = &cfg.functions[0].backend else {
            panic!()
        };
        assert_eq!(e.argv, ["rev", "-x"]);
        assert_eq!(
            e.timeout,
            Some(Duration::from_millis(DEFAULT_EXEC_TIMEOUT_MS))
        );
    }

    #[test]
    fn exceptions_flag_reaches_both_modes() {
        let quick = parse(&["--exceptions", "-f", "a", "--", "cat"]).unwrap();
        assert!(quick.quick_config().unwrap().exceptions);
        let plain = parse(&["-f", "a", "--", "cat"]).unwrap();
        assert!(!plain.quick_config().unwrap().exceptions);
        // The flag turns a file's `exceptions = false` on; without it the
        // file's value stays.
        let file = plain.quick_config().unwrap();
        let daemon = parse(&["--config", "w.toml", "--exceptions"]).unwrap();
        assert!(daemon.apply_overrides(file.clone()).exceptions);
        let daemon = parse(&["--config", "w.toml"]).unwrap();
        assert!(!daemon.apply_overrides(file).exceptions);
    }

    #[test]
    fn a_missing_program_and_a_client_id_with_spaces_are_usage_errors() {
        let e = parse(&["-f", "a", "--", "/no/such/program"])
            .unwrap()
            .quick_config()
            .unwrap_err();
        assert!(
            e.to_string().contains("`/no/such/program` not found"),
            "{e}"
        );
        let e = parse(&["-i", "a b", "-f", "a", "--", "cat"])
            .unwrap()
            .check_common()
            .unwrap_err();
        assert!(e.to_string().starts_with("-i/--client-id:"), "{e}");
        assert!(parse(&["-i", "ab", "-f", "a", "--", "cat"])
            .unwrap()
            .check_common()
            .is_ok());
    }

    #[test]
    fn quick_mode_without_command_is_an_error() {
        let cli = parse(&["-f", "reverse"]).unwrap();
        let e = cli.quick_config().unwrap_err();
        assert!(e.to_string().starts_with("COMMAND:"), "{e}");
    }

    #[test]
    fn no_mode_at_all_is_an_error() {
        let e = parse(&[]).unwrap().quick_config().unwrap_err();
        assert!(e.to_string().contains("nothing to do"), "{e}");
    }

    #[test]
    fn config_and_function_conflict() {
        assert!(parse(&["--config", "x.toml", "-f", "a", "--", "cat"]).is_err());
    }

    #[test]
    fn check_config_requires_config() {
        assert!(parse(&["--check-config"]).is_err());
        let cli = parse(&["--config", "w.toml", "--check-config"]).unwrap();
        assert!(cli.check_config);
    }

    #[test]
    fn relay_subcommand() {
        let cli = parse(&[
            "relay",
            "--postgres",
            "postgres://u@h/db",
            "--mysql",
            "mysql://u@h/db",
            "-s",
            "127.0.0.1:4999",
            "--poll-interval-ms",
            "250",
        ])
        .unwrap();
        let Some(Sub::Relay(r)) = &cli.sub else {
            panic!("{cli:?}")
        };
        assert_eq!(r.postgres, ["postgres://u@h/db"]);
        assert_eq!(r.mysql, ["mysql://u@h/db"]);
        assert_eq!(r.poll_interval_ms, 250);
        assert_eq!(r.batch_size, 100);
        assert_eq!(cli.servers, ["127.0.0.1:4999"]);
    }

    #[test]
    fn log_level_flags() {
        let cli = parse(&["-v", "-f", "x", "--", "cat"]).unwrap();
        assert_eq!(cli.effective_level(Level::Warn), Level::Debug);
        let cli = parse(&["--log-level", "warn", "-v", "-f", "x", "--", "cat"]).unwrap();
        assert_eq!(cli.effective_level(Level::Info), Level::Warn);
        assert!(parse(&["--log-level", "loud"]).is_err());
    }

    #[test]
    fn zero_concurrency_is_rejected() {
        let cli = parse(&["-n", "0", "-f", "x", "--", "cat"]).unwrap();
        assert!(cli
            .quick_config()
            .unwrap_err()
            .to_string()
            .starts_with("-n/--concurrency"));
    }
}
