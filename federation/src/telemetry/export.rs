//! Finished spans leave the request path through a bounded queue: `on_end` only tries to put
//! the span in it, and a task sends batches to the collector. When the queue is full (the
//! collector is slow or down) or an export fails, the spans are dropped and counted; nothing
//! ever waits for the collector, and nothing at start needs it to be up.

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// How long a partial batch waits for more spans before it is sent.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Export failures are logged at most this often (each is counted).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Hands finished spans to the export task, or drops and counts them.
#[derive(Debug)]
pub(super) struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
    dropped: Counter,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// What the export task needs besides the exporter.
pub(super) struct Batching {
    pub queue_size: usize,
    pub batch_size: usize,
    pub timeout: Duration,
    pub endpoint: String,
}

/// Starts the export task on the current runtime and returns the processor that feeds it.
pub(super) fn start<E>(exporter: E, batching: Batching, dropped: Counter) -> QueueProcessor
where
    E: SpanExporter + 'static,
{
    let (queue, spans) = mpsc::channel(batching.queue_size);
    tokio::spawn(export_loop(exporter, spans, batching, dropped.clone()));
    QueueProcessor { queue, dropped }
}

async fn export_loop<E: SpanExporter>(
    exporter: E,
    mut spans: mpsc::Receiver<SpanData>,
    batching: Batching,
    dropped: Counter,
) {
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let mut batch = Vec::with_capacity(batching.batch_size);
        if spans.recv_many(&mut batch, batching.batch_size).await == 0 {
            return;
        }
        let flush_at = tokio::time::Instant::now() + FLUSH_INTERVAL;
        while batch.len() < batching.batch_size {
            let room = batching.batch_size - batch.len();
            match tokio::time::timeout_at(flush_at, spans.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let n = batch.len() as u64;
        let result = match tokio::time::timeout(batching.timeout, exporter.export(batch)).await {
            Ok(r) => r,
            Err(_) => Err(OTelSdkError::Timeout(batching.timeout)),
        };
        if let Err(e) = result {
            dropped.inc_by(n);
            let now = tokio::time::Instant::now();
            if last_warning.is_none_or(|t| now >= t + WARN_EVERY) {
                last_warning = Some(now);
                tracing::warn!(
                    endpoint = %batching.endpoint,
                    spans = n,
                    error = %e,
                    "trace export failed; the spans are dropped and counted (is the collector up?)"
                );
            }
        }
    }
}
