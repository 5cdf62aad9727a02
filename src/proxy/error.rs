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
    /// The backend reset the connection or sent something that is not HTTP.
    #[error("backend failed: {0}")]
    Upstream(#[source] UpstreamError),
    /// The backend answered in a way HTTP does not allow here.
    #[error("backend broke the protocol: {0}")]
    Protocol(&'static str),
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
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend { .. } | ProxyError::Queue(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(_) | ProxyError::Upstream(_) | ProxyError::Protocol(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the failure was the client's rather than a backend's.
    pub(crate) fn is_client_error(&self) -> bool {
        matches!(self, ProxyError::BadRequest(_))
    }

    /// A short plain-text response for the client. Bad requests also close the connection,
    /// since a request with ambiguous framing leaves the byte stream untrustworthy.
    pub(crate) fn to_response(&self) -> Response<ProxyBody> {
        let status = self.status();
        let reason = status.canonical_reason().unwrap_or("error");
        let body = match self {
            ProxyError::BadRequest(detail) => format!("{} {reason}: {detail}\n", status.as_u16()),
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
                status == 503
            );
        }
    }
}
