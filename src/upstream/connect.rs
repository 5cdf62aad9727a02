//! Opening a connection to a backend: TCP with a timeout, then TLS and the HTTP/2 handshake
//! as the pool's [`Connector`] says.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::conn::Conn;
use super::h1;
use crate::config::PoolConfig;
use crate::io::socket::Socket;

/// How a pool reaches its backends: timeouts, protocol, TLS. Its health checks use it too, so
/// they speak what live traffic speaks. Cheap to clone (the TLS config is shared).
#[derive(Clone)]
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
pub(crate) enum ConnectError {
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
    pub(crate) fn backend_is_down(&self) -> bool {
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
pub(crate) async fn connect_tcp(
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

impl Connector {
    /// The connector for a pool's settings. If the CA file broke since validation, TLS is kept
    /// with no trusted roots, so connections fail verification rather than skip it.
    pub fn for_pool(config: &PoolConfig) -> Connector {
        let tls = config.upstream_tls.as_ref().map(|upstream| {
            if upstream.insecure_skip_verify {
                tracing::warn!(pool = %config.name, "insecure_skip_verify: backend certificates are not verified");
            }
            let client = crate::tls::client_config(upstream, config.http2).unwrap_or_else(|err| {
                tracing::error!(pool = %config.name, error = %err, "upstream TLS setup failed; connections will fail verification");
                Arc::new(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .map(|builder| {
                        builder
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth()
                    })
                    .unwrap_or_else(|_| {
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth()
                    }),
                )
            });
            let server_name = upstream
                .server_name
                .as_ref()
                .and_then(|name| rustls_pki_types::ServerName::try_from(name.clone()).ok());
            (tokio_rustls::TlsConnector::from(client), server_name)
        });
        Connector {
            timeout: config.connect_timeout,
            http2: config.http2,
            tls,
        }
    }
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
pub(crate) async fn connect(
    address: SocketAddr,
    host: &str,
    connector: &Connector,
) -> Result<Conn, ConnectError> {
    let stream = connect_stream(address, host, connector).await?;
    if connector.http2 {
        return match stream {
            h1::Stream::Tcp(stream) => handshake_http2(TokioIo::new(stream), address).await,
            h1::Stream::Tls(stream) => handshake_http2(TokioIo::new(stream), address).await,
        };
    }
    Ok(Conn::Http1(h1::Connection::new(stream)))
}

/// The transport to the backend at `address` (configured as `host`): TCP, then TLS with the
/// pool's server name and roots when `connector` has TLS.
pub(crate) async fn connect_stream(
    address: SocketAddr,
    host: &str,
    connector: &Connector,
) -> Result<h1::Stream, ConnectError> {
    let stream = connect_tcp(address, connector.timeout).await?;
    let Some((tls, server_name)) = &connector.tls else {
        return Ok(h1::Stream::Tcp(Socket::new(stream)));
    };
    let name = match server_name {
        Some(name) => name.clone(),
        None => {
            ServerName::try_from(host.to_owned()).unwrap_or_else(|_| ServerName::from(address.ip()))
        }
    };
    match tokio::time::timeout(connector.timeout, tls.connect(name, Socket::new(stream))).await {
        Ok(Ok(stream)) => Ok(h1::Stream::Tls(Box::new(stream))),
        Ok(Err(source)) => Err(ConnectError::Tls { address, source }),
        Err(_) => Err(ConnectError::Timeout {
            address,
            timeout: connector.timeout,
        }),
    }
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
