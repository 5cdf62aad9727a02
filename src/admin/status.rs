//! The `/status` document: what fulcrum is doing now, as JSON for people and the dashboard.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::backend::Backend;
use crate::config::{RateLimitConfig, RouteAction, RouteConfig};
use crate::metrics::{ListenerMetrics, RouteMetrics, WindowSummary};
use crate::rate_limit::RateLimiter;
use crate::route::Route;
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
    /// The serving process (after an upgrade, the new one's).
    pub pid: u32,
    /// Unix time this process started.
    pub started_at_unix: f64,
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
    /// Its own rate limit (`null`: none).
    rate_limit: Option<RateLimitStatus>,
}

/// A rate limit's settings and the client keys it tracks now.
#[derive(Debug, Serialize)]
pub(crate) struct RateLimitStatus {
    requests_per_second: f64,
    burst: u32,
    /// `client_ip` or `header:NAME`.
    key: String,
    trusted_proxies: Vec<String>,
    /// Keys in its table (`null`: not live yet, mid-reload).
    tracked_keys: Option<usize>,
}

impl RateLimitStatus {
    fn of(config: &RateLimitConfig, live: Option<&RateLimiter>) -> Self {
        RateLimitStatus {
            requests_per_second: config.requests_per_second(),
            burst: config.burst.get(),
            key: config.key.to_string(),
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect(),
            tracked_keys: live.map(RateLimiter::tracked_keys),
        }
    }
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
    /// Its own rate limit (`null`: none).
    rate_limit: Option<RateLimitStatus>,
}

impl RouteStatus {
    fn of(route: &RouteConfig, live: Option<&Route>) -> Self {
        let metrics: Option<&RouteMetrics> = live.map(|live| &*live.metrics);
        let limiter = live.and_then(|live| live.rate_limit.as_deref());
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
            rate_limit: route
                .rate_limit
                .as_ref()
                .map(|config| RateLimitStatus::of(config, limiter)),
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
    /// The retry budget's settings and its last 10 s (`null`: no budget).
    retry_budget: Option<RetryBudgetStatus>,
    /// The name of the pool's sticky cookie (`null`: not sticky).
    sticky_cookie: Option<String>,
    /// `discover` pools: the name looked up and what DNS last said (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    discovery: Option<crate::discovery::DiscoveryStatus>,
    backends: Vec<BackendStatus>,
}

/// A pool's retry budget now.
#[derive(Debug, Serialize)]
pub(crate) struct RetryBudgetStatus {
    percent: u32,
    min_per_second: u32,
    /// Requests in the last 10 s.
    requests: u64,
    /// Retries made in the last 10 s.
    retries: u64,
    /// Retries those requests allow in the window; no more are made once `retries` reaches it.
    allowed: u64,
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
    /// `peak_ewma` pools: the latency estimate the algorithm uses now, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    ewma_ms: Option<f64>,
    /// `consistent_hash` pools: its share of the hash ring, in percent (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    table_share: Option<f64>,
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
                    .enumerate()
                    .map(|(index, endpoint)| {
                        let weight = endpoint.weight.get();
                        let fraction = endpoint
                            .backend
                            .health
                            .weight_fraction(pool.settings.slow_start);
                        let mut status = backend_status(
                            &endpoint.backend,
                            weight,
                            f64::from(weight) * fraction,
                            None,
                        );
                        status.ewma_ms = pool.latency_estimate_ms(&endpoint.backend);
                        status.table_share = pool.balancer.table_share(index);
                        status
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
                    retry_budget: pool.retry_budget.as_ref().map(|budget| {
                        let usage = budget.usage(tokio::time::Instant::now());
                        RetryBudgetStatus {
                            percent: budget.config.percent,
                            min_per_second: budget.config.min_per_second,
                            requests: usage.requests,
                            retries: usage.retries,
                            allowed: usage.allowed,
                        }
                    }),
                    sticky_cookie: pool
                        .sticky
                        .as_ref()
                        .map(|sticky| sticky.cookie().to_owned()),
                    discovery: None,
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
                        let live = snapshot
                            .router_for(&listener.name)
                            .and_then(|router| router.route_named(&route.name));
                        RouteStatus::of(route, live)
                    })
                    .collect(),
                connections_active: listener.metrics.active.load(Ordering::Relaxed),
                max_connections: listener.max_connections,
                rate_limit: snapshot
                    .router_for(&listener.name)
                    .and_then(|router| router.rate_limit())
                    .map(|live| RateLimitStatus::of(live.config(), Some(live))),
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            started_at_unix: started_at_unix(uptime_seconds),
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

impl Status {
    /// Fills in each `discover` pool's `discovery` object.
    pub(crate) fn add_discovery(&mut self, registry: &crate::discovery::Registry) {
        for pool in &mut self.pools {
            pool.discovery = registry.status(&pool.name);
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
        requests: backend.metrics.requests_total(),
        last_error: backend.health.last_error(),
        last_minute: backend.metrics.window.summary(),
        ewma_ms: None,
        table_share: None,
    }
}

/// When this process started, in Unix seconds, from its uptime.
fn started_at_unix(uptime_seconds: f64) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    (now - uptime_seconds).max(0.0)
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
