#![warn(missing_docs)]
//! `gearman-worker`: the companion worker daemon and CLI of Gearman for SQL.
//!
//! Three uses of one binary:
//! - quick mode: `gearman-worker -s HOST[:PORT] -f NAME -- COMMAND ARGS...`
//!   runs COMMAND once per job (workload on stdin, stdout is the result);
//! - daemon mode: `gearman-worker --config worker.toml` serves many functions,
//!   each backed by a command ([`handlers::exec`]), a SQL statement
//!   ([`handlers::sql`]) or a built-in ([`handlers::builtin`]), with
//!   per-function concurrency; signals per [`daemon`];
//! - relay mode: `gearman-worker relay --postgres URL --mysql URL` drains the
//!   outbox tables into gearmand ([`relay`]).
//!
//! The library exists so the integration tests can use the internals; the
//! binary (`src/main.rs`) is a thin `main → run → exit code` wrapper.

pub mod logging;

pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod deadletter;
pub mod handlers;
pub mod metrics;
pub mod relay;
pub mod retry;
pub mod tls;

use clap::Parser;
use std::process::ExitCode;

/// Exit status: success (also after a graceful stop).
pub const EXIT_OK: u8 = 0;
/// Exit status: runtime failure, or stopped before running jobs finished.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// Parses the process arguments and runs; returns the exit status.
pub fn main_entry() -> ExitCode {
    logging::init();
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    ExitCode::from(run(cli))
}

fn usage_error(msg: impl std::fmt::Display) -> u8 {
    eprintln!("gearman-worker: error: {msg}");
    EXIT_USAGE
}

/// Runs the mode the flags select; returns the exit status.
pub fn run(cli: cli::Cli) -> u8 {
    if let Err(e) = cli.check_common() {
        return usage_error(e);
    }
    if let Some(f) = cli.log_format {
        logging::set_format(f);
    }
    // --tls-ca/--tls-cert/--tls-key, read once here (they replace the
    // file's tls_* keys as a whole, now and at every reload).
    let cli_tls = match cli.tls_override() {
        Ok(t) => t,
        Err(e) => return usage_error(e),
    };
    if let Some(t) = &cli_tls {
        tls::install(t);
    }
    if let Some(cli::Sub::DeadLetter(args)) = &cli.sub {
        return dead_letter_command(&cli, args);
    }
    if let Some(cli::Sub::Relay(args)) = &cli.sub {
        logging::set_level(cli.effective_level(logging::Level::Info));
        let servers = match config::resolve_servers(
            &cli.servers,
            None,
            std::env::var(config::SERVERS_ENV).ok().as_deref(),
        ) {
            Ok(s) => s,
            Err(e) => return usage_error(e),
        };
        if let Some(addr) = &cli.metrics_addr {
            match metrics::serve(addr) {
                Ok(m) => m.set_servers(servers.clone()),
                Err(e) => return usage_error(e),
            }
        }
        let settings = relay::RelaySettings::from_args(args, servers, cli.client_id.clone());
        return match relay::run(args, settings) {
            Ok(_) => EXIT_OK,
            Err(e) => usage_error(e),
        };
    }
    let (cfg, reload_from) = if let Some(path) = &cli.config {
        match config::load(path, &cli.servers) {
            Ok(c) => (
                cli.apply_overrides_with_tls(c, cli_tls.as_ref()),
                Some((path.clone(), cli.servers.clone())),
            ),
            Err(e) => return usage_error(e),
        }
    } else {
        match cli.quick_config() {
            Ok(c) => (c, None),
            Err(e) => return usage_error(e),
        }
    };
    if cli.check_config {
        println!(
            "configuration ok: {} function(s), servers {}",
            cfg.functions.len(),
            cfg.servers
        );
        if let Some(ca) = &cfg.tls.ca_file {
            println!("  TLS CA file {}", ca.display());
        }
        if let Some(cert) = &cfg.tls.cert_file {
            println!("  TLS client certificate {}", cert.display());
        }
        for f in &cfg.functions {
            println!("  {} (concurrency {})", f.name, f.concurrency);
        }
        return EXIT_OK;
    }
    logging::set_format(cfg.log_format);
    if let Some(addr) = &cfg.metrics_addr {
        match metrics::serve(addr) {
            Ok(m) => m.set_servers(cfg.servers.clone()),
            Err(e) => return usage_error(e),
        }
    }
    let overrides = |c: config::Config| cli.apply_overrides_with_tls(c, cli_tls.as_ref());
    match daemon::run(cfg, reload_from, &overrides) {
        Ok(daemon::Outcome::Drained) => EXIT_OK,
        Ok(daemon::Outcome::Forced) => EXIT_FAILURE,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            EXIT_FAILURE
        }
    }
}

/// `gearman-worker dead-letter list|replay|purge`.
fn dead_letter_command(cli: &cli::Cli, args: &cli::DeadLetterArgs) -> u8 {
    use cli::DeadLetterAction as A;
    let filter_args = match &args.action {
        A::List(f) | A::Replay(f) | A::Purge(f) => f,
    };
    let (flag, url) = match (&filter_args.postgres, &filter_args.mysql) {
        (Some(u), _) => ("--postgres", u),
        (None, Some(u)) => ("--mysql", u),
        (None, None) => return usage_error("give --postgres URL or --mysql URL"),
    };
    let url = match db::DatabaseUrl::parse(url) {
        Ok(u @ db::DatabaseUrl::Postgres(_)) if flag == "--postgres" => u,
        Ok(u @ db::DatabaseUrl::Mysql(_)) if flag == "--mysql" => u,
        Ok(_) => return usage_error(format!("{flag}: wrong kind of URL for this flag")),
        Err(e) => return usage_error(format!("{flag}: {e}")),
    };
    let store = deadletter::Store::new(url);
    let filter = deadletter::Filter {
        function: filter_args.function.clone(),
        ids: filter_args.id.clone(),
    };
    let fail = |e: String| {
        eprintln!("gearman-worker: error: {e}");
        EXIT_FAILURE
    };
    match &args.action {
        A::List(_) => match store.list(&filter) {
            Ok(rows) => {
                for r in &rows {
                    println!("{}", deadletter::format_row(r));
                }
                EXIT_OK
            }
            Err(e) => fail(e),
        },
        A::Purge(_) => match store.purge(&filter) {
            Ok(n) => {
                println!("purged {n} dead letter(s)");
                EXIT_OK
            }
            Err(e) => fail(e),
        },
        A::Replay(_) => {
            let servers = match config::resolve_servers(
                &cli.servers,
                None,
                std::env::var(config::SERVERS_ENV).ok().as_deref(),
            ) {
                Ok(s) => s,
                Err(e) => return usage_error(e),
            };
            match store.replay(&filter, &servers, &mut |line| println!("{line}")) {
                Ok(n) => {
                    println!("replayed {n} dead letter(s)");
                    EXIT_OK
                }
                Err(e) => fail(e),
            }
        }
    }
}
