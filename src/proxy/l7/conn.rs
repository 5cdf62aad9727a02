//! One client connection's life: TLS handshake, HTTP/1 (`h1`) or HTTP/2 (hyper) start, and
//! for HTTP/1 parking while quiet and handing over to a tunnel after a 101.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::calm::{CalmIo, CancelBudget, StreamGuard};
use super::h1;
use super::handler::{ClientBody, Handler, TlsOrigin};
use super::listener::{HttpListener, HttpSettings, TlsTermination};
use super::tunnel::{UpgradeSlot, run_tunnel};
use crate::config::ClientLimits;
use crate::http::headers::ClientInfo;
use crate::io::rewind::Rewind;
use crate::proxy::activity::{self, Activity, ActivityIo, Close};
use crate::upstream::request_body::IncomingBody;

impl HttpListener {
    /// Serves one accepted client connection until it closes, idles out, or `shutdown` fires
    /// (then in-flight requests finish and the connection closes gracefully).
    pub(crate) async fn serve(
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
                .serve_io(io, peer, activity, &settings, None, shutdown)
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
                Ok(Ok(mut io)) => {
                    if io.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                        // A CA's TLS-ALPN-01 validation (RFC 8737 §3): it only checks the
                        // certificate; nothing is proxied on this connection.
                        tracing::debug!(listener = %self.name, client = %peer, "ACME TLS-ALPN-01 validation handshake answered");
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
                        return;
                    }
                    let tls = TlsOrigin {
                        server_name: io.get_ref().1.server_name().map(Box::from),
                        certificates: Arc::clone(&tls.certificates),
                    };
                    self.serve_io(io, peer, activity, settings, Some(tls), shutdown)
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
        tls: Option<TlsOrigin>,
        shutdown: CancellationToken,
    ) where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut io = Rewind::new(Bytes::new(), io);
        let limits = &settings.limits;
        // The first request head counts as awaited from now (the header-read timeout).
        activity.await_head(1);
        let mut close = watch(&activity, limits, &shutdown);
        let start = tokio::select! {
            biased;
            reason = &mut close => return self.closed_waiting(reason, peer),
            start = read_start(&mut io, true) => start,
        };
        let upgrade = Arc::new(UpgradeSlot::default());
        let handler = Arc::new(Handler {
            listener: Arc::clone(self),
            client: ClientInfo {
                ip: header_value_of(peer),
                proto: HeaderValue::from_static(if tls.is_some() { "https" } else { "http" }),
            },
            upgrade: Arc::clone(&upgrade),
            tls,
            activity: Arc::clone(&activity),
            idle_timeout: limits.idle_timeout,
            peer: peer.ip(),
        });
        let first = match start {
            Ok(Start::Http2(preface)) => {
                activity.await_head(0);
                // HTTP/2 requests count against the connection's budget of cancelled streams.
                let budget = CancelBudget::new(limits.http2.max_cancelled_streams);
                io.rewind(preface);
                let io = CalmIo::new(io, Arc::clone(&budget));
                let service = {
                    let activity = Arc::clone(&activity);
                    let budget = Arc::clone(&budget);
                    service_fn(move |request: Request<Incoming>| {
                        // Opened as hyper hands the request over, so a park never sees it missing.
                        let exchange = activity.open_exchange();
                        let stream = Some(StreamGuard::new(&budget));
                        Arc::clone(&handler).handle(
                            request.map(|body| IncomingBody::Http2 { body }),
                            exchange,
                            stream,
                        )
                    })
                };
                return self
                    .serve_http2(io, service, settings, peer, close, budget)
                    .await;
            }
            Ok(Start::Http1(first)) => first,
            Ok(Start::Closed) | Err(_) => return,
        };
        self.serve_http1(
            io, first, handler, upgrade, activity, settings, peer, close, shutdown,
        )
        .await;
    }

    /// Serves HTTP/1.1 requests on a connection until the client is done, the connection
    /// switches protocols, or the listener drains; parks it when it is found quiet between
    /// two requests.
    #[allow(
        clippy::too_many_arguments,
        reason = "one connection's parts, handed over once"
    )]
    async fn serve_http1<T>(
        &self,
        mut io: Rewind<T>,
        first: Bytes,
        handler: Arc<Handler>,
        upgrade: Arc<UpgradeSlot>,
        activity: Arc<Activity>,
        settings: &HttpSettings,
        peer: SocketAddr,
        close: oneshot::Receiver<Close>,
        shutdown: CancellationToken,
    ) where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = &settings.limits;
        let mut unread = first;
        let mut close = Some(close);
        let mut parked_budget = limits.idle_timeout;
        let stop = AtomicBool::new(false);
        let mut awaited = true;
        loop {
            activity.start_serving();
            stop.store(false, Ordering::Relaxed);
            let mut parking = false;
            let mut server =
                h1::Server::new(&mut io, unread, limits.max_header_bytes, &activity, awaited);
            awaited = false;
            let result = {
                let serving = server.serve(
                    &stop,
                    |request| Arc::clone(&handler).handle(request, activity.open_exchange(), None),
                    |err| handler.refuse(err, activity.open_exchange()),
                );
                // Boxed: a serving connection's state holds its exchange in flight (the handler's
                // future, kilobytes); a parked connection's task should hold none of it.
                let mut serving = Box::pin(serving);
                loop {
                    tokio::select! {
                        biased;
                        result = serving.as_mut() => break result,
                        reason = next_reason(&mut close) => {
                            close = None;
                            match reason {
                                Ok(Close::Shutdown) | Err(_) => {
                                    // Drain: the exchange in progress finishes, then it ends.
                                    stop.store(true, Ordering::Relaxed);
                                }
                                Ok(Close::Park(budget)) => {
                                    if !parking && activity.may_park() {
                                        parked_budget = budget;
                                        stop.store(true, Ordering::Relaxed);
                                        parking = true;
                                    }
                                    // Watched on either way, should it not stop after all.
                                    close = Some(watch(&activity, limits, &shutdown));
                                }
                                Ok(reason) => return self.closed_by(reason, peer),
                            }
                        }
                    }
                }
            };
            unread = server.into_unread();
            let ended = match result {
                Ok(ended) => ended,
                Err(err) => {
                    tracing::debug!(listener = %self.name, client = %peer, error = %err, "client connection ended with an error");
                    return;
                }
            };
            if ended == h1::Ended::Upgraded {
                if let Some((upstream, in_flight)) = upgrade.take() {
                    // A 101 went out: the connection is a tunnel now, run by this task, so it
                    // still counts as the listener's open connection. Boxed: only upgraded
                    // connections need its state.
                    drop(close);
                    io.rewind(unread);
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
            }
            if ended != h1::Ended::Stopped || !parking {
                // The client is done, or the listener drains: close our side, but bounded (a
                // TLS close_notify can wait on a client that stopped reading).
                let _ = tokio::time::timeout(CLOSE_LIMIT, io.shutdown()).await;
                // Boxed: only a closing connection needs its buffer.
                Box::pin(linger(&mut io)).await;
                return;
            }
            // The watchdog kept on while serving ends with its receiver.
            drop(close.take());
            // Parked: no watchdog, no buffer, just the socket and these three waits.
            let _parked = self.metrics.parked();
            let woke = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(parked_budget) => {
                    return self.closed_by(Close::Idle, peer);
                }
                woke = read_start(&mut io, false) => woke,
            };
            match woke {
                Ok(Start::Http1(first)) => unread = first,
                Ok(Start::Http2(_) | Start::Closed) | Err(_) => return,
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
        budget: Arc<CancelBudget>,
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
                () = budget.spent() => {
                    self.metrics.goaway(CANCELLED_STREAMS);
                    tracing::warn!(
                        listener = %self.name,
                        client = %peer,
                        cancelled_streams = budget.count(),
                        max_cancelled_streams = settings.limits.http2.max_cancelled_streams,
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
                    self.metrics.goaway(&reason);
                    tracing::info!(listener = %self.name, client = %peer, reason = %reason, error = %err, "HTTP/2 connection closed with GOAWAY");
                } else {
                    tracing::debug!(listener = %self.name, client = %peer, error = %err, "client connection ended with an error");
                }
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
            Close::Shutdown | Close::Park(_) => {}
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
/// typical request head, so the server finds it complete without a read of its own.
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
