//! Active health checks: one task per backend, probing on a jittered interval until cancelled.
//!
//! The [`Supervisor`] keeps exactly one checker per backend of the current snapshot: it starts
//! checkers for new backends, restarts them when the pool's check settings change, and cancels
//! them when a backend (or the whole process) goes away.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::config::{CheckKind, HealthCheckConfig, UpstreamTlsConfig};
use crate::snapshot::Snapshot;
use crate::upstream::connect::connect_stream;
use crate::upstream::{ConnectError, Connector, h1};

/// Why an active check failed; its text becomes the backend's `last_error`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// The whole check took longer than its `timeout`.
    #[error("check timed out after {0:?}")]
    TimedOut(Duration),
    /// TCP, or the TLS handshake (a certificate problem says so here), failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The HTTP/1.1 or HTTP/2 handshake on the new connection failed.
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The configured path or host does not make a request.
    #[error("cannot build the check request: {0}")]
    Request(#[from] http::Error),
    /// The check request got no response.
    #[error("check request failed: {0}")]
    Exchange(#[source] hyper::Error),
    /// The response's status is not in `expect_status`.
    #[error("unexpected status {0}")]
    Status(u16),
}

/// Runs one probe against `backend` through its pool's `connector` (TLS with the pool's server
/// name and roots, HTTP/2 on `http2` pools): `Ok` when it passes.
pub(crate) async fn probe(
    backend: &Backend,
    connector: &Connector,
    check: &HealthCheckConfig,
) -> Result<(), ProbeError> {
    match tokio::time::timeout(check.timeout, probe_once(backend, connector, &check.kind)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::TimedOut(check.timeout)),
    }
}

/// A `tcp` check passes once the connection (and its TLS handshake) is made; an `http` one
/// once a request on it is answered with an expected status.
async fn probe_once(
    backend: &Backend,
    connector: &Connector,
    kind: &CheckKind,
) -> Result<(), ProbeError> {
    let stream = connect_stream(backend.address, backend.host(), connector).await?;
    let CheckKind::Http {
        method,
        path,
        host,
        expect,
    } = kind
    else {
        return Ok(());
    };
    let authority = match host {
        Some(host) => host.clone(),
        None => HeaderValue::from_str(&backend.address.to_string())
            .map_err(|err| ProbeError::Request(err.into()))?,
    };
    let request = Request::builder()
        .method(method.clone())
        .header(header::USER_AGENT, "fulcrum-health-check");
    let status = if connector.http2 {
        // HTTP/2 carries the host in the target's authority, and needs the scheme.
        let scheme = if connector.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let authority = authority.to_str().unwrap_or_default();
        let request = request
            .uri(format!("{scheme}://{authority}{path}"))
            .body(Empty::<Bytes>::new())?;
        exchange_http2(stream, request).await?
    } else {
        let request = request
            .uri(path.clone())
            .header(header::HOST, authority)
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())?;
        exchange_http1(stream, request).await?
    };
    if expect.contains(status.as_u16()) {
        Ok(())
    } else {
        Err(ProbeError::Status(status.as_u16()))
    }
}

async fn exchange_http1(
    stream: h1::Stream,
    request: Request<Empty<Bytes>>,
) -> Result<StatusCode, ProbeError> {
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ProbeError::Handshake)?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await;
    driver.abort();
    Ok(response.map_err(ProbeError::Exchange)?.status())
}

async fn exchange_http2(
    stream: h1::Stream,
    request: Request<Empty<Bytes>>,
) -> Result<StatusCode, ProbeError> {
    let (mut sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(ProbeError::Handshake)?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await;
    driver.abort();
    Ok(response.map_err(ProbeError::Exchange)?.status())
}

/// Waits for the first round of checks of `snapshot`'s actively checked backends not probed yet
/// (with `whole`, of every pool; else only of pools with no backend up yet, as a reload adds
/// them), at most the longest check timeout plus a little for the result to land. Returns how
/// many backends are still unchecked then.
pub(crate) async fn first_round(snapshot: &Snapshot, whole: bool) -> usize {
    let waited_for = || {
        snapshot
            .pools()
            .iter()
            .filter(|pool| whole || !pool.any_available())
            .filter_map(|pool| pool.health_check.as_ref().map(|check| (pool, check)))
    };
    let Some(timeout) = waited_for().map(|(_, check)| check.timeout).max() else {
        return 0;
    };
    let unchecked = || {
        waited_for()
            .flat_map(|(pool, _)| pool.endpoints.iter())
            .filter(|endpoint| !endpoint.backend.health.probed())
            .count()
    };
    // Startup only, not the hot path: a short poll beats wiring a notification per backend.
    let deadline = tokio::time::Instant::now() + timeout + FIRST_ROUND_GRACE;
    loop {
        let left = unchecked();
        if left == 0 || tokio::time::Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(FIRST_ROUND_POLL).await;
    }
}

/// Time a probe's result takes to be recorded after its timeout, on a busy machine.
const FIRST_ROUND_GRACE: Duration = Duration::from_millis(50);
/// How often [`first_round`] looks.
const FIRST_ROUND_POLL: Duration = Duration::from_millis(2);

/// Probes `backend` every `interval` (plus up to `jitter`) until `stop` fires. The first probe
/// runs at once, without jitter, so a new backend with active checks is not kept out for a
/// whole interval and the first round before the listeners accept is short.
pub(crate) async fn run(
    backend: Arc<Backend>,
    check: Arc<HealthCheckConfig>,
    connector: Connector,
    stop: CancellationToken,
    mut rng: fastrand::Rng,
) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut first = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let jitter = if std::mem::take(&mut first) {
            Duration::ZERO
        } else {
            jitter_delay(&mut rng, check.jitter)
        };
        if !jitter.is_zero() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(jitter) => {}
            }
        }
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = probe(&backend, &connector, &check) => result,
        };
        tracing::trace!(pool = %backend.pool, backend = %backend.name, passed = result.is_ok(), "health check");
        backend.metrics.health_check(result.is_ok());
        if let Some(transition) = backend.health.record_probe(result.err(), &check) {
            backend.transitioned(&transition, backend.health.last_error().as_deref());
        }
    }
}

/// A uniformly random delay in `[0, max]`.
fn jitter_delay(rng: &mut fastrand::Rng, max: Duration) -> Duration {
    let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if max_nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.u64(0..=max_nanos))
}

/// Keeps one checker task per backend of the current snapshot.
#[derive(Debug)]
pub(crate) struct Supervisor {
    stop: CancellationToken,
    running: HashMap<(Arc<str>, SocketAddr), Checker>,
}

#[derive(Debug)]
struct Checker {
    backend: Arc<Backend>,
    check: Arc<HealthCheckConfig>,
    /// The pool's HTTP/2 and TLS settings the checker's connector was built from.
    upstream: Upstream,
    stop: CancellationToken,
}

/// A pool's `http2` and `[pools.NAME.tls]`, as [`Pool::upstream_settings`] gives them.
///
/// [`Pool::upstream_settings`]: crate::pool::Pool::upstream_settings
type Upstream = (bool, Option<UpstreamTlsConfig>);

impl Supervisor {
    /// A supervisor whose checkers all stop when `stop` fires.
    pub(crate) fn new(stop: CancellationToken) -> Self {
        Self {
            stop,
            running: HashMap::new(),
        }
    }

    /// Starts, restarts and stops checkers so that they match `snapshot`.
    pub(crate) fn sync(&mut self, snapshot: &Snapshot) {
        let mut wanted = HashMap::new();
        for pool in snapshot.pools() {
            let Some(check) = &pool.health_check else {
                continue;
            };
            for endpoint in pool.endpoints.iter() {
                let key = (Arc::clone(&pool.name), endpoint.backend.address);
                wanted.insert(
                    key,
                    (Arc::clone(&endpoint.backend), Arc::clone(check), pool),
                );
            }
        }
        self.running.retain(|key, checker| {
            let keep = wanted.get(key).is_some_and(|(backend, check, pool)| {
                Arc::ptr_eq(backend, &checker.backend)
                    && **check == *checker.check
                    && *pool.upstream_settings() == checker.upstream
            });
            if !keep {
                checker.stop.cancel();
                tracing::debug!(pool = %key.0, backend = %checker.backend.name, "health checker stopped");
            }
            keep
        });
        for (key, (backend, check, pool)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let stop = self.stop.child_token();
            let seed = fastrand::u64(..);
            tokio::spawn(run(
                Arc::clone(&backend),
                Arc::clone(&check),
                pool.connector.clone(),
                stop.clone(),
                fastrand::Rng::with_seed(seed),
            ));
            tracing::debug!(pool = %key.0, backend = %backend.name, "health checker started");
            self.running.insert(
                key,
                Checker {
                    backend,
                    check,
                    upstream: pool.upstream_settings().clone(),
                    stop,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let mut rng = fastrand::Rng::with_seed(7);
        let max = Duration::from_millis(200);
        let delays: Vec<_> = (0..1000).map(|_| jitter_delay(&mut rng, max)).collect();
        assert!(delays.iter().all(|d| *d <= max));
        assert!(delays.iter().any(|d| *d < max / 4));
        assert!(delays.iter().any(|d| *d > max * 3 / 4));
        assert_eq!(jitter_delay(&mut rng, Duration::ZERO), Duration::ZERO);
    }
}
