//! The one place where proxy failures become HTTP responses.
//!
//! Every failure is classified by where it came from and answered by one exhaustive `match`
//! ([`ProxyError::status`]), so a new error kind cannot ship without a status code.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::ProxyBody;
use crate::upstream::ConnectError;

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The client sent something we refuse to forward (ambiguous framing and the like).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// No route of the listener matched and it has no fallback pool.
    #[error("no route matches the request")]
    NoRoute,
    /// The client is over a rate limit of the listener or its route: answered by fulcrum, no
    /// backend involved, and the connection stays open.
    #[error("rate limited; retry after {retry_after} s")]
    RateLimited {
        /// Whole seconds until the client's key may send again (`Retry-After`).
        retry_after: u64,
    },
    /// The request names a host its TLS connection's certificate was not chosen for.
    #[error("the connection was set up for another host's certificate")]
    Misdirected,
    /// The listener's pool had no backend left to try: none healthy, or every one refused.
    #[error("no backend available in pool {pool}")]
    NoBackend {
        /// The pool that was asked.
        pool: std::sync::Arc<str>,
        /// Seconds after which a retry may find a backend again (`Retry-After`).
        retry_after: u64,
    },
    /// Every backend with room was taken, and the request found no room in time.
    #[error(transparent)]
    Queue(#[from] crate::pool::QueueError),
    /// Every attempt to connect failed (after retries on other backends).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The backend did not send response headers within the pool's `request_timeout`.
    #[error("backend sent no response head within {0:?}")]
    Timeout(Duration),
    /// One attempt got no response head within the pool's `try_timeout`; a bodiless
    /// idempotent request moves on to another backend.
    #[error("backend sent no response head within the try_timeout of {0:?}")]
    TryTimeout(Duration),
    /// The backend reset the connection or sent something that is not HTTP.
    #[error("backend failed: {0}")]
    Upstream(#[source] UpstreamError),
    /// The backend answered in a way HTTP does not allow here.
    #[error("backend broke the protocol: {0}")]
    Protocol(&'static str),
    /// The backend stopped reading the request body for the listener's `idle_timeout`.
    #[error("backend read none of the request body for {0:?}")]
    UploadNotRead(Duration),
    /// The client failed while its request was on its way up: never counted against a backend.
    #[error("client failed: {0}")]
    Client(#[from] ClientFault),
    /// The request head cannot be served (HTTP/1.1): answered, then the connection closes.
    #[error(transparent)]
    Head(#[from] crate::proxy::l7::h1::head::HeadError),
}

/// A failure the client caused after its request was accepted. The backend it was being sent
/// to is not blamed (no passive failure, no 5xx in its metrics): otherwise any client could eject
/// healthy backends by abandoning uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ClientFault {
    /// The client closed its connection before its request body was complete.
    #[error("client went away before its request body was complete")]
    Gone,
    /// The client reset its HTTP/2 stream before its request body was complete.
    #[error("client reset its stream before its request body was complete")]
    Reset,
    /// The request body broke its framing (a bad chunk size, an overflowing length).
    #[error("malformed request body framing")]
    Malformed,
    /// The request body stopped arriving for the listener's `idle_timeout`.
    #[error("client sent no request body bytes for the idle_timeout")]
    Stalled,
}

impl ClientFault {
    /// Classifies an error of the client's request body (either server side).
    pub(crate) fn of(err: &(dyn std::error::Error + 'static)) -> ClientFault {
        let mut source = Some(err);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                ) {
                    return ClientFault::Malformed;
                }
            } else if let Some(h2) = cause.downcast_ref::<h2::Error>() {
                if h2.is_reset() && h2.is_remote() {
                    return ClientFault::Reset;
                }
            }
            source = cause.source();
        }
        ClientFault::Gone
    }

    /// Classifies a failed exchange with an HTTP/2 backend: a stream we reset ourselves
    /// (not the backend, not the h2 library) means the client's request body failed under it.
    pub(crate) fn of_upstream_h2(err: &hyper::Error) -> Option<ClientFault> {
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            if let Some(h2) = cause.downcast_ref::<h2::Error>() {
                let ours = h2.is_reset() && !h2.is_remote() && !h2.is_library();
                return ours.then_some(ClientFault::Gone);
            }
            source = cause.source();
        }
        None
    }

    /// The `code_class` label of the request metrics and the access log's `outcome`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ClientFault::Gone => "client_gone",
            ClientFault::Reset => "client_reset",
            ClientFault::Malformed => "client_malformed",
            ClientFault::Stalled => "client_stalled",
        }
    }
}

/// A failed exchange with a backend, by protocol.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// Over HTTP/1.1.
    #[error(transparent)]
    Http1(#[from] crate::upstream::h1::Error),
    /// Over HTTP/2 (hyper's client).
    #[error(transparent)]
    Http2(#[from] hyper::Error),
}

impl ProxyError {
    /// The status code the client gets.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            // A client that is gone gets no response; were one read, this is what it would say.
            ProxyError::Client(ClientFault::Stalled) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequest(_) | ProxyError::Client(_) => StatusCode::BAD_REQUEST,
            ProxyError::Head(err) => err.status(),
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::NoBackend { .. } | ProxyError::Queue(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(_) | ProxyError::Upstream(_) | ProxyError::Protocol(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout(_) | ProxyError::TryTimeout(_) | ProxyError::UploadNotRead(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// Whether the failure was the client's rather than a backend's.
    pub(crate) fn is_client_error(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::Client(_) | ProxyError::Head(_)
        )
    }

    /// The client's fault, if this is one: counted under its own label, never a backend's.
    pub(crate) fn client_fault(&self) -> Option<ClientFault> {
        match self {
            ProxyError::Client(fault) => Some(*fault),
            _ => None,
        }
    }

    /// A short plain-text response for the client. Bad requests also close the connection,
    /// since a request with ambiguous framing leaves the byte stream untrustworthy.
    pub(crate) fn to_response(&self) -> Response<ProxyBody> {
        let status = self.status();
        let reason = status.canonical_reason().unwrap_or("error");
        let body = match self {
            ProxyError::BadRequest(detail) => format!("{} {reason}: {detail}\n", status.as_u16()),
            ProxyError::Head(err) => format!("{} {reason}: {err}\n", status.as_u16()),
            ProxyError::Client(fault) => format!("{} {reason}: {fault}\n", status.as_u16()),
            ProxyError::NoBackend { pool, .. } => format!(
                "{} {reason}: no healthy backend in pool {pool}\n",
                status.as_u16()
            ),
            ProxyError::Queue(_) => format!(
                "{} {reason}: every backend is busy; try again shortly\n",
                status.as_u16()
            ),
            ProxyError::NoRoute => {
                format!("{} {reason}: no route for this request\n", status.as_u16())
            }
            ProxyError::RateLimited { retry_after } => format!(
                "{} {reason}: rate limit exceeded; retry after {retry_after} s\n",
                status.as_u16()
            ),
            _ => format!("{} {reason}\n", status.as_u16()),
        };
        let mut response = Response::new(ProxyBody::local(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.is_client_error() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        match self {
            ProxyError::NoBackend { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ProxyError::Queue(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::RateLimited { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn statuses_follow_the_failure_table() {
        let address = SocketAddr::from(([127, 0, 0, 1], 1));
        let cases = [
            (ProxyError::BadRequest("x"), 400),
            (ProxyError::NoRoute, 404),
            (ProxyError::Misdirected, 421),
            (ProxyError::RateLimited { retry_after: 3 }, 429),
            (
                ProxyError::NoBackend {
                    pool: "p".into(),
                    retry_after: 2,
                },
                503,
            ),
            (
                ProxyError::Connect(ConnectError::Timeout {
                    address,
                    timeout: Duration::from_secs(1),
                }),
                502,
            ),
            (ProxyError::Timeout(Duration::from_secs(1)), 504),
            (ProxyError::TryTimeout(Duration::from_millis(200)), 504),
            (ProxyError::Client(ClientFault::Malformed), 400),
            (ProxyError::Client(ClientFault::Gone), 400),
            (ProxyError::Client(ClientFault::Stalled), 408),
            (ProxyError::UploadNotRead(Duration::from_secs(1)), 504),
            (
                ProxyError::Queue(crate::pool::QueueError::Timeout {
                    pool: "p".into(),
                    timeout: Duration::from_secs(1),
                }),
                503,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
            let response = error.to_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(
                response.headers().contains_key(header::RETRY_AFTER),
                status == 503 || status == 429
            );
            if status == 429 {
                assert_eq!(response.headers()[header::RETRY_AFTER], "3");
                assert!(!response.headers().contains_key(header::CONNECTION));
            }
        }
    }
}
