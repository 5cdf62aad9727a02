//! The immutable runtime snapshot: every pool with its backends and balancer, and which pool
//! serves which listener. A reload builds a new one off the hot path and swaps it in whole.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::backend::Backend;
use crate::config::Config;
use crate::pool::Pool;
use crate::route::Router;

/// The current snapshot, swapped atomically on reload.
pub(crate) type SharedState = Arc<ArcSwap<Snapshot>>;

/// Everything the hot path reads, frozen for one config generation.
#[derive(Debug)]
pub struct Snapshot {
    /// The config this snapshot was built from.
    pub config: Arc<Config>,
    pools: Vec<Arc<Pool>>,
    /// Listener name → its router (routes and fallback pool), in config order.
    routers: Vec<(Arc<str>, Router)>,
}

impl Snapshot {
    /// Builds the snapshot for `config`, reusing the live state of every backend that
    /// `previous` already had (same pool name, same address), and each rate limit whose
    /// listener (or route) and settings are unchanged.
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
        let pool_of = |name: &str| pools.iter().find(|pool| &*pool.name == name).cloned();
        let routers = config
            .listeners
            .iter()
            .map(|listener| {
                let fallback = listener.pool.as_deref().and_then(pool_of);
                let previous = previous.and_then(|p| p.router_for(&listener.name));
                let router = Router::build(listener, previous, fallback, pool_of);
                (Arc::clone(&listener.name), router)
            })
            .collect();
        Snapshot {
            config,
            pools,
            routers,
        }
    }

    /// The router of the listener called `listener`.
    pub(crate) fn router_for(&self, listener: &str) -> Option<&Router> {
        self.routers
            .iter()
            .find(|(name, _)| &**name == listener)
            .map(|(_, router)| router)
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
    /// `idle_timeout` at `now`.
    pub fn reap_idle(&self, now: tokio::time::Instant) {
        for pool in &self.pools {
            for endpoint in pool.endpoints.iter() {
                let backend = &endpoint.backend;
                let closed = backend.idle.reap(now);
                if closed > 0 {
                    tracing::debug!(pool = %pool.name, backend = %backend.name, closed, still_idle = backend.idle.len(), "idle upstream connections swept");
                }
            }
        }
    }
}
