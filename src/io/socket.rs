//! Reads and writes on TCP sockets with the system call made directly, not through glibc.
//!
//! glibc's `recv`, `send` and `writev` are thread-cancellation points: once a process has a
//! second thread (fulcrum always has), each call is bracketed by two bus-locked
//! compare-exchanges on the thread's cancellation state: 4.6 % of fulcrum's user time on the
//! bench's small responses (four such calls a request), most of it on the one right after the
//! return from the kernel. Rust never cancels threads, so the bracket buys nothing:
//! here the calls go through `rustix`, which makes the system call itself. Readiness is
//! tokio's, exactly as its own `TcpStream` reads and writes use it (`try_io` clears it when the
//! call would block).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustix::net::{RecvFlags, SendFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A TCP connection (a client's, a backend's, both ends of an L4 stream) read and written
/// with [`poll_read`] and the writes below.
#[derive(Debug)]
pub struct Socket(TcpStream);

impl Socket {
    /// Reads and writes `stream` with direct system calls.
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self(stream)
    }

    /// The stream, for its address, options and readiness.
    pub(crate) fn get_ref(&self) -> &TcpStream {
        &self.0
    }
}

/// Runs `call` when `stream` is ready for `interest`, until it does not block: the shape of
/// tokio's own `poll_read` and `poll_write`. `call` moves up to `want` bytes and says how many
/// it moved.
fn poll_io(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    interest: Interest,
    want: usize,
    mut call: impl FnMut() -> rustix::io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        if interest.is_readable() {
            ready!(stream.poll_read_ready(cx))?;
        } else {
            ready!(stream.poll_write_ready(cx))?;
        }
        let mut short = None;
        let result = stream.try_io(interest, || {
            let moved = call().map_err(io::Error::from)?;
            if 0 < moved && moved < want {
                // Less than asked: all there was to read, or all the room there was to write.
                // tokio's own reads and writes clear the readiness then, so that the next one
                // waits for the next event instead of making a call that would block; a
                // `WouldBlock` is how `try_io` is told to.
                short = Some(moved);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(moved)
        });
        match (result, short) {
            (_, Some(moved)) => return Poll::Ready(Ok(moved)),
            (Err(err), None)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            (result, None) => return Poll::Ready(result),
        }
    }
}

/// `AsyncRead::poll_read` on `stream`.
fn poll_read(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    // SAFETY: `recv` only writes into the spare room it is given, never de-initializing a
    // byte, and says how many it wrote.
    #[allow(unsafe_code)]
    let spare = unsafe { buf.unfilled_mut() };
    let want = spare.len();
    let read = ready!(poll_io(stream, cx, Interest::READABLE, want, || {
        rustix::net::recv(stream, &mut *spare, RecvFlags::empty())
            .map(|((filled, _), _)| filled.len())
    }))?;
    // SAFETY: `recv` initialized the first `read` bytes of the spare room.
    #[allow(unsafe_code)]
    unsafe {
        buf.assume_init(read);
    }
    buf.advance(read);
    Poll::Ready(Ok(()))
}

/// `AsyncWrite::poll_write` on `stream` (`MSG_NOSIGNAL`: a closed peer is an error, not a
/// signal).
fn poll_write(stream: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    poll_io(stream, cx, Interest::WRITABLE, buf.len(), || {
        rustix::net::send(stream, buf, SendFlags::NOSIGNAL)
    })
}

/// `AsyncWrite::poll_write_vectored` on `stream`.
fn poll_write_vectored(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let want = bufs.iter().map(|buf| buf.len()).sum();
    poll_io(stream, cx, Interest::WRITABLE, want, || {
        rustix::io::writev(stream, bufs)
    })
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_read(&self.0, cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write(&self.0, cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_write_vectored(&self.0, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (Socket, Socket) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let server = accepted.expect("accept").0;
        (Socket::new(client.expect("connect")), Socket::new(server))
    }

    #[tokio::test]
    async fn what_one_end_writes_the_other_reads_and_a_shutdown_reads_as_the_end() {
        let (mut client, mut server) = pair().await;
        // The read starts before anything is sent: it waits for readiness.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.map(|_| got)
        });
        tokio::task::yield_now().await;
        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        let mut parts = [IoSlice::new(b"host: a\r\n"), IoSlice::new(b"\r\n")];
        let mut parts = &mut parts[..];
        while !parts.is_empty() {
            let written = client.write_vectored(parts).await.expect("writev");
            IoSlice::advance_slices(&mut parts, written);
        }
        client.shutdown().await.expect("shutdown");
        let got = reader.await.expect("reader").expect("read");
        assert_eq!(got, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffers_waits_for_the_reader() {
        let (mut client, mut server) = pair().await;
        let sent: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await?;
            client.shutdown().await
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        writer.await.expect("writer").expect("write");
        assert!(
            got == expected,
            "{} of {} bytes, in order",
            got.len(),
            expected.len()
        );
    }

    #[tokio::test]
    async fn writing_to_a_closed_peer_fails_instead_of_raising_a_signal() {
        let (mut client, server) = pair().await;
        drop(server);
        // The first writes may be taken before the peer's reset arrives; a later one fails.
        let mut failed = None;
        for _ in 0..100 {
            if let Err(err) = client.write_all(&[0; 1024]).await {
                failed = Some(err);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let err = failed.expect("a write to a closed peer fails");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{err:?}"
        );
    }
}
