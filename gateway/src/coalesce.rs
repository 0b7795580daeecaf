//! Write coalescing for the multiplexed peer connections.
//!
//! An HTTP/2 connection task writes whatever its streams have queued each time it runs, and the
//! h2 codec flushes before it buffers any DATA payload over 256 bytes. On a busy peer connection
//! that means one TLS record, one TCP segment and one syscall per response, and a wakeup of the
//! peer for each, even when dozens of responses became ready in the same turn of the event loop.
//!
//! [`Coalesced`] sits between the HTTP/2 codec and the TLS stream. Writes go into its buffer; the
//! first flush of a batch is put off until the runtime has run every task that was ready and
//! polled for new I/O (tokio's deferred wake, the one `yield_now` uses), and the flush after that
//! writes everything those tasks queued at once. On an idle runtime the wait is one pass of the
//! scheduler; under load it turns many small writes into one.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Above this many buffered bytes a write goes out before more is taken; a write at least this
/// large on an empty buffer goes straight through.
const MAX_BUFFERED: usize = 64 * 1024;

/// A stream whose writes are gathered until the end of the runtime's current turn.
///
/// Made for a caller that flushes or reads each time its task is polled, as an HTTP/2
/// connection does: a flush that waits for the turn's end returns at once, and the write happens
/// on the caller's next flush or read after the deferred wake (or at shutdown).
pub struct Coalesced<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` the inner stream has taken.
    sent: usize,
    /// The deferred wake, reused from batch to batch once the scheduler has let go of it.
    turn: Arc<TurnEnd>,
    /// Whether a flush waits for `turn` to end.
    armed: bool,
}

/// The deferred wake: records that the turn ended and wakes the connection's task.
struct TurnEnd {
    ended: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl TurnEnd {
    fn new() -> Self {
        Self {
            ended: AtomicBool::new(false),
            task: Mutex::new(None),
        }
    }

    fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

impl Wake for TurnEnd {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ended.store(true, Ordering::Release);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl<T> Coalesced<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            sent: 0,
            turn: Arc::new(TurnEnd::new()),
            armed: false,
        }
    }

    fn buffered(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Whether the flush must still wait for the end of the turn (arming the wait if needed).
    fn wait_for_turn_end(&mut self, cx: &mut Context<'_>) -> bool {
        if self.armed {
            if self.turn.has_ended() {
                self.armed = false;
                return false;
            }
            // Polled early (another wake): keep waiting, and wake whichever task polls now.
            let mut task = self
                .turn
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
            return true;
        }
        match Arc::get_mut(&mut self.turn) {
            Some(turn) => *turn.ended.get_mut() = false,
            // The scheduler still holds the last turn's wake (the batch was sent early by a
            // spill): that wake must not end this turn.
            None => self.turn = Arc::new(TurnEnd::new()),
        }
        *self
            .turn
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        self.armed = true;
        // `yield_now` hands its waker to the scheduler's deferred list, woken once the tasks
        // that are ready have run and the driver has been polled (or at once outside a runtime).
        let waker = Waker::from(self.turn.clone());
        let mut yielded = std::pin::pin!(tokio::task::yield_now());
        let _ = yielded.as_mut().poll(&mut Context::from_waker(&waker));
        true
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // The capacity stays for the next batch: at most about twice `MAX_BUFFERED` per
        // connection, since nothing larger is ever copied in.
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // A caller that only reads after the turn ended (a handshake waiting for the peer's
        // preface) still gets its held-back writes sent.
        if this.buffered() > 0 && this.armed && this.turn.has_ended() {
            this.armed = false;
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if this.buffered() > 0 && this.buffered() + len > MAX_BUFFERED {
            ready!(this.poll_drain(cx))?;
        }
        if this.buffered() == 0 && len >= MAX_BUFFERED {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buffered() > 0 {
            if this.wait_for_turn_end(cx) {
                // The caller is told the data is on its way; the deferred wake polls its task
                // again, and that poll's flush writes the whole batch.
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_drain(cx))?;
        } else {
            // Emptied by a spill: the next batch waits for a turn of its own.
            this.armed = false;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::io;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use super::{Coalesced, MAX_BUFFERED};

    /// Records every write it is given.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Recorder {
        fn writes(&self) -> Vec<Vec<u8>> {
            self.0.lock().unwrap().clone()
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.lock().unwrap().push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Ready on the second poll, having put its task at the back of the run queue.
    async fn requeue() {
        let mut first = true;
        poll_fn(|cx| {
            if std::mem::take(&mut first) {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    /// The shape of an HTTP/2 connection: streams queue frames in two steps (headers, then data
    /// once the body arrives) and wake the connection task, which writes whatever is queued and
    /// flushes on every poll. It runs until `wire` has received every frame, so a flush that was
    /// held back must go out on a later poll of the task by itself.
    async fn streams_through<W: AsyncWrite + Unpin + Send + 'static>(
        writer: W,
        wire: Recorder,
        streams: usize,
    ) {
        let queue = Arc::new(Mutex::new(Vec::<u8>::new()));
        let conn_task = Arc::new(Mutex::new(None::<Waker>));
        let wake_conn = {
            let conn_task = conn_task.clone();
            move || {
                if let Some(w) = conn_task.lock().unwrap().take() {
                    w.wake();
                }
            }
        };
        let expected = streams * 2;
        let conn = {
            let queue = queue.clone();
            let mut writer = writer;
            tokio::spawn(poll_fn(move |cx| {
                *conn_task.lock().unwrap() = Some(cx.waker().clone());
                let batch = std::mem::take(&mut *queue.lock().unwrap());
                if !batch.is_empty() {
                    match Pin::new(&mut writer).poll_write(cx, &batch) {
                        Poll::Ready(Ok(n)) => assert_eq!(n, batch.len()),
                        other => panic!("write: {other:?}"),
                    }
                }
                assert!(Pin::new(&mut writer).poll_flush(cx).is_ready());
                if wire.writes().iter().map(Vec::len).sum::<usize>() == expected {
                    return Poll::Ready(());
                }
                Poll::Pending
            }))
        };
        for _ in 0..streams {
            let (queue, wake_conn) = (queue.clone(), wake_conn.clone());
            tokio::spawn(async move {
                queue.lock().unwrap().push(b'h');
                wake_conn();
                requeue().await;
                queue.lock().unwrap().push(b'd');
                wake_conn();
            });
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), conn)
            .await
            .expect("every frame reaches the wire")
            .unwrap();
    }

    #[tokio::test]
    async fn frames_queued_in_one_turn_leave_in_one_write() {
        let plain = Recorder::default();
        streams_through(plain.clone(), plain.clone(), 8).await;
        let wire = Recorder::default();
        streams_through(Coalesced::new(wire.clone()), wire.clone(), 8).await;

        let plain = plain.writes();
        assert!(plain.len() >= 2, "without coalescing: {plain:?}");
        let writes = wire.writes();
        assert_eq!(writes.len(), 1, "{writes:?}");
        let mut bytes = writes[0].clone();
        bytes.sort_unstable();
        assert_eq!(bytes, b"ddddddddhhhhhhhh");
    }

    /// Writes `data` and flushes, as the codec does at the end of a poll.
    async fn write_and_flush(w: &mut Coalesced<Recorder>, data: &[u8]) {
        w.write_all(data).await.unwrap();
        w.flush().await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_held_back() {
        let wire = Recorder::default();
        let mut w = Coalesced::new(wire.clone());
        write_and_flush(&mut w, b"goaway").await;
        assert!(
            wire.writes().is_empty(),
            "the first flush waits for the turn's end"
        );
        w.shutdown().await.unwrap();
        assert_eq!(wire.writes().concat(), b"goaway");
    }

    #[tokio::test]
    async fn a_caller_that_only_reads_after_the_turn_still_sends_what_it_wrote() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let peer = tokio::spawn(async move {
            let mut settings = [0u8; 8];
            theirs.read_exact(&mut settings).await.unwrap();
            assert_eq!(&settings, b"settings");
            theirs.write_all(b"preface").await.unwrap();
        });
        let mut w = Coalesced::new(ours);
        w.write_all(b"settings").await.unwrap();
        w.flush().await.unwrap();
        let mut preface = [0u8; 7];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            w.read_exact(&mut preface),
        )
        .await
        .expect("the held-back write went out while the caller waited to read")
        .unwrap();
        assert_eq!(&preface, b"preface");
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_after_a_spill_waits_for_its_own_turn() {
        let wire = Recorder::default();
        let mut w = Coalesced::new(wire.clone());
        write_and_flush(&mut w, b"a").await;
        w.write_all(&vec![0u8; MAX_BUFFERED]).await.unwrap();
        assert_eq!(
            wire.writes().len(),
            2,
            "the held byte, then the large write"
        );
        w.flush().await.unwrap();
        tokio::task::yield_now().await;
        write_and_flush(&mut w, b"b").await;
        assert_eq!(
            wire.writes().len(),
            2,
            "the next batch is held until its turn ends"
        );
        w.shutdown().await.unwrap();
        assert_eq!(wire.writes().last().unwrap(), b"b");
    }

    #[tokio::test]
    async fn a_large_write_goes_straight_through_and_the_buffer_is_bounded() {
        let wire = Recorder::default();
        let mut w = Coalesced::new(wire.clone());
        let big = vec![7u8; MAX_BUFFERED];
        w.write_all(&big).await.unwrap();
        assert_eq!(wire.writes().len(), 1, "nothing buffered, so no copy");
        for _ in 0..3 {
            w.write_all(&[1u8; 40 * 1024]).await.unwrap();
        }
        let writes = wire.writes();
        assert_eq!(writes.len(), 3, "two spills of 40 KiB each");
        assert!(w.buffered() <= MAX_BUFFERED);
        w.shutdown().await.unwrap();
        let total: usize = wire.writes().iter().map(Vec::len).sum();
        assert_eq!(total, MAX_BUFFERED + 3 * 40 * 1024);
    }
}
