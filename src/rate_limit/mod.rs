//! Per-client rate limits: GCRA (the `governor` crate) per key, one limiter per listener and
//! per route that configures one.
//!
//! A limiter lives in the snapshot's router, so it lives as long as its listener (or route)
//! does; a reload that leaves its settings alone hands the same limiter, with its buckets, to
//! the new snapshot. Each limiter has a sweeper task that forgets keys whose bucket is full
//! again (`retain_recent`: such a key is indistinguishable from a new one) and gives the
//! table's memory back (`shrink_to_fit`), so a flood of spoofed addresses cannot grow memory
//! beyond what one refill time of traffic holds. The task holds only a weak reference and ends
//! with the limiter.
//!
//! The limiter's clock is tokio's, so tests can pause time.

mod key;

use std::fmt;
use std::hash::RandomState;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::Quota;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use http::HeaderMap;

use crate::config::RateLimitConfig;
use crate::metrics::RateLimitMetrics;
pub(crate) use key::Key;

/// Shortest time between two sweeps of a limiter's table.
const MIN_SWEEP: Duration = Duration::from_secs(1);
/// Longest time between two sweeps: a key is forgotten at most this long after it could be.
const MAX_SWEEP: Duration = Duration::from_secs(60);

/// A request (or connection) refused: how long until the key may send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    /// Whole seconds, rounded up, at least 1: the `Retry-After` value.
    pub(crate) retry_after: u64,
}

/// Time since the limiter was made, on tokio's clock (paused in tests).
#[derive(Debug, Clone, Copy)]
struct TokioClock {
    origin: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        // 584 years of uptime before this saturates.
        Nanos::new(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

type Gcra = governor::RateLimiter<Key, DashMapStateStore<Key>, TokioClock, NoOpMiddleware<Nanos>>;

/// One rate limit: its settings, buckets and series.
pub(crate) struct RateLimiter {
    config: RateLimitConfig,
    limiter: Gcra,
    /// Hashes header values into keys.
    seed: RandomState,
    metrics: RateLimitMetrics,
    listener: Arc<str>,
    /// `None`: the listener's own limit.
    route: Option<Arc<str>>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("listener", &self.listener)
            .field("route", &self.route)
            .field("config", &self.config)
            .field("tracked_keys", &self.tracked_keys())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// The limiter for `config` of `route` on `listener` (`None`: the listener's own): the
    /// `previous` one, buckets and all, when its settings are the same, else a new one with
    /// its sweeper (when called on a tokio runtime).
    pub(crate) fn carry(
        config: &RateLimitConfig,
        previous: Option<&Arc<RateLimiter>>,
        listener: &Arc<str>,
        route: Option<&Arc<str>>,
    ) -> Arc<RateLimiter> {
        if let Some(previous) = previous.filter(|previous| previous.config == *config) {
            tracing::debug!(listener = %listener, route = route.map_or("-", |r| &**r), tracked_keys = previous.tracked_keys(), "rate limit unchanged; buckets kept");
            return Arc::clone(previous);
        }
        let limiter = Arc::new(RateLimiter::new(config, listener, route));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&limiter), limiter.sweep_period()));
        }
        limiter
    }

    fn new(config: &RateLimitConfig, listener: &Arc<str>, route: Option<&Arc<str>>) -> Self {
        // Validation keeps the interval at 1 ns or more (`with_period` refuses only zero) and
        // interval × burst within a year, far from the overflow of governor's nanoseconds.
        let quota = Quota::with_period(config.interval)
            .unwrap_or_else(|| Quota::per_second(config.burst))
            .allow_burst(config.burst);
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        RateLimiter {
            config: config.clone(),
            limiter: governor::RateLimiter::new(quota, DashMapStateStore::default(), clock),
            seed: RandomState::new(),
            metrics: RateLimitMetrics::new(listener, route.map(|r| &**r)),
            listener: Arc::clone(listener),
            route: route.cloned(),
        }
    }

    /// Counts one request from socket peer `peer` against its key; `Err` when over the limit
    /// (counted and logged at debug, never louder: a flood must not flood the log).
    pub(crate) fn check_request(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), Refused> {
        let key = key::of_request(
            &self.config.key,
            &self.config.trusted_proxies,
            &self.seed,
            peer,
            headers,
        );
        self.check(key)
    }

    /// Counts one connection from `client` (the PROXY protocol source or the socket peer).
    pub(crate) fn check_connection(&self, client: IpAddr) -> Result<(), Refused> {
        self.check(Key::Ip(client.to_canonical()))
    }

    fn check(&self, key: Key) -> Result<(), Refused> {
        let Err(not_until) = self.limiter.check_key(&key) else {
            return Ok(());
        };
        let wait = not_until.wait_time_from(self.limiter.clock().now());
        let retry_after = retry_after_seconds(wait);
        self.metrics.refused.increment(1);
        let route = self.route.as_deref().unwrap_or("-");
        match key {
            Key::Ip(client) => {
                tracing::debug!(listener = %self.listener, route, client = %client, retry_after, "rate limited");
            }
            // The value may be a secret (an API key): only the header's name is logged.
            Key::Header(_) => {
                tracing::debug!(listener = %self.listener, route, key = %self.config.key, retry_after, "rate limited");
            }
        }
        Err(Refused { retry_after })
    }

    /// Its settings.
    pub(crate) fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Keys in its table now (some may be full again and due for the next sweep).
    pub(crate) fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }

    /// How often the sweeper runs: the time an empty bucket takes to refill (after which an
    /// unused key is forgettable), within [`MIN_SWEEP`]..=[`MAX_SWEEP`].
    fn sweep_period(&self) -> Duration {
        self.config
            .interval
            .saturating_mul(self.config.burst.get())
            .clamp(MIN_SWEEP, MAX_SWEEP)
    }

    /// Forgets the keys whose bucket is full again (governor waits one more interval to be
    /// sure) and releases the table's spare memory.
    fn sweep_once(&self) {
        let before = self.limiter.len();
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let after = self.limiter.len();
        self.metrics.keys.set(after as f64);
        if before != after {
            tracing::debug!(listener = %self.listener, route = self.route.as_deref().unwrap_or("-"), forgotten = before - after.min(before), tracked_keys = after, "rate limit keys swept");
        }
    }
}

/// The sweeper of one limiter: runs every `period` until the limiter is dropped.
async fn sweep(limiter: Weak<RateLimiter>, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        limiter.sweep_once();
    }
}

/// `Retry-After` for a wait of `wait`: whole seconds, rounded up, at least 1 (RFC 9110 §10.2.3
/// has no fractions, and 0 would invite an immediate retry that is refused again).
fn retry_after_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(test)]
mod tests;
