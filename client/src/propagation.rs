//! Carries the caller's OpenTelemetry context to the sidecar as W3C
//! `traceparent`/`tracestate` gRPC metadata, so the sidecar's spans join the
//! caller's trace.

use opentelemetry::{Context, global, propagation::Injector};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

/// Writes propagator fields into tonic metadata; fields that are not valid
/// ASCII metadata are skipped rather than failing the call.
struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Injects `cx` with the globally installed text map propagator (a no-op
/// until the application installs one, e.g. `TraceContextPropagator`).
pub(crate) fn inject(cx: &Context, metadata: &mut MetadataMap) {
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(cx, &mut MetadataInjector(metadata));
    });
}
