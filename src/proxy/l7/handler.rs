//! The per-request service of a client connection: rejects what must not be forwarded, picks
//! the listener's pool, forwards, and turns the outcome (or error) into the client's response.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::forward::{Arrival, forward};
use super::listener::HttpListener;
use super::tunnel::{Tunnel, UpgradeSlot};
use crate::http::headers::{self, ClientInfo, Forwarding};
use crate::pool::Pool;
use crate::proxy::activity::Exchange;
use crate::proxy::body::{BodyError, ProxyBody};
use crate::proxy::error::{ClientFault, ProxyError};
use crate::proxy::framing::FramingCheck;
use crate::upstream::RequestBody;

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
    type Error = BodyError;

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

/// The request handler of one client connection: its listener, who the client is, and the
/// framing check.
pub(super) struct Handler {
    pub(super) listener: Arc<HttpListener>,
    pub(super) client: ClientInfo,
    pub(super) framing: Arc<FramingCheck>,
    /// Where a 101's backend connection waits for this connection's task.
    pub(super) upgrade: Arc<UpgradeSlot>,
}

impl Handler {
    /// Answers one request; `exchange` stays open until hyper drops the response body.
    ///
    /// Written as one `async move` block over its arguments, not an `async fn` with nested
    /// ones: an `async fn` keeps a second copy of every argument it moves, and each copy is
    /// memory the request's future moves around (see `forward` and `send` too).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would store its arguments twice"
    )]
    pub(super) fn handle(
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
                        request.map(RequestBody::client),
                        &forwarding,
                        Arrival {
                            listener: &self.listener.name,
                            started,
                        },
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
        // The client's own failures say so, apart from the status they would have got.
        let client_fault = outcome.as_ref().err().and_then(ProxyError::client_fault);
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
