//! Arbitrary text as a config file, with arbitrary command-line overrides and
//! OTEL_* environment, through the parser and validator the binary and its
//! reloads use (`Config::parse_file`, `app::apply_overrides`,
//! `TelemetryConfig::resolve`).
//!
//! What must hold, beyond "never panics": every error names what to fix (a
//! config key, an environment variable or a flag), or is a TOML error that
//! points at a line; a config that validates builds a ledger, and reloading
//! that ledger with it works.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use clap::Parser;
use libfuzzer_sys::fuzz_target;
use rate_governor::app::{Cli, apply_overrides};
use rate_governor::config::{Config, ConfigError};
use rate_governor::ledger::Ledger;

/// Where an error may say the problem is.
const KEYS: &[&str] = &[
    "server.",
    "defaults.",
    "limits.",
    "dependencies",
    "telemetry.",
    "OTEL_",
    "--admin-listen",
];

const ENV: &[&str] = &[
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
];

/// What follows the file's text (after a NUL byte), if anything.
#[derive(Arbitrary, Debug, Default)]
struct Overrides {
    listen: Option<String>,
    uds: Option<String>,
    admin_listen: Option<String>,
    env: Vec<(u8, String)>,
}

fn assert_names_a_key(what: &str, error: &ConfigError) {
    let message = &error.0;
    let named = KEYS.iter().any(|key| message.starts_with(key));
    let located = message.starts_with("TOML parse error at line ");
    let file_level = message.starts_with("the file ");
    assert!(
        named || located || file_level,
        "{what}: the error names no key: {message:?}"
    );
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    // The file's text first (so that plain TOML files seed the corpus),
    // then the overrides.
    let (text, rest) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let input = Overrides::arbitrary_take_rest(Unstructured::new(rest)).unwrap_or_default();
    let config = match Config::parse_file(&text) {
        Ok(config) => config,
        Err(error) => {
            assert_names_a_key("config file", &error);
            return;
        }
    };
    // The reload path and the start path agree.
    assert_eq!(
        Config::parse(&text).as_ref(),
        Ok(&config),
        "parse and parse_file disagree"
    );

    let mut args = vec!["governor".to_owned()];
    for (flag, value) in [
        ("--listen", &input.listen),
        ("--uds", &input.uds),
        ("--admin-listen", &input.admin_listen),
    ] {
        if let Some(value) = value {
            args.push(format!("{flag}={value}"));
        }
    }
    // A command line clap refuses never reaches the config.
    if let Ok(cli) = Cli::try_parse_from(&args) {
        match apply_overrides(config.clone(), &cli) {
            Ok(overridden) => {
                if let Some(listen) = cli.listen {
                    assert_eq!(overridden.server.listen, listen);
                }
                assert_eq!(
                    overridden.ledger, config.ledger,
                    "flags touch only [server]"
                );
            }
            Err(error) => assert_names_a_key("overrides", &error),
        }
    }

    let env: Vec<(&str, &str)> = input
        .env
        .iter()
        .map(|(var, value)| (ENV[*var as usize % ENV.len()], value.as_str()))
        .collect();
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(var, _)| *var == name)
            .map(|(_, value)| (*value).to_owned())
    };
    if let Err(error) = config.telemetry.resolve(lookup) {
        assert_names_a_key("environment", &error);
    }

    // A valid config runs: the ledger takes it at start and on reload.
    let ledger_config = config.ledger.clone();
    runtime().block_on(async move {
        let ledger = Ledger::new(ledger_config.clone());
        for (name, limits) in &ledger_config.dependencies {
            let status = ledger.status(name).expect("a configured dependency exists");
            assert_eq!(&status.limits, limits);
        }
        ledger.reconfigure(ledger_config);
    });
});
