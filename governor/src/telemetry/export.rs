//! A bounded export queue in front of the OTLP exporter.
//!
//! Ending a span only tries to put it in a bounded channel: when the collector
//! is slow, down or unreachable the channel fills and further spans are
//! dropped and counted (`governor_trace_spans_dropped_total`), so Acquire
//! never waits on telemetry. One task on the runtime batches the spans and
//! exports them with a timeout.

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

/// Sizes and timings of the export queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Spans held at most while waiting for export; more are dropped.
    pub max_queue: usize,
    /// Spans sent in one export call at most.
    pub max_batch: usize,
    /// How long a span may wait for its batch to fill.
    pub delay: Duration,
    /// How long one export call may take.
    pub timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_queue: 2048,
            max_batch: 512,
            delay: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
enum Message {
    Span(Box<SpanData>),
    Flush(oneshot::Sender<()>),
}

/// The span processor: hands finished, sampled spans to the export task.
#[derive(Debug)]
pub struct ExportQueue {
    sender: mpsc::Sender<Message>,
    dropped: Counter,
}

/// Flushes the export queue (at shutdown).
#[derive(Clone, Debug)]
pub struct Flusher {
    sender: mpsc::Sender<Message>,
}

impl ExportQueue {
    /// Spawns the export task on the current runtime.
    pub fn spawn<E: SpanExporter + 'static>(
        exporter: E,
        config: QueueConfig,
        dropped: Counter,
        failed: Counter,
    ) -> (ExportQueue, Flusher) {
        let (sender, receiver) = mpsc::channel(config.max_queue.max(1));
        tokio::spawn(run(exporter, config, receiver, failed));
        (
            ExportQueue {
                sender: sender.clone(),
                dropped,
            },
            Flusher { sender },
        )
    }
}

impl Flusher {
    /// Exports everything queued so far; gives up after `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        let flushed = async {
            self.sender.send(Message::Flush(done)).await.ok()?;
            wait.await.ok()
        };
        matches!(tokio::time::timeout(timeout, flushed).await, Ok(Some(())))
    }
}

impl SpanProcessor for ExportQueue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.sender.try_send(Message::Span(Box::new(span))).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Flushing is asynchronous here: see `Flusher`.
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

async fn run<E: SpanExporter>(
    exporter: E,
    config: QueueConfig,
    mut receiver: mpsc::Receiver<Message>,
    failed: Counter,
) {
    let mut batch = Vec::with_capacity(config.max_batch);
    let mut tick = tokio::time::interval(config.delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = receiver.recv() => match message {
                Some(Message::Span(span)) => {
                    batch.push(*span);
                    if batch.len() >= config.max_batch {
                        export(&exporter, &mut batch, config.timeout, &failed).await;
                    }
                }
                Some(Message::Flush(done)) => {
                    // Everything sent before the flush is already in `batch`.
                    export(&exporter, &mut batch, config.timeout, &failed).await;
                    let _ = done.send(());
                }
                None => {
                    export(&exporter, &mut batch, config.timeout, &failed).await;
                    return;
                }
            },
            _ = tick.tick() => export(&exporter, &mut batch, config.timeout, &failed).await,
        }
    }
}

async fn export<E: SpanExporter>(
    exporter: &E,
    batch: &mut Vec<SpanData>,
    timeout: Duration,
    failed: &Counter,
) {
    if batch.is_empty() {
        return;
    }
    let spans = std::mem::take(batch);
    let count = spans.len();
    match tokio::time::timeout(timeout, exporter.export(spans)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            failed.inc();
            tracing::warn!(%error, spans = count, "span export failed; spans dropped");
        }
        Err(_) => {
            failed.inc();
            tracing::warn!(
                ?timeout,
                spans = count,
                "span export timed out; spans dropped"
            );
        }
    }
}
