//! The admin listener: operator endpoints, bound to loopback by default.
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `POST /reload`: reload the config file now; 200 with the changes, 422 with the errors.
//! - `GET /config`: the config file text currently applied (used by `fulcrum --check --diff`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::reload::{ReloadHandle, ReloadOutcome};
use crate::state::SharedState;

/// What the admin endpoints read and act on.
pub struct AdminState {
    reload: ReloadHandle,
    /// The live snapshot (for status reporting).
    pub state: SharedState,
    /// The text of the config file as last applied.
    applied_source: ArcSwap<Option<String>>,
    /// The outcome of the last reload attempt, if any.
    last_reload: ArcSwap<Option<ReloadOutcome>>,
}

impl AdminState {
    /// Admin state for a server whose config file (if any) currently reads `source`.
    pub fn new(reload: ReloadHandle, state: SharedState, source: Option<String>) -> Self {
        Self {
            reload,
            state,
            applied_source: ArcSwap::from_pointee(source),
            last_reload: ArcSwap::from_pointee(None),
        }
    }

    /// Records a reload attempt; `source` is the file text that was read for it.
    pub fn record_reload(&self, outcome: &ReloadOutcome, source: Option<String>) {
        match outcome {
            ReloadOutcome::Applied(_) => {
                self.applied_source.store(Arc::new(source));
                self.last_reload.store(Arc::new(Some(outcome.clone())));
            }
            ReloadOutcome::Rejected(_) => self.last_reload.store(Arc::new(Some(outcome.clone()))),
            ReloadOutcome::Unchanged | ReloadOutcome::NoFile => {}
        }
    }

    /// The outcome of the last applied or rejected reload.
    pub fn last_reload(&self) -> Option<ReloadOutcome> {
        self.last_reload.load().as_ref().clone()
    }
}

/// Serves one admin connection until it closes or `shutdown` fires.
pub async fn serve(
    admin: Arc<AdminState>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let service = service_fn(move |request| {
        let admin = Arc::clone(&admin);
        async move { Ok::<_, Infallible>(route(&admin, request).await) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(client = %peer, error = %err, "admin connection ended with an error");
    }
}

async fn route(admin: &AdminState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::POST, "/reload") => match admin.reload.reload().await {
            Some(outcome @ ReloadOutcome::Applied(_)) => {
                text(StatusCode::OK, format!("{outcome}\n"))
            }
            Some(ReloadOutcome::Rejected(error)) => text(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("reload rejected; the running config is unchanged:\n{error}\n"),
            ),
            Some(outcome) => text(StatusCode::CONFLICT, format!("{outcome}\n")),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        },
        (&Method::GET, "/config") => match admin.applied_source.load().as_ref() {
            Some(source) => text(StatusCode::OK, source.clone()),
            None => text(StatusCode::NOT_FOUND, "not started from a config file\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Why the running instance's config could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Could not connect or talk HTTP to the admin listener.
    #[error("cannot reach the admin listener at {address}: {message}")]
    Unreachable {
        /// The admin address asked.
        address: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// The admin listener answered with an error.
    #[error("the admin listener at {address} answered {status}: {body}")]
    Status {
        /// The admin address asked.
        address: SocketAddr,
        /// Its status code.
        status: StatusCode,
        /// Its body.
        body: String,
    },
}

/// Fetches the config text a running fulcrum has applied, from its admin listener's `/config`.
pub async fn fetch_config(address: SocketAddr) -> Result<String, FetchError> {
    use http_body_util::{BodyExt, Empty};
    let unreachable = |message: String| FetchError::Unreachable { address, message };
    let stream = TcpStream::connect(address)
        .await
        .map_err(|err| unreachable(err.to_string()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|err| unreachable(err.to_string()))?;
    let driver = tokio::spawn(connection);
    let request = Request::builder()
        .uri("/config")
        .header(header::HOST, address.to_string())
        .body(Empty::new())
        .map_err(|err| unreachable(err.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| unreachable(err.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| unreachable(err.to_string()))?
        .to_bytes();
    driver.abort();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        Ok(body)
    } else {
        Err(FetchError::Status {
            address,
            status,
            body,
        })
    }
}
