//! The `governor` binary: parse, validate, set up logging and the runtime,
//! run, and exit with a status that says what happened.

use std::process::ExitCode;

use clap::Parser;
use rate_governor::app::{self, Cli, Command, EXIT_USAGE, LogFormat};
use rate_governor::config::{Config, EMBEDDED_DEFAULT};

/// jemalloc, for two reasons measured in the README's memory section: it
/// packs the many small allocations of queued calls tighter than glibc's
/// malloc, and its background thread hands freed pages back to the system
/// after a burst, where glibc kept them. The `system-alloc` feature leaves
/// it out, for heap profilers that hook the system malloc.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let usage = error.use_stderr();
            let _ = error.print();
            return if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if cli.print_default_config {
        print!("{EMBEDDED_DEFAULT}");
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &cli.check_config {
        return match Config::load(path) {
            Ok(config) => {
                println!(
                    "{}: ok ({} dependencies configured)",
                    path.display(),
                    config.ledger.dependencies.len()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("governor: invalid config: {error}");
                ExitCode::from(EXIT_USAGE)
            }
        };
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("governor: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match &cli.command {
        Some(Command::Probe {
            addr,
            service,
            timeout,
        }) => return runtime.block_on(app::probe(*addr, service.clone(), *timeout)),
        Some(Command::Status {
            addr,
            uds,
            admin_token_file,
            watch,
            timeout,
        }) => {
            let target = match uds {
                Some(path) => app::Target::Unix(path.clone()),
                None => app::Target::Tcp(*addr),
            };
            let token = match admin_token_file
                .as_deref()
                .map(|path| rate_governor::config::AdminToken::read(path, "--admin-token-file"))
                .transpose()
            {
                Ok(token) => token,
                Err(error) => {
                    eprintln!("governor status: {error}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            return runtime.block_on(app::status(target, token, *watch, *timeout));
        }
        None => {}
    }

    let config = match app::resolve_config(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("governor: invalid config: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let tracing = match config.telemetry.resolve(|name| std::env::var(name).ok()) {
        Ok(tracing) => tracing,
        Err(error) => {
            eprintln!("governor: invalid telemetry settings: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(cli.log_format);
    rate_governor::telemetry::heap::start_purging();
    runtime.block_on(app::run(cli, config, tracing))
}

fn init_logging(format: LogFormat) {
    // The redis client logs a WARN for every node it fails to reach, many a
    // second while a store node is down; the fleet task logs each failed
    // call once, with what it means for the share.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,redis=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
