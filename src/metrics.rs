//! Metrics: Prometheus series through the `metrics` facade, and a one-minute window per backend
//! for the status API and dashboard.
//!
//! Hot-path cost is kept to a few relaxed atomic adds: every handle is registered once (per
//! backend, per listener) and cached, and gauges that mirror state the proxy already keeps
//! (in-flight, up, open connections) are only written when `/metrics` is scraped.
//! Without an installed exporter (no admin listener, or `admin.metrics = false`) the `metrics`
//! calls are no-ops.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::time::Instant;

/// Series names, each described once in [`install`].
pub mod names {
    /// Requests answered, by final status class.
    pub const REQUESTS: &str = "fulcrum_requests_total";
    /// Time from receiving a request to the backend's response head.
    pub const REQUEST_DURATION: &str = "fulcrum_request_duration_seconds";
    /// Failed connects to a backend.
    pub const CONNECT_ERRORS: &str = "fulcrum_upstream_connect_errors_total";
    /// Counter: TCP connections opened to a backend.
    pub const UPSTREAM_CONNECTS: &str = "fulcrum_upstream_connections_total";
    /// Gauge: keep-alive connections to a backend idle in its pool.
    pub const UPSTREAM_IDLE: &str = "fulcrum_upstream_idle_connections";
    /// Extra attempts on another backend.
    pub const RETRIES: &str = "fulcrum_retries_total";
    /// 1 when a backend receives traffic, else 0.
    pub const BACKEND_UP: &str = "fulcrum_backend_up";
    /// Requests in flight on a backend.
    pub const BACKEND_IN_FLIGHT: &str = "fulcrum_backend_in_flight";
    /// Passive ejections of a backend.
    pub const EJECTIONS: &str = "fulcrum_backend_ejections_total";
    /// Active health checks, by result.
    pub const HEALTH_CHECKS: &str = "fulcrum_health_checks_total";
    /// Client connections open now.
    pub const CONNECTIONS_ACTIVE: &str = "fulcrum_connections_active";
    /// Idle HTTP/1 client connections parked now (hyper's buffers released).
    pub const CONNECTIONS_PARKED: &str = "fulcrum_connections_parked";
    /// Client connections accepted.
    pub const CONNECTIONS: &str = "fulcrum_connections_total";
    /// Times a listener reached its `max_connections` and stopped accepting.
    pub const LISTENER_SATURATED: &str = "fulcrum_listener_saturated_total";
    /// Client connections closed by a timeout, by kind (`header_read`, `idle`).
    pub const CLIENT_TIMEOUTS: &str = "fulcrum_client_timeouts_total";
    /// Bytes read from (`in`) and written to (`out`) clients.
    pub const BYTES: &str = "fulcrum_bytes_total";
    /// Config reloads, by result.
    pub const RELOADS: &str = "fulcrum_config_reloads_total";
    /// Unix time of the last successful reload (or of start-up).
    pub const LAST_RELOAD_SUCCESS: &str = "fulcrum_config_last_reload_success_timestamp_seconds";
    /// Requests answered 503 because no backend was available.
    pub const NO_BACKEND: &str = "fulcrum_no_backend_total";
    /// Gauge: requests waiting in a pool's queue for a backend below `max_connections`.
    pub const QUEUE_LENGTH: &str = "fulcrum_queue_length";
    /// Requests that waited in a pool's queue, by outcome.
    pub const QUEUED: &str = "fulcrum_queued_total";
    /// Requests sent to all backends because none was healthy (fail-open).
    pub const FAIL_OPEN: &str = "fulcrum_fail_open_total";
    /// Backend health transitions.
    pub const BACKEND_TRANSITIONS: &str = "fulcrum_backend_transitions_total";
}

/// Histogram buckets for request durations: 0.5 ms to 10 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static EXPORTER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
/// `None` if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    EXPORTER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::REQUEST_DURATION.to_owned()),
                    &DURATION_BUCKETS,
                )
                .ok()?;
            let handle = match builder.install_recorder() {
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

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::REQUESTS,
        "Requests answered, by listener, pool, backend and status class."
    );
    describe_histogram!(
        names::REQUEST_DURATION,
        Unit::Seconds,
        "Time from receiving a request to the backend's response head."
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
    describe_counter!(names::RETRIES, "Extra attempts made on another backend.");
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
}

/// Status class index of a status code: 0 for 1xx … 4 for 5xx.
fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One backend's metric handles and its one-minute window.
#[derive(Debug)]
pub struct BackendMetrics {
    pool: Arc<str>,
    backend: Arc<str>,
    duration: Histogram,
    connect_errors: Counter,
    connects: Counter,
    ejections: Counter,
    checks_passed: Counter,
    checks_failed: Counter,
    up: Gauge,
    in_flight: Gauge,
    idle: Gauge,
    /// `requests_total` handles per listener, added the first time a listener uses this backend.
    requests: ArcSwap<Vec<(Arc<str>, [Counter; 5])>>,
    /// Requests answered since this backend was added.
    pub requests_total: AtomicU64,
    /// Requests, errors and latencies over the last minute.
    pub window: Window,
}

impl BackendMetrics {
    /// Handles for `backend` of `pool`.
    pub fn new(pool: &Arc<str>, backend: &Arc<str>) -> Self {
        let labels = [("pool", pool.to_string()), ("backend", backend.to_string())];
        Self {
            pool: Arc::clone(pool),
            backend: Arc::clone(backend),
            duration: metrics::histogram!(names::REQUEST_DURATION, &labels),
            connect_errors: metrics::counter!(names::CONNECT_ERRORS, &labels),
            connects: metrics::counter!(names::UPSTREAM_CONNECTS, &labels),
            ejections: metrics::counter!(names::EJECTIONS, &labels),
            checks_passed: metrics::counter!(
                names::HEALTH_CHECKS,
                &[
                    ("pool", pool.to_string()),
                    ("backend", backend.to_string()),
                    ("result", "pass".to_owned())
                ]
            ),
            checks_failed: metrics::counter!(
                names::HEALTH_CHECKS,
                &[
                    ("pool", pool.to_string()),
                    ("backend", backend.to_string()),
                    ("result", "fail".to_owned())
                ]
            ),
            up: metrics::gauge!(names::BACKEND_UP, &labels),
            in_flight: metrics::gauge!(names::BACKEND_IN_FLIGHT, &labels),
            idle: metrics::gauge!(names::UPSTREAM_IDLE, &labels),
            requests: ArcSwap::from_pointee(Vec::new()),
            requests_total: AtomicU64::new(0),
            window: Window::new(),
        }
    }

    /// A request received on `listener` at `started`, answered with `status` now.
    pub fn record_response(&self, listener: &Arc<str>, status: u16, started: Instant) {
        // One clock reading serves the duration and the window's slot.
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(started);
        self.duration.record(elapsed.as_secs_f64());
        self.window.record(Some(elapsed), status >= 500, now);
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        self.count_request(listener, status);
    }

    /// A request that failed on this backend without a response head (answered by fulcrum).
    pub fn record_failure(&self, listener: &Arc<str>, status: u16) {
        self.window.record(None, true, Instant::now());
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        self.count_request(listener, status);
    }

    fn count_request(&self, listener: &Arc<str>, status: u16) {
        let class = class_index(status);
        let current = self.requests.load();
        // `Arc<str>` equality checks the pointer first; listener names are shared `Arc`s.
        match current.iter().find(|(name, _)| name == listener) {
            Some((_, counters)) => counters[class].increment(1),
            None => self.requests_counter(listener, class).increment(1),
        }
    }

    /// Registers the listener's request counters on its first request through this backend.
    fn requests_counter(&self, listener: &Arc<str>, class: usize) -> Counter {
        let counters = CLASSES.map(|code_class| {
            metrics::counter!(
                names::REQUESTS,
                "listener" => listener.to_string(),
                "pool" => self.pool.to_string(),
                "backend" => self.backend.to_string(),
                "code_class" => code_class
            )
        });
        let chosen = counters[class].clone();
        self.requests.rcu(|list| {
            let mut list = Vec::clone(list);
            if !list.iter().any(|(name, _)| name == listener) {
                list.push((Arc::clone(listener), counters.clone()));
            }
            list
        });
        chosen
    }

    /// A failed connect.
    pub fn connect_error(&self) {
        self.connect_errors.increment(1);
    }

    /// A new connection to the backend.
    pub fn connected(&self) {
        self.connects.increment(1);
    }

    /// A passive ejection.
    pub fn ejected(&self) {
        self.ejections.increment(1);
    }

    /// An active check result.
    pub fn health_check(&self, passed: bool) {
        if passed {
            self.checks_passed.increment(1);
        } else {
            self.checks_failed.increment(1);
        }
    }

    /// Mirrors live state into the gauges (called when `/metrics` is scraped).
    pub fn refresh_gauges(&self, up: bool, in_flight: usize, idle: usize) {
        self.up.set(if up { 1.0 } else { 0.0 });
        self.in_flight.set(in_flight as f64);
        self.idle.set(idle as f64);
    }
}

/// A pool's counters.
#[derive(Debug)]
pub struct PoolMetrics {
    /// Extra attempts on another backend.
    pub retries: Counter,
    /// 503s because nothing was available.
    pub no_backend: Counter,
    /// Requests sent while failing open.
    pub fail_open: Counter,
    /// Requests waiting for room under `max_connections` now.
    queue_length: Gauge,
    /// Requests that waited, by [`QueueOutcome`].
    queue_outcomes: [Counter; 3],
}

/// How a request's turn in a pool's queue ended.
#[derive(Debug, Clone, Copy)]
pub enum QueueOutcome {
    /// A backend had room within `queue_timeout`.
    Served,
    /// None had within `queue_timeout`: 503.
    Timeout,
    /// The queue was full (`max_queue`): 503 without waiting.
    Full,
}

impl QueueOutcome {
    const ALL: [QueueOutcome; 3] = [
        QueueOutcome::Served,
        QueueOutcome::Timeout,
        QueueOutcome::Full,
    ];

    fn as_str(self) -> &'static str {
        match self {
            QueueOutcome::Served => "served",
            QueueOutcome::Timeout => "timeout",
            QueueOutcome::Full => "full",
        }
    }
}

impl PoolMetrics {
    /// Handles for the pool called `pool`.
    pub fn new(pool: &str) -> Self {
        let labels = [("pool", pool.to_owned())];
        Self {
            retries: metrics::counter!(names::RETRIES, &labels),
            no_backend: metrics::counter!(names::NO_BACKEND, &labels),
            fail_open: metrics::counter!(names::FAIL_OPEN, &labels),
            queue_length: metrics::gauge!(names::QUEUE_LENGTH, &labels),
            queue_outcomes: QueueOutcome::ALL.map(|outcome| {
                metrics::counter!(
                    names::QUEUED,
                    "pool" => pool.to_owned(),
                    "outcome" => outcome.as_str()
                )
            }),
        }
    }

    /// Counts a request in the queue-length gauge until the guard drops.
    pub fn queued(&self) -> GaugeGuard {
        GaugeGuard::hold(&self.queue_length)
    }

    /// Counts how a request's wait in the queue ended.
    pub fn queue_outcome(&self, outcome: QueueOutcome) {
        self.queue_outcomes[outcome as usize].increment(1);
    }

    /// A request answered by fulcrum itself with no backend to blame.
    pub fn record_unrouted(&self, listener: &str, pool: &str, status: u16) {
        if status == 503 {
            self.no_backend.increment(1);
        }
        metrics::counter!(
            names::REQUESTS,
            "listener" => listener.to_owned(),
            "pool" => pool.to_owned(),
            "backend" => "none",
            "code_class" => CLASSES[class_index(status)]
        )
        .increment(1);
    }
}

/// A listener's connection and byte counters.
#[derive(Debug)]
pub struct ListenerMetrics {
    /// Client connections accepted.
    pub connections: Counter,
    /// Episodes of waiting at the listener's `max_connections`.
    pub saturations: Counter,
    /// Open client connections (for the status API).
    pub active: AtomicU64,
    active_gauge: Gauge,
    /// Idle HTTP/1 connections parked now.
    parked: Gauge,
    /// Bytes read from clients.
    pub bytes_in: Counter,
    /// Bytes written to clients.
    pub bytes_out: Counter,
    /// Connections closed for an incomplete request head.
    pub header_read_timeouts: Counter,
    /// Connections closed for idling.
    pub idle_timeouts: Counter,
}

impl ListenerMetrics {
    /// Handles for the listener called `name`.
    pub fn new(name: &str) -> Self {
        let listener = ("listener", name.to_owned());
        Self {
            connections: metrics::counter!(names::CONNECTIONS, std::slice::from_ref(&listener)),
            saturations: metrics::counter!(
                names::LISTENER_SATURATED,
                std::slice::from_ref(&listener)
            ),
            active: AtomicU64::new(0),
            active_gauge: metrics::gauge!(
                names::CONNECTIONS_ACTIVE,
                std::slice::from_ref(&listener)
            ),
            parked: metrics::gauge!(names::CONNECTIONS_PARKED, std::slice::from_ref(&listener)),
            bytes_in: metrics::counter!(
                names::BYTES,
                &[listener.clone(), ("direction", "in".to_owned())]
            ),
            bytes_out: metrics::counter!(
                names::BYTES,
                &[listener.clone(), ("direction", "out".to_owned())]
            ),
            header_read_timeouts: metrics::counter!(
                names::CLIENT_TIMEOUTS,
                &[listener.clone(), ("kind", "header_read".to_owned())]
            ),
            idle_timeouts: metrics::counter!(
                names::CLIENT_TIMEOUTS,
                &[listener, ("kind", "idle".to_owned())]
            ),
        }
    }

    /// Counts a new connection as open until the guard drops.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.increment(1);
        self.active.fetch_add(1, Ordering::Relaxed);
        self.active_gauge.increment(1.0);
        ConnectionGuard(Arc::clone(self))
    }

    /// Counts a connection as parked until the guard drops.
    pub fn parked(&self) -> GaugeGuard {
        GaugeGuard::hold(&self.parked)
    }
}

/// Holds one unit of a gauge (a parked connection, a queued request) until it drops.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn hold(gauge: &Gauge) -> Self {
        gauge.increment(1.0);
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Holds one open connection in [`ListenerMetrics::active`].
#[derive(Debug)]
pub struct ConnectionGuard(Arc<ListenerMetrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.active_gauge.decrement(1.0);
    }
}

/// Slot length of the one-minute window.
const SLOT: Duration = Duration::from_secs(10);
const SLOTS: usize = 6;
/// Latency buckets: four per power of two of microseconds, up to about 2^34 µs.
const LATENCY_BUCKETS: usize = 4 * 35;

/// Requests, errors and a latency histogram over the last minute, in six 10-second slots.
///
/// Lock-free: a slot is reset by whoever first records into it in a new period; a record
/// racing that reset may be lost, which a dashboard can afford.
#[derive(Debug)]
pub struct Window {
    epoch: Instant,
    slots: [Slot; SLOTS],
}

#[derive(Debug)]
struct Slot {
    /// The 10-second period this slot holds, plus one (0 = never used).
    period: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU32; LATENCY_BUCKETS],
}

impl Slot {
    fn new() -> Self {
        Self {
            period: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// What the window says about the last minute.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct WindowSummary {
    /// Requests in the window.
    pub requests: u64,
    /// Requests per second over the window.
    pub requests_per_second: f64,
    /// Share of requests that failed (5xx or no response), 0 to 1.
    pub error_rate: f64,
    /// Median time to response head, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile time to response head, milliseconds.
    pub p99_ms: f64,
}

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

impl Window {
    /// An empty window starting now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            slots: std::array::from_fn(|_| Slot::new()),
        }
    }

    fn period(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_secs() / SLOT.as_secs()) + 1
    }

    /// Records one request: its time to response head (`None` when no response arrived) and
    /// whether it failed (5xx or no response).
    pub fn record(&self, latency: Option<Duration>, error: bool, now: Instant) {
        let period = self.period(now);
        let slot = &self.slots[(period % SLOTS as u64) as usize];
        let seen = slot.period.load(Ordering::Relaxed);
        if seen != period
            && slot
                .period
                .compare_exchange(seen, period, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.errors.store(0, Ordering::Relaxed);
            for bucket in &slot.latency {
                bucket.store(0, Ordering::Relaxed);
            }
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(latency) = latency {
            slot.latency[latency_bucket(latency)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Totals and percentiles over the last minute.
    pub fn summary(&self) -> WindowSummary {
        let now = Instant::now();
        let period = self.period(now);
        let mut requests = 0;
        let mut errors = 0;
        let mut latency = [0u64; LATENCY_BUCKETS];
        for slot in &self.slots {
            let slot_period = slot.period.load(Ordering::Relaxed);
            if slot_period == 0 || slot_period + (SLOTS as u64) <= period {
                continue;
            }
            requests += slot.requests.load(Ordering::Relaxed);
            errors += slot.errors.load(Ordering::Relaxed);
            for (total, bucket) in latency.iter_mut().zip(&slot.latency) {
                *total += u64::from(bucket.load(Ordering::Relaxed));
            }
        }
        // The window holds five whole slots plus the part of the current one elapsed so far.
        let elapsed = now.saturating_duration_since(self.epoch);
        let into_slot = Duration::from_nanos((elapsed.as_nanos() % SLOT.as_nanos()) as u64);
        let covered = elapsed
            .min(SLOT * (SLOTS as u32 - 1) + into_slot)
            .as_secs_f64()
            .max(1.0);
        WindowSummary {
            requests,
            requests_per_second: requests as f64 / covered,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            p50_ms: percentile(&latency, 0.50),
            p99_ms: percentile(&latency, 0.99),
        }
    }
}

/// Bucket of a latency: four buckets per power of two of microseconds.
fn latency_bucket(latency: Duration) -> usize {
    let micros = u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    let power = 63 - micros.leading_zeros() as usize;
    let sub = if power >= 2 {
        ((micros >> (power - 2)) & 3) as usize
    } else {
        0
    };
    (power * 4 + sub).min(LATENCY_BUCKETS - 1)
}

/// Upper bound of a latency bucket, in milliseconds.
fn bucket_upper_ms(bucket: usize) -> f64 {
    let power = bucket / 4;
    let sub = (bucket % 4) as u64;
    let micros = if power >= 2 {
        ((4 + sub + 1) << (power - 2)) as f64
    } else {
        (1u64 << (power + 1)) as f64
    };
    micros / 1000.0
}

fn percentile(buckets: &[u64; LATENCY_BUCKETS], quantile: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((total as f64) * quantile).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (bucket, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return bucket_upper_ms(bucket);
        }
    }
    bucket_upper_ms(LATENCY_BUCKETS - 1)
}

/// Records a reload attempt.
pub fn record_reload(success: bool) {
    let result = if success { "success" } else { "failure" };
    metrics::counter!(names::RELOADS, "result" => result).increment(1);
    if success {
        record_config_loaded();
    }
}

/// Sets the last-successful-load timestamp to now.
pub fn record_config_loaded() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(names::LAST_RELOAD_SUCCESS).set(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_monotonic_and_bounded() {
        let mut last = 0;
        for micros in [
            1u64, 2, 3, 5, 8, 100, 999, 1000, 1500, 10_000, 1_000_000, 60_000_000,
        ] {
            let bucket = latency_bucket(Duration::from_micros(micros));
            assert!(bucket >= last, "{micros}µs");
            assert!(
                bucket_upper_ms(bucket) * 1000.0 >= micros as f64,
                "{micros}µs upper bound"
            );
            assert!(
                bucket_upper_ms(bucket) * 1000.0 <= micros as f64 * 1.5 + 2.0,
                "{micros}µs precision"
            );
            last = bucket;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn window_summarises_the_last_minute_only() {
        let window = Window::new();
        for _ in 0..98 {
            window.record(Some(Duration::from_millis(2)), false, Instant::now());
        }
        window.record(Some(Duration::from_millis(100)), false, Instant::now());
        window.record(None, true, Instant::now());
        tokio::time::advance(Duration::from_secs(9)).await;
        let summary = window.summary();
        assert_eq!(summary.requests, 100);
        assert!((summary.error_rate - 0.01).abs() < 1e-9);
        assert!(summary.p50_ms >= 2.0 && summary.p50_ms < 2.6, "{summary:?}");
        // 99 timed requests: the 99th percentile is the slow one.
        assert!(
            summary.p99_ms >= 100.0 && summary.p99_ms < 150.0,
            "{summary:?}"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(window.summary().requests, 0, "old slots expire");
    }

    #[test]
    fn status_classes() {
        assert_eq!(class_index(101), 0);
        assert_eq!(class_index(204), 1);
        assert_eq!(class_index(404), 3);
        assert_eq!(class_index(503), 4);
        assert_eq!(class_index(42), 0);
        assert_eq!(class_index(700), 4);
    }
}
