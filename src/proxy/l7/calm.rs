//! What fulcrum adds to h2's own HTTP/2 abuse limits: a per-connection budget of streams the
//! client cancelled after they were dispatched, and GOAWAY (ENHANCE_YOUR_CALM) when it is spent.
//!
//! h2 already ends a connection with ENHANCE_YOUR_CALM for streams reset before hyper accepted
//! them (`max_pending_accept_reset_streams`), for too many streams it had to reset itself
//! (`max_local_error_reset_streams`), and for CONTINUATION floods and oversized header lists.
//! A stream reset *after* it was dispatched escapes all of them, yet each one is a backend
//! request started and abandoned (CVE-2023-44487's costly variant): [`StreamGuard`] counts
//! those, and [`CalmIo`] writes the GOAWAY, since hyper can only send a graceful NO_ERROR one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// HTTP/2's frame header: length (3), type, flags, stream id (4); RFC 9113 §4.1.
const FRAME_HEADER: usize = 9;
/// The client connection preface, which precedes the client's first frame (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// GOAWAY debug data, for whoever reads the client's logs.
const DEBUG_DATA: &[u8] = b"too_many_cancelled_streams";

/// One connection's budget of streams the client cancelled after dispatch.
#[derive(Debug)]
pub(super) struct CancelBudget {
    max: u32,
    cancelled: AtomicU32,
    /// Set once the budget is spent: [`CalmIo`] then ends the connection at a frame boundary.
    spent: AtomicBool,
    /// Wakes the connection task when the budget is spent (a permit is kept if it is not
    /// waiting yet).
    wake: Notify,
}

impl CancelBudget {
    /// A budget of `max` cancelled streams.
    pub(super) fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            cancelled: AtomicU32::new(0),
            spent: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    /// Counts one cancelled stream.
    fn cancelled(&self) {
        let count = self
            .cancelled
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if count == self.max.saturating_add(1) {
            self.spent.store(true, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// Completes once more than `max` streams were cancelled.
    pub(super) async fn spent(&self) {
        self.wake.notified().await;
    }

    /// Streams cancelled so far.
    pub(super) fn count(&self) -> u32 {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn is_spent(&self) -> bool {
        self.spent.load(Ordering::Relaxed)
    }
}

/// Held by an HTTP/2 request from dispatch to the end of its response body; dropped before
/// [`StreamGuard::finish`], it counts a cancelled stream.
#[derive(Debug)]
pub(crate) struct StreamGuard(Option<Arc<CancelBudget>>);

impl StreamGuard {
    pub(super) fn new(budget: &Arc<CancelBudget>) -> Self {
        Self(Some(Arc::clone(budget)))
    }

    /// The exchange is complete: the response body was sent to its end.
    pub(crate) fn finish(mut self) {
        self.0 = None;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(budget) = self.0.take() {
            budget.cancelled();
        }
    }
}

/// Where a byte stream of HTTP/2 frames is: how much of a frame header it has seen, and how
/// many payload bytes remain.
#[derive(Debug, Default)]
struct FrameCursor {
    head: [u8; FRAME_HEADER],
    have: usize,
    payload_left: usize,
}

impl FrameCursor {
    /// Moves over `bytes`, calling `on_head(type, stream id)` at each complete frame header.
    fn feed(&mut self, mut bytes: &[u8], mut on_head: impl FnMut(u8, u32)) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(bytes.len());
                self.payload_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (FRAME_HEADER - self.have).min(bytes.len());
            self.head[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == FRAME_HEADER {
                self.have = 0;
                let [l0, l1, l2, kind, _, s0, s1, s2, s3] = self.head;
                self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                on_head(kind, u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]));
            }
        }
    }

    /// Bytes until the current frame ends; 0 between frames.
    fn to_boundary(&self) -> usize {
        if self.have > 0 {
            FRAME_HEADER - self.have
        } else {
            self.payload_left
        }
    }
}

/// The GOAWAY (ENHANCE_YOUR_CALM) frame naming `last_stream_id`.
fn goaway_frame(last_stream_id: u32) -> Vec<u8> {
    let length = u32::try_from(8 + DEBUG_DATA.len())
        .unwrap_or(8)
        .to_be_bytes();
    let mut frame = Vec::with_capacity(FRAME_HEADER + 8 + DEBUG_DATA.len());
    frame.extend_from_slice(&length[1..]);
    frame.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
    frame.extend_from_slice(&(last_stream_id & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frame.extend_from_slice(DEBUG_DATA);
    frame
}

/// A client's HTTP/2 byte stream under hyper's server. It follows the frames both ways; once
/// the budget is spent, it lets hyper finish the frame it is writing, writes GOAWAY
/// (ENHANCE_YOUR_CALM, naming the last stream the client opened) and then fails every write,
/// which ends hyper's connection.
#[derive(Debug)]
pub(super) struct CalmIo<T> {
    inner: T,
    budget: Arc<CancelBudget>,
    preface_left: usize,
    incoming: FrameCursor,
    outgoing: FrameCursor,
    last_stream_id: u32,
    /// The GOAWAY being written, and how much of it is out.
    goaway: Option<(Vec<u8>, usize)>,
    /// The GOAWAY is out: the connection is over.
    done: bool,
}

impl<T> CalmIo<T> {
    pub(super) fn new(inner: T, budget: Arc<CancelBudget>) -> Self {
        Self {
            inner,
            budget,
            preface_left: PREFACE_LEN,
            incoming: FrameCursor::default(),
            outgoing: FrameCursor::default(),
            last_stream_id: 0,
            goaway: None,
            done: false,
        }
    }
}

fn over() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "HTTP/2 connection ended with GOAWAY (ENHANCE_YOUR_CALM)",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for CalmIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let mut fresh = &buf.filled()[before..];
        let skip = this.preface_left.min(fresh.len());
        this.preface_left -= skip;
        fresh = &fresh[skip..];
        let last = &mut this.last_stream_id;
        this.incoming.feed(fresh, |kind, stream| {
            if kind == HEADERS {
                *last = (*last).max(stream);
            }
        });
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CalmIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Err(over()));
        }
        if this.budget.is_spent() && this.outgoing.to_boundary() == 0 {
            let (frame, written) = this
                .goaway
                .get_or_insert_with(|| (goaway_frame(this.last_stream_id), 0));
            while *written < frame.len() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &frame[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
            this.done = true;
            return Poll::Ready(Err(over()));
        }
        let limit = match this.outgoing.to_boundary() {
            0 => buf.len(),
            // Spent: nothing past the end of the frame in progress.
            left if this.budget.is_spent() => left.min(buf.len()),
            _ => buf.len(),
        };
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..limit]))?;
        this.outgoing.feed(&buf[..n], |_, _| {});
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{CalmIo, CancelBudget, FrameCursor, StreamGuard, goaway_frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("small").to_be_bytes();
        let mut bytes = vec![len[1], len[2], len[3], kind, 0];
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn the_cursor_finds_every_frame_however_the_bytes_are_split() {
        let mut stream = frame(0x1, 1, b"abc");
        stream.extend(frame(0x3, 1, &[0; 4]));
        stream.extend(frame(0x1, 7, &[]));
        for split in 1..stream.len() {
            let mut cursor = FrameCursor::default();
            let mut seen = Vec::new();
            for chunk in stream.chunks(split) {
                cursor.feed(chunk, |kind, id| seen.push((kind, id)));
            }
            assert_eq!(seen, [(1, 1), (3, 1), (1, 7)], "chunks of {split}");
            assert_eq!(cursor.to_boundary(), 0);
        }
    }

    #[test]
    fn a_guard_counts_only_when_dropped_unfinished() {
        let budget = CancelBudget::new(1);
        StreamGuard::new(&budget).finish();
        assert_eq!(budget.count(), 0);
        drop(StreamGuard::new(&budget));
        assert!(!budget.is_spent());
        drop(StreamGuard::new(&budget));
        assert!(budget.is_spent());
        assert_eq!(budget.count(), 2);
    }

    #[tokio::test]
    async fn a_spent_budget_finishes_the_frame_then_writes_goaway_and_fails() {
        let (near, mut far) = tokio::io::duplex(4096);
        let budget = CancelBudget::new(0);
        let mut io = CalmIo::new(near, std::sync::Arc::clone(&budget));
        let data = frame(0x0, 3, b"hello");
        io.write_all(&data[..7]).await.expect("half a frame");
        drop(StreamGuard::new(&budget));
        // The rest of the frame goes out, nothing after it.
        let mut next = data[7..].to_vec();
        next.extend(frame(0x0, 3, b"more"));
        let mut written = 0;
        while let Ok(n) = io.write(&next[written..]).await {
            written += n;
        }
        assert_eq!(
            written,
            data.len() - 7,
            "the frame's end, then GOAWAY and no more"
        );
        assert!(io.write(b"x").await.is_err());
        drop(io);
        let mut out = Vec::new();
        far.read_to_end(&mut out).await.expect("read");
        let mut expected = data.clone();
        expected.extend(goaway_frame(0));
        assert_eq!(out, expected);
    }
}
