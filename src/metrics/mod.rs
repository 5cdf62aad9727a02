//! Metrics: Prometheus series through the `metrics` facade, and a one-minute window per backend
//! for the status API and dashboard.
//!
//! Hot-path cost is kept to a few relaxed atomic adds: every handle is registered once (per
//! backend, per listener) and cached; the counters and histograms every request updates are
//! fulcrum's own atomics (`tally`), handed to the exporter when `/metrics` is scraped; and
//! gauges that mirror state the proxy already keeps (in-flight, up, open connections) are only
//! written then too. Without an installed exporter (no admin listener, or
//! `admin.metrics = false`) the `metrics` calls are no-ops and the tallies are never read.

mod handles;
pub(crate) mod names;
mod tally;
mod window;

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub(crate) use handles::{
    BackendMetrics, ByteCounters, ConnectionGuard, ListenerMetrics, MirrorMetrics, MirrorOutcome,
    PoolMetrics, QueueOutcome, RateLimitMetrics, RetryOutcome, RouteMetrics,
};
pub(crate) use window::WindowSummary;

static EXPORTER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
/// `None` if another recorder was installed first.
pub(crate) fn install() -> Option<&'static PrometheusHandle> {
    EXPORTER
        .get_or_init(|| {
            let handle = match PrometheusBuilder::new().install_recorder() {
                Ok(handle) => handle,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics recorder not installed");
                    return None;
                }
            };
            describe();
            Some(handle)
        })
        .as_ref()
}

/// The Prometheus text: the request-path tallies handed over first, fulcrum's own histograms
/// after the exporter's series.
pub(crate) fn render(exporter: &PrometheusHandle) -> String {
    tally::publish();
    let mut text = exporter.render();
    tally::render(&mut text);
    text
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        names::REQUESTS,
        "Requests answered, by listener, pool, backend and status class."
    );
    describe_counter!(
        names::ROUTE_REQUESTS,
        "Requests a route took, by listener, route and status class."
    );
    describe_counter!(
        names::MIRRORED,
        "Request copies for a route's mirror pool, by listener, route and outcome (sent, failed, busy, body)."
    );
    describe_counter!(names::CONNECT_ERRORS, "Failed TCP connects to a backend.");
    describe_counter!(
        names::UPSTREAM_CONNECTS,
        "TCP connections opened to a backend (http pools: new keep-alive connections; tcp pools: one per client connection)."
    );
    describe_gauge!(
        names::UPSTREAM_IDLE,
        "Keep-alive connections to the backend idle in its pool, ready for reuse."
    );
    describe_gauge!(
        names::BACKEND_LATENCY_ESTIMATE,
        "peak_ewma: the latency estimate a backend is balanced by, in seconds."
    );
    describe_counter!(
        names::RETRIES,
        "Retries on another backend: attempted, or refused by the retry budget (budget)."
    );
    describe_gauge!(
        names::BACKEND_UP,
        "1 when the backend receives traffic, 0 when it is down or ejected."
    );
    describe_gauge!(
        names::BACKEND_IN_FLIGHT,
        "Requests in flight on the backend."
    );
    describe_counter!(names::EJECTIONS, "Passive ejections of the backend.");
    describe_counter!(
        names::HEALTH_CHECKS,
        "Active health checks, by result (pass or fail)."
    );
    describe_gauge!(names::CONNECTIONS_ACTIVE, "Client connections open now.");
    describe_gauge!(
        names::CONNECTIONS_PARKED,
        "Idle HTTP/1 client connections parked now (hyper's buffers released)."
    );
    describe_counter!(names::CONNECTIONS, "Client connections accepted.");
    describe_gauge!(
        names::QUEUE_LENGTH,
        "Requests waiting in the pool's queue because every backend is at max_connections."
    );
    describe_counter!(
        names::QUEUED,
        "Requests that found every backend at max_connections, by outcome (served: got a backend within queue_timeout; timeout, full: answered 503)."
    );
    describe_counter!(
        names::LISTENER_SATURATED,
        "Times the listener reached its max_connections and stopped accepting until a connection closed (counted once per episode)."
    );
    describe_counter!(
        names::CLIENT_TIMEOUTS,
        "Client connections closed because a request head was incomplete for header_read_timeout (kind=header_read) or nothing moved for idle_timeout (kind=idle)."
    );
    describe_counter!(
        names::BYTES,
        Unit::Bytes,
        "Bytes exchanged with clients, by direction (in, out)."
    );
    describe_counter!(
        names::RELOADS,
        "Config reload attempts, by result (success, failure)."
    );
    describe_gauge!(
        names::LAST_RELOAD_SUCCESS,
        Unit::Seconds,
        "Unix time of the last successful config load."
    );
    describe_counter!(
        names::NO_BACKEND,
        "Requests answered 503 because no backend was available."
    );
    describe_counter!(
        names::FAIL_OPEN,
        "Requests sent to unhealthy backends because none was healthy (fail_open)."
    );
    describe_counter!(
        names::BACKEND_TRANSITIONS,
        "Backend health state changes, by new state."
    );
    describe_counter!(
        names::HTTP2_GOAWAY,
        "HTTP/2 client connections ended with GOAWAY, by reason (cancelled_streams: the budget of streams cancelled after dispatch; enhance_your_calm: an h2 limit such as rapid resets or CONTINUATION floods; protocol_error and other error codes)."
    );
    describe_gauge!(
        names::CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "Unix time at which the certificate a listener serves expires (notAfter), by listener and name (its first DNS name); file and ACME certificates."
    );
    describe_counter!(
        names::ACME_ORDERS,
        "ACME orders, by outcome (issued: a first certificate; renewed: a replacement; failed: the order or the account failed, retried with back-off)."
    );
    describe_counter!(
        names::DISCOVERY_REFRESHES,
        "DNS lookups of discover pools, by pool and outcome (ok, empty, nxdomain, error); only ok changes a set, except NXDOMAIN repeated for twice the refresh."
    );
    describe_gauge!(
        names::DISCOVERY_BACKENDS,
        "Backends in a discover pool's last good DNS answer, by pool."
    );
    describe_counter!(
        names::RATE_LIMITED,
        "Requests (tcp listeners: connections) refused by a rate limit, by listener and route (-: the listener's own limit)."
    );
    describe_gauge!(
        names::RATE_LIMIT_KEYS,
        "Client keys a rate limit tracks, as of its last sweep, by listener and route (-: the listener's own limit)."
    );
    describe_counter!(
        names::ADMIN_REFUSED,
        "Admin requests refused, by reason (host: Host not accepted; origin: cross-origin; token: missing or wrong bearer token)."
    );
    describe_counter!(
        names::STICKY_PINS,
        "Sticky cookies set, by reason (new: no valid cookie; moved: its backend could not serve)."
    );
    describe_counter!(
        names::HASH_SPILLED,
        "consistent_hash picks that passed the key's backend over for being above hash_balance_factor."
    );
}

/// Records a reload attempt.
pub(crate) fn record_reload(success: bool) {
    let result = if success { "success" } else { "failure" };
    metrics::counter!(names::RELOADS, "result" => result).increment(1);
    if success {
        record_config_loaded();
    }
}

/// Sets the last-successful-load timestamp to now.
pub(crate) fn record_config_loaded() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(names::LAST_RELOAD_SUCCESS).set(now);
}
