//! Finished spans leave the request path through a bounded buffer: `on_end` takes a lock, pushes
//! the span and (once a batch is full) wakes the export task, which sends batches to the
//! collector, and partial ones every second. A span never wakes a task by itself: the request
//! path pays a push, not a task switch. When the buffer is full (the collector is slow or down)
//! or an export fails, the spans are dropped and counted; nothing ever waits for the collector,
//! and nothing at start needs it to be up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

/// How long a partial batch waits for more spans before it is sent.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Export failures are logged at most this often (each is counted).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What the request path and the export task share.
#[derive(Debug)]
struct Buffer {
    spans: Mutex<Vec<SpanData>>,
    /// Spans held at most (waiting for export); more are dropped.
    capacity: usize,
    batch_size: usize,
    /// A full batch is waiting, or the processor is gone.
    ready: Notify,
    closed: AtomicBool,
    dropped: Counter,
}

impl Buffer {
    /// Takes up to one batch, oldest first; empty when nothing waits.
    fn take(&self) -> Vec<SpanData> {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        if spans.is_empty() {
            return Vec::new();
        }
        if spans.len() <= self.batch_size {
            // The next batch fills a buffer of its full size: never regrown span by span.
            return std::mem::replace(&mut *spans, Vec::with_capacity(self.batch_size));
        }
        spans.drain(..self.batch_size).collect()
    }
}

/// Hands finished spans to the export task, or drops and counts them.
#[derive(Debug)]
pub(super) struct QueueProcessor {
    buffer: Arc<Buffer>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let buffer = &self.buffer;
        let mut spans = buffer.spans.lock().unwrap_or_else(|e| e.into_inner());
        if spans.len() >= buffer.capacity {
            drop(spans);
            buffer.dropped.inc();
            return;
        }
        spans.push(span);
        let full = spans.len() == buffer.batch_size;
        drop(spans);
        if full {
            buffer.ready.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

impl Drop for QueueProcessor {
    fn drop(&mut self) {
        self.buffer.closed.store(true, Ordering::Release);
        self.buffer.ready.notify_one();
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
    let buffer = Arc::new(Buffer {
        spans: Mutex::new(Vec::with_capacity(batching.batch_size)),
        capacity: batching.queue_size,
        batch_size: batching.batch_size,
        ready: Notify::new(),
        closed: AtomicBool::new(false),
        dropped,
    });
    tokio::spawn(export_loop(exporter, buffer.clone(), batching));
    QueueProcessor { buffer }
}

async fn export_loop<E: SpanExporter>(exporter: E, buffer: Arc<Buffer>, batching: Batching) {
    let mut last_warning: Option<tokio::time::Instant> = None;
    let mut flush = tokio::time::interval(FLUSH_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = buffer.ready.notified() => {}
            _ = flush.tick() => {}
        }
        // Everything waiting goes, a batch at a time; the last batch may be partial.
        loop {
            let batch = buffer.take();
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            let result = match tokio::time::timeout(batching.timeout, exporter.export(batch)).await
            {
                Ok(r) => r,
                Err(_) => Err(OTelSdkError::Timeout(batching.timeout)),
            };
            if let Err(e) = result {
                buffer.dropped.inc_by(n);
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
        if buffer.closed.load(Ordering::Acquire) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tokio::sync::mpsc;

    /// Hands each exported batch's size to the test; `hold` makes an export wait until released.
    #[derive(Debug)]
    struct Recorder {
        sizes: mpsc::UnboundedSender<usize>,
        hold: Arc<tokio::sync::Semaphore>,
    }

    impl SpanExporter for Recorder {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let _permit = self.hold.acquire().await;
            let _ = self.sizes.send(batch.len());
            Ok(())
        }
    }

    fn setup(
        queue_size: usize,
        batch_size: usize,
        held: bool,
    ) -> (
        SdkTracerProvider,
        mpsc::UnboundedReceiver<usize>,
        Arc<tokio::sync::Semaphore>,
        Counter,
    ) {
        let (sizes, seen) = mpsc::unbounded_channel();
        let hold = Arc::new(tokio::sync::Semaphore::new(if held { 0 } else { 1 << 20 }));
        let dropped = Counter::default();
        let processor = start(
            Recorder {
                sizes,
                hold: hold.clone(),
            },
            Batching {
                queue_size,
                batch_size,
                timeout: Duration::from_secs(30),
                endpoint: "test".into(),
            },
            dropped.clone(),
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        (provider, seen, hold, dropped)
    }

    fn spans(provider: &SdkTracerProvider, n: usize) {
        let tracer = provider.tracer("test");
        for _ in 0..n {
            drop(tracer.start("s"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_a_partial_one_within_the_flush_interval() {
        let (provider, mut seen, _hold, dropped) = setup(100, 4, false);
        // Let the export task take its first (immediate) interval tick.
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        spans(&provider, 4);
        assert_eq!(seen.recv().await, Some(4));
        assert_eq!(started.elapsed(), Duration::ZERO, "a full batch waited");
        // Three spans do not wake the export task: they wait for the next flush tick.
        spans(&provider, 3);
        assert_eq!(seen.recv().await, Some(3));
        let waited = started.elapsed();
        assert!(
            waited > Duration::ZERO && waited <= FLUSH_INTERVAL,
            "a partial batch went after {waited:?}"
        );
        assert_eq!(dropped.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_export_fills_the_buffer_and_the_rest_is_dropped_and_counted() {
        let (provider, mut seen, hold, dropped) = setup(10, 5, true);
        tokio::task::yield_now().await;
        // The first batch is taken and held in the export; ten more fill the buffer.
        spans(&provider, 5);
        tokio::task::yield_now().await;
        spans(&provider, 13);
        assert_eq!(dropped.get(), 3, "spans past the buffer's capacity");
        hold.add_permits(1 << 20);
        let mut exported = 0;
        while exported < 15 {
            exported += seen.recv().await.expect("a batch");
        }
        assert_eq!(exported, 15);
        assert_eq!(dropped.get(), 3);
    }
}
