//! The TCP (layer 4) proxy: each client connection goes to one backend of the listener's pool,
//! and bytes are copied both ways until both sides are done.
//!
//! Half-close is honoured (a FIN from one side is passed on while the other direction keeps
//! flowing); a connection with no bytes either way for the pool's `idle_timeout` is closed.
//! Copy buffers are allocated once per connection, never per read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::activity::ActivityIo;
use super::proxy_protocol;
use super::sni::{self, Hello};
use crate::backend::{Backend, InFlight};
use crate::io::socket::Socket;
use crate::limit::OpenConnection;
use crate::metrics::ListenerMetrics;
use crate::pool::Pool;
use crate::snapshot::SharedState;
use crate::upstream::{self, ConnectError};

/// Size of each direction's copy buffer. Measured against 8 KiB (tokio's default) and 256 KiB
/// on loopback bulk transfers: 64 KiB reached the same throughput as 256 KiB at a quarter of the
/// memory per connection, and about twice 8 KiB's.
const COPY_BUFFER: usize = 64 * 1024;

/// How long a client may take to send its PROXY protocol header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client of a listener with SNI routes may take to send its TLS ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a TCP listener's connections share.
pub(crate) struct TcpListener {
    name: Arc<str>,
    state: SharedState,
    /// Cancelled when a drain stops waiting: cuts the streams still open.
    drain_deadline: CancellationToken,
    accept_proxy_protocol: bool,
    /// Connection and byte counters.
    pub metrics: Arc<ListenerMetrics>,
}

impl TcpListener {
    /// A listener called `name` routing through `state`; with `accept_proxy_protocol`, each
    /// connection starts with a PROXY header naming the real client.
    pub(crate) fn new(
        name: Arc<str>,
        state: SharedState,
        accept_proxy_protocol: bool,
        drain_deadline: CancellationToken,
    ) -> Self {
        Self {
            metrics: Arc::new(ListenerMetrics::new(&name)),
            name,
            state,
            drain_deadline,
            accept_proxy_protocol,
        }
    }

    /// Proxies one client connection, holding its `room` under the listener's
    /// `max_connections`. Shutdown does not cut it: open TCP connections are drained until they
    /// end or the shutdown timeout passes.
    pub(crate) async fn serve(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        _shutdown: CancellationToken,
        _room: OpenConnection,
    ) {
        let _open = self.metrics.connection();
        let started = Instant::now();
        let (announced, early_data) = if self.accept_proxy_protocol {
            match proxy_protocol::read(&mut stream, PROXY_HEADER_TIMEOUT).await {
                Ok((endpoints, rest)) => (endpoints, rest),
                Err(err) => {
                    tracing::info!(listener = %self.name, client = %peer, error = %err, "connection refused: bad PROXY header");
                    return;
                }
            }
        } else {
            (None, Vec::new())
        };
        // Behind another balancer, pass on the connection it saw, not the hop to us.
        let client = announced.map_or(peer, |(source, _)| source);
        let destination = announced.map(|(_, destination)| destination);
        let mut early_data = early_data;
        let Some(pool) = self
            .pool_for(&mut stream, &mut early_data, peer, client)
            .await
        else {
            return;
        };
        let Some((mut upstream, in_flight)) = connect(&pool, &self.name, client).await else {
            return;
        };
        let backend = Arc::clone(in_flight.backend());
        if let Err(err) = self
            .preamble(
                &pool,
                &mut upstream,
                &stream,
                client,
                destination,
                &early_data,
            )
            .await
        {
            tracing::debug!(listener = %self.name, backend = %backend.name, error = %err, "backend closed before the stream started");
            return;
        }
        let (mut client_io, activity) =
            ActivityIo::new(Socket::new(stream), Some(Arc::clone(&self.metrics.bytes)));
        let mut upstream = Socket::new(upstream);
        let copy = tokio::io::copy_bidirectional_with_sizes(
            &mut client_io,
            &mut upstream,
            COPY_BUFFER,
            COPY_BUFFER,
        );
        let outcome = tokio::select! {
            result = copy => result.map(Some),
            () = activity.idle_for(pool.settings.idle_timeout) => Ok(None),
            () = self.drain_deadline.cancelled() => Ok(None),
        };
        match outcome {
            Ok(Some((sent, received))) => tracing::debug!(
                listener = %self.name, backend = %backend.name, client = %client,
                sent, received, "tcp connection closed"
            ),
            Ok(None) => {
                tracing::debug!(listener = %self.name, backend = %backend.name, client = %client, "tcp connection idle; closed")
            }
            Err(err) => {
                tracing::debug!(listener = %self.name, backend = %backend.name, client = %client, error = %err, "tcp connection ended with an error")
            }
        }
        backend.metrics.record_response(&self.name, 200, started);
        drop(in_flight);
    }

    /// The pool for this connection: by the server name of its TLS ClientHello when the listener
    /// has SNI routes (the hello's bytes join `early_data`, to be passed on), else the
    /// listener's pool. `None`: no pool, the client left before saying which server, or the
    /// listener's rate limit refused a new connection from `client` (counted and logged at
    /// debug by the limiter; the connection is closed at once).
    async fn pool_for(
        &self,
        stream: &mut TcpStream,
        early_data: &mut Vec<u8>,
        peer: SocketAddr,
        client: SocketAddr,
    ) -> Option<Arc<Pool>> {
        {
            let snapshot = self.state.load();
            let router = snapshot.router_for(&self.name)?;
            if let Some(limit) = router.rate_limit() {
                limit.check_connection(client.ip()).ok()?;
            }
            if !router.has_routes() {
                return router.fallback().cloned();
            }
        }
        let server_name = match sni::read_server_name(stream, early_data, HELLO_TIMEOUT).await {
            Hello::Name(name) => Some(name),
            Hello::NoName => None,
            Hello::Gone => {
                tracing::debug!(listener = %self.name, client = %peer, "client left before its TLS ClientHello was complete");
                return None;
            }
        };
        let pool = self
            .state
            .load()
            .router_for(&self.name)
            .and_then(|router| router.route_sni(server_name.as_deref()))
            .cloned();
        if pool.is_none() {
            tracing::info!(listener = %self.name, client = %peer, server_name = server_name.as_deref().unwrap_or("-"), "connection closed: no route for its server name and no fallback pool");
        }
        pool
    }

    /// Sends the PROXY header the pool asks for, then any bytes read past an incoming header.
    async fn preamble(
        &self,
        pool: &Pool,
        upstream: &mut TcpStream,
        client_stream: &TcpStream,
        client: SocketAddr,
        destination: Option<SocketAddr>,
        early_data: &[u8],
    ) -> std::io::Result<()> {
        if let Some(version) = pool.proxy_protocol {
            let local = match destination {
                Some(destination) => destination,
                None => client_stream.local_addr()?,
            };
            upstream
                .write_all(&proxy_protocol::encode(version, client, local))
                .await?;
        }
        if !early_data.is_empty() {
            upstream.write_all(early_data).await?;
        }
        Ok(())
    }
}

/// Connects to a backend of `pool`, retrying a failed connect on backends not yet tried.
/// `None` (connection dropped) when nothing could be reached.
async fn connect(
    pool: &Arc<Pool>,
    listener: &Arc<str>,
    client: SocketAddr,
) -> Option<(TcpStream, InFlight)> {
    let mut tried = pool.connection_selection(client.ip());
    let mut last: Option<(Arc<Backend>, ConnectError)> = None;
    loop {
        let (backend, in_flight) = match pool.next_attempt(&mut tried, pool.settings.retries).await
        {
            Ok(Some(attempt)) => attempt,
            Ok(None) => break,
            Err(err) => {
                pool.metrics.record_unrouted(listener, &pool.name, 503);
                tracing::warn!(pool = %pool.name, client = %client, error = %err, "closing client connection");
                return None;
            }
        };
        // `peak_ewma` pools learn from connect times; others read no clock here.
        let connecting = pool.latency_aware().then(Instant::now);
        let timeout = pool.settings.connect_timeout;
        match upstream::connect::connect_tcp(backend.address, timeout).await {
            Ok(stream) => {
                backend.metrics.connected();
                backend.health.record_success();
                if let Some(connecting) = connecting {
                    let now = Instant::now();
                    pool.record_latency(backend, now.saturating_duration_since(connecting), now);
                }
                return Some((stream, in_flight));
            }
            Err(err) => {
                backend.metrics.connect_error();
                pool.record_failure(backend, &err);
                let elapsed = match err {
                    ConnectError::Timeout { timeout, .. } => timeout,
                    _ => Duration::ZERO,
                };
                pool.record_latency_failure(backend, elapsed, timeout);
                tracing::warn!(pool = %pool.name, backend = %backend.name, error = %err, "backend connect failed; trying another");
                last = Some((Arc::clone(backend), err));
            }
        }
    }
    match last {
        Some((backend, err)) => {
            backend.metrics.record_failure(listener, 502);
            tracing::warn!(pool = %pool.name, client = %client, error = %err, "no backend reachable; closing client connection");
        }
        None => {
            pool.metrics.record_unrouted(listener, &pool.name, 503);
            tracing::warn!(pool = %pool.name, client = %client, "no healthy backend; closing client connection");
        }
    }
    None
}
