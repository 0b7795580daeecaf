//! HTTP/1 request bytes from a client through `H1Guard` (the request-smuggling guard in front of
//! hyper). The first two input bytes seed the read sizes the peer delivers; the rest is the
//! byte stream.
//!
//! Asserts: what the guard hands on is always a prefix of what the peer sent (it withholds
//! bytes, it never changes them); unless it refuses, it hands on every byte; when it refuses, it
//! writes exactly one 400 response to the peer and nothing else; and the verdict does not depend
//! on how the stream was split into reads.

#![no_main]

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use isthmus_gateway::h1guard::H1Guard;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Heads larger than the longest input libFuzzer makes here, so every head is judged.
const MAX_HEAD: usize = 64 * 1024;

/// The client: delivers `data` in reads of the given sizes, then EOF; records what it is sent.
struct Peer<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
    written: Rc<RefCell<Vec<u8>>>,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = self.sizes.get(self.next).copied().unwrap_or(usize::MAX);
        self.next += 1;
        let n = size.min(buf.remaining()).min(self.data.len());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.borrow_mut().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads the guarded stream to its end: (bytes handed on, bytes written back to the peer).
fn run(data: &[u8], sizes: Vec<usize>) -> (Vec<u8>, Vec<u8>) {
    let written = Rc::new(RefCell::new(Vec::new()));
    let peer = Peer {
        data,
        sizes,
        next: 0,
        written: written.clone(),
    };
    let mut guard = H1Guard::new(peer, MAX_HEAD);
    let mut cx = Context::from_waker(Waker::noop());
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Every read makes progress or ends the stream; bound the loop anyway.
    for _ in 0..4 * data.len() + 64 {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut guard).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => {
                let mut probe = ReadBuf::new(&mut buf);
                // After EOF, reads stay at EOF.
                let again = Pin::new(&mut guard).poll_read(&mut cx, &mut probe);
                assert!(matches!(again, Poll::Ready(Ok(()))) && probe.filled().is_empty());
                return (seen, written.take());
            }
            Poll::Ready(Ok(())) => seen.extend_from_slice(read.filled()),
            other => panic!("the guard failed on an in-memory stream: {other:?}"),
        }
    }
    panic!("the guard did not reach EOF on {} bytes", data.len());
}

fuzz_target!(|data: &[u8]| {
    let [a, b, stream @ ..] = data else {
        return;
    };
    // Read sizes 1..=64 from a small generator seeded by the first two bytes.
    let mut state = u32::from(*a) << 8 | u32::from(*b) | 1;
    let sizes: Vec<usize> = (0..stream.len())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 64) as usize + 1
        })
        .collect();

    let (whole_seen, whole_written) = run(stream, Vec::new());
    let (split_seen, split_written) = run(stream, sizes);
    for (seen, written) in [(&whole_seen, &whole_written), (&split_seen, &split_written)] {
        assert!(
            stream.starts_with(seen),
            "the guard changed bytes it handed on"
        );
        if written.is_empty() {
            assert_eq!(seen.len(), stream.len(), "bytes lost without a refusal");
        } else {
            assert!(
                written.starts_with(b"HTTP/1.1 400 Bad Request\r\n"),
                "wrote something other than a 400: {:?}",
                String::from_utf8_lossy(written)
            );
        }
    }
    assert_eq!(
        whole_written, split_written,
        "the verdict depends on how reads were split"
    );
    assert_eq!(whole_seen, split_seen, "handed on different bytes");
});
