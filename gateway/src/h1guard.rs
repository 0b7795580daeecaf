//! Request-smuggling guard for HTTP/1 listeners. hyper, like RFC 9112 allows, treats a request
//! carrying both `Content-Length` and `Transfer-Encoding` as chunked and closes afterwards; a
//! proxy in front of other parsers must refuse it outright (400, connection closed), so that no
//! two hops can ever frame the same bytes differently.
//!
//! [`H1Guard`] wraps a connection's read side and tracks HTTP/1 request framing (head, then a
//! `Content-Length` or chunked body). Each head is held back until it is complete: a conflicting
//! one never reaches hyper; the guard writes the 400 itself and ends the stream. An HTTP/2
//! preface, an upgrade or CONNECT, or a head too large to hold switches it to pass-through
//! (hyper then applies its own limits, e.g. 431).
//!
//! It also owns the header-read timeout: a request head must arrive whole within the limit from
//! its first byte (a slow-loris defence). The clock does not run while a keep-alive connection
//! waits for its next request; that is the idle timeout's job.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

const REJECT: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 64\r\nconnection: close\r\nx-isthmus-error: conflicting framing headers\r\n\r\nrequest has both Content-Length and Transfer-Encoding: refused\r\n";

/// Bytes read from the peer per read call.
const READ_CHUNK: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Accumulating a request head.
    Head,
    /// `n` body bytes left.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// `n` chunk bytes left, then CRLF.
    ChunkData(u64),
    ChunkCrlf,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// No more framing to check (HTTP/2, upgrades, oversize heads).
    PassThrough,
    /// Writing the 400, then EOF.
    Rejecting(usize),
    Done,
}

pub struct H1Guard<T> {
    inner: T,
    state: Framing,
    /// Bytes read from the peer not yet handed on (a partial head, or a line).
    held: Vec<u8>,
    /// Bytes ready to hand on.
    out: Vec<u8>,
    /// The read buffer, reused.
    scratch: Vec<u8>,
    out_pos: usize,
    max_head: usize,
    first: bool,
    head_timeout: Option<Duration>,
    /// Running while a request head is partly read.
    head_deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> H1Guard<T> {
    pub fn new(inner: T, max_head: usize) -> Self {
        Self {
            inner,
            state: Framing::Head,
            held: Vec::new(),
            out: Vec::new(),
            scratch: Vec::new(),
            out_pos: 0,
            max_head,
            first: true,
            head_timeout: None,
            head_deadline: None,
        }
    }

    /// Closes the connection when a request head takes longer than `timeout` from its first
    /// byte.
    pub fn with_head_timeout(mut self, timeout: Duration) -> Self {
        self.head_timeout = Some(timeout);
        self
    }

    fn head_in_progress(&self) -> bool {
        self.state == Framing::Head && !self.held.is_empty()
    }

    /// Feeds bytes read from the peer through the framing tracker into `out`.
    fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            match self.state {
                Framing::PassThrough => {
                    self.out.extend_from_slice(input);
                    return;
                }
                Framing::Rejecting(_) | Framing::Done => return,
                Framing::Body(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(input.len());
                    self.out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        Framing::Head
                    } else {
                        Framing::Body(left)
                    };
                }
                Framing::ChunkData(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(input.len());
                    self.out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        Framing::ChunkCrlf
                    } else {
                        Framing::ChunkData(left)
                    };
                }
                Framing::Head => input = self.feed_head(input),
                Framing::ChunkSize | Framing::ChunkCrlf | Framing::Trailers => {
                    let byte = input[0];
                    input = &input[1..];
                    self.held.push(byte);
                    self.step_line();
                    if self.held.len() > self.max_head {
                        // Too large to judge: hyper refuses it with 431.
                        self.out.append(&mut self.held);
                        self.state = Framing::PassThrough;
                    }
                }
            }
        }
    }

    /// Takes bytes of a request head in bulk: held until the blank line ends it, then judged.
    /// Returns the input left after the head (body bytes or the next request).
    fn feed_head<'a>(&mut self, mut input: &'a [u8]) -> &'a [u8] {
        // Empty lines before a request line are skipped, as hyper's parser skips them (RFC 9112
        // §2.2): CRLF or a bare LF, also when a CRLF is split across two reads. Judged as part of
        // the head instead, they would hide its request line (a CONNECT) depending on how the
        // peer's bytes happened to be split.
        loop {
            if self.held == b"\r" && input.first() == Some(&b'\n') {
                self.held.clear();
                self.out.extend_from_slice(b"\r\n");
                input = &input[1..];
            } else if self.held.is_empty() && input.first() == Some(&b'\n') {
                self.out.push(b'\n');
                input = &input[1..];
            } else if self.held.is_empty() && input.starts_with(b"\r\n") {
                self.out.extend_from_slice(b"\r\n");
                input = &input[2..];
            } else {
                break;
            }
        }
        if input.is_empty() {
            return input;
        }
        let old = self.held.len();
        if self.first && old < 4 {
            let mut prefix = self.held.clone();
            prefix.extend_from_slice(&input[..input.len().min(4 - old)]);
            if prefix == b"PRI " {
                // The HTTP/2 preface (h2c with prior knowledge).
                self.out.append(&mut self.held);
                self.out.extend_from_slice(input);
                self.state = Framing::PassThrough;
                return &[];
            }
        }
        let search_from = old.saturating_sub(3);
        let take = input.len().min(self.max_head + 4 - old.min(self.max_head));
        self.held.extend_from_slice(&input[..take]);
        let end = head_end(&self.held, search_from);
        let Some(end) = end else {
            if self.held.len() > self.max_head {
                // Too large to judge: hyper refuses it with 431.
                self.out.append(&mut self.held);
                self.state = Framing::PassThrough;
                self.out.extend_from_slice(&input[take..]);
                return &[];
            }
            return &input[take..];
        };
        // Bytes after the head go back to the input: they belong to the body or the next request.
        let consumed = end - old;
        self.held.truncate(end);
        self.first = false;
        self.state = judge(&self.held);
        if matches!(self.state, Framing::Rejecting(_)) {
            self.held.clear();
            return &[];
        }
        self.out.append(&mut self.held);
        &input[consumed..]
    }

    /// Advances after one byte was held, at line boundaries of a chunked body.
    fn step_line(&mut self) {
        match self.state {
            Framing::ChunkSize | Framing::ChunkCrlf | Framing::Trailers => {
                if !self.held.ends_with(b"\n") {
                    return;
                }
                let line = std::mem::take(&mut self.held);
                let text = trim_line(&line);
                self.state = match self.state {
                    Framing::ChunkSize => {
                        let size = text.split(|b| *b == b';').next().unwrap_or_default();
                        match std::str::from_utf8(size)
                            .ok()
                            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                        {
                            Some(0) => Framing::Trailers,
                            Some(n) => Framing::ChunkData(n),
                            // Malformed: hyper will refuse it; stop judging.
                            None => Framing::PassThrough,
                        }
                    }
                    Framing::ChunkCrlf => Framing::ChunkSize,
                    _ if text.is_empty() => Framing::Head,
                    _ => Framing::Trailers,
                };
                self.out.extend_from_slice(&line);
            }
            _ => {}
        }
    }
}

/// Where the head in `buf` ends (just past its blank line), searching from `from`. Lines may end
/// in CRLF or a bare LF, as hyper reads them: a head the parser would take is always judged
/// here, never held until the read timeout or passed on unjudged.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = buf.get(i..)?.iter().position(|b| *b == b'\n') {
        let at = i + p;
        match (buf.get(at + 1), buf.get(at + 2)) {
            (Some(b'\n'), _) => return Some(at + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(at + 3),
            _ => i = at + 1,
        }
    }
    None
}

fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What follows a complete request head.
fn judge(head: &[u8]) -> Framing {
    let mut lines = head.split(|b| *b == b'\n').map(trim_line);
    let request_line = lines.next().unwrap_or_default();
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut has_te = false;
    let mut has_cl = false;
    let mut upgrade = request_line.starts_with(b"CONNECT ");
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            has_cl = true;
            content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
            chunked = value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    if has_te && has_cl {
        return Framing::Rejecting(0);
    }
    if upgrade {
        return Framing::PassThrough;
    }
    if has_te {
        return if chunked {
            Framing::ChunkSize
        } else {
            // hyper refuses a non-chunked transfer-encoding with 400.
            Framing::PassThrough
        };
    }
    match (has_cl, content_length) {
        (false, _) | (true, Some(0)) => Framing::Head,
        (true, Some(n)) => Framing::Body(n),
        // An unparsable length: hyper refuses it with 400.
        (true, None) => Framing::PassThrough,
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for H1Guard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.state {
                Framing::Rejecting(written) => {
                    if written < REJECT.len() {
                        let n =
                            ready!(Pin::new(&mut this.inner).poll_write(cx, &REJECT[written..]))?;
                        this.state = Framing::Rejecting(written + n);
                        if n == 0 {
                            this.state = Framing::Done;
                        }
                        continue;
                    }
                    ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
                    tracing::debug!(
                        "refused a request with both Content-Length and Transfer-Encoding"
                    );
                    this.state = Framing::Done;
                    continue;
                }
                Framing::Done => return Poll::Ready(Ok(())),
                Framing::PassThrough => return Pin::new(&mut this.inner).poll_read(cx, buf),
                _ => {}
            }
            if this.head_in_progress() {
                if let Some(timeout) = this.head_timeout {
                    let deadline = this
                        .head_deadline
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if deadline.as_mut().poll(cx).is_ready() {
                        tracing::debug!(
                            timeout_ms = timeout.as_millis() as u64,
                            "request head not complete in time: closing"
                        );
                        this.state = Framing::Done;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not complete in time",
                        )));
                    }
                }
            } else {
                this.head_deadline = None;
            }
            let mut chunk = std::mem::take(&mut this.scratch);
            if chunk.len() < READ_CHUNK {
                chunk.resize(READ_CHUNK, 0);
            }
            let mut read = ReadBuf::new(&mut chunk);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut read);
            let n = read.filled().len();
            if let Poll::Ready(Err(_)) | Poll::Pending = polled {
                this.scratch = chunk;
                return polled;
            }
            if n == 0 {
                this.scratch = chunk;
                // EOF: hand on whatever was held; hyper judges a truncated request.
                this.out.append(&mut this.held);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.state = Framing::PassThrough;
                continue;
            }
            this.feed(&chunk[..n]);
            this.scratch = chunk;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for H1Guard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], split: usize) -> (Vec<u8>, Framing) {
        let mut g = H1Guard::new((), 1024);
        for part in input.chunks(split.max(1)) {
            g.feed(part);
        }
        (g.out, g.state)
    }

    #[test]
    fn well_framed_requests_pass_unchanged_in_any_split() {
        let pipelined: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: y\r\n\r\nGET /d HTTP/1.1\r\n\r\n";
        for split in [1, 2, 7, 64, 4096] {
            let (out, state) = run(pipelined, split);
            assert_eq!(out, pipelined, "split {split}");
            assert_eq!(state, Framing::Head, "split {split}");
        }
    }

    #[test]
    fn conflicting_framing_is_held_back_and_refused_even_after_a_good_request() {
        let cases: [&[u8]; 4] = [
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 0\r\n\r\n",
            b"GET /ok HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiPOST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for (i, input) in cases.iter().enumerate() {
            let (out, state) = run(input, 3);
            assert_eq!(state, Framing::Rejecting(0), "case {i}");
            assert!(
                !out.windows(6).any(|w| w.eq_ignore_ascii_case(b"POST /")),
                "case {i}: the conflicting head must not reach the parser"
            );
        }
        let (out, _) = run(cases[3], 5);
        assert_eq!(out, b"GET /ok HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
    }

    #[test]
    fn heads_with_bare_lf_lines_are_judged_like_crlf_ones() {
        let smuggle: &[u8] =
            b"POST / HTTP/1.1\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
        for split in [1, 3, 4096] {
            let (out, state) = run(smuggle, split);
            assert_eq!(state, Framing::Rejecting(0), "split {split}");
            assert!(out.is_empty(), "split {split}: {out:?}");
        }
        // A plain bare-LF request reaches the parser at once, not at the head read timeout.
        let (out, state) = run(b"GET / HTTP/1.1\nHost: x\n\n", 2);
        assert_eq!(out, b"GET / HTTP/1.1\nHost: x\n\n");
        assert_eq!(state, Framing::Head);
        let (out, state) = run(b"GET / HTTP/1.1\r\nHost: x\n\r\nGET", 5);
        assert_eq!(out, b"GET / HTTP/1.1\r\nHost: x\n\r\n");
        assert_eq!(
            state,
            Framing::Head,
            "the next request's first bytes are held"
        );
    }

    #[test]
    fn empty_lines_before_a_request_are_skipped_in_any_split() {
        // Found by fuzz/fuzz_targets/h1_guard.rs: a CRLF split across two reads was held as the
        // start of the head, so its first line, not the request line, was judged as one.
        let cases: [&[u8]; 4] = [
            b"\r\nCONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\nbinary",
            b"\nCONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\nbinary",
            b"\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
            b"\r\nTransfer-Encoding: chunked\r\n\r\xff\n0PRI \r/ad\r\nHost:ET / a\r\nContent-Length: 5$\n a\r\n\r\n",
        ];
        for (i, input) in cases.iter().enumerate() {
            let whole = run(input, 4096);
            for split in [1, 2, 3] {
                assert_eq!(run(input, split), whole, "case {i}, split {split}");
            }
            assert_eq!(whole, (input.to_vec(), Framing::PassThrough), "case {i}");
        }
    }

    /// Every head hyper can parse is judged: with `max_header_bytes` below hyper's smallest
    /// buffer (8 KiB), a 2 KiB head carrying both Content-Length and Transfer-Encoding is
    /// refused by a guard sized as the listeners size it, not passed on to hyper unjudged.
    #[test]
    fn a_guard_sized_for_the_server_judges_every_head_hyper_would_parse() {
        let limits = crate::config::Limits {
            max_header_bytes: 1024,
            ..Default::default()
        };
        let mut head = b"POST /x HTTP/1.1\r\nHost: x\r\n".to_vec();
        head.extend_from_slice(format!("X-Pad: {}\r\n", "a".repeat(2048)).as_bytes());
        head.extend_from_slice(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        let mut g = H1Guard::new((), limits.h1_head_bytes());
        g.feed(&head);
        assert_eq!(g.state, Framing::Rejecting(0));
        assert!(g.out.is_empty(), "nothing of it reaches hyper");
        // Sized by max_header_bytes alone, the guard let it through unjudged.
        let mut g = H1Guard::new((), limits.max_header_bytes);
        g.feed(&head);
        assert_eq!(g.state, Framing::PassThrough);
    }

    #[test]
    fn h2_preface_upgrades_and_oversize_heads_pass_through() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        assert_eq!(run(preface, 3), (preface.to_vec(), Framing::PassThrough));
        let ws =
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello";
        assert_eq!(run(ws, 4), (ws.to_vec(), Framing::PassThrough));
        let connect = b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\nbinary";
        assert_eq!(run(connect, 4).1, Framing::PassThrough);
        let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 2000]].concat();
        let (out, state) = run(&big, 100);
        assert_eq!((out, state), (big, Framing::PassThrough));
    }

    #[tokio::test]
    async fn a_conflicting_request_gets_400_and_eof() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (client, server) = tokio::io::duplex(4096);
        let mut guard = H1Guard::new(server, 1024);
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .expect("write");
        let mut seen = Vec::new();
        let n = guard.read_to_end(&mut seen).await.expect("read");
        assert_eq!(n, 0, "the server side sees nothing of the request");
        drop(guard);
        let mut reply = Vec::new();
        rd.read_to_end(&mut reply).await.expect("reply");
        assert!(reply.starts_with(b"HTTP/1.1 400 "), "{reply:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_must_arrive_in_time_but_an_idle_connection_is_not_cut() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut client, server) = tokio::io::duplex(4096);
        let mut guard = H1Guard::new(server, 1024).with_head_timeout(Duration::from_secs(1));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let n = guard.read(&mut buf).await.expect("a whole head passes");
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        // Idle between requests: no clock.
        let idle = tokio::time::timeout(Duration::from_secs(30), guard.read(&mut buf)).await;
        assert!(idle.is_err(), "an idle keep-alive connection stays open");
        // Half a head, then silence: cut after the timeout.
        client.write_all(b"GET /slow").await.expect("write");
        let started = tokio::time::Instant::now();
        let err = guard.read(&mut buf).await.expect_err("timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(1));
    }
}
