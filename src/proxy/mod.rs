//! The data path: client connection → request checks → pick a backend → forward → stream back.
//!
//! [`l7`] is the HTTP proxy (hyper's HTTP/1 or HTTP/2 server per client connection, parked
//! while quiet); [`l4`] the TCP proxy, with [`proxy_protocol`] headers; [`client`] owns upstream
//! connections, [`h1`] speaks HTTP/1.1 on them; [`headers`] holds the RFC header rules; [`error`] is the single failure → status mapping; [`body`] streams responses
//! and releases per-request resources when they end; `framing` rejects smuggling attempts that
//! hyper would otherwise accept; [`idle`] times client connections out and parks quiet ones;
//! [`rewind`] puts bytes read ahead back in front of a stream.

/// Implements `AsyncWrite` for a wrapper `$wrapper<T>` by passing every call to its field
/// `$field` (an `Unpin` IO); `poll_shutdown` goes to the field's `$shutdown` (by default its
/// own `poll_shutdown`).
macro_rules! delegate_async_write {
    ($wrapper:ident, $field:tt) => {
        delegate_async_write!($wrapper, $field, poll_shutdown);
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

pub mod body;
pub mod client;
pub mod error;
mod framing;
pub mod h1;
pub mod headers;
pub mod idle;
pub mod l4;
pub mod l7;
pub mod proxy_protocol;
pub mod rewind;
