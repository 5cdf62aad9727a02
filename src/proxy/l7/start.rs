//! How a quiet client connection starts, or goes on after being parked: its first bytes,
//! read with no buffer held while nothing comes, and HTTP/2's preface told from HTTP/1.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncRead;

/// How a client connection starts, or goes on after being parked.
#[derive(Debug)]
pub(super) enum Start {
    /// HTTP/1 bytes (the start of a request).
    Http1(Bytes),
    /// HTTP/2's connection preface, whole, and whatever came with it.
    Http2(Bytes),
    /// The client closed the connection.
    Closed,
}

/// The client's connection preface in HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads what arrived of a quiet client's next bytes, holding no buffer while nothing comes
/// (the read lands on the stack: [`crate::io::poll_read_landing`]). With `sniff` it also
/// tells HTTP/2's preface from HTTP/1: a first read that is only part of the preface waits in
/// `preface` (boxed: rare) for the reads that complete it or rule it out.
pub(super) fn poll_start<T: AsyncRead + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    sniff: bool,
    preface: &mut Option<Box<BytesMut>>,
) -> Poll<std::io::Result<Start>> {
    loop {
        let (read, start) = match preface.as_deref_mut() {
            Some(part) => {
                part.reserve(H2_PREFACE.len());
                let read = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, part))?;
                (read, std::mem::take(part))
            }
            None => {
                let mut start = BytesMut::new();
                let read = ready!(crate::io::poll_read_landing(io, cx, &mut start))?;
                (read, start)
            }
        };
        *preface = None;
        if start.is_empty() {
            return Poll::Ready(Ok(Start::Closed));
        }
        let seen = start.len().min(H2_PREFACE.len());
        if read == 0 || !sniff || start[..seen] != H2_PREFACE[..seen] {
            // Anything but the preface, or part of it and then the end: HTTP/1's bytes.
            return Poll::Ready(Ok(Start::Http1(start.freeze())));
        }
        if seen == H2_PREFACE.len() {
            return Poll::Ready(Ok(Start::Http2(start.freeze())));
        }
        *preface = Some(Box::new(start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// Reads a connection's start as its wait does.
    async fn read_start(io: &mut TcpStream, sniff: bool) -> std::io::Result<Start> {
        let mut preface = None;
        std::future::poll_fn(|cx| poll_start(io, cx, sniff, &mut preface)).await
    }

    /// A connected pair on loopback: (the proxy's end, the client's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (server, client)
    }

    #[tokio::test]
    async fn the_first_read_takes_a_whole_request_head() {
        let (mut server, mut client) = pair().await;
        let head = format!(
            "GET / HTTP/1.1\r\nhost: app.test\r\ncookie: {}\r\n\r\n",
            "c".repeat(2000)
        );
        client.write_all(head.as_bytes()).await.expect("write");
        match read_start(&mut server, true).await.expect("read") {
            Start::Http1(first) => assert_eq!(first, head.as_bytes(), "all of it, in one read"),
            other => panic!("expected HTTP/1, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_preface_split_across_writes_is_http2() {
        let (mut server, mut client) = pair().await;
        let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
        tokio::spawn(async move {
            client.write_all(&H2_PREFACE[..10]).await.expect("write");
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(&H2_PREFACE[10..]).await.expect("write");
            client.write_all(&settings).await.expect("write");
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        match read_start(&mut server, true).await.expect("read") {
            Start::Http2(first) => assert!(first.starts_with(H2_PREFACE), "{first:?}"),
            other => panic!("expected HTTP/2, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_client_gone_before_a_byte_is_closed_and_a_parked_one_needs_no_sniffing() {
        let (mut server, client) = pair().await;
        drop(client);
        assert!(matches!(
            read_start(&mut server, true).await.expect("read"),
            Start::Closed
        ));
        let (mut server, mut client) = pair().await;
        client.write_all(&H2_PREFACE[..3]).await.expect("write");
        match read_start(&mut server, false).await.expect("read") {
            Start::Http1(first) => assert_eq!(first, &H2_PREFACE[..3]),
            other => panic!("a waking connection is HTTP/1 already, got {other:?}"),
        }
    }
}
