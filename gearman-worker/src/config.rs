//! The daemon's configuration: a TOML file (plus flags and environment)
//! turned into a validated [`Config`].
//!
//! Two stages, as in ripgrep: [`RawConfig`] mirrors the file one field per
//! key (serde, `deny_unknown_fields`, so a misspelt key is an error that names
//! it), then [`RawConfig::validate`] checks values and builds typed settings
//! (durations, server lists, database URLs). Every error message names the
//! key it is about, e.g. ``function.resize.timeout_ms: must be at most ...``.
//!
//! Precedence for the server list: `-s` flags, then the file's `servers`, then
//! the `GEARMAN_SERVERS` environment variable, then `127.0.0.1:4730`.
//! `worker.example.toml` beside this crate lists every key with its unit and
//! default.

use crate::db::DatabaseUrl;
use crate::logging::Level;
use gearman_core::ServerList;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default per-job timeout of `exec` functions: 300 s.
pub const DEFAULT_EXEC_TIMEOUT_MS: u64 = 300_000;
/// Default statement timeout of `sql` functions: 30 s.
pub const DEFAULT_SQL_TIMEOUT_MS: u64 = 30_000;
/// Default grace period for running jobs after SIGTERM: 30 s.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 30_000;
/// Default cap on one job's result (stdout of `exec`, rows of `sql`): 64 MiB,
/// gearmand's and the core's packet limit.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest accepted per-function concurrency.
pub const MAX_CONCURRENCY: u32 = 1024;
/// Largest accepted timeout: one day.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// The environment variable consulted when neither flags nor file give servers.
pub const SERVERS_ENV: &str = "GEARMAN_SERVERS";

/// A configuration error; the message names the key (or flag) at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    /// An error about `key` (a dotted path such as `function.x.concurrency`).
    pub fn key(key: &str, msg: impl fmt::Display) -> ConfigError {
        ConfigError {
            message: format!("{key}: {msg}"),
        }
    }

    /// An error with a free-form message.
    pub fn new(msg: impl Into<String>) -> ConfigError {
        ConfigError {
            message: msg.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// `servers` accepts a list of `host[:port]` strings or one comma-separated string.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RawServers {
    /// `servers = "a:4730,b:4730"`
    One(String),
    /// `servers = ["a:4730", "b"]`
    Many(Vec<String>),
}

/// The configuration file, key for key (stage one).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Job servers; see the module doc for precedence.
    pub servers: Option<RawServers>,
    /// Client id sent with SET_CLIENT_ID (shown by `gearadmin --workers`).
    pub client_id: Option<String>,
    /// `error`, `warn`, `info` (default), `debug`, `trace`.
    pub log_level: Option<String>,
    /// Milliseconds running jobs get to finish after SIGTERM (default 30000).
    pub shutdown_grace_ms: Option<u64>,
    /// Report failures that carry a message as WORK_EXCEPTION (default
    /// false: WORK_WARNING with the message, then WORK_FAIL).
    pub exceptions: Option<bool>,
    /// `HOST:PORT` serving `/metrics` and `/healthz` over HTTP (default: off).
    pub metrics_addr: Option<String>,
    /// `text` (default) or `json` (one object per line).
    pub log_format: Option<String>,
    /// CA bundle (PEM) that `tls://` servers are verified against (default:
    /// the system's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for `tls://` servers that ask for one
    /// (with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, unencrypted).
    pub tls_key_file: Option<PathBuf>,
    /// The functions served, by name.
    #[serde(default)]
    pub function: BTreeMap<String, RawFunction>,
}

/// One `[function.NAME]` table (stage one). Exactly one of `builtin`, `exec`
/// and `sql` picks the backend.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawFunction {
    /// Built-in handler: `echo`, `reverse` or `length`.
    pub builtin: Option<String>,
    /// Command line run per job: program and arguments (no shell).
    pub exec: Option<Vec<String>>,
    /// SQL statement run per job, the workload bound as its one parameter.
    pub sql: Option<String>,
    /// Jobs of this function run at once (default 1).
    pub concurrency: Option<u32>,
    /// Per-job timeout in milliseconds (exec default 300000, sql default 30000; 0 = none for exec).
    pub timeout_ms: Option<u64>,
    /// Largest result in bytes (default and most 67108864). Past it the job
    /// fails at once and the rest is discarded (exec: the command is killed).
    pub max_result_bytes: Option<u64>,
    /// exec: extra environment variables for the command.
    pub env: Option<BTreeMap<String, String>>,
    /// exec: start the command with an empty environment plus `env` (default false).
    pub clear_env: Option<bool>,
    /// exec: working directory (default: the daemon's).
    pub cwd: Option<PathBuf>,
    /// sql: `postgres://...` / `postgresql://...` or `mysql://...` / `mariadb://...`.
    pub database: Option<String>,
    /// sql: `first` (first column of the first row, default) or `json_lines`.
    pub rows: Option<String>,
    /// sql (PostgreSQL): type of `$1`: `text` (default) or `bytea`.
    pub param: Option<String>,
    /// Times a failed job is tried again (default 0; see `retry`).
    pub retries: Option<u32>,
    /// Back-off before the first retry, in milliseconds (default 1000).
    pub retry_backoff_ms: Option<u64>,
    /// Longest back-off, in milliseconds (default 300000).
    pub retry_backoff_max_ms: Option<u64>,
    /// Dead-letter table: `postgres://...` or `mysql://...` (default none).
    pub dead_letter: Option<String>,
    /// Dead-letter Gearman function (default none; not with `dead_letter`).
    pub dead_letter_function: Option<String>,
}

/// The validated configuration (stage two).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Job servers to register with.
    pub servers: ServerList,
    /// Client id; `None` sends none.
    pub client_id: Option<String>,
    /// Log level.
    pub log_level: Level,
    /// Time running jobs get after SIGTERM.
    pub shutdown_grace: Duration,
    /// Failures with a message go out as WORK_EXCEPTION instead of
    /// WORK_WARNING + WORK_FAIL (see `WorkerOptions::exceptions`).
    pub exceptions: bool,
    /// Where `/metrics` and `/healthz` are served; `None`: nowhere.
    pub metrics_addr: Option<String>,
    /// Log line format.
    pub log_format: crate::logging::LogFormat,
    /// TLS for `tls://` servers (files read and checked once).
    pub tls: crate::tls::TlsFiles,
    /// Functions, sorted by name.
    pub functions: Vec<FunctionSpec>,
}

/// One function to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    /// Gearman function name.
    pub name: String,
    /// Jobs run at once: one core worker (connection, thread) each.
    pub concurrency: u32,
    /// What runs a job.
    pub backend: Backend,
    /// Retries of failed jobs ([`crate::retry`]).
    pub retry: crate::retry::RetryPolicy,
    /// Where jobs that failed for good go ([`crate::deadletter`]).
    pub dead_letter: Option<DatabaseUrl>,
    /// Or the Gearman function that receives them as background jobs.
    pub dead_letter_function: Option<String>,
}

/// What runs a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// A built-in handler.
    Builtin(Builtin),
    /// A command per job.
    Exec(ExecSpec),
    /// A SQL statement per job.
    Sql(SqlSpec),
}

/// Built-in handlers, for tests and examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Result = workload.
    Echo,
    /// Result = workload reversed (by character when it is UTF-8, else by byte).
    Reverse,
    /// Result = workload length in bytes, as decimal text (for `gman_sum`).
    Length,
}

impl std::str::FromStr for Builtin {
    type Err = String;
    fn from_str(s: &str) -> Result<Builtin, String> {
        match s {
            "echo" => Ok(Builtin::Echo),
            "reverse" => Ok(Builtin::Reverse),
            "length" => Ok(Builtin::Length),
            other => Err(format!(
                "unknown built-in `{other}` (expected echo, reverse or length)"
            )),
        }
    }
}

/// A command run once per job: workload on stdin, stdout is the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// Program and arguments; `argv[0]` is looked up on PATH.
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Start from an empty environment.
    pub clear_env: bool,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Deadline per job; `None` = no limit.
    pub timeout: Option<Duration>,
    /// Largest accepted stdout, in bytes.
    pub max_result_bytes: u64,
}

/// How a `sql` function turns rows into the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsMode {
    /// First column of the first row; no rows or NULL = empty result.
    First,
    /// Every row as one JSON object per line (`{"column": value}`), `\n`-terminated.
    JsonLines,
}

/// Type of the statement's parameter (PostgreSQL; MySQL always binds bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// `$1` is `text`; the workload must be UTF-8.
    Text,
    /// `$1` is `bytea`; any workload.
    Bytea,
}

/// A SQL statement run once per job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlSpec {
    /// Database to run it in (one connection pool per URL).
    pub database: DatabaseUrl,
    /// The statement, with one placeholder (`$1` / `?`) for the workload.
    pub statement: String,
    /// Result shape.
    pub rows: RowsMode,
    /// Parameter type (PostgreSQL).
    pub param: ParamType,
    /// Statement timeout.
    pub timeout: Duration,
    /// Largest result in bytes.
    pub max_result_bytes: u64,
}

/// Reads and validates a configuration file. `servers_override` are `-s`
/// flags (they win over the file).
///
/// # Errors
/// The file cannot be read, is not valid TOML, has an unknown key, or a value
/// is out of range; the message names the file and the key.
pub fn load(path: &Path, servers_override: &[String]) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(format!("{}: cannot read: {e}", path.display())))?;
    let raw = parse_str(&text).map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))?;
    raw.validate(servers_override, std::env::var(SERVERS_ENV).ok().as_deref())
        .map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))
}

/// Parses TOML text into the raw (stage one) form.
///
/// # Errors
/// Syntax errors and unknown keys; the message carries line, column and key.
pub fn parse_str(text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str::<RawConfig>(text).map_err(|e| ConfigError::new(e.to_string().trim_end()))
}

/// Builds the server list from flags, file value, environment, or default.
///
/// # Errors
/// A malformed `host[:port]` entry; `key` names where it came from.
pub fn resolve_servers(
    flags: &[String],
    file: Option<&RawServers>,
    env: Option<&str>,
) -> Result<ServerList, ConfigError> {
    let (key, joined) = if !flags.is_empty() {
        ("-s/--server", flags.join(","))
    } else if let Some(f) = file {
        match f {
            RawServers::One(s) => ("servers", s.clone()),
            RawServers::Many(v) => ("servers", v.join(",")),
        }
    } else if let Some(e) = env.filter(|e| !e.trim().is_empty()) {
        (SERVERS_ENV, e.to_string())
    } else {
        return Ok(ServerList::default());
    };
    if joined.split(',').all(|s| s.trim().is_empty()) {
        return Err(ConfigError::key(key, "no server given"));
    }
    ServerList::parse(&joined).map_err(|e| ConfigError::key(key, e))
}

fn check_timeout(key: &str, ms: u64) -> Result<(), ConfigError> {
    if ms > MAX_TIMEOUT_MS {
        return Err(ConfigError::key(
            key,
            format!("{ms} ms is more than the maximum {MAX_TIMEOUT_MS} ms (one day)"),
        ));
    }
    Ok(())
}

/// The search path `execvp` uses when the environment has no `PATH` (an
/// `exec` function with `clear_env` and no `env.PATH`).
pub const EXECVP_DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Whether `program` names an executable file, found as `execvp` will find
/// it: a name with a slash is a path (relative to `cwd` when given, else to
/// ours), a bare name is looked up on `path` ([`EXECVP_DEFAULT_PATH`] when
/// `None`). The lookup is the `which` crate's.
pub fn program_exists(program: &str, path: Option<&str>, cwd: Option<&Path>) -> bool {
    let cwd = cwd.unwrap_or(Path::new("."));
    which::which_in(program, Some(path.unwrap_or(EXECVP_DEFAULT_PATH)), cwd).is_ok()
}

/// Checks a `HOST:PORT` listen address (`metrics_addr`, `--metrics-addr`);
/// returns it unchanged.
///
/// # Errors
/// No `:PORT`, or a port that is not a number up to 65535.
pub fn check_metrics_addr(addr: &str) -> Result<String, String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(addr.to_string())
        }
        _ => Err(format!("`{addr}` is not HOST:PORT (e.g. 127.0.0.1:9464)")),
    }
}

/// Checks a client id (SET_CLIENT_ID): non-empty, no whitespace or NUL, as
/// admin `workers` separates fields by spaces.
pub fn check_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.contains(|c: char| c == '\0' || c.is_whitespace()) {
        return Err("must be non-empty without spaces, newlines or NUL".into());
    }
    Ok(())
}

/// Checks a Gearman function name: 1 to 512 bytes, no control character or
/// whitespace (bytes 0x00 to 0x20 and 0x7f), as
/// [`gearman_core::validate_function_name`] checks it.
pub fn check_function_name(name: &str) -> Result<(), String> {
    gearman_core::validate_function_name(name.as_bytes()).map_err(|e| e.message().to_string())
}

impl RawConfig {
    /// Validates every key and builds the [`Config`].
    ///
    /// # Errors
    /// The first bad value, naming its key.
    pub fn validate(
        &self,
        servers_override: &[String],
        servers_env: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let servers = resolve_servers(servers_override, self.servers.as_ref(), servers_env)?;
        let log_level = match &self.log_level {
            Some(s) => {
                crate::logging::parse_level(s).map_err(|e| ConfigError::key("log_level", e))?
            }
            None => Level::Info,
        };
        let grace_ms = self.shutdown_grace_ms.unwrap_or(DEFAULT_SHUTDOWN_GRACE_MS);
        check_timeout("shutdown_grace_ms", grace_ms)?;
        if let Some(id) = &self.client_id {
            check_client_id(id).map_err(|e| ConfigError::key("client_id", e))?;
        }
        if self.function.is_empty() {
            return Err(ConfigError::key(
                "function",
                "no function configured (add a [function.NAME] table)",
            ));
        }
        let mut functions = Vec::new();
        for (name, f) in &self.function {
            functions.push(f.validate(name)?);
        }
        let tls = crate::tls::TlsFiles::load(
            self.tls_ca_file.as_deref(),
            self.tls_cert_file.as_deref(),
            self.tls_key_file.as_deref(),
            ["tls_ca_file", "tls_cert_file", "tls_key_file"],
        )?;
        Ok(Config {
            servers,
            client_id: self.client_id.clone(),
            log_level,
            shutdown_grace: Duration::from_millis(grace_ms),
            exceptions: self.exceptions.unwrap_or(false),
            metrics_addr: match &self.metrics_addr {
                Some(a) => {
                    Some(check_metrics_addr(a).map_err(|e| ConfigError::key("metrics_addr", e))?)
                }
                None => None,
            },
            log_format: match &self.log_format {
                Some(f) => f.parse().map_err(|e| ConfigError::key("log_format", e))?,
                None => crate::logging::LogFormat::Text,
            },
            tls,
            functions,
        })
    }
}

impl RawFunction {
    /// Validates one `[function.NAME]` table.
    ///
    /// # Errors
    /// The first bad value, naming `function.NAME.KEY`.
    pub fn validate(&self, name: &str) -> Result<FunctionSpec, ConfigError> {
        let key = |k: &str| format!("function.{name}.{k}");
        check_function_name(name).map_err(|e| ConfigError::key(&format!("function.{name}"), e))?;
        let concurrency = self.concurrency.unwrap_or(1);
        if concurrency == 0 || concurrency > MAX_CONCURRENCY {
            return Err(ConfigError::key(
                &key("concurrency"),
                format!("must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"),
            ));
        }
        let max_result_bytes = self.max_result_bytes.unwrap_or(DEFAULT_MAX_RESULT_BYTES);
        if max_result_bytes == 0 || max_result_bytes > DEFAULT_MAX_RESULT_BYTES {
            return Err(ConfigError::key(
                &key("max_result_bytes"),
                format!("must be between 1 and {DEFAULT_MAX_RESULT_BYTES}"),
            ));
        }
        if let Some(ms) = self.timeout_ms {
            check_timeout(&key("timeout_ms"), ms)?;
        }
        let chosen: Vec<&str> = [
            ("builtin", self.builtin.is_some()),
            ("exec", self.exec.is_some()),
            ("sql", self.sql.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        if chosen.len() != 1 {
            return Err(ConfigError::key(
                &format!("function.{name}"),
                format!(
                    "exactly one of `builtin`, `exec` or `sql` is required, found {}",
                    if chosen.is_empty() {
                        "none".to_string()
                    } else {
                        chosen.join(" and ")
                    }
                ),
            ));
        }
        // Keys that belong to another backend are errors, not silently ignored.
        let exec_keys = [
            ("env", self.env.is_some()),
            ("clear_env", self.clear_env.is_some()),
            ("cwd", self.cwd.is_some()),
        ];
        let sql_keys = [
            ("database", self.database.is_some()),
            ("rows", self.rows.is_some()),
            ("param", self.param.is_some()),
        ];
        let reject = |keys: &[(&str, bool)], backend: &str| -> Result<(), ConfigError> {
            match keys.iter().find(|(_, set)| *set) {
                Some((k, _)) => Err(ConfigError::key(
                    &key(k),
                    format!("not valid for a `{backend}` function"),
                )),
                None => Ok(()),
            }
        };
        let backend = if let Some(b) = &self.builtin {
            reject(&exec_keys, "builtin")?;
            reject(&sql_keys, "builtin")?;
            if self.timeout_ms.is_some() {
                return Err(ConfigError::key(
                    &key("timeout_ms"),
                    "not valid for a `builtin` function",
                ));
            }
            Backend::Builtin(
                b.parse()
                    .map_err(|e| ConfigError::key(&key("builtin"), e))?,
            )
        } else if let Some(argv) = &self.exec {
            reject(&sql_keys, "exec")?;
            if argv.is_empty() || argv[0].is_empty() {
                return Err(ConfigError::key(
                    &key("exec"),
                    "needs at least a program name",
                ));
            }
            if argv.iter().any(|a| a.contains('\0')) {
                return Err(ConfigError::key(&key("exec"), "contains a NUL byte"));
            }
            let env = self.env.clone().unwrap_or_default();
            if let Some(bad) = env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
                return Err(ConfigError::key(
                    &key("env"),
                    format!("invalid variable name `{bad}`"),
                ));
            }
            // The program must exist now, as it will be looked up per job:
            // on the PATH the command gets (`env`'s, else ours unless
            // clear_env), relative to `cwd` when it has a slash.
            let path = env.get("PATH").cloned().or_else(|| {
                (!self.clear_env.unwrap_or(false))
                    .then(|| std::env::var("PATH").ok())
                    .flatten()
            });
            if !program_exists(&argv[0], path.as_deref(), self.cwd.as_deref()) {
                return Err(ConfigError::key(
                    &key("exec"),
                    format!("program `{}` not found (or not executable)", argv[0]),
                ));
            }
            if let Some(cwd) = &self.cwd {
                if !cwd.is_dir() {
                    return Err(ConfigError::key(
                        &key("cwd"),
                        format!("`{}` is not a directory", cwd.display()),
                    ));
                }
            }
            let ms = self.timeout_ms.unwrap_or(DEFAULT_EXEC_TIMEOUT_MS);
            Backend::Exec(ExecSpec {
                argv: argv.clone(),
                env,
                clear_env: self.clear_env.unwrap_or(false),
                cwd: self.cwd.clone(),
                timeout: (ms > 0).then(|| Duration::from_millis(ms)),
                max_result_bytes,
            })
        } else {
            reject(&exec_keys, "sql")?;
            let statement = self.sql.clone().unwrap_or_default();
            if statement.trim().is_empty() {
                return Err(ConfigError::key(&key("sql"), "statement is empty"));
            }
            let url = self.database.as_deref().ok_or_else(|| {
                ConfigError::key(&key("database"), "required for a `sql` function")
            })?;
            let database =
                DatabaseUrl::parse(url).map_err(|e| ConfigError::key(&key("database"), e))?;
            let rows = match self.rows.as_deref() {
                None | Some("first") => RowsMode::First,
                Some("json_lines") => RowsMode::JsonLines,
                Some(other) => {
                    return Err(ConfigError::key(
                        &key("rows"),
                        format!("unknown value `{other}` (expected first or json_lines)"),
                    ))
                }
            };
            if self.param.is_some() && matches!(database, DatabaseUrl::Mysql(_)) {
                return Err(ConfigError::key(
                    &key("param"),
                    "only for PostgreSQL (the type of `$1`); MySQL binds the workload as bytes",
                ));
            }
            let param = match self.param.as_deref() {
                None | Some("text") => ParamType::Text,
                Some("bytea") => ParamType::Bytea,
                Some(other) => {
                    return Err(ConfigError::key(
                        &key("param"),
                        format!("unknown value `{other}` (expected text or bytea)"),
                    ))
                }
            };
            let ms = self.timeout_ms.unwrap_or(DEFAULT_SQL_TIMEOUT_MS);
            if ms == 0 {
                return Err(ConfigError::key(
                    &key("timeout_ms"),
                    "must be at least 1 for a `sql` function",
                ));
            }
            Backend::Sql(SqlSpec {
                database,
                statement,
                rows,
                param,
                timeout: Duration::from_millis(ms),
                max_result_bytes,
            })
        };
        let retry = self.retry_policy(name)?;
        let dead_letter = match &self.dead_letter {
            Some(u) => {
                Some(DatabaseUrl::parse(u).map_err(|e| ConfigError::key(&key("dead_letter"), e))?)
            }
            None => None,
        };
        if let Some(f) = &self.dead_letter_function {
            if dead_letter.is_some() {
                return Err(ConfigError::key(
                    &key("dead_letter_function"),
                    "give either dead_letter or dead_letter_function, not both",
                ));
            }
            check_function_name(f)
                .map_err(|e| ConfigError::key(&key("dead_letter_function"), e))?;
            if f == name {
                return Err(ConfigError::key(
                    &key("dead_letter_function"),
                    "must not be the function itself",
                ));
            }
        }
        Ok(FunctionSpec {
            name: name.to_string(),
            concurrency,
            backend,
            retry,
            dead_letter,
            dead_letter_function: self.dead_letter_function.clone(),
        })
    }

    /// `retries`, `retry_backoff_ms`, `retry_backoff_max_ms`.
    fn retry_policy(&self, name: &str) -> Result<crate::retry::RetryPolicy, ConfigError> {
        use crate::retry::{RetryPolicy, DEFAULT_BACKOFF_MAX_MS, DEFAULT_BACKOFF_MS, MAX_RETRIES};
        let key = |k: &str| format!("function.{name}.{k}");
        let retries = self.retries.unwrap_or(0);
        if retries > MAX_RETRIES {
            return Err(ConfigError::key(
                &key("retries"),
                format!("must be at most {MAX_RETRIES}, got {retries}"),
            ));
        }
        let backoff = self.retry_backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS);
        let max = self
            .retry_backoff_max_ms
            .unwrap_or(DEFAULT_BACKOFF_MAX_MS.max(backoff));
        check_timeout(&key("retry_backoff_ms"), backoff)?;
        check_timeout(&key("retry_backoff_max_ms"), max)?;
        if max < backoff {
            return Err(ConfigError::key(
                &key("retry_backoff_max_ms"),
                format!("is less than retry_backoff_ms ({max} < {backoff})"),
            ));
        }
        if retries == 0 && (self.retry_backoff_ms.is_some() || self.retry_backoff_max_ms.is_some())
        {
            return Err(ConfigError::key(
                &key("retries"),
                "retry_backoff_ms / retry_backoff_max_ms need retries = 1 or more",
            ));
        }
        Ok(RetryPolicy {
            retries,
            backoff: Duration::from_millis(backoff),
            backoff_max: Duration::from_millis(max),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(text: &str) -> Result<Config, ConfigError> {
        parse_str(text)?.validate(&[], None)
    }

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let c = validate("[function.echo]\nbuiltin = \"echo\"\n").unwrap();
        assert_eq!(c.servers.to_string(), "127.0.0.1:4730");
        assert_eq!(c.log_level, Level::Info);
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.client_id, None);
        assert!(!c.exceptions);
        assert_eq!(c.functions.len(), 1);
        assert_eq!(c.functions[0].concurrency, 1);
        assert_eq!(c.functions[0].backend, Backend::Builtin(Builtin::Echo));
    }

    #[test]
    fn exec_programs_must_exist_and_param_is_for_postgres_only() {
        let e = validate("[function.x]\nexec = [\"/no/such/prog\"]\n").unwrap_err();
        assert!(e.to_string().starts_with("function.x.exec:"), "{e}");
        let e = validate("[function.x]\nexec = [\"no-such-prog-xyz\"]\n").unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
        // Looked up on the command's own PATH when `env` sets one.
        let e = validate("[function.x]\nexec = [\"cat\"]\nenv = { PATH = \"/nonexistent\" }\n")
            .unwrap_err();
        assert!(e.to_string().contains("`cat` not found"), "{e}");
        assert!(validate("[function.x]\nexec = [\"cat\"]\n").is_ok());
        assert!(validate("[function.x]\nexec = [\"cat\"]\nclear_env = true\n").is_ok());
        assert!(validate("[function.x]\nexec = [\"./cat\"]\ncwd = \"/bin\"\n").is_ok());
        let e = validate(
            "[function.x]\nsql = \"SELECT ?\"\ndatabase = \"mysql://u@h/d\"\nparam = \"bytea\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("function.x.param:"), "{e}");
    }

    #[test]
    fn exceptions_key_is_read_and_typed() {
        let c = validate("exceptions = true\n[function.echo]\nbuiltin = \"echo\"\n").unwrap();
        assert!(c.exceptions);
        let e =
            validate("exceptions = \"yes\"\n[function.echo]\nbuiltin = \"echo\"\n").unwrap_err();
        assert!(e.to_string().contains("exceptions"), "{e}");
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let e = validate("serverz = \"x\"\n[function.echo]\nbuiltin = \"echo\"\n").unwrap_err();
        assert!(e.to_string().contains("serverz"), "{e}");
    }

    #[test]
    fn unknown_function_key_is_named() {
        let e = validate("[function.echo]\nbuiltin = \"echo\"\nconcurrrency = 2\n").unwrap_err();
        assert!(e.to_string().contains("concurrrency"), "{e}");
    }

    #[test]
    fn wrong_type_is_an_error_with_line() {
        let e =
            validate("[function.echo]\nbuiltin = \"echo\"\nconcurrency = \"two\"\n").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("line 3"), "{s}");
    }

    #[test]
    fn exactly_one_backend_is_required() {
        let e = validate("[function.f]\nconcurrency = 2\n").unwrap_err();
        assert!(e.to_string().contains("function.f: exactly one"), "{e}");
        let e = validate("[function.f]\nbuiltin = \"echo\"\nexec = [\"cat\"]\n").unwrap_err();
        assert!(e.to_string().contains("builtin and exec"), "{e}");
    }

    #[test]
    fn key_of_another_backend_is_rejected() {
        let e = validate("[function.f]\nbuiltin = \"echo\"\ncwd = \"/\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "function.f.cwd: not valid for a `builtin` function"
        );
        let e = validate("[function.f]\nexec = [\"cat\"]\nrows = \"first\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "function.f.rows: not valid for a `exec` function"
        );
    }

    #[test]
    fn concurrency_bounds() {
        let e = validate("[function.f]\nbuiltin = \"echo\"\nconcurrency = 0\n").unwrap_err();
        assert!(e.to_string().starts_with("function.f.concurrency:"), "{e}");
        let c = validate("[function.f]\nbuiltin = \"echo\"\nconcurrency = 8\n").unwrap();
        assert_eq!(c.functions[0].concurrency, 8);
    }

    #[test]
    fn exec_settings_are_parsed() {
        let c = validate(
            "[function.rev]\nexec = [\"rev\", \"-\"]\nenv = { A = \"1\" }\ncwd = \"/tmp\"\ntimeout_ms = 1500\n",
        )
        .unwrap();
        let Backend::Exec(e) = &c.functions[0].backend else {
            panic!("not exec: {:?}", c.functions[0].backend)
        };
        assert_eq!(e.argv, vec!["rev".to_string(), "-".to_string()]);
        assert_eq!(e.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(e.cwd.as_deref(), Some(Path::new("/tmp")));
        assert_eq!(e.timeout, Some(Duration::from_millis(1500)));
        assert!(!e.clear_env);
    }

    #[test]
    fn exec_timeout_defaults_and_zero_means_none() {
        let c = validate(
            "[function.a]\nexec = [\"cat\"]\n[function.b]\nexec = [\"cat\"]\ntimeout_ms = 0\n",
        )
        .unwrap();
        let Backend::Exec(a) = &c.functions[0].backend else {
            panic!()
        };
        let Backend::Exec(b) = &c.functions[1].backend else {
            panic!()
        };
        assert_eq!(
            a.timeout,
            Some(Duration::from_millis(DEFAULT_EXEC_TIMEOUT_MS))
        );
        assert_eq!(b.timeout, None);
    }

    #[test]
    fn exec_rejects_empty_argv_and_missing_cwd() {
        let e = validate("[function.f]\nexec = []\n").unwrap_err();
        assert!(e.to_string().starts_with("function.f.exec:"), "{e}");
        let e =
            validate("[function.f]\nexec = [\"cat\"]\ncwd = \"/does/not/exist\"\n").unwrap_err();
        assert!(e.to_string().starts_with("function.f.cwd:"), "{e}");
    }

    #[test]
    fn sql_needs_a_valid_database_url() {
        let e = validate("[function.q]\nsql = \"select $1\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "function.q.database: required for a `sql` function"
        );
        let e =
            validate("[function.q]\nsql = \"select $1\"\ndatabase = \"sqlite://x\"\n").unwrap_err();
        assert!(e.to_string().starts_with("function.q.database:"), "{e}");
        let c = validate(
            "[function.q]\nsql = \"select ?\"\ndatabase = \"mariadb://root@127.0.0.1:3307/test\"\nrows = \"json_lines\"\n",
        )
        .unwrap();
        let Backend::Sql(s) = &c.functions[0].backend else {
            panic!()
        };
        assert_eq!(
            s.database,
            DatabaseUrl::Mysql("mysql://root@127.0.0.1:3307/test".into())
        );
        assert_eq!(s.rows, RowsMode::JsonLines);
        assert_eq!(s.timeout, Duration::from_millis(DEFAULT_SQL_TIMEOUT_MS));
    }

    #[test]
    fn sql_rejects_unknown_rows_mode() {
        let e = validate(
            "[function.q]\nsql = \"select $1\"\ndatabase = \"postgres://u@h/db\"\nrows = \"all\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("function.q.rows:"), "{e}");
    }

    #[test]
    fn builtin_name_is_checked() {
        let e = validate("[function.f]\nbuiltin = \"upper\"\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("function.f.builtin: unknown built-in `upper`"),
            "{e}"
        );
    }

    #[test]
    fn no_functions_is_an_error() {
        let e = validate("log_level = \"debug\"\n").unwrap_err();
        assert!(e.to_string().starts_with("function:"), "{e}");
    }

    #[test]
    fn retry_keys_are_read_and_checked() {
        let f = "[function.f]\nbuiltin = \"echo\"\n";
        let c = validate(&format!(
            "{f}retries = 3\nretry_backoff_ms = 200\nretry_backoff_max_ms = 800\n"
        ))
        .unwrap();
        let r = c.functions[0].retry;
        assert_eq!(
            (r.retries, r.backoff.as_millis(), r.backoff_max.as_millis()),
            (3, 200, 800)
        );
        assert_eq!(validate(f).unwrap().functions[0].retry.retries, 0);
        let e = validate(&format!("{f}retries = 101\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("function.f.retries: must be at most 100"),
            "{e}"
        );
        let e = validate(&format!(
            "{f}retries = 1\nretry_backoff_ms = 900\nretry_backoff_max_ms = 100\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("function.f.retry_backoff_max_ms:"), "{e}");
        let c = validate(&format!("{f}dead_letter = \"mysql://u:pw@h/db\"\n")).unwrap();
        assert!(matches!(
            c.functions[0].dead_letter,
            Some(DatabaseUrl::Mysql(_))
        ));
        let e = validate(&format!("{f}dead_letter = \"redis://h\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("function.f.dead_letter: must start with"),
            "{e}"
        );
        let e = validate(&format!("{f}dead_letter_function = \"f\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("function.f.dead_letter_function: must not be"),
            "{e}"
        );
        let e = validate(&format!(
            "{f}dead_letter_function = \"g\"\ndead_letter = \"mysql://h/d\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("not both"), "{e}");
        let e = validate(&format!("{f}retry_backoff_ms = 900\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("function.f.retries:"), "{e}");
    }

    #[test]
    fn bad_log_level_is_named() {
        let e = validate("log_level = \"loud\"\n[function.f]\nbuiltin = \"echo\"\n").unwrap_err();
        assert!(e.to_string().starts_with("log_level:"), "{e}");
    }

    #[test]
    fn server_precedence_flags_file_env_default() {
        let file = RawServers::Many(vec!["a:1".into(), "b".into()]);
        let flags = vec!["f:9".to_string()];
        assert_eq!(
            resolve_servers(&flags, Some(&file), Some("e:7"))
                .unwrap()
                .to_string(),
            "f:9"
        );
        assert_eq!(
            resolve_servers(&[], Some(&file), Some("e:7"))
                .unwrap()
                .to_string(),
            "a:1,b:4730"
        );
        assert_eq!(
            resolve_servers(&[], None, Some("e:7")).unwrap().to_string(),
            "e:7"
        );
        assert_eq!(
            resolve_servers(&[], None, None).unwrap().to_string(),
            "127.0.0.1:4730"
        );
        let e =
            resolve_servers(&[], Some(&RawServers::One("h:notaport".into())), None).unwrap_err();
        assert!(e.to_string().starts_with("servers:"), "{e}");
    }

    #[test]
    fn programs_are_found_as_execvp_finds_them() {
        use std::os::unix::fs::PermissionsExt;
        // No PATH (clear_env): /bin:/usr/bin.
        assert!(program_exists("cat", None, None));
        assert!(!program_exists("cat", Some("/nonexistent"), None));
        assert!(program_exists("/bin/cat", Some("/nonexistent"), None));
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let dirs = dir.path().to_str().unwrap();
        // Not executable: not found, on PATH or by path.
        assert!(!program_exists("run.sh", Some(dirs), None));
        assert!(!program_exists("./run.sh", None, Some(dir.path())));
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(program_exists(
            "run.sh",
            Some(&format!("/nonexistent:{dirs}")),
            None
        ));
        // A name with a slash is relative to cwd, never looked up on PATH.
        assert!(program_exists("./run.sh", None, Some(dir.path())));
        assert!(!program_exists(
            "./run.sh",
            Some(dirs),
            Some(Path::new("/"))
        ));
        // A directory is not a program.
        assert!(!program_exists(dirs, None, None));
    }

    /// Writes `text` to a fresh file and loads it as the daemon does.
    fn load_text(name: &str, text: &str) -> Result<Config, ConfigError> {
        let path = std::env::temp_dir().join(format!(
            "gearman-worker-config-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        let r = load(&path, &[]);
        let _ = std::fs::remove_file(&path);
        r
    }

    /// Issue 10 item 6: a `servers` entry that is not `host[:port]` (an
    /// IPv6 address needs brackets) is refused at load, naming the entry.
    #[test]
    fn bad_servers_entry_is_refused_at_load_with_the_entry_named() {
        for bad in ["garbage:::", "a:b:c", "127.0.0.1:4731:", "host:", "::1"] {
            for servers in [
                format!("servers = \"good:4730,{bad}\"\n"),
                format!("servers = [\"good\", \"{bad}\"]\n"),
            ] {
                let text = format!("{servers}[function.echo]\nbuiltin = \"echo\"\n");
                let e = load_text("servers", &text).unwrap_err().to_string();
                assert!(e.contains("servers:"), "{bad}: {e}");
                assert!(
                    e.contains(&format!("{bad:?}")),
                    "{bad}: entry not named: {e}"
                );
            }
        }
        let c = load_text(
            "servers-ok",
            "servers = [\"[::1]:4731\", \"[::1]\", \"h:1\"]\n[function.echo]\nbuiltin = \"echo\"\n",
        )
        .unwrap();
        assert_eq!(c.servers.to_string(), "[::1]:4731,[::1]:4730,h:1");
    }

    /// Issue 10 item 10: a function name with a control character or
    /// whitespace is refused at load, naming the table.
    #[test]
    fn function_names_with_control_characters_or_whitespace_are_refused() {
        for (quoted, what) in [
            ("\"nl\\n.\\nx\"", "newline"),
            ("\"a b\"", "space"),
            ("\"tab\\tx\"", "tab"),
            ("\"del\\u007f\"", "0x7f"),
            ("\"bell\\u0007\"", "0x07"),
        ] {
            let text = format!("[function.{quoted}]\nbuiltin = \"echo\"\n");
            let e = load_text("fname", &text).unwrap_err().to_string();
            assert!(e.contains("function."), "{quoted}: {e}");
            assert!(e.contains(what), "{quoted}: {e}");
        }
        assert!(check_function_name("ok.name-1").is_ok());
    }

    #[test]
    fn example_file_is_valid() {
        let text = include_str!("../worker.example.toml");
        let raw = parse_str(text).unwrap();
        raw.validate(&[], None).unwrap();
    }
}
