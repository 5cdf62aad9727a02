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
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::body::UpstreamBody;

/// The sending half of one connection to a backend; request bodies stream from clients.
#[derive(Debug)]
pub enum Sender {
    /// One request at a time; returned to the idle pool when its response ends.
    Http1(http1::SendRequest<UpstreamBody>),
    /// Multiplexed: clones share one connection, which stays in the idle pool while in use.
    Http2(http2::SendRequest<UpstreamBody>),
}

/// A request handed back because it was never written.
pub type Unsent = hyper::client::conn::TrySendError<Request<UpstreamBody>>;

impl Sender {
    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(sender) => sender.is_closed(),
            Sender::Http2(sender) => sender.is_closed(),
        }
    }

    /// Waits until the connection can take a request.
    pub async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::Http1(sender) => sender.ready().await,
            Sender::Http2(sender) => sender.ready().await,
        }
    }

    /// Sends `request`; when it was not written at all, the error hands it back.
    pub async fn send(
        &mut self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Unsent> {
        match self {
            Sender::Http1(sender) => sender.try_send_request(request).await,
            Sender::Http2(sender) => sender.try_send_request(request).await,
        }
    }
}

/// How a pool reaches its backends: timeouts, protocol, TLS.
pub struct Connector {
    /// TCP (and TLS handshake) timeout.
    pub timeout: Duration,
    /// Speak HTTP/2 instead of HTTP/1.1.
    pub http2: bool,
    /// TLS to the backend, with the name to use unless each backend's own host is used.
    pub tls: Option<(TlsConnector, Option<ServerName<'static>>)>,
}

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
    /// The TLS handshake with the backend failed.
    #[error("TLS handshake with {address} failed: {source}")]
    Tls {
        /// The backend address.
        address: SocketAddr,
        /// What went wrong.
        #[source]
        source: std::io::Error,
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
            ConnectError::Handshake { .. } | ConnectError::Tls { .. } => false,
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

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("timeout", &self.timeout)
            .field("http2", &self.http2)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Opens a new connection to the backend at `address` (configured as `host`) the way
/// `connector` says, and spawns its driver task.
pub async fn connect(
    address: SocketAddr,
    host: &str,
    connector: &Connector,
) -> Result<Sender, ConnectError> {
    let stream = connect_tcp(address, connector.timeout).await?;
    let Some((tls, server_name)) = &connector.tls else {
        return handshake(TokioIo::new(stream), connector.http2, address).await;
    };
    let name = match server_name {
        Some(name) => name.clone(),
        None => {
            ServerName::try_from(host.to_owned()).unwrap_or_else(|_| ServerName::from(address.ip()))
        }
    };
    let stream = match tokio::time::timeout(connector.timeout, tls.connect(name, stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(ConnectError::Tls { address, source }),
        Err(_) => {
            return Err(ConnectError::Timeout {
                address,
                timeout: connector.timeout,
            });
        }
    };
    handshake(TokioIo::new(stream), connector.http2, address).await
}

async fn handshake<T>(io: T, http2: bool, address: SocketAddr) -> Result<Sender, ConnectError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let handshake_failed = |source| ConnectError::Handshake { address, source };
    if http2 {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(handshake_failed)?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(backend = %address, error = %err, "upstream HTTP/2 connection ended");
            }
        });
        return Ok(Sender::Http2(sender));
    }
    let (sender, connection) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(handshake_failed)?;
    tokio::spawn(async move {
        // With upgrades, a 101 response hands the connection to the tunnel instead of ending it.
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(backend = %address, error = %err, "upstream connection ended");
        }
    });
    Ok(Sender::Http1(sender))
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

    /// A live idle connection, if there is one; stale ones met on the way are closed. An
    /// HTTP/2 connection stays in the pool for other requests to share.
    pub fn take(&self) -> Option<Sender> {
        let queue = self.queue.as_ref()?;
        while let Some(idle) = queue.pop() {
            if idle.sender.is_closed() || idle.since.elapsed() >= self.idle_timeout {
                continue;
            }
            if let Sender::Http2(shared) = &idle.sender {
                let sender = Sender::Http2(shared.clone());
                // The pool just gave up this slot, so there is room.
                let _ = queue.push(Idle {
                    sender: idle.sender,
                    since: Instant::now(),
                });
                return Some(sender);
            }
            return Some(idle.sender);
        }
        None
    }

    /// Offers a connection whose last exchange completed cleanly for reuse. HTTP/2 senders are
    /// shared clones whose connection is already in the pool, so they are simply dropped.
    pub fn put(&self, sender: Sender) {
        if sender.is_closed() || matches!(sender, Sender::Http2(_)) {
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

    /// Adds a new HTTP/2 connection to the pool so later requests share it.
    pub fn share(&self, sender: &Sender) {
        if let (Sender::Http2(shared), Some(queue)) = (sender, &self.queue) {
            let _ = queue.push(Idle {
                sender: Sender::Http2(shared.clone()),
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
