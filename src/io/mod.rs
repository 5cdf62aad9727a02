//! Byte-stream helpers both sides of the proxy share.
//!
//! [`rewind`] puts bytes read ahead back in front of a stream; `delegate_async_write!` passes a
//! wrapper's writes through to the stream inside it.

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
