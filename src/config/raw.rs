//! The config file exactly as written: serde structs that only describe the TOML.
//!
//! Every field whose value needs a semantic check keeps its [`Spanned`] position, so the
//! validation in the sibling `validate` module can name the file, line and column of the
//! offending value. Unknown keys are rejected everywhere (`deny_unknown_fields`).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// `[admin]`: the operator-facing HTTP listener.
    pub admin: Option<RawAdmin>,
    /// `[runtime]`: process-level settings.
    pub runtime: Option<RawRuntime>,
    /// `[log]`: logging options.
    pub log: Option<RawLog>,
    /// `[dns]`: the resolver that `discover` pools use.
    pub dns: Option<Spanned<RawDns>>,
    /// `[[listeners]]`: the sockets that accept client traffic.
    #[serde(default)]
    pub listeners: Vec<Spanned<RawListener>>,
    /// `[pools.NAME]`: groups of backends, keyed by pool name.
    #[serde(default)]
    pub pools: BTreeMap<Spanned<String>, Spanned<RawPool>>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// Socket address of the admin listener.
    pub listen: Spanned<String>,
    /// Whether to record and export Prometheus metrics.
    pub metrics: Option<bool>,
    /// File holding the bearer token every endpoint but the probes requires.
    pub token_file: Option<Spanned<String>>,
    /// `Host` names accepted besides `localhost` and IP literals (DNS rebinding guard).
    pub allowed_hosts: Option<Vec<Spanned<String>>>,
    /// Time a client has to send a complete request head.
    pub header_read_timeout: Option<Spanned<String>>,
    /// Most admin connections open at once.
    pub max_connections: Option<Spanned<i64>>,
}

/// `[dns]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    /// Name servers (`ip` or `ip:port`); absent: the system's resolv.conf.
    pub servers: Option<Vec<Spanned<String>>>,
    /// Time one query may take.
    pub timeout: Option<Spanned<String>>,
}

/// A pool's `discover = { name, port, srv, refresh }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscover {
    /// A name whose A/AAAA records are the backends.
    pub name: Option<Spanned<String>>,
    /// The backends' port, with `name`.
    pub port: Option<Spanned<i64>>,
    /// A name whose SRV records give the backends, their ports and weights.
    pub srv: Option<Spanned<String>>,
    /// Shortest time between two lookups.
    pub refresh: Option<Spanned<String>>,
}

/// `[log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    /// One structured line per request.
    pub access: Option<bool>,
}

/// `[runtime]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuntime {
    /// Tokio worker threads; absent means one per available core.
    pub worker_threads: Option<Spanned<i64>>,
    /// How long a graceful shutdown waits for open connections.
    pub shutdown_timeout: Option<Spanned<String>>,
    /// File the running process writes its PID to.
    pub pid_file: Option<Spanned<String>>,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    /// Unique name, used in logs and metrics.
    pub name: Spanned<String>,
    /// Socket address to bind.
    pub listen: Spanned<String>,
    /// Protocol spoken by clients; defaults to HTTP.
    #[serde(default)]
    pub protocol: Option<Spanned<RawProtocol>>,
    /// The pool that serves this listener: with `routes`, the fallback for requests no route
    /// matches (optional then).
    pub pool: Option<Spanned<String>>,
    /// Time a client has to send a complete request head.
    pub header_read_timeout: Option<Spanned<String>>,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Option<Spanned<String>>,
    /// Largest request head accepted; larger ones get 431.
    pub max_header_bytes: Option<Spanned<i64>>,
    /// TCP listeners: expect a PROXY protocol header from a front balancer.
    pub proxy_protocol: Option<Spanned<bool>>,
    /// Most client connections open at once; more wait in the accept backlog.
    pub max_connections: Option<Spanned<i64>>,
    /// HTTP/2: most streams a client may have open at once on one connection.
    pub http2_max_concurrent_streams: Option<Spanned<i64>>,
    /// HTTP/2: streams a client may cancel after dispatch before its connection gets GOAWAY.
    pub http2_max_cancelled_streams: Option<Spanned<i64>>,
    /// `[listeners.tls]`: terminate TLS on this listener.
    pub tls: Option<Spanned<RawTls>>,
    /// `[[listeners.routes]]`: tried in file order, the first match wins.
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    /// `[listeners.rate_limit]`: requests (tcp: connections) per client.
    pub rate_limit: Option<Spanned<RawRateLimit>>,
}

/// `[listeners.rate_limit]` and a route's `rate_limit`: GCRA per client key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    /// Sustained rate per key; fractions allowed (`0.5`: one request every two seconds).
    pub requests_per_second: Spanned<f64>,
    /// Requests a key may make at once after being idle; default: one second's worth.
    pub burst: Option<Spanned<i64>>,
    /// `"client_ip"` (default) or `"header:NAME"`.
    pub key: Option<Spanned<String>>,
    /// CIDRs (or addresses) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
}

/// One `[[listeners.routes]]` entry: what it matches and what it does.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    /// Shown in logs and `/status`; `route-N` when absent.
    pub name: Option<Spanned<String>>,
    /// One host or a list: exact, or a leading `*.` wildcard label.
    pub host: Option<Spanned<OneOrMany>>,
    /// tcp listeners: TLS server names (ClientHello SNI), like `host`.
    pub sni: Option<Spanned<OneOrMany>>,
    /// The whole path, exactly.
    pub path: Option<Spanned<String>>,
    /// A path prefix matched on whole segments.
    pub path_prefix: Option<Spanned<String>>,
    /// Methods the route takes.
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    /// Header name → exact value, or `"*"` for present.
    pub headers: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    /// Forward to this pool.
    pub pool: Option<Spanned<String>>,
    /// Forward to these pools by weight.
    pub split: Option<Spanned<Vec<Spanned<RawSplit>>>>,
    /// Answer with a redirect.
    pub redirect: Option<Spanned<RawRedirect>>,
    /// Answer with a fixed response.
    pub respond: Option<Spanned<RawRespond>>,
    /// Remove the matched `path_prefix` before forwarding.
    pub strip_prefix: Option<Spanned<bool>>,
    /// Headers set on the request before forwarding (replacing any the client sent).
    pub set_request_headers: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    /// Send a copy of some requests to another pool, response discarded.
    pub mirror: Option<Spanned<RawMirror>>,
    /// Overrides the pool's `request_timeout` for this route's requests.
    pub request_timeout: Option<Spanned<String>>,
    /// Overrides the pool's `retries` for this route's requests.
    pub retries: Option<Spanned<i64>>,
    /// The route's own rate limit, checked after the listener's.
    pub rate_limit: Option<Spanned<RawRateLimit>>,
}

/// `mirror = { pool, percent, max_in_flight, max_body }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMirror {
    /// The pool that gets the copies.
    pub pool: Spanned<String>,
    /// Share of the route's requests copied, 1–100.
    pub percent: Option<Spanned<i64>>,
    /// Most copies in flight at once; more are dropped.
    pub max_in_flight: Option<Spanned<i64>>,
    /// Largest request body copied, in bytes; larger requests are not mirrored.
    pub max_body: Option<Spanned<i64>>,
}

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    /// One value.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// One `{ pool, weight }` of a `split`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSplit {
    /// The pool.
    pub pool: Spanned<String>,
    /// Its share, relative to the others'.
    pub weight: Spanned<i64>,
}

/// `redirect = { to, status }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedirect {
    /// The target, with `{host}`, `{path}`, `{query}` placeholders.
    pub to: Spanned<String>,
    /// 301, 302, 303, 307 or 308.
    pub status: Option<Spanned<i64>>,
}

/// `respond = { status, body }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRespond {
    /// The status code.
    pub status: Spanned<i64>,
    /// The body (text).
    pub body: Option<String>,
}

/// `[listeners.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    /// Certificate and key files; the first is the default.
    pub certificates: Option<Spanned<Vec<Spanned<RawCertificate>>>>,
    /// `[listeners.tls.acme]`: a certificate from an ACME CA.
    pub acme: Option<Spanned<RawAcme>>,
    /// `"1.2"` or `"1.3"`.
    pub min_version: Option<Spanned<String>>,
    /// ALPN protocols offered.
    pub alpn: Option<Vec<Spanned<String>>>,
    /// Time allowed for the handshake.
    pub handshake_timeout: Option<Spanned<String>>,
}

/// `[listeners.tls.acme]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    /// DNS names of the one certificate.
    pub domains: Spanned<Vec<Spanned<String>>>,
    /// Contact address for the CA.
    pub email: Option<Spanned<String>>,
    /// The CA's directory URL.
    pub directory: Option<Spanned<String>>,
    /// PEM roots for the directory's own TLS.
    pub directory_ca: Option<Spanned<String>>,
    /// Directory for the account key, certificates and keys.
    pub cache: Spanned<String>,
    /// `"tls-alpn-01"` or `"http-01"`.
    pub challenge: Option<Spanned<String>>,
    /// Renew this long before expiry.
    pub renew_before: Option<Spanned<String>>,
    /// HTTP-01: the port of the plain listener the CA connects to.
    pub challenge_port: Option<Spanned<i64>>,
}

/// One `{ cert = "…", key = "…" }` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    /// PEM certificate chain.
    pub cert: Spanned<String>,
    /// PEM private key.
    pub key: Spanned<String>,
}

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawProtocol {
    /// HTTP/1.1 and HTTP/2 (prior knowledge).
    Http,
    /// Raw TCP, balanced per connection.
    Tcp,
}

/// PROXY protocol versions a TCP pool can send.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawProxyVersion {
    /// The text form.
    V1,
    /// The binary form.
    V2,
}

/// One `[pools.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    /// Balancing algorithm; defaults to round-robin.
    pub algorithm: Option<Spanned<RawAlgorithm>>,
    /// The static backends; with no `discover`, required and not empty.
    pub backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    /// Backends found in DNS.
    pub discover: Option<Spanned<RawDiscover>>,
    /// Time allowed for a TCP connect to a backend.
    pub connect_timeout: Option<Spanned<String>>,
    /// Time allowed from sending a request until the backend's response head.
    pub request_timeout: Option<Spanned<String>>,
    /// Time one attempt may wait for the response head before another backend is tried.
    pub try_timeout: Option<Spanned<String>>,
    /// How many other backends a failed connect may be retried on.
    pub retries: Option<Spanned<i64>>,
    /// Idle upstream connections kept per backend.
    pub max_idle_per_backend: Option<Spanned<i64>>,
    /// Most requests (http) or connections (tcp) in flight to one backend at once.
    pub max_connections: Option<Spanned<i64>>,
    /// Most requests waiting for a backend under its `max_connections`.
    pub max_queue: Option<Spanned<i64>>,
    /// How long a request may wait in the queue.
    pub queue_timeout: Option<Spanned<String>>,
    /// An idle upstream connection older than this is closed instead of reused.
    pub idle_timeout: Option<Spanned<String>>,
    /// A backend coming back ramps its weight up over this long.
    pub slow_start: Option<Spanned<String>>,
    /// With no healthy backend: `true` uses all of them, `false` answers 503.
    pub fail_open: Option<bool>,
    /// `[pools.NAME.health_check]`: active checks.
    pub health_check: Option<Spanned<RawHealthCheck>>,
    /// `[pools.NAME.passive]`: ejection judged from live traffic.
    pub passive: Option<Spanned<RawPassive>>,
    /// TCP pools: send a PROXY protocol header to backends.
    pub proxy_protocol: Option<Spanned<RawProxyVersion>>,
    /// HTTP pools: speak HTTP/2 to the backends.
    pub http2: Option<Spanned<bool>>,
    /// `[pools.NAME.tls]`: TLS to the backends.
    pub tls: Option<Spanned<RawUpstreamTls>>,
    /// `peak_ewma`: how fast old latency samples fade.
    pub ewma_decay: Option<Spanned<String>>,
    /// `peak_ewma`: the latency assumed for a backend before its first sample.
    pub default_rtt: Option<Spanned<String>>,
    /// Retries allowed on top of live requests over a 10 s window.
    pub retry_budget: Option<Spanned<RawRetryBudget>>,
    /// `consistent_hash`: what to hash (`header:NAME`, `cookie:NAME`, `client_ip`, `path`, `uri`).
    pub hash_key: Option<Spanned<String>>,
    /// `consistent_hash`: bounded load, percent of a backend's share of the in-flight requests.
    pub hash_balance_factor: Option<Spanned<i64>>,
    /// `[pools.NAME.sticky]`: cookie-based session affinity.
    pub sticky: Option<Spanned<RawSticky>>,
}

/// `retry_budget = { percent = N, min_per_second = N }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetryBudget {
    /// Retries allowed as a percentage of the pool's requests.
    pub percent: Option<Spanned<i64>>,
    /// Retries allowed per second regardless of traffic.
    pub min_per_second: Option<Spanned<i64>>,
}

/// `[pools.NAME.sticky]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSticky {
    /// The cookie's name.
    pub cookie: Option<Spanned<String>>,
    /// The cookie's `Max-Age`; absent: a session cookie.
    pub ttl: Option<Spanned<String>>,
    /// Mixed into the key the cookie values are made with, so they cannot be matched to
    /// backend addresses by someone who knows the config but not the secret.
    pub secret: Option<Spanned<String>>,
}

/// `[pools.NAME.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    /// Name to send as SNI and to verify; default: each backend's host.
    pub server_name: Option<Spanned<String>>,
    /// PEM file of trusted CA certificates; default: the public web roots.
    pub ca: Option<Spanned<String>>,
    /// Skip certificate verification (logs a warning).
    pub insecure_skip_verify: Option<bool>,
}

/// `[pools.NAME.health_check]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    /// `http` or `tcp`.
    pub kind: Option<Spanned<RawCheckKind>>,
    /// Request path of HTTP checks.
    pub path: Option<Spanned<String>>,
    /// Request method of HTTP checks.
    pub method: Option<Spanned<String>>,
    /// `Host` header of HTTP checks.
    pub host: Option<Spanned<String>>,
    /// Statuses that pass: a code, `"200-399"`, `"200,204"`, or a list.
    pub expect_status: Option<Spanned<toml::Value>>,
    /// Time between checks.
    pub interval: Option<Spanned<String>>,
    /// Time one check may take.
    pub timeout: Option<Spanned<String>>,
    /// Random extra delay added to each interval.
    pub jitter: Option<Spanned<String>>,
    /// Consecutive passes to mark a backend up.
    pub healthy_threshold: Option<Spanned<i64>>,
    /// Consecutive failures to mark a backend down.
    pub unhealthy_threshold: Option<Spanned<i64>>,
}

/// The kinds of active check.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawCheckKind {
    /// An HTTP request whose status must match.
    Http,
    /// A TCP connect.
    Tcp,
}

/// `[pools.NAME.passive]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPassive {
    /// Failures in a row that eject a backend; 0 turns passive ejection off.
    pub consecutive_failures: Option<Spanned<i64>>,
    /// First ejection time; doubles on each repeated ejection.
    pub ejection_time: Option<Spanned<String>>,
    /// Cap on the ejection time.
    pub max_ejection_time: Option<Spanned<String>>,
    /// Largest share of a pool that passive ejection may take out.
    pub max_ejected_percent: Option<Spanned<i64>>,
    /// Response statuses that count as failures.
    pub failure_statuses: Option<Spanned<toml::Value>>,
}

/// The balancing algorithms, as spelled in the file.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawAlgorithm {
    /// Smooth weighted round-robin.
    RoundRobin,
    /// Weighted least in-flight requests.
    LeastConnections,
    /// Power of two choices over peak-EWMA latency × (in-flight + 1).
    PeakEwma,
    /// A weighted hash ring keyed by part of the request.
    ConsistentHash,
}

/// A backend: `"host:port"` or `{ address = "host:port", weight = N, max_connections = N }`.
#[derive(Debug)]
pub(super) struct RawBackend {
    /// `host:port` as written.
    pub address: Spanned<String>,
    /// Relative weight; defaults to 1.
    pub weight: Option<Spanned<i64>>,
    /// This backend's cap on requests in flight; defaults to the pool's.
    pub max_connections: Option<Spanned<i64>>,
}

/// The table form of a backend, with unknown keys rejected.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendTable {
    address: Spanned<String>,
    weight: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
}

impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BackendVisitor;

        impl<'de> Visitor<'de> for BackendVisitor {
            type Value = RawBackend;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#""host:port" or a table { address = "host:port", weight = N, max_connections = N }"#,
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawBackend, E> {
                // The string form has no span of its own here; the enclosing `Spanned`
                // carries it and validation uses that one.
                Ok(RawBackend {
                    address: Spanned::new(0..0, v.to_owned()),
                    weight: None,
                    max_connections: None,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBackend, A::Error> {
                let table =
                    RawBackendTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawBackend {
                    address: table.address,
                    weight: table.weight,
                    max_connections: table.max_connections,
                })
            }
        }

        deserializer.deserialize_any(BackendVisitor)
    }
}
