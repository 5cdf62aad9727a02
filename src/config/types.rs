//! The validated configuration, which the rest of fulcrum reads; `validate` builds it from the
//! raw file, so its invariants hold by construction.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

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
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address the admin HTTP server binds.
    pub listen: SocketAddr,
    /// Record and export Prometheus metrics at `/metrics` (decided at start-up).
    pub metrics: bool,
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Tokio worker threads; `None` means one per available core.
    pub worker_threads: Option<usize>,
    /// Upper bound on a graceful drain.
    pub shutdown_timeout: Duration,
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
    /// Name of the pool serving this listener; guaranteed to exist in [`Config::pools`].
    pub pool: Arc<str>,
    /// Limits that protect the listener from slow or oversized clients.
    pub limits: ClientLimits,
    /// TCP listeners: read a PROXY protocol header (v1 or v2) first and use the client address
    /// it carries.
    pub accept_proxy_protocol: bool,
    /// Most client connections open at once (`None`: no cap); the accept loop waits at it.
    pub max_connections: Option<NonZeroUsize>,
    /// HTTP listeners: terminate TLS with these settings.
    pub tls: Option<TlsSettings>,
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
    /// Largest request head in bytes; larger heads are answered 431. At least 8192.
    pub max_header_bytes: usize,
}

/// The balancing algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round-robin (nginx's algorithm).
    RoundRobin,
    /// Fewest in-flight requests per unit of weight; ties broken in rotation.
    LeastConnections,
}

impl Algorithm {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastConnections => "least_connections",
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
    /// At least one backend; addresses are unique within the pool.
    pub backends: Vec<BackendConfig>,
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
