//! A backend connection between exchanges: its TCP or TLS transport, its buffers and the
//! checks the idle pool makes on it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_rustls::client::TlsStream;

use crate::io::socket::Socket;

/// Read size for small bodies.
pub(super) const READ_CHUNK: usize = 8 * 1024;
/// Read size while a response head is awaited: a typical head and small body fit (nginx's
/// `proxy_buffer_size` is one 4 KiB page), and a connection waiting on a slow backend holds
/// no more than this. A larger head grows the buffer read by read.
pub(super) const HEAD_READ: usize = 2 * 1024;

/// The transport under an upstream connection.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(Socket),
    /// TLS to the backend.
    Tls(Box<TlsStream<Socket>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Stream::Tls(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Stream::Tls(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Stream::Tls(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(io) => io.is_write_vectored(),
            Stream::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(io) => Pin::new(io).poll_flush(cx),
            Stream::Tls(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Stream::Tls(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// An HTTP/1.1 connection to a backend, between exchanges.
#[derive(Debug)]
pub struct Connection {
    pub(super) io: Stream,
    /// Bytes read and not yet consumed.
    pub(super) buf: BytesMut,
    /// Where request heads are encoded; kept for the next request.
    pub(super) head: Vec<u8>,
    /// The response-head deadline, set by [`Connection::send`] before it is ever polled.
    pub(super) deadline: Deadline,
}

/// A deadline with one timer for a connection's life, moved only when it must: a deadline
/// later than the timer's is only noted, and the timer moves on to it when it fires early.
/// So a connection busy with one request after another moves its timer about once per
/// timeout, not once per request (a move is an update of the timer wheel's entry, and
/// converting the instant to its tick).
#[derive(Debug)]
pub(super) struct Deadline {
    timer: Pin<Box<Sleep>>,
    at: Instant,
}

impl Deadline {
    /// A deadline that has passed, to be set before it is polled. Called within the runtime
    /// (the timer belongs to its time driver).
    fn new() -> Self {
        let now = Instant::now();
        Self {
            timer: Box::pin(tokio::time::sleep_until(now)),
            at: now,
        }
    }

    /// Moves the deadline to `at`.
    pub(super) fn set(&mut self, at: Instant) {
        self.at = at;
        if at < self.timer.deadline() {
            self.timer.as_mut().reset(at);
        }
    }

    /// Ready once the deadline has passed.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            if self.at <= self.timer.deadline() {
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(self.at);
        }
    }
}

impl Connection {
    /// A connection over `io`, ready for its first request. Called within the runtime (the
    /// deadline timer belongs to its time driver). Boxed for its whole life: requests,
    /// responses and the idle pool move it around as one pointer.
    pub fn new(io: Stream) -> Box<Self> {
        Box::new(Self {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            deadline: Deadline::new(),
        })
    }

    /// Whether an idle connection can no longer carry a request: the backend closed it, reset
    /// it, or sent bytes nobody asked for. Costs no system call while the socket has no news.
    pub fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut byte = [0u8; 1];
        match &mut self.io {
            // Read only if the runtime saw the socket become readable; no waker is registered
            // (the request's own read registers the task's).
            Stream::Tcp(io) => match io.get_ref().try_read(&mut byte) {
                Err(err) => err.kind() != io::ErrorKind::WouldBlock,
                // A close (0) or stray bytes.
                Ok(_) => true,
            },
            Stream::Tls(io) => {
                let mut cx = Context::from_waker(Waker::noop());
                let mut probe = ReadBuf::new(&mut byte);
                !matches!(Pin::new(io).poll_read(&mut cx, &mut probe), Poll::Pending)
            }
        }
    }
}

/// Reads into `buf`, making room for `want` bytes first; `Ok(0)` at end of stream. An empty
/// `buf` holds no allocation while the backend is awaited: a buffer is taken for each read
/// attempt and dropped again if nothing came, so a thousand requests waiting on their
/// backends hold no read buffers.
pub(super) fn poll_read_into(
    io: &mut Stream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    want: usize,
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        let mut fresh = BytesMut::with_capacity(want);
        let read = ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut fresh))?;
        *buf = fresh;
        return Poll::Ready(Ok(read));
    }
    buf.reserve(want);
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{backend, connect, request, send};
    use super::Deadline;
    use crate::io::socket::Socket;
    use http::Method;
    use std::task::{Context, Waker};
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_at_the_last_time_set_later_or_earlier() {
        let mut deadline = Deadline::new();
        let start = Instant::now();
        let fired = |deadline: &mut Deadline| {
            deadline
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_ready()
        };
        deadline.set(start + Duration::from_secs(5));
        assert!(!fired(&mut deadline));
        // Moved later before the timer fires: only noted; the early firing is not the deadline.
        deadline.set(start + Duration::from_secs(8));
        tokio::time::sleep_until(start + Duration::from_secs(6)).await;
        assert!(!fired(&mut deadline));
        std::future::poll_fn(|cx| deadline.poll(cx)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(8));
        // A timer that fired, set later again, and then earlier than that: the earlier one.
        deadline.set(Instant::now() + Duration::from_secs(30));
        assert!(!fired(&mut deadline));
        deadline.set(Instant::now() + Duration::from_secs(2));
        let from = Instant::now();
        std::future::poll_fn(|cx| deadline.poll(cx)).await;
        assert_eq!(from.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn idle_connections_report_closes_and_stray_bytes() {
        let (addr, _heads) =
            backend(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], true).await;
        let mut response = send(connect(addr).await, request(Method::GET, "/"))
            .await
            .expect("response");
        let mut conn = response.body_mut().take_idle().expect("reusable");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !conn.is_closed() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "close never noticed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let (addr, _heads) = backend(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 408 Timeout\r\n\r\n"],
            false,
        )
        .await;
        let mut response = send(connect(addr).await, request(Method::GET, "/"))
            .await
            .expect("response");
        assert!(
            response.body_mut().take_idle().is_none(),
            "stray bytes buffered"
        );
    }

    #[tokio::test]
    async fn a_read_that_finds_nothing_holds_no_buffer() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let mut io = super::Stream::Tcp(Socket::new(client.expect("connect")));
        let (mut backend, _) = accepted.expect("accept");
        let mut buf = bytes::BytesMut::new();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(super::poll_read_into(&mut io, &mut cx, &mut buf, super::HEAD_READ).is_pending());
        assert_eq!(buf.capacity(), 0, "nothing came, so no buffer is kept");
        backend
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("write");
        let read = std::future::poll_fn(|cx| {
            super::poll_read_into(&mut io, cx, &mut buf, super::HEAD_READ)
        })
        .await
        .expect("read");
        assert_eq!(&buf[..read], b"HTTP/1.1 204 No Content\r\n\r\n");
        assert!(buf.capacity() >= super::HEAD_READ);
    }
}
