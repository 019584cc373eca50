//! A minimal OTLP/gRPC trace sink that only counts the spans it receives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

#[derive(Clone, Debug, Default)]
struct Counter(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running sink.
#[derive(Debug)]
pub struct SpanSink {
    pub addr: SocketAddr,
    spans: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SpanSink {
    pub async fn start() -> Result<SpanSink, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let counter = Counter::default();
        let spans = counter.0.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(counter))
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(SpanSink { addr, spans, task })
    }

    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }

    /// Waits for exports to settle: until the count has not moved for
    /// `quiet`, or `limit` has passed. Returns the count.
    pub async fn settle(&self, quiet: Duration, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        let mut last = self.spans();
        let mut since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.spans();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet && now > 0 {
                break;
            }
        }
        last
    }
}

impl Drop for SpanSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    #[tokio::test(flavor = "current_thread")]
    async fn counts_exported_spans() {
        let sink = SpanSink::start().await.unwrap();
        let mut client = TraceServiceClient::connect(format!("http://{}", sink.addr))
            .await
            .unwrap();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(), Span::default(), Span::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        client.export(request).await.unwrap();
        assert_eq!(
            sink.settle(Duration::from_millis(100), Duration::from_secs(2))
                .await,
            3
        );
    }
}
