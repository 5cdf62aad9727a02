//! The immutable runtime snapshot: every pool with its backends and balancer, and which pool
//! serves which listener. A reload builds a new one off the hot path and swaps it in whole.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::backend::{Backend, Endpoint};
use crate::balance::Balancer;
use crate::config::{Algorithm, Config, PoolConfig};

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
}

impl Snapshot {
    /// Builds the snapshot for `config`, reusing the live state of every backend that
    /// `previous` already had (same pool name, same address).
    pub fn build(config: Arc<Config>, previous: Option<&Snapshot>) -> Snapshot {
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|pool| Arc::new(Pool::build(pool, previous.and_then(|p| p.pool(&pool.name)))))
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

    /// All pools in config order.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }
}

impl Pool {
    fn build(config: &PoolConfig, previous: Option<&Arc<Pool>>) -> Pool {
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
                    Arc::new(Backend::new(
                        Arc::clone(&config.name),
                        Arc::clone(&backend.name),
                        backend.address,
                        config.max_idle_per_backend,
                        config.idle_timeout,
                    ))
                });
                Endpoint {
                    backend: backend_state,
                    weight: backend.weight,
                }
            })
            .collect();
        Pool {
            name: Arc::clone(&config.name),
            algorithm: config.algorithm,
            endpoints,
            balancer: Balancer::new(config.algorithm),
            settings: PoolSettings {
                connect_timeout: config.connect_timeout,
                request_timeout: config.request_timeout,
                retries: config.retries,
            },
        }
    }
}
