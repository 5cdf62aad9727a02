//! The immutable runtime snapshot: every pool with its backends and balancer, and which pool
//! serves which listener. A reload builds a new one off the hot path and swaps it in whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::backend::{Backend, Endpoint};
use crate::balance::{Balancer, Tried};
use crate::config::{
    Algorithm, Config, HealthCheckConfig, PassiveConfig, PoolConfig, ProxyProtocol,
    UpstreamTlsConfig,
};
use crate::health::{self, Health, Status, WEIGHT_SCALE};
use crate::metrics::PoolMetrics;
use crate::proxy::client::Connector;

/// The current snapshot, swapped atomically on reload.
pub type SharedState = Arc<ArcSwap<Snapshot>>;

/// Everything the hot path reads, frozen for one config generation.
#[derive(Debug)]
pub struct Snapshot {
    /// The config this snapshot was built from.
    pub config: Arc<Config>,
    pools: Vec<Arc<Pool>>,
    /// Listener name → pool, in config order.
    routes: Vec<(Arc<str>, Arc<Pool>)>,
}

/// A pool of backends as one snapshot sees it.
#[derive(Debug)]
pub struct Pool {
    /// The pool's name.
    pub name: Arc<str>,
    /// The configured algorithm.
    pub algorithm: Algorithm,
    /// The backends with this snapshot's weights; never empty.
    pub endpoints: Box<[Endpoint]>,
    /// Selection state.
    pub balancer: Balancer,
    /// Timeouts and retry budget.
    pub settings: PoolSettings,
    /// Passive ejection rules.
    pub passive: PassiveConfig,
    /// Active checks, shared with the checker tasks.
    pub health_check: Option<Arc<HealthCheckConfig>>,
    /// TCP pools: the PROXY protocol header to send to backends.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Log one line per request served by this pool (`[log] access`).
    pub access_log: bool,
    /// HTTP pools: how connections to the backends are made (HTTP/2, TLS).
    pub connector: Connector,
    /// The settings `connector` was built from, to tell whether a reload changed them.
    upstream: (bool, Option<UpstreamTlsConfig>),
    /// Set while the pool serves fail-open, so the switch is logged once.
    failing_open: AtomicBool,
    /// Retry, no-backend and fail-open counters.
    pub metrics: PoolMetrics,
}

/// A pool's per-request settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// TCP connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Time from sending a request until the response head.
    pub request_timeout: Duration,
    /// Extra attempts on other backends after a failed connect.
    pub retries: u32,
    /// Weight ramp-up time for backends that come back.
    pub slow_start: Option<Duration>,
    /// Use every backend when none is healthy.
    pub fail_open: bool,
    /// HTTP: idle upstream connections older than this are not reused. TCP: proxied
    /// connections idle this long are closed.
    pub idle_timeout: Duration,
}

impl Snapshot {
    /// Builds the snapshot for `config`, reusing the live state of every backend that
    /// `previous` already had (same pool name, same address).
    pub fn build(config: Arc<Config>, previous: Option<&Snapshot>) -> Snapshot {
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|pool| {
                let previous_pool = previous.and_then(|p| p.pool(&pool.name));
                let mut built = Pool::build(pool, previous_pool, previous.is_some());
                built.access_log = config.access_log;
                Arc::new(built)
            })
            .collect();
        let routes = config
            .listeners
            .iter()
            .filter_map(|listener| {
                let pool = pools.iter().find(|pool| pool.name == listener.pool)?;
                Some((Arc::clone(&listener.name), Arc::clone(pool)))
            })
            .collect();
        Snapshot {
            config,
            pools,
            routes,
        }
    }

    /// The pool serving the listener called `listener`.
    pub fn pool_for(&self, listener: &str) -> Option<&Arc<Pool>> {
        self.routes
            .iter()
            .find(|(name, _)| &**name == listener)
            .map(|(_, pool)| pool)
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|pool| &*pool.name == name)
    }

    /// Whether this snapshot still routes to `backend` (the same live state, not just the same
    /// address).
    pub fn contains_backend(&self, backend: &Arc<Backend>) -> bool {
        self.pool(&backend.pool).is_some_and(|pool| {
            pool.endpoints
                .iter()
                .any(|endpoint| Arc::ptr_eq(&endpoint.backend, backend))
        })
    }

    /// All pools in config order.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Closes every backend's upstream connections that have been idle for their pool's
    /// `idle_timeout` at `now`, and frees the read buffers of those idle for a second.
    pub fn reap_idle(&self, now: tokio::time::Instant) {
        for pool in &self.pools {
            for endpoint in pool.endpoints.iter() {
                let backend = &endpoint.backend;
                let (closed, buffers_freed) = backend.idle.reap(now);
                if closed + buffers_freed > 0 {
                    tracing::debug!(pool = %pool.name, backend = %backend.name, closed, buffers_freed, still_idle = backend.idle.len(), "idle upstream connections swept");
                }
            }
        }
    }
}

/// The connector for a pool's settings. If the CA file broke since validation, TLS is kept
/// with no trusted roots, so connections fail verification rather than skip it.
fn connector(config: &PoolConfig) -> Connector {
    let tls = config.upstream_tls.as_ref().map(|upstream| {
        if upstream.insecure_skip_verify {
            tracing::warn!(pool = %config.name, "insecure_skip_verify: backend certificates are not verified");
        }
        let client = crate::tls::client_config(upstream, config.http2).unwrap_or_else(|err| {
            tracing::error!(pool = %config.name, error = %err, "upstream TLS setup failed; connections will fail verification");
            Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map(|builder| {
                    builder
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                })
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                }),
            )
        });
        let server_name = upstream
            .server_name
            .as_ref()
            .and_then(|name| rustls_pki_types::ServerName::try_from(name.clone()).ok());
        (tokio_rustls::TlsConnector::from(client), server_name)
    });
    Connector {
        timeout: config.connect_timeout,
        http2: config.http2,
        tls,
    }
}

impl Pool {
    fn build(config: &PoolConfig, previous: Option<&Arc<Pool>>, reloading: bool) -> Pool {
        let upstream = (config.http2, config.upstream_tls.clone());
        // Idle connections of kept backends speak the old protocol if that changed.
        if let Some(pool) = previous.filter(|pool| pool.upstream != upstream) {
            for endpoint in pool.endpoints.iter() {
                endpoint.backend.idle.clear();
            }
        }
        let endpoints = config
            .backends
            .iter()
            .map(|backend| {
                let existing = previous.and_then(|pool| {
                    pool.endpoints
                        .iter()
                        .find(|e| e.backend.address == backend.address)
                        .map(|e| Arc::clone(&e.backend))
                });
                let backend_state = existing.unwrap_or_else(|| {
                    // A backend added by a reload joins under slow start; at start-up all
                    // backends are new, so none is favoured.
                    let health = Health::new(config.health_check.is_some(), reloading);
                    Arc::new(Backend::new(
                        Arc::clone(&config.name),
                        Arc::clone(&backend.name),
                        backend.address,
                        (config.max_idle_per_backend, config.idle_timeout),
                        health,
                    ))
                });
                Endpoint {
                    backend: backend_state,
                    weight: backend.weight,
                }
            })
            .collect::<Box<[Endpoint]>>();
        let balancer = Balancer::new(config.algorithm, &endpoints);
        Pool {
            name: Arc::clone(&config.name),
            algorithm: config.algorithm,
            endpoints,
            balancer,
            settings: PoolSettings {
                connect_timeout: config.connect_timeout,
                request_timeout: config.request_timeout,
                retries: config.retries,
                slow_start: config.slow_start,
                fail_open: config.fail_open,
                idle_timeout: config.idle_timeout,
            },
            proxy_protocol: config.proxy_protocol,
            access_log: false,
            connector: connector(config),
            upstream,
            passive: config.passive.clone(),
            health_check: config.health_check.clone().map(Arc::new),
            failing_open: AtomicBool::new(false),
            metrics: PoolMetrics::new(&config.name),
        }
    }

    /// The backend for a request's next attempt, within the pool's retry budget: picked as by
    /// [`Pool::pick`], added to `tried`, and counted as a retry unless it is the first.
    pub fn next_attempt(&self, tried: &mut Tried) -> Option<&Arc<Backend>> {
        if tried.len() > self.settings.retries as usize {
            return None;
        }
        let index = self.pick(tried)?;
        if !tried.is_empty() {
            self.metrics.retries.increment(1);
        }
        tried.push(index);
        self.endpoints.get(index).map(|endpoint| &endpoint.backend)
    }

    /// Picks a healthy backend not in `tried`, at its effective (slow-start) weight. With no
    /// healthy backend at all and `fail_open`, picks among all of them instead.
    pub fn pick(&self, tried: &Tried) -> Option<usize> {
        let slow_start = self.settings.slow_start;
        let healthy = self.balancer.pick(&self.endpoints, tried, |_, endpoint| {
            let health = &endpoint.backend.health;
            health
                .is_available()
                .then(|| health.effective_weight(endpoint.weight.get(), slow_start))
        });
        if healthy.is_some() || !self.settings.fail_open {
            return healthy;
        }
        if self
            .endpoints
            .iter()
            .any(|endpoint| endpoint.backend.health.is_available())
        {
            // Healthy backends exist; they were just all tried already.
            return None;
        }
        if !self.failing_open.swap(true, Ordering::Relaxed) {
            tracing::warn!(pool = %self.name, "no healthy backend: failing open to all backends");
        }
        self.metrics.fail_open.increment(1);
        self.balancer.pick(&self.endpoints, tried, |_, endpoint| {
            Some(u64::from(endpoint.weight.get()) * WEIGHT_SCALE)
        })
    }

    /// Whether any backend is healthy; clears the fail-open flag when one is.
    pub fn any_available(&self) -> bool {
        let available = self
            .endpoints
            .iter()
            .any(|endpoint| endpoint.backend.health.is_available());
        if available && self.failing_open.swap(false, Ordering::Relaxed) {
            tracing::info!(pool = %self.name, "a backend is healthy again: fail-open ended");
        }
        available
    }

    /// Counts a failed exchange against `backend` and ejects it when the passive rules say so,
    /// unless that would take out more than `max_ejected_percent` of the pool. (Two ejections
    /// racing may both pass the check; the limit is a guard rail, not a lock.)
    pub fn record_failure(&self, backend: &Arc<Backend>, error: &dyn std::fmt::Display) {
        if !backend.health.record_failure(error, &self.passive) {
            return;
        }
        let limit = usize::from(self.passive.max_ejected_percent) * self.endpoints.len();
        if (self.ejected_count() + 1) * 100 > limit {
            tracing::debug!(pool = %self.name, backend = %backend.name, "not ejecting: max_ejected_percent reached");
            return;
        }
        let Some((transition, until)) = backend.health.eject(&self.passive) else {
            return;
        };
        backend.metrics.ejected();
        health::log_transition(
            &self.name,
            &backend.name,
            &transition,
            backend.health.last_error().as_deref(),
        );
        let backend = Arc::clone(backend);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(transition) = backend.health.end_ejection() {
                health::log_transition(&backend.pool, &backend.name, &transition, None);
            }
        });
    }

    /// Seconds until a retry might find a backend (`Retry-After`): one check interval, or one
    /// ejection time.
    pub fn retry_after(&self) -> u64 {
        let wait = self
            .health_check
            .as_ref()
            .map_or(self.passive.ejection_time, |check| check.interval);
        wait.as_secs().max(1)
    }

    /// How many backends passive ejection currently holds out.
    pub fn ejected_count(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|endpoint| endpoint.backend.health.status() == Status::Ejected)
            .count()
    }
}
