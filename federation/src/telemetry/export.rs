//! Finished spans leave the request path through a bounded buffer: ending a span takes a lock
//! and appends its OTLP encoding to the batch being filled (once a batch is full, the export
//! task is woken), and the export task sends batches to the collector, and partial ones every
//! second. A span never wakes a task by itself: the request path pays an encoding and a copy,
//! not a task switch. When the buffer is full (the collector is slow or down) or an export
//! fails, the spans are dropped and counted; nothing ever waits for the collector, and nothing
//! at start needs it to be up.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

/// How long a partial batch waits for more spans before it is sent.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Export failures are logged at most this often (each is counted).
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Bytes a batch is given at first, per span (a gateway's spans take 200–400), for at most
/// [`RESERVED_SPANS`] spans (a larger batch grows as it fills).
const BYTES_PER_SPAN: usize = 320;
const RESERVED_SPANS: usize = 256;
/// A batch goes once it holds this many bytes, full or not: well under a collector's usual
/// 4 MiB limit on a gRPC message, whatever the spans' attributes hold.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Spans to send together: their encodings, one after another (OTLP `ScopeSpans.spans`).
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub spans: Vec<u8>,
    pub count: usize,
}

/// Where batches go (the OTLP exporter; a recorder in tests).
pub(super) trait Exporter: Send + Sync + 'static {
    fn export(&self, batch: Batch) -> impl Future<Output = Result<(), String>> + Send;
}

/// What the spans being ended and the export task share.
#[derive(Debug)]
pub(super) struct Buffer {
    pending: Mutex<Pending>,
    /// Spans held at most (waiting for export); more are dropped.
    capacity: usize,
    batch_size: usize,
    /// A full batch is waiting, or the tracer is gone.
    ready: Notify,
    closed: AtomicBool,
    dropped: Counter,
}

#[derive(Debug, Default)]
struct Pending {
    full: VecDeque<Batch>,
    filling: Batch,
    /// Spans in `full` and `filling`.
    held: usize,
}

impl Buffer {
    /// Appends one span, encoded by `encode`, or drops and counts it when the buffer is full.
    pub fn push(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.held >= self.capacity {
            drop(pending);
            self.dropped.inc();
            return;
        }
        let p = &mut *pending;
        if p.filling.spans.capacity() == 0 {
            let spans = self.batch_size.min(RESERVED_SPANS);
            p.filling.spans.reserve(spans * BYTES_PER_SPAN);
        }
        encode(&mut p.filling.spans);
        p.filling.count += 1;
        p.held += 1;
        if p.filling.count < self.batch_size && p.filling.spans.len() < MAX_BATCH_BYTES {
            return;
        }
        let batch = std::mem::take(&mut p.filling);
        p.full.push_back(batch);
        drop(pending);
        self.ready.notify_one();
    }

    /// Takes the oldest batch (the one being filled when no full one waits), if any.
    fn take(&self) -> Option<Batch> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let batch = match pending.full.pop_front() {
            Some(b) => b,
            None if pending.filling.count > 0 => std::mem::take(&mut pending.filling),
            None => return None,
        };
        pending.held -= batch.count;
        Some(batch)
    }

    /// No span will come any more: the export task sends what is left and ends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

/// What the export task needs besides the exporter.
pub(super) struct Batching {
    pub queue_size: usize,
    pub batch_size: usize,
    pub timeout: Duration,
    pub endpoint: String,
}

/// Starts the export task on the current runtime and returns the buffer that feeds it.
pub(super) fn start<E: Exporter>(exporter: E, batching: Batching, dropped: Counter) -> Arc<Buffer> {
    let buffer = Arc::new(Buffer {
        pending: Mutex::default(),
        capacity: batching.queue_size,
        batch_size: batching.batch_size.max(1),
        ready: Notify::new(),
        closed: AtomicBool::new(false),
        dropped,
    });
    tokio::spawn(export_loop(exporter, buffer.clone(), batching));
    buffer
}

async fn export_loop<E: Exporter>(exporter: E, buffer: Arc<Buffer>, batching: Batching) {
    let mut last_warning: Option<tokio::time::Instant> = None;
    let mut flush = tokio::time::interval(FLUSH_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = buffer.ready.notified() => {}
            _ = flush.tick() => {}
        }
        // Everything waiting goes, a batch at a time; the last batch may be partial.
        while let Some(batch) = buffer.take() {
            let n = batch.count as u64;
            let result = match tokio::time::timeout(batching.timeout, exporter.export(batch)).await
            {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no answer within {} ms",
                    batching.timeout.as_millis()
                )),
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
    use tokio::sync::mpsc;

    /// Hands each exported batch's size to the test; `hold` makes an export wait until released.
    struct Recorder {
        sizes: mpsc::UnboundedSender<(usize, usize)>,
        hold: Arc<tokio::sync::Semaphore>,
    }

    impl Exporter for Recorder {
        async fn export(&self, batch: Batch) -> Result<(), String> {
            let _permit = self.hold.acquire().await;
            let _ = self.sizes.send((batch.count, batch.spans.len()));
            Ok(())
        }
    }

    /// Each exported batch's span count and bytes.
    type Seen = mpsc::UnboundedReceiver<(usize, usize)>;

    fn setup(
        queue_size: usize,
        batch_size: usize,
        held: bool,
    ) -> (Arc<Buffer>, Seen, Arc<tokio::sync::Semaphore>, Counter) {
        let (sizes, seen) = mpsc::unbounded_channel();
        let hold = Arc::new(tokio::sync::Semaphore::new(if held { 0 } else { 1 << 20 }));
        let dropped = Counter::default();
        let buffer = start(
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
        (buffer, seen, hold, dropped)
    }

    /// `n` spans of three bytes each.
    fn spans(buffer: &Buffer, n: usize) {
        for _ in 0..n {
            buffer.push(|b| b.extend_from_slice(b"abc"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_goes_when_its_bytes_reach_the_limit() {
        let (buffer, mut seen, _hold, _dropped) = setup(100, 50, false);
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        // Three spans of 400 KiB: the third takes the batch past 1 MiB, so it goes at once.
        for _ in 0..3 {
            buffer.push(|b| b.resize(b.len() + 400 * 1024, 0));
        }
        assert_eq!(seen.recv().await, Some((3, 3 * 400 * 1024)));
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a batch over its byte limit waited"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_a_partial_one_within_the_flush_interval() {
        let (buffer, mut seen, _hold, dropped) = setup(100, 4, false);
        // Let the export task take its first (immediate) interval tick.
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        spans(&buffer, 4);
        assert_eq!(seen.recv().await, Some((4, 12)));
        assert_eq!(started.elapsed(), Duration::ZERO, "a full batch waited");
        // Three spans do not wake the export task: they wait for the next flush tick.
        spans(&buffer, 3);
        assert_eq!(seen.recv().await, Some((3, 9)));
        let waited = started.elapsed();
        assert!(
            waited > Duration::ZERO && waited <= FLUSH_INTERVAL,
            "a partial batch went after {waited:?}"
        );
        assert_eq!(dropped.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_export_fills_the_buffer_and_the_rest_is_dropped_and_counted() {
        let (buffer, mut seen, hold, dropped) = setup(10, 5, true);
        tokio::task::yield_now().await;
        // The first batch is taken and held in the export; ten more fill the buffer.
        spans(&buffer, 5);
        tokio::task::yield_now().await;
        spans(&buffer, 13);
        assert_eq!(dropped.get(), 3, "spans past the buffer's capacity");
        hold.add_permits(1 << 20);
        let mut exported = 0;
        while exported < 15 {
            let (count, bytes) = seen.recv().await.expect("a batch");
            assert_eq!(bytes, count * 3, "whole spans only");
            exported += count;
        }
        assert_eq!(exported, 15);
        assert_eq!(dropped.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_left_goes_when_the_tracer_is_gone() {
        let (buffer, mut seen, _hold, _dropped) = setup(100, 50, false);
        tokio::task::yield_now().await;
        spans(&buffer, 2);
        buffer.close();
        assert_eq!(seen.recv().await, Some((2, 6)));
        // The task has ended: its sender is gone.
        assert_eq!(seen.recv().await, None);
    }
}
