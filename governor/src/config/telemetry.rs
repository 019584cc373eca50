//! The `[telemetry]` section and the standard OpenTelemetry environment
//! variables, which take precedence over it (that is how Kubernetes manifests
//! usually configure exporters).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, HumanDuration};
use crate::telemetry::{QueueConfig, Sampler, sampler};

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(super) struct TelemetrySection {
    otlp_endpoint: Option<String>,
    otlp_protocol: Option<String>,
    service_name: Option<String>,
    sampler: Option<String>,
    sampler_arg: Option<f64>,
    export_queue_size: Option<usize>,
    export_batch_size: Option<usize>,
    export_delay: Option<HumanDuration>,
    export_timeout: Option<HumanDuration>,
}

/// How traces leave the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// The `[telemetry]` section as read from the file; [`TelemetryConfig::resolve`]
/// combines it with the environment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TelemetryConfig {
    section: TelemetrySection,
}

/// A trace pipeline to start.
#[derive(Clone, Debug)]
pub struct TracingConfig {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub service_name: String,
    pub sampler: Sampler,
    pub queue: QueueConfig,
}

impl TelemetryConfig {
    pub(super) fn from_section(section: TelemetrySection) -> Result<Self, ConfigError> {
        let config = TelemetryConfig { section };
        // Validate what the file says on its own, with no environment.
        config.resolve(|_| None)?;
        Ok(config)
    }

    /// The trace pipeline to run, or `None` when no endpoint is configured
    /// (then tracing costs next to nothing). `env` reads a variable.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<TracingConfig>, ConfigError> {
        let s = &self.section;
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }

        let protocol_source = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_PROTOCOL").map(|v| ("OTEL_EXPORTER_OTLP_PROTOCOL", v))
            })
            .or_else(|| {
                s.otlp_protocol
                    .clone()
                    .map(|v| ("telemetry.otlp_protocol", v))
            });
        let protocol = match protocol_source {
            None => OtlpProtocol::Grpc,
            Some((_, v)) if v == "grpc" => OtlpProtocol::Grpc,
            Some((_, v)) if v == "http/protobuf" => OtlpProtocol::HttpProtobuf,
            Some((key, v)) => {
                return Err(ConfigError::at(
                    key,
                    format!("unsupported protocol {v:?}: use \"grpc\" or \"http/protobuf\""),
                ));
            }
        };

        let sampler = match var("OTEL_TRACES_SAMPLER") {
            Some(name) => {
                let arg = match var("OTEL_TRACES_SAMPLER_ARG") {
                    Some(text) => Some(text.trim().parse::<f64>().map_err(|_| {
                        ConfigError::at(
                            "OTEL_TRACES_SAMPLER_ARG",
                            format!("not a number: {text:?}"),
                        )
                    })?),
                    None => None,
                };
                sampler(name.trim(), arg).map_err(|e| ConfigError::at("OTEL_TRACES_SAMPLER", e))?
            }
            None => sampler(
                s.sampler.as_deref().unwrap_or("parentbased_always_on"),
                s.sampler_arg,
            )
            .map_err(|e| ConfigError::at("telemetry.sampler", e))?,
        };

        let queue = QueueConfig {
            max_queue: s.export_queue_size.unwrap_or(2048),
            max_batch: s.export_batch_size.unwrap_or(512),
            delay: s.export_delay.map_or(Duration::from_secs(1), |d| d.0),
            timeout: s.export_timeout.map_or(Duration::from_secs(10), |d| d.0),
        };
        if !(1..=1_000_000).contains(&queue.max_queue) {
            return Err(ConfigError::at(
                "telemetry.export_queue_size",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=queue.max_queue).contains(&queue.max_batch) {
            return Err(ConfigError::at(
                "telemetry.export_batch_size",
                "must be between 1 and telemetry.export_queue_size",
            ));
        }
        if queue.delay < Duration::from_millis(10) {
            return Err(ConfigError::at(
                "telemetry.export_delay",
                "must be at least 10ms",
            ));
        }
        if queue.timeout < Duration::from_millis(100) {
            return Err(ConfigError::at(
                "telemetry.export_timeout",
                "must be at least 100ms",
            ));
        }

        let service_name = var("OTEL_SERVICE_NAME")
            .or_else(|| s.service_name.clone())
            .unwrap_or_else(|| "governor".into());

        let endpoint = if let Some(traces) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces))
        } else {
            let base = var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|v| ("OTEL_EXPORTER_OTLP_ENDPOINT", v))
                .or_else(|| {
                    s.otlp_endpoint
                        .clone()
                        .map(|v| ("telemetry.otlp_endpoint", v))
                });
            // A base endpoint names the collector; over HTTP the traces path
            // is appended, as the OTLP exporter specification says.
            base.map(|(key, url)| match protocol {
                OtlpProtocol::HttpProtobuf if !url.ends_with("/v1/traces") => {
                    (key, format!("{}/v1/traces", url.trim_end_matches('/')))
                }
                _ => (key, url),
            })
        };
        let Some((key, endpoint)) = endpoint else {
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ConfigError::at(
                key,
                format!(
                    "invalid endpoint {endpoint:?}: write a URL like \"http://127.0.0.1:4317\""
                ),
            ));
        }
        Ok(Some(TracingConfig {
            endpoint,
            protocol,
            service_name,
            sampler,
            queue,
        }))
    }
}
