//! Binding sockets and the accept loop shared by every kind of listener.
//!
//! The loop never dies: accept errors (EMFILE and the like) are logged and retried with a
//! growing back-off, and every wait also watches for shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limit::ConnectionLimit;

/// Back-off after the first failed accept; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Binds a TCP listener on `address`.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Accepts connections on `listener` until `shutdown` fires, handing each to `serve` with
/// `drain` (which tells it to finish and close) on a task registered with `tracker` (so a
/// drain can wait for it). The two differ for a hand-over to a new process, which stops
/// accepting before it drains. At `limit`'s cap it stops accepting until a connection closes,
/// so new clients wait in the kernel's accept backlog. Returns the socket, so a reload can hand
/// it to a new loop without re-binding; dropping it closes it.
pub async fn accept_loop<F, Fut>(
    name: Arc<str>,
    listener: TcpListener,
    shutdown: CancellationToken,
    drain: CancellationToken,
    tracker: TaskTracker,
    limit: Arc<ConnectionLimit>,
    serve: F,
) -> TcpListener
where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = MIN_BACKOFF;
    loop {
        let room = tokio::select! {
            () = shutdown.cancelled() => break,
            room = limit.acquire() => room,
        };
        let (open, saturated) = room;
        if saturated {
            tracing::warn!(listener = %name, max_connections = limit.max().map_or(0, |max| max.get()), "listener reached max_connections; new connections wait in the accept backlog");
        }
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = MIN_BACKOFF;
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(listener = %name, error = %err, "could not set TCP_NODELAY");
                }
                tracker.spawn(Occupying {
                    connection: serve(stream, peer, drain.clone()),
                    _room: open,
                });
            }
            Err(err) => {
                tracing::warn!(listener = %name, error = %err, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tracing::debug!(listener = %name, "stopped accepting");
    listener
}

pin_project_lite::pin_project! {
    /// A connection's future and its room under the listener's `max_connections`, freed when the
    /// task ends. Not an `async` block: one would keep the connection's future twice, as the
    /// captured value and as the value it awaits (a kilobyte per connection).
    struct Occupying<F, R> {
        #[pin]
        connection: F,
        _room: R,
    }
}

impl<F: Future<Output = ()>, R> Future for Occupying<F, R> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().connection.poll(cx)
    }
}
