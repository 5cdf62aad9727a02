//! The per-request service of a client connection: rejects what must not be forwarded, picks
//! the listener's pool, forwards, and turns the outcome (or error) into the client's response.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::h1::head::HeadError;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::calm::StreamGuard;
use super::forward::{Arrival, forward};
use super::listener::HttpListener;
use super::mirror;
use super::tunnel::{Tunnel, UpgradeSlot};
use super::upload::{self, Upload};
use crate::http::headers::{self, ClientInfo, Forwarding};
use crate::http::host;
use crate::metrics::RouteMetrics;
use crate::pool::{Budget, Pool};
use crate::proxy::activity::{Activity, Exchange};
use crate::proxy::body::{BodyError, ProxyBody};
use crate::proxy::error::{ClientFault, ProxyError};
use crate::rate_limit::RateLimiter;
use crate::route::{Local, Route, Target};
use crate::tls::SniResolver;
use crate::upstream::request_body::BodyCopy;
use crate::upstream::{BoxedRequest, RequestBody};

pin_project! {
    /// A response body that, on HTTP/2, keeps its exchange open until it is dropped, which the
    /// server does right after its end (the connection is not parked while a response is on its
    /// way), and holds the stream's guard, finished at the body's end (dropped earlier, the
    /// client cancelled the stream). HTTP/1's server holds its exchange open itself.
    pub struct ClientBody {
        #[pin]
        body: ProxyBody,
        _exchange: Option<Exchange>,
        stream: Option<StreamGuard>,
    }
}

impl ClientBody {
    /// `response` with its body wrapped for the client.
    fn response(
        response: Response<ProxyBody>,
        exchange: Option<Exchange>,
        stream: Option<StreamGuard>,
    ) -> Response<ClientBody> {
        response.map(|body| ClientBody::new(body, exchange, stream))
    }

    fn new(body: ProxyBody, exchange: Option<Exchange>, stream: Option<StreamGuard>) -> Self {
        let mut body = Self {
            body,
            _exchange: exchange,
            stream,
        };
        if body.body.is_end_stream() {
            if let Some(stream) = body.stream.take() {
                stream.finish();
            }
        }
        body
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let frame = this.body.as_mut().poll_frame(cx);
        if matches!(frame, std::task::Poll::Ready(None)) || this.body.is_end_stream() {
            if let Some(stream) = this.stream.take() {
                stream.finish();
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Where the handler sends a request.
enum Routed {
    /// Forward to a pool.
    Forward {
        pool: Arc<Pool>,
        /// The route's metrics (`None`: the listener's pool took the request).
        route: Option<Arc<RouteMetrics>>,
        /// A copy for the route's mirror, and the copier of the request body it needs.
        copy: Option<(mirror::Copy, Option<Box<BodyCopy>>)>,
        /// The pool's timeout and retries, or the route's.
        budget: Budget,
    },
    /// Answer with this response of the route's own.
    Local(Response<ProxyBody>, Arc<RouteMetrics>),
    /// Answer a CA's HTTP-01 challenge request with this key authorization.
    Challenge(String),
}

/// The status the client gets for `outcome`.
fn status_of(outcome: &Result<Response<ProxyBody>, ProxyError>) -> StatusCode {
    outcome
        .as_ref()
        .map_or_else(|err| err.status(), |response| response.status())
}

/// What the access log says of the request itself.
struct AccessRequest {
    method: http::Method,
    path: String,
    route: Option<Arc<str>>,
}

/// A route's own response to `request`: a redirect or a fixed body.
fn local_response(
    route: &Route,
    local: Local<'_>,
    request: &Request<RequestBody>,
) -> Response<ProxyBody> {
    let (status, body, location) = match local {
        Local::Redirect { to, status } => {
            let location = route.location(to, request.uri(), request.headers());
            (status, Bytes::new(), Some(location))
        }
        Local::Respond { status, body } => (status, body.clone(), None),
    };
    let mut response = Response::new(ProxyBody::local(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Some(location) = location.and_then(|l| http::HeaderValue::try_from(l).ok()) {
        headers.insert(http::header::LOCATION, location);
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The request handler of one client connection: its listener and who the client is.
pub(super) struct Handler {
    pub(super) listener: Arc<HttpListener>,
    pub(super) client: ClientInfo,
    /// Where a 101's backend connection waits for this connection's task.
    pub(super) upgrade: Arc<UpgradeSlot>,
    /// For a TLS connection: what it was set up for.
    pub(super) tls: Option<Arc<TlsOrigin>>,
    /// The connection's activity, which watched uploads hold back from its idle close.
    pub(super) activity: Arc<Activity>,
    /// The listener's `idle_timeout` when the connection started: an upload quiet that long
    /// gets `408`.
    pub(super) idle_timeout: Duration,
    /// The socket peer's address (rate limits find the real client from it).
    pub(super) peer: IpAddr,
}

/// What a TLS connection was set up for: the server name of its ClientHello and the listener's
/// certificate choice, so a request for a host another certificate covers gets `421`.
pub(super) struct TlsOrigin {
    pub(super) server_name: Option<Box<str>>,
    pub(super) certificates: Arc<SniResolver>,
}

impl TlsOrigin {
    /// Whether this connection may carry a request for `host` (RFC 9110 §7.4): it asked for no
    /// name, for this one, or for one the same certificate serves.
    fn carries(&self, host: &str) -> bool {
        self.server_name
            .as_deref()
            .is_none_or(|name| self.certificates.same_certificate(name, host))
    }
}

impl Handler {
    /// Answers one request; `exchange` (HTTP/2) stays open until the server drops the response
    /// body, and
    /// `stream` (HTTP/2) counts a cancel if the request or its body is dropped unfinished. The
    /// future borrows the handler: HTTP/1's server runs it inside the connection's own future,
    /// so no reference count moves per request (HTTP/2's, spawned, holds an `Arc` around it).
    ///
    /// Written as one `async move` block over its arguments, not an `async fn` with nested
    /// ones: an `async fn` keeps a second copy of every argument it moves, and each copy is
    /// memory the request's future moves around (see `forward` and `send` too).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would store its arguments twice"
    )]
    pub(super) fn handle(
        &self,
        mut request: BoxedRequest,
        exchange: Option<Exchange>,
        stream: Option<StreamGuard>,
    ) -> impl Future<Output = Result<Response<ClientBody>, Infallible>> + '_ {
        async move {
            let started = Instant::now();
            // Routed before anything is awaited: the routing's outcome (a mirror's copy of the
            // head in it) takes no room in this future.
            let (pool, route, copier, budget) = match self.check(&mut request) {
                Ok(Routed::Forward {
                    pool,
                    route,
                    copy,
                    budget,
                }) => {
                    let (copy, copier) = copy.unzip();
                    if let Some(copy) = copy {
                        copy.send(self.client.clone(), Arc::clone(&self.listener.name));
                    }
                    (pool, route, copier, budget)
                }
                Ok(Routed::Local(response, route)) => {
                    route.record(response.status().as_u16(), started);
                    return Ok(ClientBody::response(response, exchange, stream));
                }
                Ok(Routed::Challenge(key_authorization)) => {
                    let mut response =
                        Response::new(ProxyBody::local(Bytes::from(key_authorization)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/octet-stream"),
                    );
                    return Ok(ClientBody::response(response, exchange, stream));
                }
                Err(err) => {
                    let response = self.fail(&err, &request);
                    return Ok(ClientBody::response(response, exchange, stream));
                }
            };
            let selection = pool.selection(request.uri(), request.headers(), &self.client);
            let (forwarding, tunnel, access) = self.prepare(&mut request, &pool);
            let mut served_by = None;
            let (upload, progress) =
                Upload::watch(&self.activity, request.body(), self.idle_timeout).unzip();
            request.body_mut().watch(copier.flatten(), progress);
            let outcome = {
                // Pinned where it is made: moving it into `bound` and then into this
                // future's state would copy its kilobytes twice per request.
                let attempts = std::pin::pin!(forward(
                    &pool,
                    request,
                    &forwarding,
                    Arrival {
                        listener: &self.listener.name,
                        started,
                        selection,
                    },
                    tunnel,
                    &mut served_by,
                    budget,
                ));
                upload::bound(upload.as_ref(), attempts).await
            };
            if let Err(ProxyError::Client(fault @ ClientFault::Stalled)) = &outcome {
                pool.metrics
                    .record_client(&self.listener.name, &pool.name, fault.label());
            }
            if let Some(route) = &route {
                route.record(status_of(&outcome).as_u16(), started);
            }
            if let Some((method, path)) = access {
                let request = AccessRequest {
                    method,
                    path,
                    route: route.map(|route| Arc::clone(&route.name)),
                };
                self.log_access(&outcome, request, served_by, started);
            }
            let response = self.respond(outcome, &pool);
            Ok(ClientBody::response(response, exchange, stream))
        }
    }

    /// Rewrites `request` for its backend (hop-by-hop headers, HTTP/1.1), and returns the
    /// forwarding fields to add, the tunnel it may become and what the access log needs of it.
    fn prepare(
        &self,
        request: &mut Request<RequestBody>,
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
        request: AccessRequest,
        served_by: Option<Arc<str>>,
        started: Instant,
    ) {
        let status = status_of(outcome);
        let bytes = outcome
            .as_ref()
            .ok()
            .and_then(|response| response.body().size_hint().exact());
        // The client's own failures say so, apart from the status they would have got.
        let client_fault = outcome.as_ref().err().and_then(ProxyError::client_fault);
        tracing::info!(
            target: "fulcrum::access",
            listener = %self.listener.name,
            client = ?self.client.ip,
            method = %request.method,
            path = %request.path,
            route = request.route.as_deref().unwrap_or("-"),
            status = status.as_u16(),
            backend = served_by.as_deref().unwrap_or("-"),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            bytes = ?bytes,
            outcome = client_fault.map_or("-", ClientFault::label),
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
            Err(err) if err.is_client_error() => {
                tracing::info!(
                    listener = %self.listener.name,
                    pool = %pool.name,
                    status = err.status().as_u16(),
                    error = %err,
                    "client failed its request; no backend blamed"
                );
                err.to_response()
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

    /// Rejects requests that must not be forwarded and routes the rest: to a pool (the route
    /// rewrites the request for it first), or to a response of the route's own.
    fn check(&self, request: &mut Request<RequestBody>) -> Result<Routed, ProxyError> {
        if let Some(problem) = host::refusal(request.uri(), request.version(), request.headers()) {
            // RFC 9112 §3.2: a missing, repeated or invalid Host is a 400.
            return Err(ProxyError::BadRequest(problem));
        }
        if self.tls.is_none() {
            // A CA's HTTP-01 request, before any routing (RFC 8555 §8.3); with no challenge
            // pending, one atomic load.
            if let Some(answer) = self.listener.acme.http01.answer(request.uri().path()) {
                return Ok(Routed::Challenge(answer));
            }
        }
        if let Some(tls) = &self.tls {
            let host = host::name(request.uri(), request.headers());
            if host.is_some_and(|host| !tls.carries(host)) {
                return Err(ProxyError::Misdirected);
            }
        }
        let snapshot = self.listener.state.load();
        let router = snapshot
            .router_for(&self.listener.name)
            .ok_or(ProxyError::NoRoute)?;
        if let Some(limit) = router.rate_limit() {
            self.rate_limit(limit, request)?;
        }
        let target = router
            .route(request.method(), request.uri(), request.headers())
            .ok_or(ProxyError::NoRoute)?;
        let route = match &target {
            Target::Forward { route, .. } => *route,
            Target::Local { route, .. } => Some(*route),
        };
        if let Some(limit) = route.and_then(|route| route.rate_limit.as_ref()) {
            self.rate_limit(limit, request)?;
        }
        Ok(match target {
            Target::Forward { pool, route } => {
                if let Some(route) = route {
                    route.rewrite(request);
                }
                let copy = route
                    .and_then(|route| route.mirror.as_ref())
                    .and_then(|mirror| mirror::Copy::take(mirror, request));
                Routed::Forward {
                    pool: Arc::clone(pool),
                    route: route.map(|route| Arc::clone(&route.metrics)),
                    copy,
                    budget: route.map_or_else(|| pool.budget(), |route| route.budget(pool)),
                }
            }
            Target::Local { route, response } => Routed::Local(
                local_response(route, response, request),
                Arc::clone(&route.metrics),
            ),
        })
    }

    /// Counts the request against `limit` (a refusal is counted and logged there).
    fn rate_limit(
        &self,
        limit: &RateLimiter,
        request: &Request<RequestBody>,
    ) -> Result<(), ProxyError> {
        limit
            .check_request(self.peer, request.headers())
            .map_err(|refused| ProxyError::RateLimited {
                retry_after: refused.retry_after,
            })
    }

    /// Answers a request head fulcrum's HTTP/1.1 server cannot serve; the connection closes
    /// after the answer.
    pub(super) fn refuse(&self, err: HeadError) -> Response<ClientBody> {
        let err = ProxyError::Head(err);
        tracing::info!(
            listener = %self.listener.name,
            client = %self.peer,
            status = err.status().as_u16(),
            error = %err,
            "request head refused"
        );
        ClientBody::response(err.to_response(), None, None)
    }

    fn fail(&self, err: &ProxyError, request: &Request<RequestBody>) -> Response<ProxyBody> {
        if let ProxyError::RateLimited { .. } = err {
            // Logged at debug by the limiter: a flood must not flood the log.
            return err.to_response();
        }
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
