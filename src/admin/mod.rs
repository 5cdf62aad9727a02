//! The admin listener: operator endpoints, bound where `[admin] listen` says (a warning is
//! logged at start when that is not loopback and no `token_file` is set).
//!
//! Who may call what is `access`'s: the probes are open, the rest checks `Host`, `Origin`
//! and, with `token_file`, a bearer token. A connection must send each request head within
//! `header_read_timeout`; at most `max_connections` are open at once (the accept loop waits).
//!
//! - `GET /`: the live dashboard (one self-contained page, polling `/status`).
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 once the listeners accept: after the first round of health checks
//!   (every actively checked backend checked once, or the longest check timeout over); 503
//!   before.
//! - `GET /status`: JSON: version, uptime, last reload, listeners, pools and backends.
//! - `GET /metrics`: Prometheus text format.
//! - `POST /reload`: reload the config file now; 200 with the changes, 422 with the errors.
//! - `GET /config`: the config file text currently applied (used by `fulcrum --check --diff`).

mod access;
mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) use access::Access;
pub(crate) use status::{ListenerView, ReloadResult, ReloadStatus, Status};

use crate::backend::Backend;
use crate::limit::OpenConnection;
use crate::metrics::names;
use crate::reload::{ReloadHandle, ReloadOutcome};
use crate::snapshot::SharedState;

/// The dashboard page, embedded at build time.
const DASHBOARD: &str = include_str!("dashboard.html");

/// What the admin endpoints read and act on.
pub(crate) struct AdminState {
    reload: ReloadHandle,
    /// The live snapshot.
    state: SharedState,
    started: Instant,
    config_file: Option<PathBuf>,
    exporter: Option<&'static PrometheusHandle>,
    /// The text of the config file as last applied.
    applied_source: ArcSwap<Option<String>>,
    /// The last applied or rejected reload.
    last_reload: ArcSwap<Option<ReloadStatus>>,
    /// Running listeners.
    listeners: ArcSwap<Vec<ListenerView>>,
    /// Backends removed by a reload that may still have requests in flight.
    draining: ArcSwap<Vec<Arc<Backend>>>,
    /// Who may call what; replaced on reload and when the token file changes.
    access: ArcSwap<Access>,
    /// Set when the listeners start accepting: after the first round of health checks.
    ready: AtomicBool,
    /// The certificates served (file and ACME), for `/status`.
    acme: Arc<crate::acme::Shared>,
    /// The discovered sets and lookups of `discover` pools, for `/status`.
    discovery: Arc<crate::discovery::Registry>,
}

impl AdminState {
    /// Admin state for a server started from `config_file` (whose text is `source`), exporting
    /// metrics through `exporter` when installed.
    pub(crate) fn new(
        reload: ReloadHandle,
        state: SharedState,
        config_file: Option<PathBuf>,
        source: Option<String>,
        exporter: Option<&'static PrometheusHandle>,
        acme: Arc<crate::acme::Shared>,
        discovery: Arc<crate::discovery::Registry>,
    ) -> Self {
        Self {
            reload,
            state,
            started: Instant::now(),
            config_file,
            exporter,
            applied_source: ArcSwap::from_pointee(source),
            last_reload: ArcSwap::from_pointee(None),
            listeners: ArcSwap::from_pointee(Vec::new()),
            draining: ArcSwap::from_pointee(Vec::new()),
            access: ArcSwap::from_pointee(Access::open()),
            ready: AtomicBool::new(false),
            acme,
            discovery,
        }
    }

    /// The access rules in force.
    pub(crate) fn access(&self) -> Arc<Access> {
        self.access.load_full()
    }

    /// Replaces the access rules (a reload, or a new token).
    pub(crate) fn set_access(&self, access: Access) {
        self.access.store(Arc::new(access));
    }

    /// The listeners accept from now on (`/readyz` answers 200).
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Records a reload attempt; `source` is the file text that was read for it.
    pub(crate) fn record_reload(&self, outcome: &ReloadOutcome, source: Option<String>) {
        let at_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let status = match outcome {
            ReloadOutcome::Applied(changes) => {
                self.applied_source.store(Arc::new(source));
                ReloadStatus {
                    result: ReloadResult::Applied,
                    at_unix,
                    changes: changes.clone(),
                    error: None,
                }
            }
            ReloadOutcome::Rejected(error) => ReloadStatus {
                result: ReloadResult::Rejected,
                at_unix,
                changes: Vec::new(),
                error: Some(error.to_string()),
            },
            ReloadOutcome::Unchanged | ReloadOutcome::NoFile => return,
        };
        self.last_reload.store(Arc::new(Some(status)));
    }

    /// Replaces the list of running listeners.
    pub(crate) fn set_listeners(&self, listeners: Vec<ListenerView>) {
        self.listeners.store(Arc::new(listeners));
    }

    /// Adds backends removed by a reload, shown as draining while they have requests in flight.
    pub(crate) fn add_draining(&self, backends: Vec<Arc<Backend>>) {
        self.draining.rcu(|current| {
            current
                .iter()
                .chain(&backends)
                .filter(|backend| backend.in_flight() > 0)
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    /// The `/status` document.
    pub(crate) fn status(&self) -> Status {
        let draining: Vec<Arc<Backend>> = self
            .draining
            .load()
            .iter()
            .filter(|backend| backend.in_flight() > 0)
            .cloned()
            .collect();
        let mut status = Status::collect(
            &self.state.load(),
            &self.listeners.load(),
            &draining,
            (
                self.started.elapsed().as_secs_f64(),
                self.config_file.as_ref().map(|p| p.display().to_string()),
                self.last_reload.load().as_ref().clone(),
                self.is_ready(),
            ),
        );
        status.certificates = self.acme.book.snapshot();
        status.add_discovery(&self.discovery);
        status
    }

    /// Prometheus text, with state-mirroring gauges refreshed first.
    fn metrics(&self) -> Option<String> {
        let exporter = self.exporter?;
        for pool in self.state.load().pools() {
            for endpoint in pool.endpoints.iter() {
                let backend = &endpoint.backend;
                backend.metrics.refresh_gauges(
                    backend.health.is_available(),
                    backend.in_flight(),
                    backend.idle.len(),
                );
                if let Some(ms) = pool.latency_estimate_ms(backend) {
                    backend.metrics.refresh_latency_estimate(ms / 1000.0);
                }
            }
        }
        Some(crate::metrics::render(exporter))
    }
}

/// Serves one admin connection, holding its `room` under the admin listener's
/// `max_connections`, until it closes or `shutdown` fires.
pub(crate) async fn serve(
    admin: Arc<AdminState>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    _room: OpenConnection,
) {
    let header_read_timeout = admin.access.load().header_read_timeout;
    let service = service_fn(move |request| {
        let admin = Arc::clone(&admin);
        async move { Ok::<_, Infallible>(route(&admin, request, peer).await) }
    });
    // hyper's header-read timeout is silently off without a timer.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
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

async fn route(
    admin: &AdminState,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let probe = matches!(request.uri().path(), "/healthz" | "/readyz");
    // The dashboard page holds no data (it asks for the token and fetches `/status` with it), so
    // a browser can open it (and ask for its icon, which is not found); Host and Origin still
    // apply.
    let page =
        request.method() == Method::GET && matches!(request.uri().path(), "/" | "/favicon.ico");
    if !probe {
        if let Err(refusal) = admin.access.load().check(request.headers(), !page) {
            return refuse(refusal, &request, peer);
        }
    }
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/") => {
            let mut response = text(StatusCode::OK, DASHBOARD);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            if admin.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: first health checks pending\n",
                )
            }
        }
        (&Method::GET, "/status") => match serde_json::to_vec_pretty(&admin.status()) {
            Ok(json) => {
                let mut response = text(StatusCode::OK, json);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(err) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot render status: {err}\n"),
            ),
        },
        (&Method::GET, "/metrics") => match admin.metrics() {
            Some(body) => {
                let mut response = text(StatusCode::OK, body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            None => text(
                StatusCode::NOT_FOUND,
                "metrics are disabled (admin.metrics = false)\n",
            ),
        },
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

/// Logs, counts and answers a refused request.
fn refuse(
    refusal: access::Refusal,
    request: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    metrics::counter!(names::ADMIN_REFUSED, "reason" => refusal.as_str()).increment(1);
    tracing::info!(
        client = %peer,
        method = %request.method(),
        path = request.uri().path(),
        reason = refusal.as_str(),
        "admin request refused"
    );
    let (status, body) = refusal.status();
    let mut response = text(status, body);
    if refusal == access::Refusal::Token {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"fulcrum admin\""),
        );
    }
    response
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
