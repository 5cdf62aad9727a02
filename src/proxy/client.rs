//! Upstream connections: connect with a timeout, and a bounded lock-free idle pool per backend.
//!
//! We keep our own per-backend pool on top of hyper's connection API instead of hyper-util's
//! legacy `Client` because the proxy needs three things that client cannot give: a request
//! handed back intact when a connect fails (so it can go to a *different* backend), idle
//! connections owned by the backend (so a removed backend's connections close with it and a kept
//! backend's survive a reload), and no per-request URI-keyed pool lookup under a mutex.

use std::net::SocketAddr;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::UpstreamBody;

/// The sending half of one HTTP/1.1 connection to a backend; request bodies stream from clients.
pub type Sender = http1::SendRequest<UpstreamBody>;

/// Why a new upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect failed (refused, unreachable, …).
    #[error("connect to {address} failed: {source}")]
    Io {
        /// The backend address.
        address: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connect did not finish in time.
    #[error("connect to {address} timed out after {timeout:?}")]
    Timeout {
        /// The backend address.
        address: SocketAddr,
        /// The pool's connect timeout.
        timeout: Duration,
    },
    /// The HTTP handshake on a fresh connection failed.
    #[error("HTTP handshake with {address} failed: {source}")]
    Handshake {
        /// The backend address.
        address: SocketAddr,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
}

impl ConnectError {
    /// Whether the failure says nothing is serving at the address (refused, unreachable, timed
    /// out), as opposed to a server that accepted and then reset the connection.
    pub fn backend_is_down(&self) -> bool {
        use std::io::ErrorKind;
        match self {
            ConnectError::Timeout { .. } => true,
            ConnectError::Io { source, .. } => matches!(
                source.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            ),
            ConnectError::Handshake { .. } => false,
        }
    }
}

/// Opens a TCP connection to `address` within `timeout`, with `TCP_NODELAY`.
pub async fn connect_tcp(
    address: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(ConnectError::Io { address, source }),
        Err(_) => return Err(ConnectError::Timeout { address, timeout }),
    };
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(backend = %address, error = %err, "could not set TCP_NODELAY");
    }
    Ok(stream)
}

/// Opens a new HTTP/1.1 connection to `address` and spawns its driver task.
pub async fn connect(address: SocketAddr, timeout: Duration) -> Result<Sender, ConnectError> {
    let stream = connect_tcp(address, timeout).await?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ConnectError::Handshake { address, source })?;
    tokio::spawn(async move {
        // With upgrades, a 101 response hands the connection to the tunnel instead of ending it.
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(backend = %address, error = %err, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Idle keep-alive connections to one backend, ready for reuse.
///
/// Bounded: when full, a returned connection is simply dropped (closed). Connections idle for
/// longer than the pool's `idle_timeout` are closed on the next checkout instead of reused,
/// since backends close idle connections on their own schedule.
#[derive(Debug)]
pub struct IdleConnections {
    queue: Option<ArrayQueue<Idle>>,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

impl IdleConnections {
    /// A pool keeping at most `capacity` connections (0 disables reuse).
    pub fn new(capacity: usize, idle_timeout: Duration) -> Self {
        Self {
            queue: (capacity > 0).then(|| ArrayQueue::new(capacity)),
            idle_timeout,
        }
    }

    /// A live idle connection, if there is one; stale ones met on the way are closed.
    pub fn take(&self) -> Option<Sender> {
        let queue = self.queue.as_ref()?;
        while let Some(idle) = queue.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < self.idle_timeout {
                return Some(idle.sender);
            }
        }
        None
    }

    /// Offers a connection whose last exchange completed cleanly for reuse.
    pub fn put(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Some(queue) = &self.queue {
            // A full queue hands the connection back; dropping it closes it.
            let _ = queue.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        if let Some(queue) = &self.queue {
            while queue.pop().is_some() {}
        }
    }

    /// Connections currently idle.
    pub fn len(&self) -> usize {
        self.queue.as_ref().map_or(0, ArrayQueue::len)
    }

    /// Whether no connection is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
