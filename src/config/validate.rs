//! Raw file → validated [`Config`]. Each rule reports every violation it finds, with position.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeTable;

use super::error::{ConfigError, Locator, Problem};
use super::raw::{
    RawAlgorithm, RawBackend, RawCheckKind, RawConfig, RawHealthCheck, RawListener, RawPassive,
    RawPool, RawProtocol, RawProxyVersion, RawTls, RawUpstreamTls,
};
use super::types::{
    AdminConfig, Algorithm, BackendConfig, CheckKind, ClientLimits, Config, HealthCheckConfig,
    ListenerConfig, PassiveConfig, PoolConfig, Protocol, ProxyProtocol, QueueConfig, RuntimeConfig,
    StatusSet,
};
use crate::tls::{CertificateFiles, MinVersion, TlsError, TlsSettings, UpstreamTlsConfig};

/// Defaults for every optional key; the README's config reference lists the same values.
pub(crate) mod defaults {
    use std::time::Duration;

    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const MAX_HEADER_BYTES: usize = 32 * 1024;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    pub const RETRIES: u32 = 2;
    pub const MAX_IDLE_PER_BACKEND: usize = 1024;
    pub const MAX_QUEUE: usize = 1024;
    pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
    pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const CHECK_PATH: &str = "/";
    pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
    pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
    pub const HEALTHY_THRESHOLD: u32 = 2;
    pub const UNHEALTHY_THRESHOLD: u32 = 3;
    pub const CONSECUTIVE_FAILURES: u32 = 5;
    pub const EJECTION_TIME: Duration = Duration::from_secs(10);
    pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
    pub const MAX_EJECTED_PERCENT: u8 = 50;
}

/// hyper's smallest read buffer; a head limit below it cannot be enforced.
const MIN_HEADER_BYTES: i64 = 8192;
const MAX_HEADER_BYTES: i64 = 1024 * 1024;
const MAX_RETRIES: i64 = 16;
const MAX_WORKER_THREADS: i64 = 1024;
const MAX_WEIGHT: i64 = 10_000;
/// Bound on the `max_connections` and `max_queue` settings.
const MAX_CONNECTIONS: i64 = 10_000_000;

pub(super) fn parse(file: &str, source: &str) -> Result<Config, ConfigError> {
    let locator = Locator::new(file, source);
    let root = DeTable::parse(source)
        .map_err(|err| ConfigError::Invalid(vec![locator.toml_problem(&err, None)]))?;
    let raw: RawConfig = toml::from_str(source).map_err(|err| {
        ConfigError::Invalid(vec![locator.toml_problem(&err, Some(root.get_ref()))])
    })?;
    let mut checker = Checker {
        locator,
        problems: Vec::new(),
    };
    let config = checker.config(raw);
    match config {
        Some(config) if checker.problems.is_empty() => Ok(config),
        _ => {
            checker
                .problems
                .sort_by_key(|problem| (problem.line, problem.column));
            Err(ConfigError::Invalid(checker.problems))
        }
    }
}

struct Checker<'a> {
    locator: Locator<'a>,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn report<T>(&mut self, at: &Spanned<T>, key: &str, message: impl Into<String>) {
        let problem = self.locator.problem(at.span().start, key, message);
        self.problems.push(problem);
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let runtime = self.runtime(raw.runtime.as_ref());
        let admin = raw.admin.as_ref().and_then(|admin| {
            self.address(&admin.listen, "admin.listen", true)
                .map(|listen| AdminConfig {
                    listen,
                    metrics: admin.metrics.unwrap_or(true),
                })
        });

        let protocols = self.pool_protocols(&raw);
        let mut pools = Vec::with_capacity(raw.pools.len());
        for (name, pool) in &raw.pools {
            let protocol = protocols
                .iter()
                .find(|(pool_name, _)| pool_name == name.get_ref())
                .map_or(Protocol::Http, |(_, protocol)| *protocol);
            if let Some(pool) = self.pool(name, pool, protocol) {
                pools.push(pool);
            }
        }
        let pool_count = raw.pools.len();

        if raw.listeners.is_empty() {
            self.problems.push(self.locator.problem(
                0,
                "listeners",
                "at least one [[listeners]] entry is required",
            ));
        }
        let mut listeners = Vec::with_capacity(raw.listeners.len());
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        if let Some(admin) = &admin {
            addresses.insert(admin.listen);
        }
        for (index, listener) in raw.listeners.iter().enumerate() {
            let key = format!("listeners[{index}]");
            let listener = listener.get_ref();
            if !names.insert(listener.name.get_ref().clone()) {
                self.report(
                    &listener.name,
                    &format!("{key}.name"),
                    format!("duplicate listener name {:?}", listener.name.get_ref()),
                );
            }
            let Some(config) = self.listener(&key, listener, &raw) else {
                continue;
            };
            if config.listen.port() != 0 && !addresses.insert(config.listen) {
                self.report(
                    &listener.listen,
                    &format!("{key}.listen"),
                    format!(
                        "address {} is already used by another listener or the admin listener",
                        config.listen
                    ),
                );
            }
            listeners.push(config);
        }

        (pools.len() == pool_count && listeners.len() == raw.listeners.len()).then_some(Config {
            admin,
            runtime: runtime?,
            access_log: raw.log.as_ref().and_then(|log| log.access).unwrap_or(false),
            listeners,
            pools,
        })
    }

    /// The protocol of each pool, from the listeners that use it; a pool used by listeners of
    /// both protocols is an error (its keys mean different things for each).
    fn pool_protocols(&mut self, raw: &RawConfig) -> Vec<(String, Protocol)> {
        let mut protocols: Vec<(String, Protocol)> = Vec::new();
        for (index, listener) in raw.listeners.iter().enumerate() {
            let listener = listener.get_ref();
            let protocol = listener_protocol(listener);
            let pool = listener.pool.get_ref();
            match protocols.iter().find(|(name, _)| name == pool) {
                Some((_, existing)) if *existing != protocol => self.report(
                    &listener.pool,
                    &format!("listeners[{index}].pool"),
                    format!(
                        "pool {pool:?} already serves {} listeners; a {} listener needs a pool of its own",
                        existing.as_str(),
                        protocol.as_str()
                    ),
                ),
                Some(_) => {}
                None => protocols.push((pool.clone(), protocol)),
            }
        }
        protocols
    }

    /// Reports each key in `keys` that is set, as not applying to `what`.
    fn reject_keys(&mut self, key: &str, what: &str, keys: &[(&str, Option<Range<usize>>)]) {
        for (name, span) in keys {
            if let Some(span) = span {
                let problem = self.locator.problem(
                    span.start,
                    format!("{key}.{name}"),
                    format!("does not apply to {what}"),
                );
                self.problems.push(problem);
            }
        }
    }

    fn runtime(&mut self, raw: Option<&super::raw::RawRuntime>) -> Option<RuntimeConfig> {
        let Some(raw) = raw else {
            return Some(RuntimeConfig {
                worker_threads: None,
                shutdown_timeout: defaults::SHUTDOWN_TIMEOUT,
            });
        };
        let worker_threads = match &raw.worker_threads {
            None => Some(None),
            Some(threads) => self
                .int_in(threads, "runtime.worker_threads", 1, MAX_WORKER_THREADS)
                .map(|n| usize::try_from(n).ok()),
        };
        let shutdown_timeout = self.duration(
            raw.shutdown_timeout.as_ref(),
            "runtime.shutdown_timeout",
            defaults::SHUTDOWN_TIMEOUT,
        );
        Some(RuntimeConfig {
            worker_threads: worker_threads?,
            shutdown_timeout: shutdown_timeout?,
        })
    }

    fn listener(
        &mut self,
        key: &str,
        raw: &RawListener,
        config: &RawConfig,
    ) -> Option<ListenerConfig> {
        let listen = self.address(&raw.listen, &format!("{key}.listen"), true);
        let protocol = listener_protocol(raw);
        if protocol == Protocol::Tcp {
            self.reject_keys(
                key,
                "tcp listeners",
                &[
                    (
                        "header_read_timeout",
                        raw.header_read_timeout.as_ref().map(Spanned::span),
                    ),
                    ("idle_timeout", raw.idle_timeout.as_ref().map(Spanned::span)),
                    (
                        "max_header_bytes",
                        raw.max_header_bytes.as_ref().map(Spanned::span),
                    ),
                    ("tls", raw.tls.as_ref().map(Spanned::span)),
                ],
            );
        } else {
            self.reject_keys(
                key,
                "http listeners",
                &[(
                    "proxy_protocol",
                    raw.proxy_protocol.as_ref().map(Spanned::span),
                )],
            );
        }
        let tls = match raw.tls.as_ref().filter(|_| protocol == Protocol::Http) {
            None => Some(None),
            Some(tls) => self.tls(&format!("{key}.tls"), tls.get_ref()).map(Some),
        };
        let pool = raw.pool.get_ref();
        let pool_exists = config.pools.contains_key(pool.as_str());
        if !pool_exists {
            let known: Vec<&str> = config.pools.keys().map(|k| k.get_ref().as_str()).collect();
            let hint = if known.is_empty() {
                "no pools are defined".to_owned()
            } else {
                format!("defined pools: {}", known.join(", "))
            };
            self.report(
                &raw.pool,
                &format!("{key}.pool"),
                format!("pool {pool:?} does not exist ({hint})"),
            );
        }
        let header_read_timeout = self.duration(
            raw.header_read_timeout.as_ref(),
            &format!("{key}.header_read_timeout"),
            defaults::HEADER_READ_TIMEOUT,
        );
        let idle_timeout = self.duration(
            raw.idle_timeout.as_ref(),
            &format!("{key}.idle_timeout"),
            defaults::CLIENT_IDLE_TIMEOUT,
        );
        let max_header_bytes = match &raw.max_header_bytes {
            None => Some(defaults::MAX_HEADER_BYTES),
            Some(bytes) => self
                .int_in(
                    bytes,
                    &format!("{key}.max_header_bytes"),
                    MIN_HEADER_BYTES,
                    MAX_HEADER_BYTES,
                )
                .and_then(|n| usize::try_from(n).ok()),
        };
        let max_connections = self.optional_count(
            raw.max_connections.as_ref(),
            &format!("{key}.max_connections"),
        );
        let name = raw.name.get_ref();
        if name.is_empty() {
            self.report(&raw.name, &format!("{key}.name"), "must not be empty");
        }
        Some(ListenerConfig {
            max_connections: max_connections?,
            name: Arc::from(name.as_str()),
            listen: listen?,
            protocol,
            accept_proxy_protocol: raw.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref()),
            tls: tls?,
            pool: pool_exists.then(|| Arc::from(pool.as_str()))?,
            limits: ClientLimits {
                header_read_timeout: header_read_timeout?,
                idle_timeout: idle_timeout?,
                max_header_bytes: max_header_bytes?,
            },
        })
    }

    /// The config file's directory: relative certificate and CA paths start there.
    fn config_dir(&self) -> std::path::PathBuf {
        std::path::Path::new(self.locator.file())
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default()
    }

    fn upstream_tls(&mut self, key: &str, raw: &RawUpstreamTls) -> Option<UpstreamTlsConfig> {
        let base = self.config_dir();
        let mut ok = true;
        if let Some(name) = &raw.server_name {
            if rustls_pki_types::ServerName::try_from(name.get_ref().as_str()).is_err() {
                self.report(
                    name,
                    &format!("{key}.server_name"),
                    format!("{:?} is not a valid server name", name.get_ref()),
                );
                ok = false;
            }
        }
        let ca = raw.ca.as_ref().map(|ca| (ca, base.join(ca.get_ref())));
        if let Some((at, path)) = &ca {
            if let Err(err) = crate::tls::load_roots(path) {
                self.report(*at, &format!("{key}.ca"), err.to_string());
                ok = false;
            }
        }
        ok.then(|| UpstreamTlsConfig {
            server_name: raw.server_name.as_ref().map(|n| n.get_ref().clone()),
            ca: ca.map(|(_, path)| path),
            insecure_skip_verify: raw.insecure_skip_verify.unwrap_or(false),
        })
    }

    fn tls(&mut self, key: &str, raw: &RawTls) -> Option<TlsSettings> {
        let base = self.config_dir();
        if raw.certificates.get_ref().is_empty() {
            self.report(
                &raw.certificates,
                &format!("{key}.certificates"),
                "at least one certificate is required",
            );
        }
        let mut certificates = Vec::new();
        let mut ok = true;
        for (index, entry) in raw.certificates.get_ref().iter().enumerate() {
            let entry_key = format!("{key}.certificates[{index}]");
            let files = CertificateFiles {
                cert: base.join(entry.get_ref().cert.get_ref()),
                key: base.join(entry.get_ref().key.get_ref()),
            };
            if let Err(err) = crate::tls::load_certificate(&files) {
                let (at, field) = match &err {
                    TlsError::NoKey(_)
                    | TlsError::UnsupportedKey { .. }
                    | TlsError::KeyMismatch { .. } => (&entry.get_ref().key, "key"),
                    TlsError::Read { path, .. } if *path == files.key => {
                        (&entry.get_ref().key, "key")
                    }
                    _ => (&entry.get_ref().cert, "cert"),
                };
                self.report(at, &format!("{entry_key}.{field}"), err.to_string());
                ok = false;
            }
            certificates.push(files);
        }
        let min_version = match raw.min_version.as_ref() {
            None => Some(MinVersion::Tls12),
            Some(version) => match version.get_ref().as_str() {
                "1.2" => Some(MinVersion::Tls12),
                "1.3" => Some(MinVersion::Tls13),
                other => {
                    self.report(
                        version,
                        &format!("{key}.min_version"),
                        format!("{other:?} is not a TLS version (\"1.2\" or \"1.3\")"),
                    );
                    None
                }
            },
        };
        let mut alpn = Vec::new();
        match &raw.alpn {
            None => alpn.extend(["h2".to_owned(), "http/1.1".to_owned()]),
            Some(list) => {
                for (index, protocol) in list.iter().enumerate() {
                    match protocol.get_ref().as_str() {
                        "h2" | "http/1.1" => alpn.push(protocol.get_ref().clone()),
                        other => {
                            self.report(
                                protocol,
                                &format!("{key}.alpn[{index}]"),
                                format!("{other:?} is not supported (\"h2\" or \"http/1.1\")"),
                            );
                            ok = false;
                        }
                    }
                }
            }
        }
        let handshake_timeout = self.duration(
            raw.handshake_timeout.as_ref(),
            &format!("{key}.handshake_timeout"),
            defaults::HANDSHAKE_TIMEOUT,
        );
        (ok && !certificates.is_empty()).then_some(())?;
        Some(TlsSettings {
            certificates,
            min_version: min_version?,
            alpn,
            handshake_timeout: handshake_timeout?,
        })
    }

    fn pool(
        &mut self,
        name: &Spanned<String>,
        raw: &Spanned<RawPool>,
        protocol: Protocol,
    ) -> Option<PoolConfig> {
        let key = format!("pools.{}", name.get_ref());
        let raw = raw.get_ref();
        if protocol == Protocol::Tcp {
            let check = raw.health_check.as_ref().map(Spanned::get_ref);
            let passive = raw.passive.as_ref().map(Spanned::get_ref);
            self.reject_keys(
                &key,
                "tcp pools",
                &[
                    (
                        "request_timeout",
                        raw.request_timeout.as_ref().map(Spanned::span),
                    ),
                    (
                        "max_idle_per_backend",
                        raw.max_idle_per_backend.as_ref().map(Spanned::span),
                    ),
                ],
            );
            if let Some(check) = check {
                let http_kind = check
                    .kind
                    .as_ref()
                    .filter(|kind| *kind.get_ref() == RawCheckKind::Http)
                    .map(Spanned::span);
                self.reject_keys(
                    &format!("{key}.health_check"),
                    "tcp pools (their checks are TCP connects)",
                    &[
                        ("kind", http_kind),
                        ("path", check.path.as_ref().map(Spanned::span)),
                        ("method", check.method.as_ref().map(Spanned::span)),
                        ("host", check.host.as_ref().map(Spanned::span)),
                        (
                            "expect_status",
                            check.expect_status.as_ref().map(Spanned::span),
                        ),
                    ],
                );
            }
            self.reject_keys(
                &key,
                "tcp pools",
                &[
                    ("http2", raw.http2.as_ref().map(Spanned::span)),
                    ("tls", raw.tls.as_ref().map(Spanned::span)),
                ],
            );
            if let Some(passive) = passive {
                self.reject_keys(
                    &format!("{key}.passive"),
                    "tcp pools",
                    &[(
                        "failure_statuses",
                        passive.failure_statuses.as_ref().map(Spanned::span),
                    )],
                );
            }
        } else {
            self.reject_keys(
                &key,
                "http pools",
                &[(
                    "proxy_protocol",
                    raw.proxy_protocol.as_ref().map(Spanned::span),
                )],
            );
        }
        let algorithm = match raw.algorithm.as_ref().map(|a| *a.get_ref()) {
            None | Some(RawAlgorithm::RoundRobin) => Algorithm::RoundRobin,
            Some(RawAlgorithm::LeastConnections) => Algorithm::LeastConnections,
        };
        let backends = self.backends(&key, &raw.backends);
        let connect_timeout = self.duration(
            raw.connect_timeout.as_ref(),
            &format!("{key}.connect_timeout"),
            defaults::CONNECT_TIMEOUT,
        );
        let request_timeout = self.duration(
            raw.request_timeout.as_ref(),
            &format!("{key}.request_timeout"),
            defaults::REQUEST_TIMEOUT,
        );
        let retries = match &raw.retries {
            None => Some(defaults::RETRIES),
            Some(n) => self
                .int_in(n, &format!("{key}.retries"), 0, MAX_RETRIES)
                .and_then(|n| u32::try_from(n).ok()),
        };
        let max_idle_per_backend = match &raw.max_idle_per_backend {
            None => Some(defaults::MAX_IDLE_PER_BACKEND),
            Some(n) => self
                .int_in(n, &format!("{key}.max_idle_per_backend"), 0, 65_536)
                .and_then(|n| usize::try_from(n).ok()),
        };
        let queue = self.queue(&key, raw);
        let idle_timeout = self.duration(
            raw.idle_timeout.as_ref(),
            &format!("{key}.idle_timeout"),
            match protocol {
                Protocol::Http => defaults::UPSTREAM_IDLE_TIMEOUT,
                Protocol::Tcp => defaults::TCP_IDLE_TIMEOUT,
            },
        );
        let slow_start = match &raw.slow_start {
            None => Some(None),
            Some(raw) => self
                .duration(Some(raw), &format!("{key}.slow_start"), Duration::ZERO)
                .map(Some),
        };
        let health_check = match &raw.health_check {
            None => Some(None),
            Some(check) => self
                .health_check(&format!("{key}.health_check"), check.get_ref(), protocol)
                .map(Some),
        };
        let passive = self.passive(
            &format!("{key}.passive"),
            raw.passive.as_ref().map(Spanned::get_ref),
        );
        let upstream_tls = match raw.tls.as_ref().filter(|_| protocol == Protocol::Http) {
            None => Some(None),
            Some(tls) => self
                .upstream_tls(&format!("{key}.tls"), tls.get_ref())
                .map(Some),
        };
        Some(PoolConfig {
            name: Arc::from(name.get_ref().as_str()),
            protocol,
            http2: raw.http2.as_ref().is_some_and(|h| *h.get_ref()),
            upstream_tls: upstream_tls?,
            proxy_protocol: raw.proxy_protocol.as_ref().map(|p| match p.get_ref() {
                RawProxyVersion::V1 => ProxyProtocol::V1,
                RawProxyVersion::V2 => ProxyProtocol::V2,
            }),
            algorithm,
            backends: backends?,
            connect_timeout: connect_timeout?,
            request_timeout: request_timeout?,
            retries: retries?,
            max_idle_per_backend: max_idle_per_backend?,
            queue: queue?,
            idle_timeout: idle_timeout?,
            slow_start: slow_start?,
            fail_open: raw.fail_open.unwrap_or(false),
            health_check: health_check?,
            passive: passive?,
        })
    }

    /// A positive count up to [`MAX_CONNECTIONS`], or `None` inside when absent.
    fn optional_count(
        &mut self,
        raw: Option<&Spanned<i64>>,
        key: &str,
    ) -> Option<Option<NonZeroUsize>> {
        match raw {
            None => Some(None),
            Some(n) => self
                .int_in(n, key, 1, MAX_CONNECTIONS)
                .map(|n| usize::try_from(n).ok().and_then(NonZeroUsize::new)),
        }
    }

    /// A pool's `max_connections` and the queue settings, which need it.
    fn queue(&mut self, key: &str, raw: &RawPool) -> Option<QueueConfig> {
        let max_connections = self.optional_count(
            raw.max_connections.as_ref(),
            &format!("{key}.max_connections"),
        );
        let backend_caps = raw
            .backends
            .get_ref()
            .iter()
            .any(|backend| backend.get_ref().max_connections.is_some());
        if raw.max_connections.is_none() && !backend_caps {
            self.reject_keys(
                key,
                "pools without max_connections (nothing is queued)",
                &[
                    ("max_queue", raw.max_queue.as_ref().map(Spanned::span)),
                    (
                        "queue_timeout",
                        raw.queue_timeout.as_ref().map(Spanned::span),
                    ),
                ],
            );
        }
        let max_queue = match &raw.max_queue {
            None => Some(defaults::MAX_QUEUE),
            Some(n) => self
                .int_in(n, &format!("{key}.max_queue"), 0, MAX_CONNECTIONS)
                .and_then(|n| usize::try_from(n).ok()),
        };
        let timeout = self.duration(
            raw.queue_timeout.as_ref(),
            &format!("{key}.queue_timeout"),
            defaults::QUEUE_TIMEOUT,
        );
        Some(QueueConfig {
            max_connections: max_connections?,
            max_queue: max_queue?,
            timeout: timeout?,
        })
    }

    fn health_check(
        &mut self,
        key: &str,
        raw: &RawHealthCheck,
        protocol: Protocol,
    ) -> Option<HealthCheckConfig> {
        let interval = self.duration(
            raw.interval.as_ref(),
            &format!("{key}.interval"),
            defaults::CHECK_INTERVAL,
        );
        let timeout = self.duration(
            raw.timeout.as_ref(),
            &format!("{key}.timeout"),
            defaults::CHECK_TIMEOUT,
        );
        let jitter = match &raw.jitter {
            None => interval.map(|interval| interval / 10),
            Some(jitter) => self.duration_or_zero(jitter, &format!("{key}.jitter")),
        };
        if let (Some(interval), Some(timeout), Some(at)) = (interval, timeout, &raw.timeout) {
            if timeout > interval {
                self.report(
                    at,
                    &format!("{key}.timeout"),
                    format!("{timeout:?} is longer than the interval ({interval:?})"),
                );
            }
        }
        let threshold =
            |checker: &mut Self, raw: &Option<Spanned<i64>>, name: &str, default| match raw {
                None => Some(default),
                Some(n) => checker
                    .int_in(n, &format!("{key}.{name}"), 1, 100)
                    .and_then(|n| u32::try_from(n).ok()),
            };
        let healthy_threshold = threshold(
            self,
            &raw.healthy_threshold,
            "healthy_threshold",
            defaults::HEALTHY_THRESHOLD,
        );
        let unhealthy_threshold = threshold(
            self,
            &raw.unhealthy_threshold,
            "unhealthy_threshold",
            defaults::UNHEALTHY_THRESHOLD,
        );
        let kind = match (raw.kind.as_ref().map(|k| *k.get_ref()), protocol) {
            (None, Protocol::Tcp) => Some(CheckKind::Tcp),
            (None | Some(RawCheckKind::Http), _) => self.http_check(key, raw),
            (Some(RawCheckKind::Tcp), _) => {
                for (name, field) in [
                    ("path", raw.path.as_ref()),
                    ("method", raw.method.as_ref()),
                    ("host", raw.host.as_ref()),
                ] {
                    if let Some(field) = field {
                        self.report(
                            field,
                            &format!("{key}.{name}"),
                            "only applies to kind = \"http\" checks",
                        );
                    }
                }
                if let Some(field) = &raw.expect_status {
                    self.report(
                        field,
                        &format!("{key}.expect_status"),
                        "only applies to kind = \"http\" checks",
                    );
                }
                Some(CheckKind::Tcp)
            }
        };
        Some(HealthCheckConfig {
            kind: kind?,
            interval: interval?,
            timeout: timeout?,
            jitter: jitter?,
            healthy_threshold: healthy_threshold?,
            unhealthy_threshold: unhealthy_threshold?,
        })
    }

    fn http_check(&mut self, key: &str, raw: &RawHealthCheck) -> Option<CheckKind> {
        let method = match &raw.method {
            None => Some(http::Method::GET),
            Some(method) => match http::Method::from_bytes(method.get_ref().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    self.report(
                        method,
                        &format!("{key}.method"),
                        format!("{:?} is not an HTTP method", method.get_ref()),
                    );
                    None
                }
            },
        };
        let path = match &raw.path {
            None => Some(http::uri::PathAndQuery::from_static(defaults::CHECK_PATH)),
            Some(path) => match path.get_ref().parse::<http::uri::PathAndQuery>() {
                Ok(p) if p.as_str().starts_with('/') => Some(p),
                _ => {
                    self.report(
                        path,
                        &format!("{key}.path"),
                        format!("{:?} is not a path starting with /", path.get_ref()),
                    );
                    None
                }
            },
        };
        let host = match &raw.host {
            None => Some(None),
            Some(host) => match http::HeaderValue::from_str(host.get_ref()) {
                Ok(value) if !host.get_ref().is_empty() => Some(Some(value)),
                _ => {
                    self.report(
                        host,
                        &format!("{key}.host"),
                        "not a valid Host header value",
                    );
                    None
                }
            },
        };
        let expect = match &raw.expect_status {
            None => Some(StatusSet(vec![200..=399])),
            Some(raw) => self.status_set(raw, &format!("{key}.expect_status")),
        };
        Some(CheckKind::Http {
            method: method?,
            path: path?,
            host: host?,
            expect: expect?,
        })
    }

    fn passive(&mut self, key: &str, raw: Option<&RawPassive>) -> Option<PassiveConfig> {
        let consecutive_failures = match raw.and_then(|r| r.consecutive_failures.as_ref()) {
            None => Some(defaults::CONSECUTIVE_FAILURES),
            Some(n) => self
                .int_in(n, &format!("{key}.consecutive_failures"), 0, 1000)
                .and_then(|n| u32::try_from(n).ok()),
        };
        let ejection_time = self.duration(
            raw.and_then(|r| r.ejection_time.as_ref()),
            &format!("{key}.ejection_time"),
            defaults::EJECTION_TIME,
        );
        let max_ejection_time = self.duration(
            raw.and_then(|r| r.max_ejection_time.as_ref()),
            &format!("{key}.max_ejection_time"),
            defaults::MAX_EJECTION_TIME,
        );
        if let (Some(base), Some(max), Some(at)) = (
            ejection_time,
            max_ejection_time,
            raw.and_then(|r| r.max_ejection_time.as_ref()),
        ) {
            if max < base {
                self.report(
                    at,
                    &format!("{key}.max_ejection_time"),
                    format!("{max:?} is shorter than ejection_time ({base:?})"),
                );
            }
        }
        let max_ejected_percent = match raw.and_then(|r| r.max_ejected_percent.as_ref()) {
            None => Some(defaults::MAX_EJECTED_PERCENT),
            Some(n) => self
                .int_in(n, &format!("{key}.max_ejected_percent"), 0, 100)
                .and_then(|n| u8::try_from(n).ok()),
        };
        let failure_statuses = match raw.and_then(|r| r.failure_statuses.as_ref()) {
            None => Some(StatusSet(vec![502..=504])),
            Some(raw) => self.status_set(raw, &format!("{key}.failure_statuses")),
        };
        Some(PassiveConfig {
            consecutive_failures: consecutive_failures?,
            ejection_time: ejection_time?,
            max_ejection_time: max_ejection_time?,
            max_ejected_percent: max_ejected_percent?,
            failure_statuses: failure_statuses?,
        })
    }

    /// `200`, `"200-399"`, `"200,204,300-302"` or a list of those.
    fn status_set(&mut self, raw: &Spanned<toml::Value>, key: &str) -> Option<StatusSet> {
        let mut ranges = Vec::new();
        let mut parts = Vec::new();
        match raw.get_ref() {
            toml::Value::Array(items) => parts.extend(items.iter()),
            other => parts.push(other),
        }
        for part in parts {
            let text = match part {
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::String(s) => s.clone(),
                _ => String::new(),
            };
            for item in text.split(',').map(str::trim) {
                let (low, high) = item.split_once('-').unwrap_or((item, item));
                match (low.trim().parse::<u16>(), high.trim().parse::<u16>()) {
                    (Ok(low), Ok(high))
                        if (100..=599).contains(&low) && (low..=599).contains(&high) =>
                    {
                        ranges.push(low..=high);
                    }
                    _ => {
                        self.report(
                            raw,
                            key,
                            format!("{item:?} is not a status code or range (e.g. 200, \"200-399\", [200, 204])"),
                        );
                        return None;
                    }
                }
            }
        }
        if ranges.is_empty() {
            self.report(raw, key, "at least one status code is required");
            return None;
        }
        Some(StatusSet(ranges))
    }

    fn backends(
        &mut self,
        pool_key: &str,
        raw: &Spanned<Vec<Spanned<RawBackend>>>,
    ) -> Option<Vec<BackendConfig>> {
        let key = format!("{pool_key}.backends");
        if raw.get_ref().is_empty() {
            self.report(raw, &key, "a pool needs at least one backend");
            return None;
        }
        let mut seen = HashSet::new();
        let mut backends = Vec::with_capacity(raw.get_ref().len());
        let mut ok = true;
        for (index, entry) in raw.get_ref().iter().enumerate() {
            let key = format!("{key}[{index}]");
            let backend = entry.get_ref();
            // The string form has no span of its own; use the entry's.
            let address_at = if backend.address.span().is_empty() {
                Spanned::new(entry.span(), backend.address.get_ref().clone())
            } else {
                backend.address.clone()
            };
            let address_key = if !backend.address.span().is_empty() {
                format!("{key}.address")
            } else {
                key.clone()
            };
            let address = self.address(&address_at, &address_key, false);
            let weight = match &backend.weight {
                None => NonZeroU32::new(1),
                Some(weight) => self
                    .int_in(weight, &format!("{key}.weight"), 1, MAX_WEIGHT)
                    .and_then(|w| u32::try_from(w).ok())
                    .and_then(NonZeroU32::new),
            };
            let max_connections = self.optional_count(
                backend.max_connections.as_ref(),
                &format!("{key}.max_connections"),
            );
            let (Some(address), Some(weight), Some(max_connections)) =
                (address, weight, max_connections)
            else {
                ok = false;
                continue;
            };
            if !seen.insert(address) {
                self.report(
                    &address_at,
                    &address_key,
                    format!("backend {address} is listed twice in this pool"),
                );
                ok = false;
                continue;
            }
            backends.push(BackendConfig {
                name: Arc::from(backend.address.get_ref().as_str()),
                address,
                weight,
                max_connections,
            });
        }
        ok.then_some(backends)
    }

    /// `host:port` → one socket address. Hostnames are resolved now (first address wins).
    fn address(
        &mut self,
        raw: &Spanned<String>,
        key: &str,
        allow_port_zero: bool,
    ) -> Option<SocketAddr> {
        let text = raw.get_ref();
        let invalid = |why: &str| format!("{text:?} is not a valid address ({why})");
        let parsed = match text.parse::<SocketAddr>() {
            Ok(addr) => Ok(addr),
            Err(_) => match text.rsplit_once(':') {
                None => Err(invalid("expected host:port")),
                Some((host, port)) => match port.parse::<u16>() {
                    Err(_) => Err(invalid("port must be a number from 1 to 65535")),
                    Ok(_) if host.is_empty() => Err(invalid("the host is empty")),
                    Ok(_) => match text.to_socket_addrs() {
                        Ok(mut addrs) => addrs
                            .next()
                            .ok_or_else(|| format!("{text:?} did not resolve to any address")),
                        Err(err) => Err(format!("{text:?} could not be resolved: {err}")),
                    },
                },
            },
        };
        match parsed {
            Ok(addr) if addr.port() == 0 && !allow_port_zero => {
                self.report(raw, key, invalid("port must be a number from 1 to 65535"));
                None
            }
            Ok(addr) => Some(addr),
            Err(message) => {
                self.report(raw, key, message);
                None
            }
        }
    }

    fn duration(
        &mut self,
        raw: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(default);
        };
        match self.duration_or_zero(raw, key)? {
            duration if duration.is_zero() => {
                self.report(raw, key, "must be greater than zero");
                None
            }
            duration => Some(duration),
        }
    }

    fn duration_or_zero(&mut self, raw: &Spanned<String>, key: &str) -> Option<Duration> {
        match humantime::parse_duration(raw.get_ref()) {
            Ok(duration) => Some(duration),
            Err(err) => {
                self.report(
                    raw,
                    key,
                    format!(
                        "{:?} is not a valid duration ({err}); write e.g. \"500ms\", \"2s\", \"1m\"",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn int_in(&mut self, raw: &Spanned<i64>, key: &str, min: i64, max: i64) -> Option<i64> {
        let value = *raw.get_ref();
        if (min..=max).contains(&value) {
            Some(value)
        } else {
            self.report(
                raw,
                key,
                format!("{value} is out of range (must be from {min} to {max})"),
            );
            None
        }
    }
}

fn listener_protocol(raw: &RawListener) -> Protocol {
    match raw.protocol.as_ref().map(|p| *p.get_ref()) {
        None | Some(RawProtocol::Http) => Protocol::Http,
        Some(RawProtocol::Tcp) => Protocol::Tcp,
    }
}

#[cfg(test)]
mod tests;
