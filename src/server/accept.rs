//! Binding sockets and the accept loop shared by every kind of listener.
//!
//! The loop never dies: accept errors (EMFILE and the like) are logged and retried with a
//! growing back-off, and every wait also watches for shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limit::{ConnectionLimit, OpenConnection};

/// Back-off after the first failed accept; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The accept backlog a listener asks for: as long as the kernel allows (it caps the value at
/// `net.core.somaxconn`, 4096 by default since Linux 5.4). `TcpListener::bind` asks for 128, and
/// a burst of clients larger than that (a thousand reconnecting at once) overflows the queue
/// before one accept loop takes them: the kernel drops their SYNs and they retry a second later.
const BACKLOG: u32 = 65_535;

/// Binds a TCP listener on `address`, with address reuse (as `TcpListener::bind`) and the
/// largest accept backlog the kernel allows.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// Accepts connections on `listener` until `shutdown` fires, handing each to `serve` with
/// `drain` (which tells it to finish and close) and its room under `limit` (held for as long
/// as the connection is open, wherever it goes) on a task registered with `tracker` (so a
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
    F: Fn(TcpStream, SocketAddr, CancellationToken, OpenConnection) -> Fut,
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
                tracker.spawn(serve(stream, peer, drain.clone(), open));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Three hundred clients connect at once to a listener that accepts nothing yet: with
    /// `TcpListener::bind`'s backlog of 128 the rest would wait a second for a SYN retry; with
    /// the kernel's largest backlog every handshake completes at once.
    #[tokio::test]
    async fn a_burst_of_clients_fits_the_accept_backlog() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..300 {
            clients.spawn(tokio::time::timeout(
                Duration::from_millis(500),
                TcpStream::connect(address),
            ));
        }
        let mut connected = Vec::new();
        while let Some(client) = clients.join_next().await {
            let stream = client
                .expect("client task")
                .expect("connected without a SYN retry")
                .expect("connect");
            connected.push(stream);
        }
        assert_eq!(connected.len(), 300);
        drop(listener);
    }
}
