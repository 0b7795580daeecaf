//! The access log's writer: finished lines go through a bounded queue to one thread that writes
//! them to stdout, so a slow or stuck reader of stdout (a full pipe, a paused log shipper) never
//! stalls a tokio worker. When the queue is full a line is dropped and counted
//! (`isthmus_gateway_access_log_dropped_total`); the request path never waits.
//!
//! Must not: block its caller, or hold a line longer than it takes to write it.

use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

/// Lines queued at most (about 4 MiB of typical lines) before new ones are dropped.
const STDOUT_CAPACITY: usize = 16 * 1024;

/// A bounded, non-blocking hand-off of lines to a writer thread.
pub struct LineWriter {
    tx: SyncSender<Vec<u8>>,
    /// Lines handed over and not yet written.
    pending: Arc<AtomicUsize>,
    dropped: Counter,
}

impl LineWriter {
    /// Starts the writer thread over `out`. If the thread cannot start, every line is dropped
    /// and counted (and that is said once on stderr).
    pub fn spawn(capacity: usize, out: impl Write + Send + 'static) -> Self {
        let (tx, rx) = sync_channel(capacity);
        let pending = Arc::new(AtomicUsize::new(0));
        let thread_pending = pending.clone();
        let started = std::thread::Builder::new()
            .name("isthmus-access-log".into())
            .spawn(move || write_lines(rx, out, &thread_pending));
        if let Err(e) = started {
            eprintln!("access log: cannot start its writer thread ({e}); lines are dropped");
        }
        Self {
            tx,
            pending,
            dropped: Counter::default(),
        }
    }

    /// Queues one line (with its newline); drops and counts it when the queue is full.
    pub fn write(&self, line: Vec<u8>) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                self.dropped.inc();
            }
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> &Counter {
        &self.dropped
    }

    /// Waits up to `limit` for every queued line to be written (at shutdown). Returns whether
    /// the queue emptied.
    pub fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.pending.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

/// The process's access log on stdout.
pub fn stdout() -> &'static LineWriter {
    static STDOUT: OnceLock<LineWriter> = OnceLock::new();
    STDOUT.get_or_init(|| LineWriter::spawn(STDOUT_CAPACITY, std::io::stdout()))
}

/// The writer thread: writes lines as they come, flushing whenever the queue is empty.
fn write_lines(rx: Receiver<Vec<u8>>, out: impl Write, pending: &AtomicUsize) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut broken = false;
    while let Ok(line) = rx.recv() {
        // A closed stdout must not take the data path down: lines are then consumed unwritten.
        broken = broken || out.write_all(&line).is_err();
        let mut written = 1;
        while let Ok(line) = rx.try_recv() {
            broken = broken || out.write_all(&line).is_err();
            written += 1;
        }
        broken = broken || out.flush().is_err();
        pending.fetch_sub(written, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// A real pipe nobody reads fills up (64 KiB on Linux) and its writer blocks, as stdout does
    /// behind a stuck log shipper: every write still returns at once, the overflow is counted,
    /// and once the pipe is read again every line that was not dropped arrives whole.
    #[test]
    fn a_stuck_reader_never_blocks_the_caller() {
        let (mut reader, writer) = std::io::pipe().expect("pipe");
        let log = LineWriter::spawn(8, writer);
        let line = |i: usize| format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(1000));
        let total = 1_000;
        for i in 0..total {
            log.write(line(i).into_bytes());
        }
        // ~1 MB offered to a 64 KiB pipe and a queue of 8 lines: most are dropped, none waited.
        let dropped = log.dropped().get();
        assert!(dropped >= 500, "dropped {dropped} of {total}");
        let reading = std::thread::spawn(move || {
            let mut text = String::new();
            reader.read_to_string(&mut text).expect("read pipe");
            text
        });
        assert!(log.drain(Duration::from_secs(10)), "queue never emptied");
        drop(log); // closes the queue: the writer thread ends and closes the pipe
        let text = reading.join().expect("reader");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64, total as u64 - dropped);
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("{\"n\":") && l.ends_with("\"}"))
        );
    }

    #[test]
    fn lines_are_written_in_order_when_the_reader_keeps_up() {
        let (mut reader, writer) = std::io::pipe().expect("pipe");
        let reading = std::thread::spawn(move || {
            let mut text = String::new();
            reader.read_to_string(&mut text).expect("read pipe");
            text
        });
        let log = LineWriter::spawn(1024, writer);
        for i in 0..500 {
            log.write(format!("{i}\n").into_bytes());
        }
        assert!(log.drain(Duration::from_secs(10)));
        assert_eq!(log.dropped().get(), 0);
        drop(log);
        let text = reading.join().expect("reader");
        let expected: String = (0..500).map(|i| format!("{i}\n")).collect();
        assert_eq!(text, expected);
    }
}
