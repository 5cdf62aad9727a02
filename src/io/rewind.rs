//! An IO object with bytes put back in front of what it reads.
//!
//! Bytes read ahead of the code that will parse them (an HTTP/2 preface sniffed before the
//! server starts, what followed a `101` response on either side) are handed back this way, so
//! the next reader sees the stream exactly as sent.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, ReadBuf};

/// `inner`, with `prefix` read first.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// `inner` with `prefix` in front of its bytes.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let take = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..take]);
        this.prefix.advance(take);
        if this.prefix.is_empty() {
            // Releases the buffer the prefix was cut from.
            this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

delegate_async_write!(Rewind, inner);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_prefix_comes_first_in_stream_order() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = Rewind::new(Bytes::from_static(b"abcd"), server);
        client.write_all(b"ef").await.expect("write");
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"abcdef");
    }

    #[test]
    fn a_drained_prefix_releases_its_buffer() {
        let (_client, io) = tokio::io::duplex(64);
        let mut held = bytes::BytesMut::with_capacity(8192);
        held.extend_from_slice(b"x");
        let buffer = held.freeze();
        let mut io = Rewind::new(buffer.clone(), io);
        assert!(!buffer.is_unique());
        let mut byte = [0u8; 1];
        let mut read = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut read).is_ready());
        assert_eq!(read.filled(), b"x");
        assert!(buffer.is_unique(), "the drained prefix kept the buffer");
    }

    #[tokio::test]
    async fn small_reads_drain_the_prefix_piece_by_piece() {
        let (_client, server) = tokio::io::duplex(64);
        let mut io = Rewind::new(Bytes::from_static(b"hello"), server);
        let mut two = [0u8; 2];
        io.read_exact(&mut two).await.expect("read");
        assert_eq!(&two, b"he");
        let mut three = [0u8; 3];
        io.read_exact(&mut three).await.expect("read");
        assert_eq!(&three, b"llo");
    }
}
