//! OpenTelemetry traces: the pipeline (exporter, sampler, resource) and the
//! three spans of a permit's life.
//!
//! - `governor.acquire` (server span): the Acquire call, a child of the
//!   caller's context from `traceparent`/`tracestate`.
//! - `governor.queue_wait`: inside it, exactly the time spent queued (only for
//!   requests that queued).
//! - `governor.permit`: from the grant to the Release or expiry, a child of
//!   the caller's context, so it lines up beside the caller's own call to the
//!   dependency.

use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanExporter as _};
use prometheus_client::metrics::counter::Counter;
use tonic::metadata::MetadataMap;

use super::export::{ExportQueue, Flusher};
use crate::config::{OtlpProtocol, TracingConfig};

/// A running trace pipeline.
#[derive(Debug)]
pub struct Tracing {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    flusher: Flusher,
    propagator: TextMapCompositePropagator,
}

impl Tracing {
    /// Builds the pipeline; must run inside the multi-threaded runtime.
    pub fn start(
        config: &TracingConfig,
        dropped: Counter,
        failed: Counter,
    ) -> Result<Tracing, String> {
        let mut exporter = match config.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.queue.timeout)
                .build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.queue.timeout)
                .build(),
        }
        .map_err(|error| format!("telemetry: cannot build the OTLP exporter: {error}"))?;
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        exporter.set_resource(&resource);
        let (queue, flusher) = ExportQueue::spawn(exporter, config.queue, dropped, failed);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .with_sampler(config.sampler.clone())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("governor");
        let propagator = TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]);
        Ok(Tracing {
            tracer,
            provider,
            flusher,
            propagator,
        })
    }

    /// The caller's context from the request metadata (empty if none).
    pub fn caller_context(&self, metadata: &MetadataMap) -> Context {
        self.propagator.extract(&MetadataExtractor(metadata))
    }

    /// Starts `governor.acquire` under the caller's context; returns the
    /// context holding it.
    pub fn start_acquire(
        &self,
        caller: &Context,
        start: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> Context {
        let span = self
            .tracer
            .span_builder("governor.acquire")
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, caller);
        caller.with_span(span)
    }

    /// Records `governor.queue_wait` inside the acquire span.
    pub fn queue_wait(
        &self,
        acquire: &Context,
        start: SystemTime,
        wait: Duration,
        attributes: Vec<KeyValue>,
    ) {
        let mut span = self
            .tracer
            .span_builder("governor.queue_wait")
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, acquire);
        span.end_with_timestamp(start + wait);
    }

    /// Starts `governor.permit` under the caller's context.
    pub fn start_permit(
        &self,
        caller: &Context,
        start: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> opentelemetry_sdk::trace::Span {
        self.tracer
            .span_builder("governor.permit")
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, caller)
    }

    /// Exports what is queued and stops the pipeline, within `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        if !self.flusher.flush(timeout).await {
            tracing::warn!(?timeout, "spans still queued at exit were not exported");
        }
        let _ = self.provider.shutdown();
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The sampler named by `OTEL_TRACES_SAMPLER`-style names.
pub fn sampler(name: &str, arg: Option<f64>) -> Result<Sampler, String> {
    let ratio = || match arg {
        Some(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        Some(ratio) => Err(format!(
            "sampler argument must be between 0 and 1, got {ratio}"
        )),
        None => Ok(1.0),
    };
    Ok(match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
        }
        other => {
            return Err(format!(
                "unknown sampler {other:?}: use always_on, always_off, traceidratio, \
                 parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
            ));
        }
    })
}
