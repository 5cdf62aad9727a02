//! Byte-stream helpers both sides of the proxy share.
//!
//! [`rewind`] puts bytes read ahead back in front of a stream; `delegate_async_write!` passes a
//! wrapper's writes through to the stream inside it; [`poll_read_landing`] reads a message head
//! without holding a buffer while nothing comes; [`socket`] reads and writes TCP sockets with
//! direct system calls.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

/// Implements `AsyncWrite` for a wrapper `$wrapper<T>` by passing every call to its field
/// `$field` (an `Unpin` IO); `poll_shutdown` goes to the field's `$shutdown` (by default its
/// own `poll_shutdown`).
macro_rules! delegate_async_write {
    ($wrapper:ident, $field:tt) => {
        $crate::io::delegate_async_write!($wrapper, $field, poll_shutdown);
    };
    ($wrapper:ident, $field:tt, $shutdown:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<T> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$field).$shutdown(cx)
            }
        }
    };
}

pub(crate) use delegate_async_write;

pub(crate) mod rewind;
pub(crate) mod socket;

/// The most one read into an empty buffer takes: the stack room [`poll_read_landing`] reads
/// into.
pub(crate) const LANDING: usize = 4 * 1024;

/// Reads from `io` into the empty `buf`, taking no allocation while nothing comes: the read
/// lands on the stack, and only what arrived is copied into a buffer of its own size. A head
/// mostly arrives whole in one read of a few hundred bytes, so this costs a small copy where a
/// buffer of kilobytes was taken for every read attempt (and given back when it found nothing).
pub(crate) fn poll_read_landing<T: AsyncRead + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    debug_assert!(buf.is_empty(), "only an empty buffer is replaced");
    let mut landing = [MaybeUninit::<u8>::uninit(); LANDING];
    let mut read = ReadBuf::uninit(&mut landing);
    ready!(Pin::new(io).poll_read(cx, &mut read))?;
    let arrived = read.filled();
    if !arrived.is_empty() {
        *buf = BytesMut::from(arrived);
    }
    Poll::Ready(Ok(arrived.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_landing_read_holds_only_what_came() {
        let (mut io, mut peer) = tokio::io::duplex(64 * 1024);
        let mut buf = BytesMut::new();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(poll_read_landing(&mut io, &mut cx, &mut buf).is_pending());
        assert_eq!(buf.capacity(), 0, "nothing came, so no buffer is kept");
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let read = std::future::poll_fn(|cx| poll_read_landing(&mut io, cx, &mut buf))
            .await
            .expect("read");
        assert_eq!(read, 18);
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n\r\n");
        assert!(buf.capacity() < 64, "{} bytes held", buf.capacity());
        // More than the landing takes at once: the rest waits for the next read.
        peer.write_all(&[b'x'; LANDING + 10]).await.expect("write");
        let mut more = BytesMut::new();
        let read = std::future::poll_fn(|cx| poll_read_landing(&mut io, cx, &mut more))
            .await
            .expect("read");
        assert_eq!(read, LANDING);
        drop(peer);
        let mut last = BytesMut::new();
        let read = std::future::poll_fn(|cx| poll_read_landing(&mut io, cx, &mut last))
            .await
            .expect("read");
        assert_eq!(read, 10);
        let mut end = BytesMut::new();
        let read = std::future::poll_fn(|cx| poll_read_landing(&mut io, cx, &mut end))
            .await
            .expect("read");
        assert_eq!(
            (read, end.capacity()),
            (0, 0),
            "the end of the stream holds nothing"
        );
    }
}
