//! Upstream connections: connect with a timeout, and a bounded lock-free idle pool per backend.
//!
//! HTTP/1.1 connections are [`h1::Connection`]s, driven by the request that uses them; HTTP/2
//! ones are hyper's, with a driver task. We keep our own per-backend pool instead of
//! hyper-util's legacy `Client` because the proxy needs three things that client cannot give: a request
//! handed back intact when a connect fails (so it can go to a *different* backend), idle
//! connections owned by the backend (so a removed backend's connections close with it and a kept
//! backend's survive a reload), and no per-request URI-keyed pool lookup under a mutex.

use std::net::SocketAddr;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use http::Request;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::body::UpstreamBody;
use super::h1;

/// One connection to a backend.
#[derive(Debug)]
pub enum Conn {
    /// One request at a time, driven by the request's own task; returned to the idle pool
    /// when its response ends.
    Http1(Box<h1::Connection>),
    /// Multiplexed: clones share one connection, which stays in the idle pool while in use.
    Http2(http2::SendRequest<UpstreamBody>),
}

/// A request handed back because it was never written.
pub type Unsent = hyper::client::conn::TrySendError<Request<UpstreamBody>>;

impl Conn {
    /// Whether the connection can no longer carry a request.
    pub fn is_closed(&mut self) -> bool {
        match self {
            Conn::Http1(conn) => conn.is_closed(),
            Conn::Http2(sender) => sender.is_closed(),
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
    /// The HTTP/2 handshake on a fresh connection failed.
    #[error("HTTP/2 handshake with {address} failed: {source}")]
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
/// `connector` says; an HTTP/2 connection gets its driver task.
pub async fn connect(
    address: SocketAddr,
    host: &str,
    connector: &Connector,
) -> Result<Conn, ConnectError> {
    let stream = connect_tcp(address, connector.timeout).await?;
    let Some((tls, server_name)) = &connector.tls else {
        if connector.http2 {
            return handshake_http2(TokioIo::new(stream), address).await;
        }
        return Ok(Conn::Http1(h1::Connection::new(h1::Stream::Tcp(stream))));
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
    if connector.http2 {
        return handshake_http2(TokioIo::new(stream), address).await;
    }
    Ok(Conn::Http1(h1::Connection::new(h1::Stream::Tls(Box::new(
        stream,
    )))))
}

async fn handshake_http2<T>(io: T, address: SocketAddr) -> Result<Conn, ConnectError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|source| ConnectError::Handshake { address, source })?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(backend = %address, error = %err, "upstream HTTP/2 connection ended");
        }
    });
    Ok(Conn::Http2(sender))
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
    conn: Conn,
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
    /// HTTP/2 connection stays in the pool for other requests to share. `now` is a recent
    /// clock reading (the request's start: no clock read of its own on the hot path).
    pub fn take(&self, now: Instant) -> Option<Conn> {
        let queue = self.queue.as_ref()?;
        while let Some(mut idle) = queue.pop() {
            if now.saturating_duration_since(idle.since) >= self.idle_timeout
                || idle.conn.is_closed()
            {
                continue;
            }
            if let Conn::Http2(shared) = &idle.conn {
                let conn = Conn::Http2(shared.clone());
                // The pool just gave up this slot, so there is room.
                let _ = queue.push(Idle {
                    conn: idle.conn,
                    since: now,
                });
                return Some(conn);
            }
            return Some(idle.conn);
        }
        None
    }

    /// Offers an HTTP/1.1 connection whose last exchange completed cleanly for reuse. (HTTP/2
    /// connections stay in the pool while shared, see [`IdleConnections::share`].)
    pub fn put(&self, conn: Box<h1::Connection>) {
        if let Some(queue) = &self.queue {
            // A full queue hands the connection back; dropping it closes it.
            let _ = queue.push(Idle {
                conn: Conn::Http1(conn),
                since: Instant::now(),
            });
        }
    }

    /// Adds a new HTTP/2 connection to the pool so later requests share it.
    pub fn share(&self, conn: &Conn) {
        if let (Conn::Http2(shared), Some(queue)) = (conn, &self.queue) {
            let _ = queue.push(Idle {
                conn: Conn::Http2(shared.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// An HTTP/1.1 connection to a listener that accepted it (and keeps it open).
    async fn connection(listener: &TcpListener) -> Box<h1::Connection> {
        let address = listener.local_addr().expect("address");
        let stream = TcpStream::connect(address).await.expect("connect");
        let _ = listener.accept().await.expect("accept");
        h1::Connection::new(h1::Stream::Tcp(stream))
    }

    #[tokio::test]
    async fn idle_connections_are_reused_until_the_idle_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let idle = IdleConnections::new(4, Duration::from_secs(60));
        idle.put(connection(&listener).await);
        let put = Instant::now();
        let taken = idle.take(put + Duration::from_secs(59));
        let Some(Conn::Http1(conn)) = taken else {
            panic!("a connection idle for less than the timeout is reused");
        };
        idle.put(conn);
        let now = Instant::now() + Duration::from_secs(60);
        assert!(
            idle.take(now).is_none(),
            "idle for the whole timeout: closed"
        );
        assert!(
            idle.take(Instant::now()).is_none(),
            "and gone from the pool"
        );
    }
}
