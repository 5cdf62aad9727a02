//! The `/status` document: what fulcrum is doing now, as JSON for people and the dashboard.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::backend::Backend;
use crate::config::{RouteAction, RouteConfig};
use crate::metrics::{ListenerMetrics, RouteMetrics, WindowSummary};
use crate::snapshot::Snapshot;

/// A running listener as the status API shows it.
#[derive(Debug, Clone)]
pub(crate) struct ListenerView {
    /// Listener name.
    pub name: Arc<str>,
    /// The bound address.
    pub address: SocketAddr,
    /// Protocol label.
    pub protocol: &'static str,
    /// Its pool (with routes: the fallback).
    pub pool: Option<Arc<str>>,
    /// Its routes, in order.
    pub routes: Vec<RouteConfig>,
    /// Its cap on open connections.
    pub max_connections: Option<std::num::NonZeroUsize>,
    /// Its counters.
    pub metrics: Arc<ListenerMetrics>,
}

/// The whole `/status` document.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    /// fulcrum's version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// The config file, if started from one.
    pub config_file: Option<String>,
    /// The last reload attempt.
    pub last_reload: Option<ReloadStatus>,
    /// Whether `/readyz` would answer 200.
    pub ready: bool,
    /// Running listeners.
    pub listeners: Vec<ListenerStatus>,
    /// Pools with their backends.
    pub pools: Vec<PoolStatus>,
    /// Certificates served by TLS listeners: files and ACME.
    pub certificates: Vec<crate::tls::CertificateInfo>,
}

/// The outcome of the last reload.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReloadStatus {
    /// Whether the new config went live.
    pub result: ReloadResult,
    /// Unix time of the attempt.
    pub at_unix: f64,
    /// The changes applied (empty when rejected).
    pub changes: Vec<String>,
    /// Why it was rejected.
    pub error: Option<String>,
}

/// How a reload attempt ended, as `/status` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ReloadResult {
    /// The new config is live.
    Applied,
    /// The new config was refused; the running one is unchanged.
    Rejected,
}

/// One listener.
#[derive(Debug, Serialize)]
pub(crate) struct ListenerStatus {
    name: String,
    address: String,
    protocol: &'static str,
    /// Its pool (with routes: the fallback; `null`: none).
    pool: Option<String>,
    /// Its routes in the order they are tried.
    routes: Vec<RouteStatus>,
    connections_active: u64,
    /// The cap on open connections (`null`: none).
    max_connections: Option<std::num::NonZeroUsize>,
}

/// One route of a listener.
#[derive(Debug, Serialize)]
pub(crate) struct RouteStatus {
    name: String,
    /// `pool`, `split`, `redirect` or `respond`.
    action: &'static str,
    /// The pools it forwards to.
    pools: Vec<String>,
    /// The last minute of requests it took (`null` if it does not serve yet, mid-reload).
    last_minute: Option<WindowSummary>,
}

impl RouteStatus {
    fn of(route: &RouteConfig, metrics: Option<&RouteMetrics>) -> Self {
        let action = match route.action {
            RouteAction::Pool(_) => "pool",
            RouteAction::Split(_) => "split",
            RouteAction::Redirect { .. } => "redirect",
            RouteAction::Respond { .. } => "respond",
        };
        RouteStatus {
            name: route.name.to_string(),
            action,
            pools: route
                .action
                .pools()
                .iter()
                .map(|pool| pool.to_string())
                .collect(),
            last_minute: metrics.map(|metrics| metrics.window.summary()),
        }
    }
}

/// One pool.
#[derive(Debug, Serialize)]
pub(crate) struct PoolStatus {
    name: String,
    algorithm: &'static str,
    fail_open: bool,
    active_checks: bool,
    /// The per-backend cap on requests (http) or connections (tcp) in flight (`null`: none).
    max_connections: Option<std::num::NonZeroUsize>,
    /// Requests waiting for a backend below that cap now.
    queued: usize,
    backends: Vec<BackendStatus>,
}

/// One backend.
#[derive(Debug, Serialize)]
pub(super) struct BackendStatus {
    name: String,
    address: String,
    weight: u32,
    /// Weight after slow start, in the same units as `weight`.
    effective_weight: f64,
    /// `healthy`, `unhealthy`, `ejected` or `draining` (removed by a reload, finishing requests).
    state: &'static str,
    in_flight: usize,
    /// Its cap on `in_flight` (`null`: none).
    max_connections: Option<std::num::NonZeroUsize>,
    /// Keep-alive connections to it idle in the pool.
    idle_connections: usize,
    /// Requests answered since the backend was added.
    requests: u64,
    last_error: Option<String>,
    /// The last minute.
    last_minute: WindowSummary,
}

impl Status {
    /// Builds the document from the live snapshot and the listeners.
    pub(crate) fn collect(
        snapshot: &Snapshot,
        listeners: &[ListenerView],
        draining: &[Arc<Backend>],
        header: (f64, Option<String>, Option<ReloadStatus>, bool),
    ) -> Status {
        let (uptime_seconds, config_file, last_reload, ready) = header;
        let pools = snapshot
            .pools()
            .iter()
            .map(|pool| {
                let mut backends: Vec<BackendStatus> = pool
                    .endpoints
                    .iter()
                    .map(|endpoint| {
                        let weight = endpoint.weight.get();
                        let fraction = endpoint
                            .backend
                            .health
                            .weight_fraction(pool.settings.slow_start);
                        backend_status(
                            &endpoint.backend,
                            weight,
                            f64::from(weight) * fraction,
                            None,
                        )
                    })
                    .collect();
                backends.extend(
                    draining
                        .iter()
                        .filter(|backend| backend.pool == pool.name)
                        .map(|backend| backend_status(backend, 0, 0.0, Some("draining"))),
                );
                PoolStatus {
                    name: pool.name.to_string(),
                    algorithm: pool.algorithm.as_str(),
                    fail_open: pool.settings.fail_open,
                    active_checks: pool.health_check.is_some(),
                    max_connections: pool.settings.queue.max_connections,
                    queued: pool.queue.waiting(),
                    backends,
                }
            })
            .collect();
        let listeners = listeners
            .iter()
            .map(|listener| ListenerStatus {
                name: listener.name.to_string(),
                address: listener.address.to_string(),
                protocol: listener.protocol,
                pool: listener.pool.as_deref().map(str::to_owned),
                routes: listener
                    .routes
                    .iter()
                    .map(|route| {
                        let live = snapshot.router_for(&listener.name).and_then(|router| {
                            router
                                .routes()
                                .iter()
                                .map(|live| &live.metrics)
                                .find(|metrics| metrics.name == route.name)
                        });
                        RouteStatus::of(route, live.map(|metrics| &**metrics))
                    })
                    .collect(),
                connections_active: listener.metrics.active.load(Ordering::Relaxed),
                max_connections: listener.max_connections,
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds,
            config_file,
            last_reload,
            ready,
            listeners,
            pools,
            certificates: Vec::new(),
        }
    }
}

fn backend_status(
    backend: &Backend,
    weight: u32,
    effective_weight: f64,
    state: Option<&'static str>,
) -> BackendStatus {
    BackendStatus {
        name: backend.name.to_string(),
        address: backend.address.to_string(),
        weight,
        effective_weight,
        state: state.unwrap_or_else(|| backend.health.status().as_str()),
        in_flight: backend.in_flight(),
        max_connections: backend.max_connections(),
        idle_connections: backend.idle.len(),
        requests: backend.metrics.requests_total.load(Ordering::Relaxed),
        last_error: backend.health.last_error(),
        last_minute: backend.metrics.window.summary(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_results_serialise_as_lowercase_words() {
        assert_eq!(
            serde_json::to_string(&ReloadResult::Applied).expect("serialises"),
            "\"applied\""
        );
        assert_eq!(
            serde_json::to_string(&ReloadResult::Rejected).expect("serialises"),
            "\"rejected\""
        );
    }
}
