//! One client connection's life: TLS handshake, HTTP/1 (`h1`) or HTTP/2 (hyper) start, and
//! for HTTP/1 parking while quiet and handing over to a tunnel after a 101.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::calm::{CalmIo, CancelBudget, StreamGuard};
use super::h1;
use super::handler::{Handler, TlsOrigin};
use super::listener::{HttpListener, HttpSettings};
use super::parked::{Parkable, Parking};
use super::side_wake::SideWake;
use super::start::{Start, poll_start};
use super::tunnel::{UpgradeSlot, run_tunnel};
use crate::http::headers::ClientInfo;
use crate::io::rewind::Rewind;
use crate::io::socket::Socket;
use crate::limit::OpenConnection;
use crate::metrics::ConnectionGuard;
use crate::proxy::activity::{Activity, ActivityIo, Close, Watchdog};
use crate::upstream::request_body::{IncomingBody, RequestBody};

/// One client connection's parts, kept for its whole life: all a parked connection holds
/// besides its idle deadline (see [`super::parked`]).
pub(super) struct Conn<T> {
    listener: Arc<HttpListener>,
    io: T,
    activity: Arc<Activity>,
    /// The listener's settings when the connection was accepted.
    settings: Arc<HttpSettings>,
    peer: SocketAddr,
    tls: Option<Arc<TlsOrigin>>,
    /// The listener's parked sets and its drain.
    parkings: Arc<Parkings>,
    _open: ConnectionGuard,
    /// The connection's room under the listener's `max_connections`.
    _room: OpenConnection,
}

/// A plain client connection's transport.
type Plain = ActivityIo<Socket>;
/// A TLS client connection's transport.
type Tls = tokio_rustls::server::TlsStream<Plain>;

/// A listener's parked sets, one per transport, and its drain: what every connection of the
/// listener needs to park, and to see the drain begin.
pub(crate) struct Parkings {
    plain: Parking<Conn<Plain>>,
    tls: Parking<Conn<Tls>>,
    drain: CancellationToken,
}

/// A client connection's transport, as a parked connection keeps it.
pub(super) trait ParkIo: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// The TCP socket underneath.
    fn socket(&self) -> &TcpStream;

    /// The connection's activity, which the plain transport underneath records.
    fn activity(&self) -> &Activity;

    /// Whether something can be read already without the socket (TLS: plaintext decrypted
    /// from records read before, or the client's close_notify).
    fn readable_now(&mut self) -> bool;

    /// The parked set for connections of this kind.
    fn parking(parkings: &Parkings) -> &Parking<Conn<Self>>;
}

impl ParkIo for Plain {
    fn socket(&self) -> &TcpStream {
        self.get_ref().get_ref()
    }

    fn activity(&self) -> &Activity {
        ActivityIo::activity(self)
    }

    fn readable_now(&mut self) -> bool {
        false
    }

    fn parking(parkings: &Parkings) -> &Parking<Conn<Self>> {
        &parkings.plain
    }
}

impl ParkIo for Tls {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0.get_ref().get_ref()
    }

    fn activity(&self) -> &Activity {
        self.get_ref().0.activity()
    }

    fn readable_now(&mut self) -> bool {
        // Processes whole records left in rustls' buffer, if any; an error is the next read's.
        self.get_mut()
            .1
            .process_new_packets()
            .map_or(true, |state| {
                state.plaintext_bytes_to_read() > 0 || state.peer_has_closed()
            })
    }

    fn parking(parkings: &Parkings) -> &Parking<Conn<Self>> {
        &parkings.tls
    }
}

impl<T: ParkIo> Parkable for Conn<T> {
    fn socket(&self) -> &TcpStream {
        self.io.socket()
    }

    fn readable_now(&mut self) -> bool {
        self.io.readable_now()
    }

    fn closed_idle(&self) {
        self.listener.closed_by(Close::Idle, self.peer);
    }

    fn resume(self, tracker: &TaskTracker) {
        tracker.spawn(serve_conn(self, true));
    }

    fn failed(&self, err: &std::io::Error) {
        tracing::debug!(listener = %self.listener.name, client = %self.peer, error = %err, "parked client connection ended with an error");
    }
}

impl HttpListener {
    /// Starts what holds the listener's quiet connections: its parked sets' tasks, on
    /// `tracker`, and the wait that wakes connections waiting for their first bytes, so each
    /// sees `drain` and closes. Once `drain` is cancelled the parked sets close what they hold.
    /// The returned sets go to every connection [`HttpListener::serve`] serves.
    pub(crate) fn start(&self, drain: CancellationToken, tracker: &TaskTracker) -> Arc<Parkings> {
        self.quiet.wake_on_drain(drain.clone());
        let gauge = &self.metrics.parked;
        Arc::new(Parkings {
            plain: Parking::start(gauge.clone(), drain.clone(), tracker),
            tls: Parking::start(gauge.clone(), drain.clone(), tracker),
            drain,
        })
    }

    /// Serves one accepted client connection until it closes, idles out, or the listener
    /// drains (then in-flight requests finish and the connection closes gracefully); between
    /// requests it may wait in `parkings`, the listener's parked sets.
    ///
    /// Not an `async fn`, nor is [`serve_conn`]: one keeps its arguments twice, as arguments
    /// and as locals, and a connection's task keeps its future's largest state for its whole
    /// life. A plain connection's future, while it waits for its first bytes, is its [`Conn`],
    /// its watchdog and its wait (a task cell of 384 bytes: a few bytes more would make it 512,
    /// see `benches/README.md`); a TLS connection's is boxed, and so is everything a
    /// connection does while awake. A parked connection has no task (see [`super::parked`]).
    pub(crate) fn serve(
        self: Arc<Self>,
        parkings: Arc<Parkings>,
        stream: TcpStream,
        peer: SocketAddr,
        room: OpenConnection,
    ) -> impl Future<Output = ()> + Send + 'static {
        let conn = Conn::accepted(self, parkings, stream, peer, room);
        if conn.settings.tls.is_some() {
            return Either::Left(Box::pin(serve_tls(conn)));
        }
        Either::Right(serve_conn(conn, false))
    }

    /// Counts and logs a connection closed for `reason`.
    pub(super) fn closed_by(&self, reason: Close, peer: SocketAddr) {
        match reason {
            Close::Idle => {
                self.metrics.idle_timeouts.increment(1);
                tracing::debug!(listener = %self.name, client = %peer, "closing idle connection");
            }
            Close::HeadTimeout => {
                self.metrics.header_read_timeouts.increment(1);
                tracing::debug!(listener = %self.name, client = %peer, "request head not complete within header_read_timeout; closing");
            }
            Close::Park(_) => {}
        }
    }
}

impl Conn<Plain> {
    /// A connection `listener` accepted from `peer`, counted open from now, under the
    /// listener's current settings.
    fn accepted(
        listener: Arc<HttpListener>,
        parkings: Arc<Parkings>,
        stream: TcpStream,
        peer: SocketAddr,
        room: OpenConnection,
    ) -> Self {
        let settings = listener.settings.load_full();
        let open = listener.metrics.connection();
        let bytes = Some(Arc::clone(&listener.metrics.bytes));
        let (io, activity) = ActivityIo::new(Socket::new(stream), bytes);
        Self {
            listener,
            io,
            activity,
            settings,
            peer,
            tls: None,
            parkings,
            _open: open,
            _room: room,
        }
    }
}

/// Completes a TLS connection's handshake within its timeout, then serves it.
async fn serve_tls(conn: Conn<Plain>) {
    let Conn {
        listener,
        io,
        activity,
        settings,
        peer,
        parkings,
        _open,
        _room,
        ..
    } = conn;
    let Some(tls) = &settings.tls else { return };
    let io = match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(io)).await {
        Ok(Ok(io)) => io,
        Ok(Err(err)) => {
            tracing::debug!(listener = %listener.name, client = %peer, error = %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(listener = %listener.name, client = %peer, "TLS handshake timed out");
            return;
        }
    };
    if io.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
        // A CA's TLS-ALPN-01 validation (RFC 8737 §3): it only checks the certificate;
        // nothing is proxied on this connection.
        tracing::debug!(listener = %listener.name, client = %peer, "ACME TLS-ALPN-01 validation handshake answered");
        let mut io = io;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
        return;
    }
    let origin = TlsOrigin {
        server_name: io.get_ref().1.server_name().map(Box::from),
        certificates: Arc::clone(&tls.certificates),
    };
    serve_conn(
        Conn {
            listener,
            io,
            activity,
            settings,
            peer,
            tls: Some(Arc::new(origin)),
            parkings,
            _open,
            _room,
        },
        false,
    )
    .await;
}

/// Serves a connection: its first request (HTTP/2 for its whole life), then HTTP/1 requests
/// until it is found quiet between two of them: then it is handed to the listener's parked
/// set, and this task ends. `woken`: the connection comes from the set, where bytes arrived
/// for it (it is HTTP/1's already); otherwise it is new.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its argument twice: the connection's parts, for its whole life"
)]
pub(super) fn serve_conn<T: ParkIo>(
    mut conn: Conn<T>,
    woken: bool,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut watchdog = Watchdog::new(&conn.settings.limits);
        if !woken {
            // The first request head counts as awaited from now (the header-read timeout).
            conn.activity.await_head(1);
        }
        // `awaited`: the first head is timed from the connection's start.
        let (mut first, mut awaited) = 'http1: {
            // Waiting for the first bytes (or, woken, reading those that came): no buffer, no
            // server, just the socket, the watchdog's timer and the shutdown. One poll of the
            // three, written out here: every future awaited here is kept by the connection's
            // task for its whole life, and a value kept across two awaits takes room in all
            // of them (so the turn ends in a block of its own before HTTP/2 is served).
            let preface = {
                let turn = {
                    // Written out as one `move` closure holding what it needs: its size is
                    // what a quiet connection's task holds besides the connection itself.
                    // (The activity is reached through `io`, which records it: one capture
                    // less keeps room for `woken`.)
                    let mut place = conn.listener.quiet.place();
                    let (io, limits) = (&mut conn.io, &conn.settings.limits);
                    let (shutdown, watchdog) = (&conn.parkings.drain, &mut watchdog);
                    // A first read that is part of HTTP/2's preface, kept until it is whole.
                    let mut preface = None;
                    std::future::poll_fn(move |cx| {
                        if shutdown.is_cancelled() {
                            return Poll::Ready(Turn::Shutdown);
                        }
                        let watched = watchdog.poll_watch(cx, io.activity(), limits);
                        if let Poll::Ready(reason) = watched {
                            return Poll::Ready(Turn::Watchdog(reason));
                        }
                        // Only a connection's first bytes may be HTTP/2's preface.
                        if let Poll::Ready(start) = poll_start(io, cx, !woken, &mut preface) {
                            return Poll::Ready(Turn::Ready(start));
                        }
                        // Left before the last look at the drain: one that begins after it
                        // finds the waker.
                        place.leave(cx.waker());
                        if shutdown.is_cancelled() {
                            return Poll::Ready(Turn::Shutdown);
                        }
                        Poll::Pending
                    })
                    .await
                };
                match turn {
                    Turn::Ready(Ok(Start::Http1(first))) => break 'http1 (first, !woken),
                    Turn::Ready(Ok(Start::Http2(preface))) => preface,
                    Turn::Watchdog(reason) => return conn.listener.closed_by(reason, conn.peer),
                    Turn::Ready(Ok(Start::Closed) | Err(_)) | Turn::Shutdown => return,
                }
            };
            return Box::pin(conn.serve_http2(preface, &mut watchdog)).await;
        };
        loop {
            // Boxed: an awake connection's state (its server, the exchange in flight, the
            // handler's future: kilobytes) is given back when it parks.
            let served = Box::pin(conn.serve_http1(first, &mut watchdog, awaited)).await;
            let Some((idle_left, unread)) = served else {
                return;
            };
            if unread.is_empty() {
                let parkings = Arc::clone(&conn.parkings);
                return T::parking(&parkings).park(conn, idle_left);
            }
            // Bytes came as the server stopped to park: served at once instead.
            (first, awaited) = (unread, false);
            watchdog.restart(&conn.settings.limits);
        }
    }
}

/// What woke a connection's wait: what it waits for (its HTTP/1 server, or its next bytes)
/// is ready, or one of its side futures (the watchdog, the shutdown wait) resolved.
enum Turn<R> {
    Ready(R),
    Watchdog(Close),
    Shutdown,
}

impl<T> Conn<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// The request handler of the connection's next requests, with `upgrade` the slot where
    /// a 101's backend connection waits.
    fn handler(&self, upgrade: &Arc<UpgradeSlot>) -> Arc<Handler> {
        Arc::new(Handler {
            listener: Arc::clone(&self.listener),
            client: ClientInfo {
                ip: crate::http::headers::ip_value(self.peer.ip()),
                proto: HeaderValue::from_static(if self.tls.is_some() { "https" } else { "http" }),
            },
            upgrade: Arc::clone(upgrade),
            tls: self.tls.clone(),
            activity: Arc::clone(&self.activity),
            idle_timeout: self.settings.limits.idle_timeout,
            peer: self.peer.ip(),
        })
    }

    /// Serves HTTP/1.1 requests, starting with the bytes `first`, until the client is done,
    /// the connection switches protocols, or the listener drains (then `None`: the connection
    /// is over), or until it is found quiet between two requests: then it returns the idle
    /// time left, for its park, and any bytes the server had read but not used. `awaited`:
    /// the first request head is timed from the connection's start, not from its first bytes.
    async fn serve_http1(
        &mut self,
        first: Bytes,
        watchdog: &mut Watchdog,
        awaited: bool,
    ) -> Option<(Duration, Bytes)> {
        let upgrade = Arc::new(UpgradeSlot::default());
        let handler = self.handler(&upgrade);
        let limits = &self.settings.limits;
        let activity = &self.activity;
        activity.start_serving();
        let stop = AtomicBool::new(false);
        let mut parking = None;
        let mut draining = false;
        let mut server = h1::Server::new(
            &mut self.io,
            first,
            limits.max_header_bytes,
            activity,
            awaited,
        );
        let result = {
            let serving = server.serve(
                &stop,
                |request| handler.handle(request, None, None),
                |err| handler.refuse(err),
            );
            tokio::pin!(serving);
            let shutdown = self.parkings.drain.cancelled();
            tokio::pin!(shutdown);
            // The watchdog and the shutdown wait are polled when their own waker fired (or a
            // head started, which the watchdog times), not at every wake of the connection:
            // most wakes are the client's or the backend's bytes.
            let side = SideWake::new().await;
            let side_waker = std::task::Waker::from(Arc::clone(&side));
            loop {
                let turn = std::future::poll_fn(|cx| {
                    if let Poll::Ready(result) = serving.as_mut().poll(cx) {
                        return Poll::Ready(Turn::Ready(result));
                    }
                    if side.take() || watchdog.wants_poll(activity) {
                        let mut side_cx = std::task::Context::from_waker(&side_waker);
                        let watched = watchdog.poll_watch(&mut side_cx, activity, limits);
                        if let Poll::Ready(reason) = watched {
                            return Poll::Ready(Turn::Watchdog(reason));
                        }
                        if !draining && shutdown.as_mut().poll(&mut side_cx).is_ready() {
                            return Poll::Ready(Turn::Shutdown);
                        }
                    }
                    Poll::Pending
                })
                .await;
                match turn {
                    Turn::Ready(result) => break result,
                    Turn::Watchdog(Close::Park(budget)) => {
                        if parking.is_none() && !draining && activity.may_park() {
                            parking = Some(budget);
                            stop.store(true, Ordering::Relaxed);
                        }
                        // Watched on either way, should it not stop after all; its timer
                        // moved, so it is polled again at once.
                        watchdog.restart(limits);
                        side.look_again();
                    }
                    Turn::Watchdog(reason) => {
                        self.listener.closed_by(reason, self.peer);
                        return None;
                    }
                    Turn::Shutdown => {
                        // Drain: the exchange in progress finishes, then it ends.
                        draining = true;
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
        };
        let unread = server.into_unread();
        let ended = match result {
            Ok(ended) => ended,
            Err(err) => {
                tracing::debug!(listener = %self.listener.name, client = %self.peer, error = %err, "client connection ended with an error");
                return None;
            }
        };
        if ended == h1::Ended::Upgraded {
            if let Some((upstream, in_flight)) = upgrade.take() {
                // A 101 went out: the connection is a tunnel now, run by this task, so it
                // still counts as the listener's open connection. Boxed: only upgraded
                // connections need its state.
                let deadline = &self.listener.drain_deadline;
                Box::pin(run_tunnel(
                    Rewind::new(unread, &mut self.io),
                    upstream,
                    in_flight,
                    limits.idle_timeout,
                    deadline,
                ))
                .await;
                return None;
            }
        }
        if let (h1::Ended::Stopped, Some(budget)) = (ended, parking) {
            return Some((budget, unread));
        }
        // The client is done, or the listener drains: close our side, but bounded (a TLS
        // close_notify can wait on a client that stopped reading).
        let _ = tokio::time::timeout(CLOSE_LIMIT, self.io.shutdown()).await;
        // Boxed: only a closing connection needs its buffer.
        Box::pin(linger(&mut self.io)).await;
        None
    }

    /// Serves a connection that opened with HTTP/2's preface (cleartext prior knowledge, or
    /// ALPN `h2` over TLS) until it ends or the watchdog closes it (HTTP/2 connections are
    /// never parked).
    async fn serve_http2(self, preface: Bytes, watchdog: &mut Watchdog) {
        let handler = self.handler(&Arc::new(UpgradeSlot::default()));
        let Conn {
            listener,
            io,
            activity,
            settings,
            peer,
            parkings,
            _open,
            ..
        } = self;
        activity.await_head(0);
        let limits = &settings.limits;
        // HTTP/2 requests count against the connection's budget of cancelled streams.
        let budget = CancelBudget::new(limits.http2.max_cancelled_streams);
        let io = CalmIo::new(Rewind::new(preface, io), Arc::clone(&budget));
        let service = {
            let budget = Arc::clone(&budget);
            let activity = Arc::clone(&activity);
            service_fn(move |request: Request<Incoming>| {
                // Opened as hyper hands the request over, so a park never sees it missing.
                let exchange = activity.open_exchange();
                let stream = Some(StreamGuard::new(&budget));
                let handler = Arc::clone(&handler);
                async move {
                    let request = Box::new(
                        request.map(|body| RequestBody::client(IncomingBody::Http2 { body })),
                    );
                    handler.handle(request, Some(exchange), stream).await
                }
            })
        };
        let mut conn = Box::pin(settings.http2.serve_connection(TokioIo::new(io), service));
        let result = tokio::select! {
            biased;
            result = conn.as_mut() => result,
            reason = watchdog.watch(&activity, limits) => return listener.closed_by(reason, peer),
            () = parkings.drain.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            () = budget.spent() => {
                listener.metrics.goaway(CANCELLED_STREAMS);
                tracing::warn!(
                    listener = %listener.name,
                    client = %peer,
                    cancelled_streams = budget.count(),
                    max_cancelled_streams = limits.http2.max_cancelled_streams,
                    "HTTP/2 client cancelled too many dispatched streams; closing with GOAWAY (ENHANCE_YOUR_CALM)"
                );
                // hyper writes its GOAWAY; `CalmIo` puts ours in its place and ends it.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_LIMIT, conn).await;
                return;
            }
        };
        if let Err(err) = result {
            if let Some(reason) = h2_goaway(&err) {
                listener.metrics.goaway(&reason);
                tracing::info!(listener = %listener.name, client = %peer, reason = %reason, error = %err, "HTTP/2 connection closed with GOAWAY");
            } else {
                tracing::debug!(listener = %listener.name, client = %peer, error = %err, "client connection ended with an error");
            }
        }
    }
}

/// The `reason` label of the GOAWAYs fulcrum sends when the cancelled-stream budget is spent.
const CANCELLED_STREAMS: &str = "cancelled_streams";

/// The error code of a GOAWAY h2 sent on its own (a limit or a protocol error), lowercase, if
/// that is how the connection ended.
fn h2_goaway(err: &hyper::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(h2) = current.downcast_ref::<h2::Error>() {
            return (h2.is_go_away() && h2.is_library())
                .then(|| h2.reason())
                .flatten()
                .map(|reason| format!("{reason:?}").to_ascii_lowercase());
        }
        source = current.source();
    }
    None
}

/// Longest wait for a finished client connection's write side to close (a TLS close_notify).
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// How long a closing connection reads on (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);

/// Reads and drops what a client still sends after our side closed, until it closes too or
/// [`LINGER`] passes: closing a socket with unread bytes resets the connection, and the reset
/// can destroy a response the client has not read yet (a `408`, `413` or `504` answered before
/// its upload ended). nginx's lingering close does the same.
async fn linger<T: AsyncRead + Unpin>(io: &mut T) {
    let mut sink = [0u8; 1024];
    let drain = async { while let Ok(1..) = io.read(&mut sink).await {} };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    /// What a connection waiting for its first bytes costs is mostly its task's cell, which
    /// tokio aligns to 128 bytes: the future measured here (`serve`'s choice of plain or TLS
    /// included) plus 112 (tokio's header 32, scheduler and task id 16, stage 8, trailer 48;
    /// the tracker's token 8). A future of 272 bytes here (in a release build) fills a
    /// 384-byte cell; eight more would take the next one (512).
    #[tokio::test]
    async fn a_quiet_connection_fits_a_384_byte_task_cell() {
        let listener = super::super::listener::tests::listener("60s");
        let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(socket.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, _) = socket.accept().await.expect("accept");
        let peer = client.local_addr().expect("address");
        let room = crate::limit::ConnectionLimit::new(None, metrics::Counter::noop())
            .try_open()
            .expect("unlimited");
        let tracker = tokio_util::task::TaskTracker::new();
        let parkings = listener.start(tokio_util::sync::CancellationToken::new(), &tracker);
        let serving = listener.serve(parkings, server, peer, room);
        let size = std::mem::size_of_val(&serving);
        // A debug build lays it out 8 bytes larger (its MIR is not optimised); the release
        // build's size is the one that counts.
        let limit = if cfg!(debug_assertions) { 280 } else { 272 };
        assert!(size <= limit, "{size} bytes: the task cell grows to 512");
    }
}
