//! The validated configuration, which the rest of fulcrum reads; `validate` builds it from the
//! raw file, so its invariants hold by construction.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

pub use super::token::AdminToken;
use crate::config::error::Problem;
use crate::tls::{TlsSettings, UpstreamTlsConfig};

/// A complete, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The operator-facing admin listener, if any.
    pub admin: Option<AdminConfig>,
    /// Process-level settings.
    pub runtime: RuntimeConfig,
    /// Log one structured line per request (`[log] access`).
    pub access_log: bool,
    /// Client-facing listeners; names and addresses are unique.
    pub listeners: Vec<ListenerConfig>,
    /// Pools in file order; names are unique.
    pub pools: Vec<PoolConfig>,
    /// The resolver `discover` pools use (`[dns]`).
    pub dns: DnsConfig,
    /// Things that are valid but probably not meant (a route no request can reach), for
    /// `--check` and the log.
    pub warnings: Vec<Problem>,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address the admin HTTP server binds.
    pub listen: SocketAddr,
    /// Record and export Prometheus metrics at `/metrics` (decided at start-up).
    pub metrics: bool,
    /// The bearer token every endpoint but `/healthz` and `/readyz` requires; `None`: open.
    pub token: Option<AdminToken>,
    /// `Host` names accepted besides `localhost` and IP literals, lowercase, without port.
    pub allowed_hosts: Vec<String>,
    /// A client must send a whole request head within this time.
    pub header_read_timeout: Duration,
    /// Most admin connections open at once; the accept loop waits at it.
    pub max_connections: NonZeroUsize,
}

/// `[dns]`: the resolver of `discover` pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers asked, in order; empty: those of the system's `/etc/resolv.conf`.
    pub servers: Vec<SocketAddr>,
    /// Time one query may take before it counts as failed.
    pub timeout: Duration,
}

/// A pool's `discover`: backends found in DNS, looked up again as their records expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverConfig {
    /// What is looked up.
    pub target: DiscoverTarget,
    /// Shortest time between lookups: the records' TTL is clamped to `[refresh, 5 min]`.
    pub refresh: Duration,
}

impl DiscoverConfig {
    /// The longest `refresh`, and the cap on the TTL-driven wait between lookups.
    pub const MAX_REFRESH: Duration = Duration::from_secs(300);
}

/// What a `discover` pool looks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverTarget {
    /// A and AAAA records of `name`; every address is a backend on `port`.
    Name {
        /// The name, as written.
        name: Arc<str>,
        /// The backends' port.
        port: u16,
    },
    /// SRV records of this name: targets (resolved to A/AAAA), ports and weights.
    Srv(Arc<str>),
}

impl std::fmt::Display for DiscoverTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoverTarget::Name { name, port } => write!(f, "{name} port {port}"),
            DiscoverTarget::Srv(name) => write!(f, "SRV {name}"),
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Tokio worker threads; `None` means one per available core.
    pub worker_threads: Option<usize>,
    /// Upper bound on a graceful drain.
    pub shutdown_timeout: Duration,
    /// Where the serving process writes its PID (rewritten by the new process after an
    /// upgrade), resolved against the config file's directory.
    pub pid_file: Option<std::path::PathBuf>,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and cleartext HTTP/2 (prior knowledge), proxied at layer 7.
    Http,
    /// Raw TCP, balanced per connection at layer 4.
    Tcp,
}

impl Protocol {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

/// PROXY protocol version sent to the backends of a TCP pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// `PROXY TCP4 …` text header.
    V1,
    /// Binary header.
    V2,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Unique name, used in logs and metrics.
    pub name: Arc<str>,
    /// Address to bind.
    pub listen: SocketAddr,
    /// Protocol spoken by clients.
    pub protocol: Protocol,
    /// Name of the pool serving this listener (with routes: requests no route matches);
    /// guaranteed to exist in [`Config::pools`]. Only a listener with routes may have none.
    pub pool: Option<Arc<str>>,
    /// HTTP listeners: routes tried in file order before `pool`.
    pub routes: Vec<RouteConfig>,
    /// Limits that protect the listener from slow or oversized clients.
    pub limits: ClientLimits,
    /// TCP listeners: read a PROXY protocol header (v1 or v2) first and use the client address
    /// it carries.
    pub accept_proxy_protocol: bool,
    /// Most client connections open at once (`None`: no cap); the accept loop waits at it.
    pub max_connections: Option<NonZeroUsize>,
    /// HTTP listeners: terminate TLS with these settings.
    pub tls: Option<TlsSettings>,
    /// Requests (tcp: new connections) per client, checked before routing.
    pub rate_limit: Option<RateLimitConfig>,
}

impl ListenerConfig {
    /// What serves it, for logs: `POOL`, `N routes, fallback POOL` or `N routes`.
    pub fn serves(&self) -> String {
        match (&self.pool, self.routes.len()) {
            (Some(pool), 0) => pool.to_string(),
            (Some(pool), routes) => format!("{routes} routes, fallback {pool}"),
            (None, routes) => format!("{routes} routes"),
        }
    }
}

/// One `[[listeners.routes]]` entry: every condition must hold for it to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// `name`, or `route-N` (N counted from 1 in the listener).
    pub name: Arc<str>,
    /// Lower-case host names (tcp listeners: TLS server names); empty: any host.
    pub hosts: Vec<HostMatch>,
    /// The path condition, if any.
    pub path: Option<PathMatch>,
    /// Methods it takes; empty: any.
    pub methods: Vec<http::Method>,
    /// Header conditions.
    pub headers: Vec<(http::HeaderName, HeaderMatch)>,
    /// What a matching request gets.
    pub action: RouteAction,
    /// Remove the `path_prefix` before forwarding (only with one).
    pub strip_prefix: bool,
    /// Set on the request before forwarding.
    pub set_request_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Copies of some requests for another pool.
    pub mirror: Option<MirrorConfig>,
    /// The route's own `request_timeout`, instead of its pool's.
    pub request_timeout: Option<std::time::Duration>,
    /// The route's own `retries`, instead of its pool's.
    pub retries: Option<u32>,
    /// The route's own rate limit, checked after the listener's (http routes only).
    pub rate_limit: Option<RateLimitConfig>,
}

/// A rate limit (`[listeners.rate_limit]` or a route's): GCRA per client key, so a key may
/// send `burst` requests at once and then one per `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Time per request at the sustained rate: 1 / `requests_per_second`, at least 1 ns.
    pub interval: Duration,
    /// Requests a key may send at once after it was idle; at least 1.
    pub burst: NonZeroU32,
    /// What a request is counted against.
    pub key: RateLimitKey,
    /// Peers whose `X-Forwarded-For` is believed (http listeners).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl RateLimitConfig {
    /// The sustained rate, as configured.
    pub fn requests_per_second(&self) -> f64 {
        1.0 / self.interval.as_secs_f64()
    }
}

/// What a rate limit counts requests against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The real client address: the PROXY protocol source, or the socket peer, or (from a
    /// trusted proxy) the first untrusted address of `X-Forwarded-For` from the right.
    ClientIp,
    /// The value of this request header (an API key); requests without it use `ClientIp`.
    Header(http::HeaderName),
}

impl std::fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateLimitKey::ClientIp => f.write_str("client_ip"),
            RateLimitKey::Header(name) => write!(f, "header:{name}"),
        }
    }
}

/// A route's `mirror`: copies of its requests, sent to `pool` and their responses discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    /// The pool that gets the copies.
    pub pool: Arc<str>,
    /// Share of the route's requests copied, 1–100, spread evenly.
    pub percent: u8,
    /// Most copies in flight at once; a request past it is not copied (and counted).
    pub max_in_flight: usize,
    /// Largest request body copied; a larger one is not mirrored (and counted).
    pub max_body: usize,
}

/// A route's host condition (the request's port is ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// This host exactly.
    Exact(Arc<str>),
    /// `*.SUFFIX`: SUFFIX with exactly one label in front.
    Wildcard(Arc<str>),
}

/// A route's path condition, on whole segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path is exactly this.
    Exact(Arc<str>),
    /// The path is this or continues it with `/` (stored without a trailing `/`, except `/`).
    Prefix(Arc<str>),
}

impl PathMatch {
    /// Whether `path` (without its query) meets the condition.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(exact) => path == &**exact,
            PathMatch::Prefix(prefix) if &**prefix == "/" => path.starts_with('/'),
            PathMatch::Prefix(prefix) => path
                .strip_prefix(&**prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }
}

/// A route's condition on one header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderMatch {
    /// Present with this value.
    Exact(http::HeaderValue),
    /// Present with any value (`"*"`).
    Present,
}

/// What a route does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Forward to this pool.
    Pool(Arc<str>),
    /// Forward to one of these pools, by weight per request.
    Split(Vec<(Arc<str>, NonZeroU32)>),
    /// Answer with a redirect to this template (`{host}`, `{path}`, `{query}`).
    Redirect {
        /// The target template.
        to: Arc<str>,
        /// A 3xx redirect status.
        status: http::StatusCode,
    },
    /// Answer with this status and body.
    Respond {
        /// The status.
        status: http::StatusCode,
        /// The body, sent as `text/plain`.
        body: bytes::Bytes,
    },
}

impl std::fmt::Display for RouteAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteAction::Pool(pool) => write!(f, "pool {pool}"),
            RouteAction::Split(split) => {
                f.write_str("split")?;
                for (index, (pool, weight)) in split.iter().enumerate() {
                    let separator = if index == 0 { " " } else { ", " };
                    write!(f, "{separator}{pool} ×{weight}")?;
                }
                Ok(())
            }
            RouteAction::Redirect { to, status } => write!(f, "redirect {} {to}", status.as_u16()),
            RouteAction::Respond { status, .. } => write!(f, "respond {}", status.as_u16()),
        }
    }
}

impl RouteAction {
    /// The pools it forwards to.
    pub fn pools(&self) -> Vec<&Arc<str>> {
        match self {
            RouteAction::Pool(pool) => vec![pool],
            RouteAction::Split(split) => split.iter().map(|(pool, _)| pool).collect(),
            RouteAction::Redirect { .. } | RouteAction::Respond { .. } => Vec::new(),
        }
    }
}

/// Protections applied to every client connection of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// A client must send a whole request head within this time, counted from its first byte
    /// (or from accept, for a connection's first request): slowloris protection. A keep-alive
    /// connection waiting for its next request is bounded by `idle_timeout` instead.
    pub header_read_timeout: Duration,
    /// A connection with no bytes either way for this long is closed (HTTP listeners).
    pub idle_timeout: Duration,
    /// Largest request head in bytes; larger heads are answered 431. At least 8192. Also
    /// HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE, which bounds CONTINUATION frames too.
    pub max_header_bytes: usize,
    /// HTTP/2 abuse limits.
    pub http2: Http2Limits,
}

/// HTTP/2 limits of one listener's client connections (the fixed ones are in
/// `proxy/l7/listener.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams open at once per connection; more are refused.
    pub max_concurrent_streams: u32,
    /// Streams a client may cancel after they were dispatched to a backend, over the
    /// connection's life; one more ends the connection with GOAWAY (ENHANCE_YOUR_CALM).
    pub max_cancelled_streams: u32,
}

/// The balancing algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round-robin (nginx's algorithm).
    RoundRobin,
    /// Fewest in-flight requests per unit of weight; ties broken in rotation.
    LeastConnections,
    /// Power of two random choices, the cheaper by peak-EWMA latency × (in-flight + 1) per
    /// unit of weight (the pool's [`EwmaConfig`]).
    PeakEwma,
    /// A weighted hash ring over the backends' configured addresses: a request's
    /// [`HashKey`] picks its backend, the same on every instance with the same config.
    ConsistentHash,
}

impl Algorithm {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastConnections => "least_connections",
            Algorithm::PeakEwma => "peak_ewma",
            Algorithm::ConsistentHash => "consistent_hash",
        }
    }
}

/// One `[pools.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Unique pool name.
    pub name: Arc<str>,
    /// What the listeners using this pool speak; one pool never serves both.
    pub protocol: Protocol,
    /// How a backend is chosen.
    pub algorithm: Algorithm,
    /// The backends; addresses are unique within the pool. Only a `discover` pool may have
    /// none (in the file, and while DNS has not answered yet).
    pub backends: Vec<BackendConfig>,
    /// Backends found in DNS, besides `backends`.
    pub discover: Option<DiscoverConfig>,
    /// TCP connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Time from sending a request until the response head arrives.
    pub request_timeout: Duration,
    /// Time one attempt waits for the response head (from sending the request whole); bodiless
    /// GET, HEAD and OPTIONS requests that run out of it are retried on another backend.
    /// `None`: an attempt may take the whole `request_timeout`.
    pub try_timeout: Option<Duration>,
    /// Extra attempts on other backends after a failed connect.
    pub retries: u32,
    /// Idle upstream connections kept per backend.
    pub max_idle_per_backend: usize,
    /// Most requests (http) or connections (tcp) in flight to one backend (`None`: no cap),
    /// and the queue that waits for room when every backend is at it.
    pub queue: QueueConfig,
    /// HTTP pools: idle upstream connections older than this are not reused. TCP pools: a
    /// proxied connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// TCP pools: send this PROXY protocol header to backends.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// HTTP pools: speak HTTP/2 (one multiplexed connection per backend) instead of HTTP/1.1.
    pub http2: bool,
    /// HTTP pools: TLS to the backends.
    pub upstream_tls: Option<UpstreamTlsConfig>,
    /// Weight ramp-up time for a backend that (re)joins; `None` means full weight at once.
    pub slow_start: Option<Duration>,
    /// With no healthy backend, use all of them (`true`) or answer 503 (`false`).
    pub fail_open: bool,
    /// Active checks; `None` means backends are up unless live traffic ejects them.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection from live traffic.
    pub passive: PassiveConfig,
    /// `peak_ewma`'s latency estimate (every pool has one; only that algorithm reads it).
    pub ewma: EwmaConfig,
    /// Retries allowed on top of live requests; `None`: only `retries` bounds them.
    pub retry_budget: Option<RetryBudgetConfig>,
    /// `consistent_hash` pools: what part of a request picks its backend (tcp: the client IP).
    pub hash_key: Option<HashKey>,
    /// `consistent_hash` pools: a backend with more in flight than this percent of its share
    /// of the pool's in-flight requests (plus one) is passed over; 0 = unbounded.
    pub hash_balance_factor: u16,
    /// `[pools.NAME.sticky]`: pin clients to the backend that first served them, by cookie.
    pub sticky: Option<StickyConfig>,
}

/// How `peak_ewma` estimates a backend's latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EwmaConfig {
    /// Time constant of the decay: a sample's weight falls by `e` every `decay`.
    pub decay: Duration,
    /// The estimate of a backend before its first sample.
    pub default_rtt: Duration,
}

impl Default for EwmaConfig {
    /// linkerd2-proxy's defaults: a 10 s decay, 30 ms before the first sample.
    fn default() -> Self {
        Self {
            decay: super::defaults::EWMA_DECAY,
            default_rtt: super::defaults::DEFAULT_RTT,
        }
    }
}

/// A pool's retry budget (Finagle's and Linkerd's): over a 10 s window, retries may reach
/// `percent`% of the pool's requests plus `min_per_second` × 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per 100 requests.
    pub percent: u32,
    /// Retries allowed per second whatever the traffic, so a quiet pool can still retry.
    pub min_per_second: u32,
}

/// What a `consistent_hash` pool hashes to pick a backend (`hash_key`). A request without it
/// is balanced round-robin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The first value of this request header (`header:NAME`).
    Header(http::HeaderName),
    /// The value of this cookie (`cookie:NAME`).
    Cookie(Box<str>),
    /// The client's IP address (the only key of tcp pools).
    ClientIp,
    /// The request path, without the query.
    Path,
    /// The request path and query.
    Uri,
}

/// `[pools.NAME.sticky]`: a cookie naming the backend that served the client.
#[derive(Clone, PartialEq, Eq)]
pub struct StickyConfig {
    /// The cookie's name.
    pub cookie: Box<str>,
    /// Its `Max-Age`; `None`: a session cookie.
    pub ttl: Option<Duration>,
    /// Mixed with the pool name into the key the cookie values are made with (see
    /// `balance::sticky`). Not shown by `Debug`.
    pub secret: Option<Arc<str>>,
}

impl std::fmt::Debug for StickyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StickyConfig")
            .field("cookie", &self.cookie)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Active health checks of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// What a check does.
    pub kind: CheckKind,
    /// Time between the starts of two checks.
    pub interval: Duration,
    /// Time one check may take; never longer than `interval`.
    pub timeout: Duration,
    /// Up to this much random delay is added to each interval, so checks do not align.
    pub jitter: Duration,
    /// Consecutive passes that bring a down backend up.
    pub healthy_threshold: u32,
    /// Consecutive failures that take an up backend down.
    pub unhealthy_threshold: u32,
}

/// What an active check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Sends a request on a new connection; passes when the status is in `expect`.
    Http {
        /// Request method.
        method: http::Method,
        /// Request path (and query), starting with `/`.
        path: http::uri::PathAndQuery,
        /// `Host` header; the backend's address when `None`.
        host: Option<http::HeaderValue>,
        /// Passing statuses.
        expect: StatusSet,
    },
    /// Passes when a TCP connect succeeds.
    Tcp,
}

/// A pool's per-backend cap and the queue in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Most requests (http) or connections (tcp) in flight to one backend, unless the backend
    /// sets its own; `None`: no cap.
    pub max_connections: Option<NonZeroUsize>,
    /// Most requests waiting for room at once; more are answered 503 at once.
    pub max_queue: usize,
    /// How long a request waits for room before it is answered 503.
    pub timeout: Duration,
}

/// Passive ejection settings of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveConfig {
    /// Failures in a row that eject a backend; 0 means never.
    pub consecutive_failures: u32,
    /// First ejection time; doubles with each repeated ejection.
    pub ejection_time: Duration,
    /// Cap on the doubling.
    pub max_ejection_time: Duration,
    /// Passive ejection never takes out more than this share (0–100) of a pool.
    pub max_ejected_percent: u8,
    /// Response statuses that count as failures (connect errors, resets and timeouts always do).
    pub failure_statuses: StatusSet,
}

/// A set of HTTP status codes, as inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(pub Vec<std::ops::RangeInclusive<u16>>);

impl StatusSet {
    /// Whether `status` is in the set.
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|range| range.contains(&status))
    }
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The address as written (`host:port`), for logs and the status API.
    pub name: Arc<str>,
    /// The resolved address; a backend's identity within its pool.
    pub address: SocketAddr,
    /// Relative weight, at least 1.
    pub weight: NonZeroU32,
    /// Its own cap on requests (tcp: connections) in flight, instead of the pool's.
    pub max_connections: Option<NonZeroUsize>,
}

impl Config {
    /// The pool called `name`, if any.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|pool| &*pool.name == name)
    }
}
