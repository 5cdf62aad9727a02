//! Series names: one constant per Prometheus series, shared by the handles that register the
//! series and the exporter that describes them.

/// Requests answered, by final status class.
pub(crate) const REQUESTS: &str = "fulcrum_requests_total";
/// Time from receiving a request to the backend's response head.
pub(crate) const REQUEST_DURATION: &str = "fulcrum_request_duration_seconds";
/// [`REQUEST_DURATION`]'s description (fulcrum renders its histograms itself).
pub(crate) const REQUEST_DURATION_HELP: &str =
    "Time from receiving a request to the backend's response head.";
/// Requests a route took, by final status class.
pub(crate) const ROUTE_REQUESTS: &str = "fulcrum_route_requests_total";
/// Time from receiving a request a route took to the response head.
pub(crate) const ROUTE_DURATION: &str = "fulcrum_route_request_duration_seconds";
/// [`ROUTE_DURATION`]'s description.
pub(crate) const ROUTE_DURATION_HELP: &str =
    "Time from receiving a request a route took to the response head (forwarded or local).";
/// Copies of requests for a route's mirror pool, by outcome.
pub(crate) const MIRRORED: &str = "fulcrum_mirrored_total";
/// Failed connects to a backend.
pub(crate) const CONNECT_ERRORS: &str = "fulcrum_upstream_connect_errors_total";
/// Counter: TCP connections opened to a backend.
pub(crate) const UPSTREAM_CONNECTS: &str = "fulcrum_upstream_connections_total";
/// Gauge: keep-alive connections to a backend idle in its pool.
pub(crate) const UPSTREAM_IDLE: &str = "fulcrum_upstream_idle_connections";
/// Retries on another backend, by outcome (`attempted`, `budget`: refused by the retry budget).
pub(crate) const RETRIES: &str = "fulcrum_retries_total";
/// 1 when a backend receives traffic, else 0.
pub(crate) const BACKEND_UP: &str = "fulcrum_backend_up";
/// Requests in flight on a backend.
pub(crate) const BACKEND_IN_FLIGHT: &str = "fulcrum_backend_in_flight";
/// Gauge: `peak_ewma` pools: a backend's latency estimate, in seconds.
pub(crate) const BACKEND_LATENCY_ESTIMATE: &str = "fulcrum_backend_latency_estimate_seconds";
/// Passive ejections of a backend.
pub(crate) const EJECTIONS: &str = "fulcrum_backend_ejections_total";
/// Active health checks, by result.
pub(crate) const HEALTH_CHECKS: &str = "fulcrum_health_checks_total";
/// Client connections open now.
pub(crate) const CONNECTIONS_ACTIVE: &str = "fulcrum_connections_active";
/// Idle HTTP/1 client connections parked now (hyper's buffers released).
pub(crate) const CONNECTIONS_PARKED: &str = "fulcrum_connections_parked";
/// Client connections accepted.
pub(crate) const CONNECTIONS: &str = "fulcrum_connections_total";
/// Times a listener reached its `max_connections` and stopped accepting.
pub(crate) const LISTENER_SATURATED: &str = "fulcrum_listener_saturated_total";
/// Client connections closed by a timeout, by kind (`header_read`, `idle`).
pub(crate) const CLIENT_TIMEOUTS: &str = "fulcrum_client_timeouts_total";
/// Bytes read from (`in`) and written to (`out`) clients.
pub(crate) const BYTES: &str = "fulcrum_bytes_total";
/// Config reloads, by result.
pub(crate) const RELOADS: &str = "fulcrum_config_reloads_total";
/// Unix time of the last successful reload (or of start-up).
pub(crate) const LAST_RELOAD_SUCCESS: &str = "fulcrum_config_last_reload_success_timestamp_seconds";
/// Requests answered 503 because no backend was available.
pub(crate) const NO_BACKEND: &str = "fulcrum_no_backend_total";
/// Gauge: requests waiting in a pool's queue for a backend below `max_connections`.
pub(crate) const QUEUE_LENGTH: &str = "fulcrum_queue_length";
/// Requests that waited in a pool's queue, by outcome.
pub(crate) const QUEUED: &str = "fulcrum_queued_total";
/// Requests sent to all backends because none was healthy (fail-open).
pub(crate) const FAIL_OPEN: &str = "fulcrum_fail_open_total";
/// Backend health transitions.
pub(crate) const BACKEND_TRANSITIONS: &str = "fulcrum_backend_transitions_total";
/// Admin requests refused, by reason (`host`, `origin`, `token`).
pub(crate) const ADMIN_REFUSED: &str = "fulcrum_admin_refused_total";
/// HTTP/2 client connections fulcrum ended with GOAWAY for abuse or a protocol error, by reason.
pub(crate) const HTTP2_GOAWAY: &str = "fulcrum_http2_goaway_total";
/// Sticky cookies set, by pool and reason (`new`: the request named no backend; `moved`: its
/// backend could not serve it).
pub(crate) const STICKY_PINS: &str = "fulcrum_sticky_pins_total";
/// `consistent_hash` picks that passed a key's backend over for being above the load bound.
pub(crate) const HASH_SPILLED: &str = "fulcrum_hash_spilled_total";
/// Requests (tcp listeners: connections) refused by a rate limit, by listener and route (`-`:
/// the listener's own limit).
pub(crate) const RATE_LIMITED: &str = "fulcrum_rate_limited_total";
/// Gauge: client keys a rate limit tracks (as of its last sweep), by listener and route.
pub(crate) const RATE_LIMIT_KEYS: &str = "fulcrum_rate_limit_keys";
/// Gauge: Unix time at which a served certificate expires (`notAfter`), by listener and name.
pub(crate) const CERTIFICATE_EXPIRY: &str = "fulcrum_certificate_expiry_seconds";
/// ACME orders (issuances and renewals), by outcome.
pub(crate) const ACME_ORDERS: &str = "fulcrum_acme_orders_total";
/// DNS lookups of `discover` pools, by pool and outcome (`ok`, `empty`, `nxdomain`, `error`).
pub(crate) const DISCOVERY_REFRESHES: &str = "fulcrum_discovery_refreshes_total";
/// Gauge: backends in a `discover` pool's last good set, by pool.
pub(crate) const DISCOVERY_BACKENDS: &str = "fulcrum_discovery_backends";
