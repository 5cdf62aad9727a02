//! The HTTP (layer 7) proxy: serves one client connection and forwards each request to a
//! backend of the listener's pool, retrying failed connects on other backends.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use metrics::Counter;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::body::ProxyBody;
use super::error::{ProxyError, UpstreamError};
use super::framing::{FramingCheck, ScannedIo};

use super::activity::{self, Activity, ActivityIo, Close, Exchange};
use crate::backend::{Backend, InFlight};
use crate::balance::Tried;
use crate::config::ClientLimits;
use crate::http::headers::{self, ClientInfo, Forwarding};
use crate::io::rewind::Rewind;
use crate::metrics::ListenerMetrics;
use crate::pool::Pool;
use crate::snapshot::SharedState;
use crate::tls::{self, TlsError, TlsSettings};
use crate::upstream::{self, Conn, RequestBody, ResponseBody, h1};

/// How often a reused connection that turns out closed is replaced before giving up on it.
const STALE_CONNECTION_ATTEMPTS: usize = 3;

/// Everything an HTTP listener's connections share.
pub struct HttpListener {
    name: Arc<str>,
    state: SharedState,
    /// Cancelled when a drain stops waiting: ends upgraded tunnels still open.
    drain_deadline: CancellationToken,
    /// Connection and byte counters.
    pub metrics: Arc<ListenerMetrics>,
    /// Client limits and the server builder made from them; a reload may replace both, and
    /// each new connection uses the newest.
    settings: ArcSwap<HttpSettings>,
}

struct HttpSettings {
    limits: ClientLimits,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    tls: Option<TlsTermination>,
}

/// A listener's TLS acceptor, rebuilt (files re-read) on every reload.
struct TlsTermination {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

impl HttpSettings {
    fn new(limits: ClientLimits, tls: Option<&TlsSettings>) -> Result<Self, TlsError> {
        let mut http1 = http1::Builder::new();
        // The header-read timeout is ours (see `activity::watchdog`): hyper's arms a boxed timer
        // for every request and also runs it while a keep-alive connection waits.
        http1
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes)
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        let tls = match tls {
            None => None,
            Some(settings) => Some(TlsTermination {
                acceptor: TlsAcceptor::from(tls::server_config(settings)?),
                handshake_timeout: settings.handshake_timeout,
            }),
        };
        Ok(Self {
            limits,
            http1,
            http2,
            tls,
        })
    }
}

impl HttpListener {
    /// A listener called `name` routing through `state`, protected by `limits`, terminating
    /// TLS when `tls` is set (certificate files are read now).
    pub fn new(
        name: Arc<str>,
        state: SharedState,
        limits: ClientLimits,
        tls: Option<&TlsSettings>,
        drain_deadline: CancellationToken,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            metrics: Arc::new(ListenerMetrics::new(&name)),
            name,
            state,
            drain_deadline,
            settings: ArcSwap::from_pointee(HttpSettings::new(limits, tls)?),
        })
    }

    /// Applies new limits and re-reads TLS certificates, for connections accepted from now on.
    /// On a TLS error the current settings stay and the error is returned.
    pub fn update(&self, limits: &ClientLimits, tls: Option<&TlsSettings>) -> Result<(), TlsError> {
        let current = self.settings.load();
        if current.limits == *limits && tls.is_none() && current.tls.is_none() {
            return Ok(());
        }
        self.settings
            .store(Arc::new(HttpSettings::new(limits.clone(), tls)?));
        Ok(())
    }

    /// Serves one accepted client connection until it closes, idles out, or `shutdown` fires
    /// (then in-flight requests finish and the connection closes gracefully).
    pub async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) {
        let settings = self.settings.load_full();
        let _open = self.metrics.connection();
        let (io, activity) = ActivityIo::new(
            stream,
            self.metrics.bytes_in.clone(),
            self.metrics.bytes_out.clone(),
        );
        let Some(tls) = &settings.tls else {
            return self
                .serve_io(io, peer, activity, &settings, "http", shutdown)
                .await;
        };
        self.serve_tls(tls, io, peer, activity, &settings, shutdown)
            .await;
    }

    /// Completes the TLS handshake within its timeout, then serves the connection. Boxed, and
    /// built outside `serve`'s future: its TLS state is a kilobyte, and a plain connection's
    /// task holds its future's largest state for its whole life.
    fn serve_tls<'a>(
        self: &'a Arc<Self>,
        tls: &'a TlsTermination,
        io: ActivityIo<TcpStream>,
        peer: SocketAddr,
        activity: Arc<Activity>,
        settings: &'a HttpSettings,
        shutdown: CancellationToken,
    ) -> Pin<Box<impl Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(io)).await {
                Ok(Ok(io)) => {
                    self.serve_io(io, peer, activity, settings, "https", shutdown)
                        .await;
                }
                Ok(Err(err)) => {
                    tracing::debug!(listener = %self.name, client = %peer, error = %err, "TLS handshake failed");
                }
                Err(_) => {
                    tracing::debug!(listener = %self.name, client = %peer, "TLS handshake timed out");
                }
            }
        })
    }

    async fn serve_io<T>(
        self: &Arc<Self>,
        io: T,
        peer: SocketAddr,
        activity: Arc<Activity>,
        settings: &HttpSettings,
        scheme: &'static str,
        shutdown: CancellationToken,
    ) where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (io, framing) =
            ScannedIo::new(io, settings.limits.max_header_bytes, Arc::clone(&activity));
        let mut io = Rewind::new(Bytes::new(), io);
        let upgrade = Arc::new(UpgradeSlot::default());
        let connection = Arc::new(Connection {
            listener: Arc::clone(self),
            client: ClientInfo {
                ip: header_value_of(peer),
                proto: HeaderValue::from_static(scheme),
            },
            framing,
            upgrade: Arc::clone(&upgrade),
        });
        let mut service = {
            let activity = Arc::clone(&activity);
            service_fn(move |request| {
                // Opened as hyper hands the request over, so a park never sees it missing.
                let exchange = activity.open_exchange();
                // Not boxed: hyper keeps one slot for it per connection, reused by every
                // request, and a parked connection drops hyper's state with the slot.
                Arc::clone(&connection).handle(request, exchange)
            })
        };
        let limits = &settings.limits;
        let mut close = watch(&activity, limits, &shutdown);
        let start = tokio::select! {
            biased;
            reason = &mut close => return self.closed_waiting(reason, peer),
            start = read_start(&mut io, true) => start,
        };
        match start {
            Ok(Start::Http2(preface)) => {
                io.rewind(preface);
                return self.serve_http2(io, service, settings, peer, close).await;
            }
            Ok(Start::Http1(first)) => io.rewind(first),
            Ok(Start::Closed) | Err(_) => return,
        }
        let mut close = Some(close);
        loop {
            // hyper's HTTP/1 server runs until the client is done, the connection switches
            // protocols, or it is parked. Boxed: its state is kilobytes, and a parked
            // connection should hold none of it.
            activity.start_serving();
            let server_io = TokioIo::new(KeepOpen(io));
            let mut conn = Box::new(settings.http1.serve_connection(server_io, service));
            let mut parking = false;
            let result = loop {
                tokio::select! {
                    biased;
                    result = &mut *conn => break result,
                    reason = next_reason(&mut close) => {
                        close = None;
                        match reason {
                            Ok(Close::Shutdown) | Err(_) => {
                                // Drain: hyper finishes the exchange in progress, then ends.
                                Pin::new(&mut *conn).graceful_shutdown();
                            }
                            Ok(Close::Park) => {
                                if !parking && activity.may_park() {
                                    // Idle: hyper stops at once and hands everything back.
                                    Pin::new(&mut *conn).graceful_shutdown();
                                    parking = true;
                                }
                                // Watched on either way, should hyper not stop after all.
                                close = Some(watch(&activity, limits, &shutdown));
                            }
                            Ok(reason) => return self.closed_by(reason, peer),
                        }
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(listener = %self.name, client = %peer, error = %err, "client connection ended with an error");
                return;
            }
            // hyper flushed everything it had written before ending (its shutdown only flushes).
            let parts = conn.into_parts();
            io = parts.io.into_inner().0;
            io.rewind(parts.read_buf);
            service = parts.service;
            if let Some((upstream, in_flight)) = upgrade.take() {
                // A 101 went out: the connection is a tunnel now, run by this task, so it
                // still counts as the listener's open connection. Boxed: only upgraded
                // connections need its state.
                drop(close);
                let deadline = &self.drain_deadline;
                return Box::pin(run_tunnel(
                    io,
                    upstream,
                    in_flight,
                    limits.idle_timeout,
                    deadline,
                ))
                .await;
            }
            if !parking {
                // The client is done, or the listener drains: close our side as hyper would,
                // but bounded (a TLS close_notify can wait on a client that stopped reading).
                let _ = tokio::time::timeout(CLOSE_LIMIT, io.shutdown()).await;
                return;
            }
            // The watchdog kept on while hyper stopped ends with its receiver.
            drop(close.take());
            if !io.has_prefix() {
                // Parked: no watchdog, no hyper state, just the socket and these three waits.
                let _parked = self.metrics.parked();
                let woke = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Activity::parked_budget(limits.idle_timeout)) => {
                        return self.closed_by(Close::Idle, peer);
                    }
                    woke = read_start(&mut io, false) => woke,
                };
                match woke {
                    Ok(Start::Http1(first)) => io.rewind(first),
                    Ok(Start::Http2(_) | Start::Closed) | Err(_) => return,
                }
            }
            close = Some(watch(&activity, limits, &shutdown));
        }
    }

    /// Serves a connection that opened with HTTP/2's preface (cleartext prior knowledge, or
    /// ALPN `h2` over TLS) until it ends or the watchdog closes it. Boxed outside the caller's
    /// future, so HTTP/1 connections' tasks do not carry this state.
    fn serve_http2<'a, I, S>(
        &'a self,
        io: I,
        service: S,
        settings: &'a HttpSettings,
        peer: SocketAddr,
        close: oneshot::Receiver<Close>,
    ) -> Pin<Box<impl Future<Output = ()> + Send + 'a>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::HttpService<Incoming, ResBody = ClientBody> + Send + 'static,
        S::Future: Send + 'static,
    {
        Box::pin(async move {
            let mut conn = Box::pin(settings.http2.serve_connection(TokioIo::new(io), service));
            let result = tokio::select! {
                biased;
                result = conn.as_mut() => result,
                reason = close => match reason {
                    Ok(Close::Shutdown) | Err(_) => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                    Ok(reason) => return self.closed_by(reason, peer),
                },
            };
            if let Err(err) = result {
                tracing::debug!(listener = %self.name, client = %peer, error = %err, "client connection ended with an error");
            }
        })
    }

    /// Counts and logs a connection the watchdog closed before its first request.
    fn closed_waiting(&self, reason: Result<Close, oneshot::error::RecvError>, peer: SocketAddr) {
        if let Ok(reason) = reason {
            self.closed_by(reason, peer);
        }
    }

    /// Counts and logs a connection closed for `reason`.
    fn closed_by(&self, reason: Close, peer: SocketAddr) {
        match reason {
            Close::Idle => {
                self.metrics.idle_timeouts.increment(1);
                tracing::debug!(listener = %self.name, client = %peer, "closing idle connection");
            }
            Close::HeadTimeout => {
                self.metrics.header_read_timeouts.increment(1);
                tracing::debug!(listener = %self.name, client = %peer, "request head not complete within header_read_timeout; closing");
            }
            Close::Shutdown | Close::Park => {}
        }
    }
}

/// The watchdog's next word; never, when no watchdog is on.
async fn next_reason(
    close: &mut Option<oneshot::Receiver<Close>>,
) -> Result<Close, oneshot::error::RecvError> {
    match close {
        Some(close) => close.await,
        None => std::future::pending().await,
    }
}

/// Longest wait for a finished client connection's write side to close (a TLS close_notify).
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// A client connection as hyper's HTTP/1 server sees it: shutting it down only flushes, so
/// the socket outlives a server that stops for parking, and hyper still writes out everything
/// it buffered before it ends. The connection task closes the socket itself.
struct KeepOpen<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for KeepOpen<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

// Shutting down only flushes (see above).
crate::io::delegate_async_write!(KeepOpen, 0, poll_flush);

/// Starts a watchdog on a client connection; it says on the returned channel why and when the
/// connection should close or park, and ends then.
fn watch(
    activity: &Arc<Activity>,
    limits: &ClientLimits,
    shutdown: &CancellationToken,
) -> oneshot::Receiver<Close> {
    let (close, reason) = oneshot::channel();
    tokio::spawn(activity::watchdog(
        Arc::clone(activity),
        limits.idle_timeout,
        limits.header_read_timeout,
        shutdown.clone(),
        close,
    ));
    reason
}

/// How a client connection starts, or goes on after being parked.
#[derive(Debug)]
enum Start {
    /// HTTP/1 bytes (the start of a request).
    Http1(Bytes),
    /// HTTP/2's connection preface, whole, and whatever came with it.
    Http2(Bytes),
    /// The client closed the connection.
    Closed,
}

/// The client's connection preface in HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes the first read of a connection (or of a parked one waking up) asks for: a whole
/// typical request head, so hyper finds it complete without a read of its own.
const START_READ: usize = 4096;

/// Waits for a client's next bytes and reads what has arrived, holding no buffer while it
/// waits (a buffer is taken for each read attempt and dropped again if nothing came). With
/// `sniff`, reads on until HTTP/2's preface is whole or ruled out.
async fn read_start<T: AsyncRead + Unpin>(io: &mut T, sniff: bool) -> std::io::Result<Start> {
    let mut start = BytesMut::new();
    loop {
        let read = std::future::poll_fn(|cx| {
            if !start.is_empty() {
                // Part of a preface came; the rest is a few bytes away.
                start.reserve(H2_PREFACE.len());
                return tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut start);
            }
            let mut fresh = BytesMut::with_capacity(START_READ);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut *io),
                cx,
                &mut fresh
            ))?;
            start = fresh;
            Poll::Ready(Ok(read))
        })
        .await?;
        if start.is_empty() {
            return Ok(Start::Closed);
        }
        let seen = start.len().min(H2_PREFACE.len());
        if read == 0 || !sniff || start[..seen] != H2_PREFACE[..seen] {
            return Ok(Start::Http1(start.freeze()));
        }
        if seen == H2_PREFACE.len() {
            return Ok(Start::Http2(start.freeze()));
        }
    }
}

/// Where the backend's side of an upgrade waits for the client's: set when a 101 is
/// forwarded, taken by the connection task once hyper has sent it, which then runs the tunnel.
/// If the connection ends first, the backend's side is dropped with the slot.
#[derive(Default)]
struct UpgradeSlot(Mutex<Option<(h1::Upgraded, InFlight)>>);

impl UpgradeSlot {
    fn set(&self, upstream: h1::Upgraded, in_flight: InFlight) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((upstream, in_flight));
    }

    fn take(&self) -> Option<(h1::Upgraded, InFlight)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

pin_project! {
    /// A response body that keeps its exchange open until it is dropped, which hyper does
    /// right after its end: the connection is not parked while a response is on its way.
    pub struct ClientBody {
        #[pin]
        body: ProxyBody,
        _exchange: Exchange,
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = super::body::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The client's IP as a header value, rendered once per connection. IPv4, the common case, is
/// written digit by digit: the formatting machinery costs more than the rest of accepting.
fn header_value_of(peer: SocketAddr) -> HeaderValue {
    let rendered = match peer.ip() {
        std::net::IpAddr::V4(ip) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                for divisor in [100, 10, 1] {
                    if octet >= divisor || divisor == 1 {
                        text[len] = b'0' + octet / divisor % 10;
                        len += 1;
                    }
                }
            }
            HeaderValue::from_bytes(&text[..len])
        }
        ip @ std::net::IpAddr::V6(_) => HeaderValue::from_str(&ip.to_string()),
    };
    rendered.unwrap_or(HeaderValue::from_static("unknown"))
}

/// One client connection's view: its listener, who the client is, and the framing check.
struct Connection {
    listener: Arc<HttpListener>,
    client: ClientInfo,
    framing: Arc<FramingCheck>,
    /// Where a 101's backend connection waits for this connection's task.
    upgrade: Arc<UpgradeSlot>,
}

impl Connection {
    /// Answers one request; `exchange` stays open until hyper drops the response body.
    ///
    /// Written as one `async move` block over its arguments, not an `async fn` with nested
    /// ones: an `async fn` keeps a second copy of every argument it moves, and each copy is
    /// memory the request's future moves around (see `forward` and `send` too).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would store its arguments twice"
    )]
    fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        exchange: Exchange,
    ) -> impl Future<Output = Result<Response<ClientBody>, Infallible>> {
        async move {
            let response = match self.check(&request) {
                Ok(pool) => {
                    let started = Instant::now();
                    let (forwarding, tunnel, access) = self.prepare(&mut request, &pool);
                    let mut served_by = None;
                    let outcome = forward(
                        &pool,
                        request.map(|body| RequestBody::Client { body }),
                        &forwarding,
                        (&self.listener.name, started),
                        tunnel,
                        &mut served_by,
                    )
                    .await;
                    if let Some((method, path)) = access {
                        self.log_access(&outcome, method, path, served_by, started);
                    }
                    self.respond(outcome, &pool)
                }
                Err(err) => self.fail(&err, &request),
            };
            Ok(response.map(|body| ClientBody {
                body,
                _exchange: exchange,
            }))
        }
    }

    /// Rewrites `request` for its backend (hop-by-hop headers, HTTP/1.1), and returns the
    /// forwarding fields to add, the tunnel it may become and what the access log needs of it.
    fn prepare(
        &self,
        request: &mut Request<Incoming>,
        pool: &Pool,
    ) -> (
        Forwarding<'_>,
        Option<Tunnel>,
        Option<(http::Method, String)>,
    ) {
        let upgrade = headers::upgrade_protocol(request.headers())
            .filter(|_| request.version() == Version::HTTP_11);
        let client_version = request.version();
        *request.version_mut() = Version::HTTP_11;
        let mut uri = std::mem::take(request.uri_mut());
        let forwarding = headers::prepare_request(
            &mut uri,
            client_version,
            request.headers_mut(),
            &self.client,
        );
        *request.uri_mut() = uri;
        let tunnel = upgrade.map(|protocol| {
            headers::keep_upgrade(request.headers_mut(), protocol);
            Tunnel(Arc::clone(&self.upgrade))
        });
        let access = pool
            .access_log
            .then(|| (request.method().clone(), request.uri().path().to_owned()));
        (forwarding, tunnel, access)
    }

    fn log_access(
        &self,
        outcome: &Result<Response<ProxyBody>, ProxyError>,
        method: http::Method,
        path: String,
        served_by: Option<Arc<str>>,
        started: Instant,
    ) {
        let status = outcome
            .as_ref()
            .map_or_else(|err| err.status(), |response| response.status());
        let bytes = outcome
            .as_ref()
            .ok()
            .and_then(|response| response.body().size_hint().exact());
        tracing::info!(
            target: "fulcrum::access",
            listener = %self.listener.name,
            client = ?self.client.ip,
            method = %method,
            path = %path,
            status = status.as_u16(),
            backend = served_by.as_deref().unwrap_or("-"),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            bytes = ?bytes,
            "access"
        );
    }

    /// The response for the client: the backend's, rewritten, or the error's.
    fn respond(
        &self,
        outcome: Result<Response<ProxyBody>, ProxyError>,
        pool: &Pool,
    ) -> Response<ProxyBody> {
        match outcome {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                let switched = (parts.status == StatusCode::SWITCHING_PROTOCOLS)
                    .then(|| parts.headers.get(http::header::UPGRADE).cloned())
                    .flatten();
                headers::prepare_response(parts.version, &mut parts.headers);
                if let Some(protocol) = switched {
                    headers::keep_upgrade(&mut parts.headers, protocol);
                }
                Response::from_parts(parts, body)
            }
            Err(err) => {
                tracing::warn!(
                    listener = %self.listener.name,
                    pool = %pool.name,
                    status = err.status().as_u16(),
                    error = %err,
                    "request failed"
                );
                err.to_response()
            }
        }
    }

    /// Rejects requests that must not be forwarded and finds the pool for the rest.
    fn check(&self, request: &Request<Incoming>) -> Result<Arc<Pool>, ProxyError> {
        if self.framing.next_request_is_bad() {
            return Err(ProxyError::BadRequest(
                "ambiguous message framing (Content-Length with Transfer-Encoding, or conflicting Content-Length)",
            ));
        }
        if request.version() == Version::HTTP_11
            && !request.headers().contains_key(http::header::HOST)
        {
            // RFC 9112 §3.2: a server MUST respond 400 to an HTTP/1.1 request without Host.
            return Err(ProxyError::BadRequest("missing Host header"));
        }
        let snapshot = self.listener.state.load();
        match snapshot.pool_for(&self.listener.name) {
            Some(pool) => Ok(Arc::clone(pool)),
            None => Err(ProxyError::NoBackend {
                pool: Arc::from("(none)"),
                retry_after: 1,
            }),
        }
    }

    fn fail(&self, err: &ProxyError, request: &Request<Incoming>) -> Response<ProxyBody> {
        tracing::info!(
            listener = %self.listener.name,
            method = %request.method(),
            path = request.uri().path(),
            status = err.status().as_u16(),
            error = %err,
            "request rejected"
        );
        err.to_response()
    }
}

/// Sends `request` to a backend of `pool`.
///
/// A failed connect moves on to a backend not yet tried, up to the pool's retry budget (nothing
/// was sent, so this is safe for every method). A backend that fails *after* the request was
/// sent but before answering is retried elsewhere only for bodiless GET, HEAD and OPTIONS
/// requests, whose head is kept for that purpose. Every outcome feeds passive health.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
fn forward(
    pool: &Pool,
    mut request: Request<RequestBody>,
    forwarding: &Forwarding<'_>,
    (listener, started): (&Arc<str>, Instant),
    mut tunnel: Option<Tunnel>,
    served_by: &mut Option<Arc<str>>,
) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> {
    async move {
        let replay = Replay::of(&request, pool);
        let mut tried = Tried::default();
        let mut last_error = None;
        let mut last_backend: Option<&Arc<Backend>> = None;
        loop {
            let (backend, in_flight) = match pool.next_attempt(&mut tried).await {
                Ok(Some(attempt)) => attempt,
                Ok(None) => break,
                Err(err) => {
                    pool.metrics.record_unrouted(listener, &pool.name, 503);
                    return Err(err.into());
                }
            };
            last_backend = Some(backend);
            if pool.access_log {
                *served_by = Some(Arc::clone(&backend.name));
            }
            // The request's arrival is a fresh enough clock reading for its first attempt only.
            let now = (tried.len() == 1).then_some(started);
            match send(backend, request, forwarding, pool, now).await {
                Attempt::Response(response) => {
                    let status = response.status().as_u16();
                    backend.metrics.record_response(listener, status, started);
                    if pool.passive.failure_statuses.contains(status) {
                        pool.record_failure(backend, &format_args!("status {status}"));
                    } else {
                        backend.health.record_success();
                    }
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                        let Some(tunnel) = tunnel.take() else {
                            return Err(ProxyError::Protocol("101 without an upgrade request"));
                        };
                        let (parts, body) = response.into_parts();
                        // The connection now belongs to the tunnel, never to the idle pool.
                        let upstream = match body {
                            ResponseBody::Http1(body) => body.into_upgraded(),
                            ResponseBody::Http2(_) => None,
                        };
                        let Some(upstream) = upstream else {
                            return Err(ProxyError::Protocol(
                                "101 without a connection to upgrade",
                            ));
                        };
                        tunnel.start(upstream, in_flight);
                        return Ok(Response::from_parts(parts, ProxyBody::local(Bytes::new())));
                    }
                    let (parts, body) = response.into_parts();
                    let body = ProxyBody::upstream(body, in_flight);
                    return Ok(Response::from_parts(parts, body));
                }
                Attempt::NotSent(unsent, err) => {
                    if matches!(err, ProxyError::Connect(_)) {
                        backend.metrics.connect_error();
                    }
                    pool.record_failure(backend, &err);
                    tracing::warn!(pool = %pool.name, backend = %backend.name, error = %err, "backend connect failed; trying another");
                    request = unsent;
                    last_error = Some(err);
                }
                Attempt::Failed(err) => {
                    pool.record_failure(backend, &err);
                    match (&replay, &err) {
                        (Some(replay), ProxyError::Upstream(_)) => {
                            tracing::warn!(pool = %pool.name, backend = %backend.name, error = %err, "backend failed before answering; replaying idempotent request elsewhere");
                            request = replay.request();
                            last_error = Some(err);
                        }
                        _ => {
                            backend
                                .metrics
                                .record_failure(listener, err.status().as_u16());
                            return Err(err);
                        }
                    }
                }
            }
        }
        // Nothing healthy, or no backend of the pool accepted a connection: the service is
        // unavailable (503), not broken (502).
        let all_refused = tried.len() == pool.endpoints.len()
            && match &last_error {
                None => true,
                Some(ProxyError::Connect(err)) => err.backend_is_down(),
                Some(_) => false,
            };
        let err = match last_error {
            Some(err) if pool.any_available() && !all_refused => err,
            _ => ProxyError::NoBackend {
                pool: Arc::clone(&pool.name),
                retry_after: pool.retry_after(),
            },
        };
        let status = err.status().as_u16();
        match last_backend {
            Some(backend) => backend.metrics.record_failure(listener, status),
            None => pool.metrics.record_unrouted(listener, &pool.name, status),
        }
        if status == 503 && last_backend.is_some() {
            pool.metrics.no_backend.increment(1);
        }
        Err(err)
    }
}

/// An upgrade request (WebSocket and the like) waiting for the backend's 101.
struct Tunnel(Arc<UpgradeSlot>);

impl Tunnel {
    /// Hands the backend's side of the upgraded connection to the client connection's task,
    /// which runs the tunnel once hyper has sent the 101.
    fn start(self, upstream: h1::Upgraded, in_flight: InFlight) {
        self.0.set(upstream, in_flight);
    }
}

/// Copies bytes both ways between the upgraded connections until either side closes, nothing
/// moves for `idle_timeout`, or the drain `deadline` passes. The request stays in flight
/// (least-connections and the backend's `max_connections` count it) for the tunnel's whole
/// life, as the client connection counts for its listener.
async fn run_tunnel<T: AsyncRead + AsyncWrite + Unpin>(
    client: T,
    mut upstream: h1::Upgraded,
    in_flight: InFlight,
    idle_timeout: Duration,
    deadline: &CancellationToken,
) {
    let backend = Arc::clone(in_flight.backend());
    let (mut client, activity) = ActivityIo::new(client, Counter::noop(), Counter::noop());
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(err) = result {
                tracing::debug!(backend = %backend.name, error = %err, "upgraded connection ended with an error");
            }
        }
        () = activity.idle_for(idle_timeout) => {
            tracing::debug!(backend = %backend.name, "upgraded connection idle; closed");
        }
        () = deadline.cancelled() => {
            tracing::debug!(backend = %backend.name, "shutdown deadline; closing upgraded connection");
        }
    }
    drop(in_flight);
}

/// The head of a request that may be replayed on another backend: bodiless GET, HEAD or
/// OPTIONS (RFC 9110 §9.2.2 idempotent methods whose replay cannot duplicate a body).
struct Replay {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Replay {
    fn of(request: &Request<RequestBody>, pool: &Pool) -> Option<Box<Replay>> {
        use http::Method;
        // Only worth a copy of the head when there is another backend to replay on.
        let replayable = pool.settings.retries > 0
            && pool.endpoints.len() > 1
            && matches!(
                *request.method(),
                Method::GET | Method::HEAD | Method::OPTIONS
            )
            && http_body::Body::is_end_stream(request.body());
        replayable.then(|| {
            Box::new(Replay {
                method: request.method().clone(),
                uri: request.uri().clone(),
                headers: request.headers().clone(),
            })
        })
    }

    fn request(&self) -> Request<RequestBody> {
        let mut request = Request::new(RequestBody::Empty);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// The outcome of one attempt on one backend.
enum Attempt {
    /// The backend answered; an HTTP/1.1 body brings its connection along for reuse.
    Response(Response<ResponseBody>),
    /// Nothing reached the backend; the request is handed back for another backend.
    NotSent(Request<RequestBody>, ProxyError),
    /// The request was (possibly partly) sent and then failed; it cannot be replayed.
    Failed(ProxyError),
}

/// One attempt on `backend`: reuse an idle connection or open one, then send (with the proxy's
/// `forwarding` fields) and wait for the response head within the pool's `request_timeout`.
/// `now`, when given, is a clock reading taken just before the attempt.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
fn send(
    backend: &Arc<Backend>,
    mut request: Request<RequestBody>,
    forwarding: &Forwarding<'_>,
    pool: &Pool,
    now: Option<Instant>,
) -> impl Future<Output = Attempt> {
    async move {
        let timeout = pool.settings.request_timeout;
        let mut stale = 0;
        loop {
            let fresh = stale >= STALE_CONNECTION_ATTEMPTS;
            // The caller's reading is recent for the first try only: a stale connection's
            // retry may follow a connect.
            let recent = now.filter(|_| stale == 0);
            let (conn, waited) = match checkout(backend, &pool.connector, fresh, recent).await {
                Ok(checked_out) => checked_out,
                Err(err) => return Attempt::NotSent(request, err.into()),
            };
            // `request_timeout` runs from sending: the reading still holds when the connection
            // was at hand (one clock read fewer on the keep-alive path), not after a wait for one.
            let sending = recent.filter(|_| !waited).unwrap_or_else(Instant::now);
            let deadline = sending + timeout;
            let unsent = match conn {
                // The connection keeps its own deadline timer (cheaper than one per request).
                Conn::Http1(conn) => match conn.send(request, forwarding, deadline).await {
                    Ok(response) => return Attempt::Response(response.map(ResponseBody::Http1)),
                    Err(h1::SendError::NotSent(unsent, err)) => (*unsent, UpstreamError::from(err)),
                    Err(h1::SendError::Failed(h1::Error::TimedOut)) => {
                        return Attempt::Failed(ProxyError::Timeout(timeout));
                    }
                    Err(h1::SendError::Failed(err)) => {
                        return Attempt::Failed(ProxyError::Upstream(err.into()));
                    }
                },
                Conn::Http2(mut sender) => {
                    forwarding.apply(request.headers_mut());
                    let attempt = sender.try_send_request(request);
                    match tokio::time::timeout_at(deadline, attempt).await {
                        Err(_) => return Attempt::Failed(ProxyError::Timeout(timeout)),
                        Ok(Ok(mut response)) => {
                            // The client gets the proxy's Date, as from HTTP/1.1 backends.
                            response.headers_mut().remove(http::header::DATE);
                            return Attempt::Response(response.map(ResponseBody::Http2));
                        }
                        Ok(Err(mut err)) => match err.take_message() {
                            Some(unsent) => (unsent, UpstreamError::from(err.into_error())),
                            None => {
                                return Attempt::Failed(ProxyError::Upstream(
                                    err.into_error().into(),
                                ));
                            }
                        },
                    }
                }
            };
            // The connection closed before the request was written: use another one.
            let (unsent, err) = unsent;
            if stale >= STALE_CONNECTION_ATTEMPTS {
                return Attempt::NotSent(unsent, ProxyError::Upstream(err));
            }
            stale += 1;
            request = unsent;
        }
    }
}

/// A connection ready to send on: an idle one if any is alive (unless `fresh`), else a new one;
/// and whether getting it meant waiting (a connect, or an HTTP/2 connection getting ready).
/// `now`, when given, is a clock reading taken just before.
async fn checkout(
    backend: &Backend,
    connector: &upstream::Connector,
    fresh: bool,
    now: Option<Instant>,
) -> Result<(Conn, bool), upstream::ConnectError> {
    if !fresh {
        let now = now.unwrap_or_else(Instant::now);
        while let Some(conn) = backend.idle.take(now) {
            match conn {
                Conn::Http2(mut sender) => {
                    if sender.ready().await.is_ok() {
                        return Ok((Conn::Http2(sender), true));
                    }
                }
                http1 @ Conn::Http1(_) => return Ok((http1, false)),
            }
        }
    }
    // Boxed: the connect path (TCP, TLS, HTTP/2 handshakes) is large and rare on keep-alive
    // traffic; inline, it would swell every request's future, which is moved on each request.
    let conn = Box::pin(upstream::connect(
        backend.address,
        backend.host(),
        connector,
    ))
    .await?;
    backend.metrics.connected();
    backend.idle.share(&conn);
    Ok((conn, true))
}

#[cfg(test)]
mod tests {
    use super::{H2_PREFACE, Start, header_value_of, read_start};
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair on loopback: (the proxy's end, the client's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (server, client)
    }

    #[tokio::test]
    async fn the_first_read_takes_a_whole_request_head() {
        let (mut server, mut client) = pair().await;
        let head = format!(
            "GET / HTTP/1.1\r\nhost: app.test\r\ncookie: {}\r\n\r\n",
            "c".repeat(2000)
        );
        client.write_all(head.as_bytes()).await.expect("write");
        match read_start(&mut server, true).await.expect("read") {
            Start::Http1(first) => assert_eq!(first, head.as_bytes(), "all of it, in one read"),
            other => panic!("expected HTTP/1, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_preface_split_across_writes_is_http2() {
        let (mut server, mut client) = pair().await;
        let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
        tokio::spawn(async move {
            client.write_all(&H2_PREFACE[..10]).await.expect("write");
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(&H2_PREFACE[10..]).await.expect("write");
            client.write_all(&settings).await.expect("write");
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        match read_start(&mut server, true).await.expect("read") {
            Start::Http2(first) => assert!(first.starts_with(H2_PREFACE), "{first:?}"),
            other => panic!("expected HTTP/2, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_client_gone_before_a_byte_is_closed_and_a_parked_one_needs_no_sniffing() {
        let (mut server, client) = pair().await;
        drop(client);
        assert!(matches!(
            read_start(&mut server, true).await.expect("read"),
            Start::Closed
        ));
        let (mut server, mut client) = pair().await;
        client.write_all(&H2_PREFACE[..3]).await.expect("write");
        match read_start(&mut server, false).await.expect("read") {
            Start::Http1(first) => assert_eq!(first, &H2_PREFACE[..3]),
            other => panic!("a waking connection is HTTP/1 already, got {other:?}"),
        }
    }

    #[test]
    fn client_ip_renders_like_display() {
        for text in [
            "0.0.0.0:1",
            "127.0.0.1:80",
            "10.20.30.40:1",
            "100.9.99.255:1",
            "255.255.255.255:1",
            "1.100.10.0:1",
            "[::1]:80",
            "[2001:db8::7]:443",
            "[::ffff:192.0.2.1]:1",
        ] {
            let peer: SocketAddr = text.parse().expect("address");
            assert_eq!(header_value_of(peer), peer.ip().to_string(), "{text}");
        }
    }
}
