//! The HTTP client instant-acme talks to the CA through. It trusts what instant-acme's own
//! client would (`directory_ca` alone when set, else the platform's verifier) and adds one
//! thing: an error response carrying `Retry-After` becomes a [`Refused`] error that keeps the
//! wait, because instant-acme's problem error drops the response's headers and the task must
//! retry when the CA asked rather than on its generic back-off.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient, Problem};

use crate::tls::TlsError;

/// RFC 8555 §6.5: a stale nonce. instant-acme retries these itself, so they stay responses.
const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";

/// The CA refused a request and said when to come back (an error status with `Retry-After`).
#[derive(Debug, thiserror::Error)]
#[error("{problem} (the CA asks to retry in {} s)", wait.as_secs())]
pub(crate) struct Refused {
    /// The CA's problem document.
    pub(crate) problem: Problem,
    /// How long the CA asked to wait, from when its answer arrived.
    pub(crate) wait: Duration,
}

/// The refusal inside an instant-acme error, if it is one.
pub(super) fn refused(err: &instant_acme::Error) -> Option<&Refused> {
    match err {
        instant_acme::Error::Other(inner) => inner.downcast_ref::<Refused>(),
        _ => None,
    }
}

/// Why the client to the CA could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    /// `directory_ca` does not load.
    #[error("directory_ca: {0}")]
    Roots(#[from] TlsError),
    /// rustls refused the configuration (the platform verifier did not start).
    #[error("TLS client for the CA: {0}")]
    Tls(#[from] std::io::Error),
}

/// hyper-rustls to the CA (HTTPS only, HTTP/1.1 and HTTP/2), with error responses read for
/// `Retry-After`.
pub(super) struct CaClient(Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl CaClient {
    /// A client trusting only the roots in `directory_ca`, or the platform's when `None`.
    pub(super) fn new(directory_ca: Option<&Path>) -> Result<Self, TransportError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match directory_ca {
            Some(path) => {
                let roots = crate::tls::load_roots(path)?;
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|err| TransportError::Tls(std::io::Error::other(err)))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                builder.with_tls_config(config)
            }
            None => builder.with_provider_and_platform_verifier(provider)?,
        };
        let connector = builder.https_only().enable_http1().enable_http2().build();
        Ok(CaClient(
            Client::builder(TokioExecutor::new()).build(connector),
        ))
    }
}

impl HttpClient for CaClient {
    fn request(
        &self,
        request: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.0.request(request);
        Box::pin(async move {
            let response = response
                .await
                .map_err(|err| instant_acme::Error::Other(Box::new(err)))?;
            let now = SystemTime::now();
            if !asks_to_wait(response.status(), response.headers()) {
                return Ok(BytesResponse::from(response));
            }
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|err| instant_acme::Error::Other(Box::new(err)))?
                .to_bytes();
            match refusal(parts.status, &parts.headers, &body, now) {
                Some(refused) => Err(instant_acme::Error::Other(Box::new(refused))),
                None => Ok(BytesResponse::from(http::Response::from_parts(
                    parts,
                    Full::new(body),
                ))),
            }
        })
    }
}

/// An error status with `Retry-After`: the only answers whose body is read here.
fn asks_to_wait(status: StatusCode, headers: &HeaderMap) -> bool {
    (status.is_client_error() || status.is_server_error()) && headers.contains_key(RETRY_AFTER)
}

/// The refusal an answer is, if it is one: an error status, a parseable `Retry-After`, and a
/// problem document that is not a stale nonce. Anything else goes to instant-acme unchanged.
fn refusal(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Option<Refused> {
    if !asks_to_wait(status, headers) {
        return None;
    }
    let wait = retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?, now)?;
    let problem: Problem = serde_json::from_slice(body).ok()?;
    if problem.r#type.as_deref() == Some(BAD_NONCE) {
        return None;
    }
    Some(Refused { problem, wait })
}

/// RFC 9110 §10.2.3: `Retry-After` is delay-seconds or an HTTP-date; the wait from `now` (zero
/// for a date already past), `None` when it is neither.
fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBLEM: &str = r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many orders","status":429}"#;

    fn with_retry_after(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            RETRY_AFTER,
            http::HeaderValue::from_str(value).expect("a header value"),
        );
        headers
    }

    #[test]
    fn retry_after_is_delay_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(retry_after(&date, now), Some(Duration::from_secs(90)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-3", now), None);
        assert_eq!(retry_after("", now), None);
    }

    #[test]
    fn an_error_with_retry_after_and_a_problem_is_a_refusal() {
        let now = SystemTime::now();
        let refused = refusal(
            StatusCode::TOO_MANY_REQUESTS,
            &with_retry_after("3"),
            PROBLEM.as_bytes(),
            now,
        )
        .expect("a refusal");
        assert_eq!(refused.wait, Duration::from_secs(3));
        assert_eq!(
            refused.problem.r#type.as_deref(),
            Some("urn:ietf:params:acme:error:rateLimited")
        );
        assert!(refused.to_string().contains("retry in 3 s"), "{refused}");
        assert!(
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                &with_retry_after("60"),
                br#"{"type":"urn:ietf:params:acme:error:serverInternal"}"#,
                now
            )
            .is_some()
        );
    }

    #[test]
    fn other_answers_stay_responses() {
        let now = SystemTime::now();
        // A success with Retry-After is order polling, which instant-acme handles.
        assert!(
            refusal(
                StatusCode::OK,
                &with_retry_after("3"),
                PROBLEM.as_bytes(),
                now
            )
            .is_none()
        );
        // No Retry-After, or one that does not parse.
        assert!(
            refusal(
                StatusCode::TOO_MANY_REQUESTS,
                &HeaderMap::new(),
                PROBLEM.as_bytes(),
                now
            )
            .is_none()
        );
        assert!(
            refusal(
                StatusCode::TOO_MANY_REQUESTS,
                &with_retry_after("later"),
                PROBLEM.as_bytes(),
                now
            )
            .is_none()
        );
        // Not a problem document.
        assert!(
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                &with_retry_after("3"),
                b"<html>down</html>",
                now
            )
            .is_none()
        );
        // instant-acme retries a stale nonce itself.
        assert!(
            refusal(
                StatusCode::BAD_REQUEST,
                &with_retry_after("3"),
                br#"{"type":"urn:ietf:params:acme:error:badNonce"}"#,
                now
            )
            .is_none()
        );
    }
}
