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
use http::{Request, header};
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::config::{CheckKind, HealthCheckConfig};
use crate::snapshot::Snapshot;

/// Runs one probe against `address`: `Ok` when it passes, else a short description of why not.
pub(crate) async fn probe(address: SocketAddr, check: &HealthCheckConfig) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, probe_once(address, &check.kind)).await {
        Ok(result) => result,
        Err(_) => Err(format!("check timed out after {:?}", check.timeout)),
    }
}

async fn probe_once(address: SocketAddr, kind: &CheckKind) -> Result<(), String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|err| format!("connect failed: {err}"))?;
    let CheckKind::Http {
        method,
        path,
        host,
        expect,
    } = kind
    else {
        return Ok(());
    };
    let (mut sender, connection) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|err| format!("handshake failed: {err}"))?;
    let driver = tokio::spawn(connection);
    let host = host
        .clone()
        .or_else(|| http::HeaderValue::from_str(&address.to_string()).ok());
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path.clone())
        .header(header::USER_AGENT, "fulcrum-health-check")
        .header(header::CONNECTION, "close");
    if let Some(host) = host {
        request = request.header(header::HOST, host);
    }
    let request = request
        .body(Empty::new())
        .map_err(|err| format!("cannot build check request: {err}"))?;
    let response = sender.send_request(request).await;
    driver.abort();
    let status = response
        .map_err(|err| format!("request failed: {err}"))?
        .status();
    if expect.contains(status.as_u16()) {
        Ok(())
    } else {
        Err(format!("unexpected status {}", status.as_u16()))
    }
}

/// Probes `backend` every `interval` (plus up to `jitter`) until `stop` fires. The first probe
/// runs at once, so a new backend with active checks is not kept out for a whole interval.
pub(crate) async fn run(
    backend: Arc<Backend>,
    check: Arc<HealthCheckConfig>,
    stop: CancellationToken,
    mut rng: fastrand::Rng,
) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let jitter = jitter_delay(&mut rng, check.jitter);
        if !jitter.is_zero() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(jitter) => {}
            }
        }
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = probe(backend.address, &check) => result,
        };
        tracing::trace!(pool = %backend.pool, backend = %backend.name, passed = result.is_ok(), "health check");
        backend.metrics.health_check(result.is_ok());
        if let Some(transition) = backend.health.record_probe(result, &check) {
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
    stop: CancellationToken,
}

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
                wanted.insert(key, (Arc::clone(&endpoint.backend), Arc::clone(check)));
            }
        }
        self.running.retain(|key, checker| {
            let keep = wanted.get(key).is_some_and(|(backend, check)| {
                Arc::ptr_eq(backend, &checker.backend) && **check == *checker.check
            });
            if !keep {
                checker.stop.cancel();
                tracing::debug!(pool = %key.0, backend = %checker.backend.name, "health checker stopped");
            }
            keep
        });
        for (key, (backend, check)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let stop = self.stop.child_token();
            let seed = fastrand::u64(..);
            tokio::spawn(run(
                Arc::clone(&backend),
                Arc::clone(&check),
                stop.clone(),
                fastrand::Rng::with_seed(seed),
            ));
            tracing::debug!(pool = %key.0, backend = %backend.name, "health checker started");
            self.running.insert(
                key,
                Checker {
                    backend,
                    check,
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
