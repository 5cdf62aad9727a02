//! The client socket as hyper reads it: every byte read goes through the head scanner, whose
//! verdict and incomplete heads are published for the handler and the header-read timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::check::FramingCheck;
use super::scan::HeadScanner;
use crate::proxy::activity::Activity;

/// Client connection wrapper that feeds every byte read into a [`HeadScanner`], records its
/// verdict in a shared [`FramingCheck`] and tells the connection's [`Activity`] when a read
/// ends inside a request head (for the header-read timeout); writes pass straight through.
#[derive(Debug)]
pub(crate) struct ScannedIo<T> {
    /// The client socket.
    inner: T,
    /// Scanner of the bytes read from `inner`.
    scanner: HeadScanner,
    /// Where the scanner's verdict goes.
    check: Arc<FramingCheck>,
    /// Where an incomplete head is published.
    activity: Arc<Activity>,
    /// The last value given to [`Activity::await_head`].
    published: u32,
}

impl<T> ScannedIo<T> {
    /// Wraps a fresh client connection; the returned check is for its request handler.
    /// `max_head_bytes` should be at least hyper's `max_buf_size` (see [`HeadScanner`]).
    /// The first request head counts as awaited from now.
    pub(crate) fn new(
        inner: T,
        max_head_bytes: usize,
        activity: Arc<Activity>,
    ) -> (Self, Arc<FramingCheck>) {
        let check = Arc::new(FramingCheck::new());
        let scanner = HeadScanner::new(max_head_bytes);
        let published = scanner.awaiting_head();
        activity.await_head(published);
        let io = Self {
            inner,
            scanner,
            check: Arc::clone(&check),
            activity,
            published,
        };
        (io, check)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ScannedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let fresh = buf.filled().get(before..).unwrap_or_default();
            if let Some(index) = this.scanner.feed(fresh) {
                this.check.mark_bad(index);
            }
            let awaiting = this.scanner.awaiting_head();
            if awaiting != this.published {
                this.published = awaiting;
                this.activity.await_head(awaiting);
            }
        }
        result
    }
}

crate::io::delegate_async_write!(ScannedIo, inner);

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper::service::service_fn;
    use hyper::{Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Head limit of the scanner under test.
    const MAX_HEAD: usize = 1024;

    /// A clean GET.
    const GET: &str = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    #[tokio::test]
    async fn scanned_io_over_duplex() {
        let (mut client, server) = tokio::io::duplex(16);
        let (mut io, check) = ScannedIo::new(server, MAX_HEAD, Arc::default());
        let smuggled =
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
        let request = format!("{GET}{smuggled}");
        let writer = tokio::spawn(async move {
            client
                .write_all(request.as_bytes())
                .await
                .expect("write request");
            let mut reply = [0; 5];
            client.read_exact(&mut reply).await.expect("read reply");
            reply
        });
        let mut received = Vec::new();
        let mut buf = [0; 7];
        while received.len() < GET.len() + smuggled.len() {
            let n = io.read(&mut buf).await.expect("read");
            received.extend_from_slice(&buf[..n]);
        }
        assert_eq!(received, format!("{GET}{smuggled}").as_bytes());
        assert!(!check.next_request_is_bad());
        assert!(check.next_request_is_bad());
        io.write_all(b"reply").await.expect("write reply");
        io.flush().await.expect("flush");
        assert_eq!(&writer.await.expect("join"), b"reply");
    }

    #[tokio::test]
    async fn hyper_request_handler_sees_flag() {
        let (mut client, server) = tokio::io::duplex(4096);
        let (io, check) = ScannedIo::new(server, MAX_HEAD, Arc::default());
        let service = service_fn(move |_request| {
            let status = if check.next_request_is_bad() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            let mut response = Response::new(Empty::<Bytes>::new());
            *response.status_mut() = status;
            async move { Ok::<_, Infallible>(response) }
        });
        let server = tokio::spawn(
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service),
        );
        let smuggled = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\
                        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let request = format!("{GET}{smuggled}{GET}");
        client.write_all(request.as_bytes()).await.expect("write");
        let mut replies = String::new();
        client.read_to_string(&mut replies).await.expect("read");
        let statuses: Vec<&str> = replies
            .lines()
            .filter(|line| line.starts_with("HTTP/1.1 "))
            .collect();
        assert_eq!(statuses, ["HTTP/1.1 200 OK", "HTTP/1.1 400 Bad Request"]);
        server.await.expect("join").expect("serve");
    }
}
