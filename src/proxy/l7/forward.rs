//! Forwarding one request: attempts on the pool's backends (connect retries, replay of
//! idempotent requests), each on an idle connection of the backend or a new one.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tokio::time::Instant;

use super::tunnel::Tunnel;
use crate::backend::Backend;
use crate::balance::Tried;
use crate::http::headers::Forwarding;
use crate::pool::{Budget, Pool};
use crate::proxy::body::ProxyBody;
use crate::proxy::error::{ClientFault, ProxyError, UpstreamError};
use crate::upstream::{self, BoxedRequest, Conn, RequestBody, ResponseBody, h1, request_body};

/// How often a reused connection that turns out closed is replaced before giving up on it.
const STALE_CONNECTION_ATTEMPTS: usize = 3;

/// Where and when a request arrived: the listener labels its metrics, and the arrival time
/// starts its duration and serves as the first attempt's clock reading. `selection` is what the
/// request pins the balancer to: its hash key and sticky cookie ([`Pool::selection`]).
pub(super) struct Arrival<'a> {
    pub(super) listener: &'a Arc<str>,
    pub(super) started: Instant,
    pub(super) selection: Tried,
}

/// Sends `request` to a backend of `pool`. On a sticky pool, the response pins the client
/// anew when another backend than its cookie's served it.
///
/// A failed connect moves on to a backend not yet tried, up to the pool's retry budget (nothing
/// was sent, so this is safe for every method). A backend that fails *after* the request was
/// sent but before answering is retried elsewhere only for bodiless GET, HEAD and OPTIONS
/// requests, whose head is kept for that purpose. Every outcome feeds passive health.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
pub(super) fn forward(
    pool: &Pool,
    mut request: BoxedRequest,
    forwarding: &Forwarding<'_>,
    Arrival {
        listener,
        started,
        selection: mut tried,
    }: Arrival<'_>,
    mut tunnel: Option<Tunnel>,
    served_by: &mut Option<Arc<str>>,
    budget: Budget,
) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> {
    async move {
        let replayable = replayable(&request, pool, budget.retries);
        let mut last_error = None;
        let mut last_backend: Option<&Arc<Backend>> = None;
        // When `request_timeout` ends, from the first attempt's send on.
        let mut overall = None;
        // Whether every backend tried so far refused the connection (nothing serving there).
        let mut all_refused = true;
        loop {
            let (backend, in_flight) = match pool.next_attempt(&mut tried, budget.retries).await {
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
            // The request's arrival is a fresh enough clock reading for its first attempt only;
            // a retry reads the clock here rather than in `send` (no extra reading either way).
            // `peak_ewma` measures each attempt's latency from it.
            let attempt_start = if tried.len() == 1 {
                started
            } else {
                Instant::now()
            };
            let timeout = budget.request_timeout;
            // The longest one attempt may wait: the cap on `peak_ewma`'s failure penalty.
            let attempt_timeout = pool
                .settings
                .try_timeout
                .map_or(timeout, |t| t.min(timeout));
            // Pinned where it is made rather than moved into this future's state.
            let attempt = std::pin::pin!(send(
                backend,
                request,
                forwarding,
                pool,
                Some(attempt_start),
                &mut overall,
                timeout,
                replayable,
            ));
            match attempt.await {
                Outcome::Response(response) => {
                    let status = response.status().as_u16();
                    let arrived = backend.metrics.record_response(listener, status, started);
                    if pool.passive.failure_statuses.contains(status) {
                        pool.record_failure(backend, &format_args!("status {status}"));
                        pool.record_latency_failure(
                            backend,
                            arrived.saturating_duration_since(attempt_start),
                            attempt_timeout,
                        );
                    } else {
                        backend.health.record_success();
                        pool.record_latency(
                            backend,
                            arrived.saturating_duration_since(attempt_start),
                            arrived,
                        );
                    }
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                        let Some(tunnel) = tunnel.take() else {
                            return Err(ProxyError::Protocol("101 without an upgrade request"));
                        };
                        let (mut parts, body) = response.into_parts();
                        pool.pin(&tried, &mut parts.headers);
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
                    let (mut parts, body) = response.into_parts();
                    pool.pin(&tried, &mut parts.headers);
                    let body = ProxyBody::upstream(body, in_flight, arrived);
                    return Ok(Response::from_parts(parts, body));
                }
                Outcome::NotSent(unsent, err) => {
                    match &err {
                        ProxyError::Connect(connect) => {
                            backend.metrics.connect_error();
                            all_refused &= connect.backend_is_down();
                        }
                        _ => all_refused = false,
                    }
                    pool.record_failure(backend, &err);
                    pool.record_latency_failure(backend, failed_after(&err), attempt_timeout);
                    tracing::warn!(pool = %pool.name, backend = %backend.name, error = %err, "backend connect failed; trying another");
                    request = unsent;
                    last_error = Some(err);
                }
                Outcome::Failed(err, head) => {
                    if let Some(fault) = err.client_fault() {
                        // The client's doing: its own label, and never the backend's failure.
                        pool.metrics
                            .record_client(listener, &pool.name, fault.label());
                        return Err(err);
                    }
                    all_refused = false;
                    pool.record_failure(backend, &err);
                    pool.record_latency_failure(backend, failed_after(&err), attempt_timeout);
                    match (head, &err) {
                        (Some(head), ProxyError::Upstream(_) | ProxyError::TryTimeout(_)) => {
                            tracing::warn!(pool = %pool.name, backend = %backend.name, error = %err, "backend failed before answering; replaying idempotent request elsewhere");
                            request = head;
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
        // Nothing healthy, or every backend tried refused the connection: the service is
        // unavailable (503), not broken (502), however many backends the budget let us try.
        let err = match last_error {
            Some(err) if !all_refused => err,
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

/// How long a failed attempt ran, as far as its error tells: a timeout's full length, else
/// zero (a refused connect or a reset is quick, and its time says nothing of the backend).
fn failed_after(err: &ProxyError) -> Duration {
    match err {
        ProxyError::Timeout(limit) | ProxyError::TryTimeout(limit) => *limit,
        ProxyError::Connect(upstream::ConnectError::Timeout { timeout, .. }) => *timeout,
        _ => Duration::ZERO,
    }
}

/// Whether `request` may be replayed on another backend should one fail before answering:
/// a bodiless GET, HEAD or OPTIONS (RFC 9110 §9.2.2 idempotent methods whose replay cannot
/// duplicate a body), with another backend and a retry left to replay it on.
fn replayable(request: &Request<RequestBody>, pool: &Pool, retries: u32) -> bool {
    use http::Method;
    retries > 0
        && pool.endpoints.len() > 1
        && matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        )
        && http_body::Body::is_end_stream(request.body())
}

/// The outcome of one attempt on one backend (`pool::Attempt` is the backend to try).
enum Outcome {
    /// The backend answered; an HTTP/1.1 body brings its connection along for reuse.
    Response(Response<ResponseBody>),
    /// Nothing reached the backend; the request is handed back for another backend.
    NotSent(BoxedRequest, ProxyError),
    /// The request was (possibly partly) sent and then failed before a response head came; its
    /// head (its body empty) comes back when it may be replayed on another backend.
    Failed(ProxyError, Option<BoxedRequest>),
}

/// One attempt on `backend`: reuse an idle connection or open one, then send (with the proxy's
/// `forwarding` fields) and wait for the response head within `request_timeout` (the pool's or
/// its route's; it ends at `overall`, set by the first attempt) and the pool's `try_timeout`.
/// `now`, when given, is a clock reading taken just before the attempt; a `replayable`
/// request's head comes back with a failure (see [`Outcome::Failed`]).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
#[allow(
    clippy::too_many_arguments,
    reason = "borrows and copies the attempt's future keeps; bundled, they would be kept the same"
)]
fn send<'a>(
    backend: &'a Arc<Backend>,
    mut request: BoxedRequest,
    forwarding: &'a Forwarding<'_>,
    pool: &'a Pool,
    now: Option<Instant>,
    overall: &'a mut Option<Instant>,
    request_timeout: Duration,
    replayable: bool,
) -> impl Future<Output = Outcome> + 'a {
    async move {
        let settings = &pool.settings;
        let mut stale = 0;
        loop {
            let fresh = stale >= STALE_CONNECTION_ATTEMPTS;
            // The caller's reading is recent for the first try only: a stale connection's
            // retry may follow a connect.
            let recent = now.filter(|_| stale == 0);
            let (conn, waited) = match checkout(backend, &pool.connector, fresh, recent).await {
                Ok(checked_out) => checked_out,
                Err(err) => return Outcome::NotSent(request, err.into()),
            };
            // `request_timeout` runs from sending: the reading still holds when the connection
            // was at hand (one clock read fewer on the keep-alive path), not after a wait for one.
            let sending = recent.filter(|_| !waited).unwrap_or_else(Instant::now);
            // The first attempt's send starts `request_timeout` for the request as a whole;
            // `try_timeout` cuts each attempt's share of it shorter.
            let whole = *overall.get_or_insert(sending + request_timeout);
            let (deadline, timed_out) = match settings.try_timeout {
                Some(limit) if sending + limit < whole => {
                    (sending + limit, ProxyError::TryTimeout(limit))
                }
                _ => (whole, ProxyError::Timeout(request_timeout)),
            };
            let wait = h1::HeadWait {
                deadline,
                after_body: settings
                    .try_timeout
                    .map_or(request_timeout, |limit| limit.min(request_timeout)),
            };
            let unsent = match conn {
                // The connection keeps its own deadline timer (cheaper than one per request).
                Conn::Http1(conn) => match conn.send(request, forwarding, wait).await {
                    Ok(response) => return Outcome::Response(response.map(ResponseBody::Http1)),
                    Err(h1::SendError::NotSent(unsent, err)) => (unsent, UpstreamError::from(err)),
                    Err(h1::SendError::Failed(h1::Error::RequestBody(err), _)) => {
                        return Outcome::Failed(ClientFault::of(&*err).into(), None);
                    }
                    Err(h1::SendError::Failed(err, head)) => {
                        let head = head.filter(|_| replayable);
                        return match err {
                            h1::Error::TimedOut => Outcome::Failed(timed_out, head),
                            err => Outcome::Failed(ProxyError::Upstream(err.into()), head),
                        };
                    }
                },
                Conn::Http2(mut sender) => {
                    // hyper's HTTP/2 client keeps a request once it is sent: a copy is kept
                    // to replay it should the backend fail before answering.
                    let head = replayable.then(|| request_body::head_copy(&request));
                    forwarding.apply(request.headers_mut());
                    let sent = request.body_mut().track_sent();
                    let attempt = sender.try_send_request(*request);
                    let answered = match sent {
                        None => tokio::time::timeout_at(deadline, attempt).await,
                        Some(sent) => {
                            // No deadline while the body streams up (see `h1::HeadWait`).
                            let mut attempt = std::pin::pin!(attempt);
                            tokio::select! {
                                answered = &mut attempt => Ok(answered),
                                () = sent.notified() => {
                                    tokio::time::timeout(wait.after_body, attempt).await
                                }
                            }
                        }
                    };
                    match answered {
                        Err(_) => return Outcome::Failed(timed_out, head),
                        Ok(Ok(mut response)) => {
                            // The client gets the proxy's Date, as from HTTP/1.1 backends.
                            response.headers_mut().remove(http::header::DATE);
                            return Outcome::Response(response.map(ResponseBody::Http2));
                        }
                        Ok(Err(mut err)) => match err.take_message() {
                            Some(unsent) => {
                                (Box::new(unsent), UpstreamError::from(err.into_error()))
                            }
                            None => {
                                let err = err.into_error();
                                return match ClientFault::of_upstream_h2(&err) {
                                    Some(fault) => Outcome::Failed(fault.into(), None),
                                    None => Outcome::Failed(ProxyError::Upstream(err.into()), head),
                                };
                            }
                        },
                    }
                }
            };
            // The connection closed before the request was written: use another one.
            let (unsent, err) = unsent;
            if stale >= STALE_CONNECTION_ATTEMPTS {
                return Outcome::NotSent(unsent, ProxyError::Upstream(err));
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
