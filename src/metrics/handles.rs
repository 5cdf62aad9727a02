//! Per-listener, per-pool and per-backend metric handles, registered once and cached so the
//! request path only does relaxed atomic adds; and the guards that hold a gauge unit until drop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use metrics::{Counter, Gauge};
use tokio::time::Instant;

use super::names;
use super::tally::{Tally, Timings};
use super::window::Window;

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
    duration: Timings,
    connect_errors: Counter,
    connects: Counter,
    ejections: Counter,
    checks_passed: Counter,
    checks_failed: Counter,
    up: Gauge,
    in_flight: Gauge,
    idle: Gauge,
    /// `requests_total` per listener, added the first time a listener uses this backend.
    requests: OnceLock<Box<ListenerRequests>>,
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
            duration: Timings::new(
                names::REQUEST_DURATION,
                names::REQUEST_DURATION_HELP,
                &[("pool", pool), ("backend", backend)],
            ),
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
            requests: OnceLock::new(),
            window: Window::new(),
        }
    }

    /// A request received on `listener` at `started`, answered with `status` now.
    /// Returns its clock reading, for other uses of the response head's arrival time.
    pub fn record_response(&self, listener: &Arc<str>, status: u16, started: Instant) -> Instant {
        // One clock reading serves the duration and the window's slot.
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(started);
        self.duration.record(elapsed);
        self.window.record(Some(elapsed), status >= 500, now);
        self.count_request(listener, status);
        now
    }

    /// A request that failed on this backend without a response head (answered by fulcrum).
    pub fn record_failure(&self, listener: &Arc<str>, status: u16) {
        self.window.record(None, true, Instant::now());
        self.count_request(listener, status);
    }

    fn count_request(&self, listener: &Arc<str>, status: u16) {
        // A list read with plain loads; a listener's first request through this backend adds
        // its entry at the end (a racing listener that took that place first is passed by).
        let mut next = &self.requests;
        loop {
            let entry = next.get_or_init(|| {
                Box::new(ListenerRequests::new(listener, &self.pool, &self.backend))
            });
            // `Arc<str>` equality checks the pointer first; listener names are shared `Arc`s.
            if entry.listener == *listener {
                entry.classes.add_to(class_index(status), 1);
                return;
            }
            next = &entry.next;
        }
    }

    /// Requests answered since this backend was added, over every listener.
    pub fn requests_total(&self) -> u64 {
        let mut total = 0;
        let mut next = self.requests.get();
        while let Some(entry) = next {
            total += entry.classes.total();
            next = entry.next.get();
        }
        total
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

    /// Mirrors a `peak_ewma` latency estimate into its gauge (when `/metrics` is scraped). The
    /// series is registered on the first call, so backends of other algorithms have none.
    pub fn refresh_latency_estimate(&self, seconds: f64) {
        metrics::gauge!(
            names::BACKEND_LATENCY_ESTIMATE,
            "pool" => self.pool.to_string(),
            "backend" => self.backend.to_string()
        )
        .set(seconds);
    }
}

/// One listener's `requests_total` through one backend, by status class; and the next
/// listener's.
#[derive(Debug)]
struct ListenerRequests {
    listener: Arc<str>,
    classes: Tally<5>,
    next: OnceLock<Box<ListenerRequests>>,
}

impl ListenerRequests {
    fn new(listener: &Arc<str>, pool: &str, backend: &str) -> Self {
        Self {
            listener: Arc::clone(listener),
            classes: Tally::new(CLASSES.map(|code_class| {
                metrics::counter!(
                    names::REQUESTS,
                    "listener" => listener.to_string(),
                    "pool" => pool.to_owned(),
                    "backend" => backend.to_owned(),
                    "code_class" => code_class
                )
            })),
            next: OnceLock::new(),
        }
    }
}

/// A pool's counters.
#[derive(Debug)]
pub struct PoolMetrics {
    /// Retries, by [`RetryOutcome`].
    retries: [Counter; 2],
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

/// What became of a request's wish to retry on another backend.
#[derive(Debug, Clone, Copy)]
pub enum RetryOutcome {
    /// The retry was made.
    Attempted,
    /// The pool's retry budget refused it; the request ended with the error it had.
    Budget,
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
            retries: ["attempted", "budget"].map(|outcome| {
                metrics::counter!(names::RETRIES, "pool" => pool.to_owned(), "outcome" => outcome)
            }),
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

    /// Counts a retry made or refused.
    pub fn retry(&self, outcome: RetryOutcome) {
        self.retries[outcome as usize].increment(1);
    }

    /// Counts a request in the queue-length gauge until the guard drops.
    pub fn queued(&self) -> GaugeGuard<'_> {
        GaugeGuard::hold(&self.queue_length)
    }

    /// Counts how a request's wait in the queue ended.
    pub fn queue_outcome(&self, outcome: QueueOutcome) {
        self.queue_outcomes[outcome as usize].increment(1);
    }

    /// A request the client failed (gone, reset, malformed body): under its own `code_class`,
    /// and with no backend, which is not to blame.
    pub fn record_client(&self, listener: &str, pool: &str, label: &'static str) {
        metrics::counter!(
            names::REQUESTS,
            "listener" => listener.to_owned(),
            "pool" => pool.to_owned(),
            "backend" => "none",
            "code_class" => label
        )
        .increment(1);
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

/// One route's request counters, latency histogram and one-minute window.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    /// The route's name, for the access log and `/status`.
    pub name: Arc<str>,
    duration: Timings,
    requests: Tally<5>,
    /// Requests, errors and latencies over the last minute.
    pub window: Window,
}

impl RouteMetrics {
    /// Handles for the route `route` of `listener`.
    pub(crate) fn new(listener: &str, route: &Arc<str>) -> Self {
        RouteMetrics {
            name: Arc::clone(route),
            duration: Timings::new(
                names::ROUTE_DURATION,
                names::ROUTE_DURATION_HELP,
                &[("listener", listener), ("route", route)],
            ),
            requests: Tally::new(CLASSES.map(|class| {
                metrics::counter!(
                    names::ROUTE_REQUESTS,
                    "listener" => listener.to_owned(),
                    "route" => route.to_string(),
                    "code_class" => class
                )
            })),
            window: Window::new(),
        }
    }

    /// A request the route took at `started`, answered with `status` now.
    pub(crate) fn record(&self, status: u16, started: Instant) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(started);
        self.duration.record(elapsed);
        self.window.record(Some(elapsed), status >= 500, now);
        self.requests.add_to(class_index(status), 1);
    }
}

/// What became of one request's copy for a route's mirror.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MirrorOutcome {
    /// The mirror pool answered (whatever the status).
    Sent,
    /// No answer from the mirror pool (no backend, a connect or exchange failure).
    Failed,
    /// `max_in_flight` copies were already out: not copied.
    Busy,
    /// The body was larger than `max_body`, or never completed: not sent.
    Body,
}

/// A route mirror's counters, one per outcome.
#[derive(Debug)]
pub(crate) struct MirrorMetrics([Counter; 4]);

impl MirrorMetrics {
    /// Counters for the mirror of `route` on `listener`.
    pub(crate) fn new(listener: &str, route: &str) -> Self {
        MirrorMetrics(["sent", "failed", "busy", "body"].map(|outcome| {
            metrics::counter!(
                names::MIRRORED,
                "listener" => listener.to_owned(),
                "route" => route.to_owned(),
                "outcome" => outcome
            )
        }))
    }

    /// Counts one copy's outcome.
    pub(crate) fn record(&self, outcome: MirrorOutcome) {
        self.0[outcome as usize].increment(1);
    }
}

/// One rate limit's series: refusals, and the keys it tracks.
#[derive(Debug)]
pub(crate) struct RateLimitMetrics {
    /// Requests (tcp: connections) refused.
    pub refused: Counter,
    /// Keys tracked, set at each sweep.
    pub keys: Gauge,
}

impl RateLimitMetrics {
    /// Handles for the limit of `route` on `listener` (`None`: the listener's own).
    pub(crate) fn new(listener: &str, route: Option<&str>) -> Self {
        let labels = [
            ("listener", listener.to_owned()),
            ("route", route.unwrap_or("-").to_owned()),
        ];
        RateLimitMetrics {
            refused: metrics::counter!(names::RATE_LIMITED, &labels),
            keys: metrics::gauge!(names::RATE_LIMIT_KEYS, &labels),
        }
    }
}

/// A listener's connection and byte counters.
#[derive(Debug)]
pub(crate) struct ListenerMetrics {
    /// Client connections accepted.
    pub connections: Counter,
    /// Episodes of waiting at the listener's `max_connections`.
    pub saturations: Counter,
    /// Open client connections (for the status API).
    pub active: AtomicU64,
    active_gauge: Gauge,
    /// Idle HTTP/1 connections parked now (held in the listener's parked sets).
    pub(crate) parked: Gauge,
    /// Bytes read from and written to clients, shared by the listener's connections.
    pub bytes: Arc<ByteCounters>,
    /// Connections closed for an incomplete request head.
    pub header_read_timeouts: Counter,
    /// Connections closed for idling.
    pub idle_timeouts: Counter,
    /// The listener's name, for series registered when first needed (GOAWAYs).
    name: String,
}

impl ListenerMetrics {
    /// Handles for the listener called `name`.
    pub(crate) fn new(name: &str) -> Self {
        let listener = ("listener", name.to_owned());
        Self {
            name: name.to_owned(),
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
            bytes: Arc::new(ByteCounters {
                read: Tally::single(metrics::counter!(
                    names::BYTES,
                    &[listener.clone(), ("direction", "in".to_owned())]
                )),
                written: Tally::single(metrics::counter!(
                    names::BYTES,
                    &[listener.clone(), ("direction", "out".to_owned())]
                )),
            }),
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
    pub(crate) fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.increment(1);
        self.active.fetch_add(1, Ordering::Relaxed);
        self.active_gauge.increment(1.0);
        ConnectionGuard(Arc::clone(self))
    }

    /// Counts an HTTP/2 connection fulcrum ended with GOAWAY for `reason` (rare: registered
    /// then).
    pub(crate) fn goaway(&self, reason: &str) {
        metrics::counter!(
            names::HTTP2_GOAWAY,
            "listener" => self.name.clone(),
            "reason" => reason.to_owned()
        )
        .increment(1);
    }
}

/// Holds one unit of a gauge (a queued request) until it drops.
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a Gauge);

impl<'a> GaugeGuard<'a> {
    fn hold(gauge: &'a Gauge) -> Self {
        gauge.increment(1.0);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Bytes read from and written to one listener's clients: one allocation per listener, so
/// each connection's IO holds a single pointer to them.
#[derive(Debug)]
pub(crate) struct ByteCounters {
    /// Bytes read from clients.
    pub read: Tally,
    /// Bytes written to clients.
    pub written: Tally,
}

/// Holds one open connection in [`ListenerMetrics::active`].
#[derive(Debug)]
pub(crate) struct ConnectionGuard(Arc<ListenerMetrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.active_gauge.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
