//! A pool's policy for each request: which backend to try next within the retry budget, the
//! queue in front of `max_connections`, fail-open, and passive ejection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Backend, Endpoint, InFlight};
use crate::balance::{Balancer, PeakEwma, Repin, RequestKey, Sticky, Tried};
use crate::config::{
    Algorithm, HealthCheckConfig, PassiveConfig, PoolConfig, ProxyProtocol, QueueConfig,
    UpstreamTlsConfig,
};
use crate::health::{Health, Status, WEIGHT_SCALE};
use crate::http::headers::ClientInfo;
use crate::limit::Waiters;
use crate::metrics::{PoolMetrics, QueueOutcome, RetryOutcome};
use crate::retry_budget::RetryBudget;
use crate::upstream::{Connector, IdleConnections};

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
    /// `consistent_hash` pools: what part of a request is hashed.
    hash_key: Option<RequestKey>,
    /// `[pools.NAME.sticky]`: the cookie pinning clients to backends.
    pub sticky: Option<Sticky>,
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
    /// Requests waiting for room under `max_connections`; the same for every snapshot of the
    /// pool (its backends hold it too, to wake them). The caps live on the backends, so
    /// requests queued under an older snapshot see a reload's new caps.
    pub queue: Arc<Waiters>,
    /// Whether any backend has a cap: without one a request takes no compare-and-swap.
    capped: bool,
    /// Retry, no-backend and fail-open counters.
    pub metrics: PoolMetrics,
    /// Bounds retries by the pool's recent requests; kept by reloads that keep its settings.
    pub(crate) retry_budget: Option<Arc<RetryBudget>>,
}

/// A pool's per-request settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// TCP connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Time from sending a request until the response head.
    pub request_timeout: Duration,
    /// Time one attempt waits for the response head before a replayable request moves on.
    pub try_timeout: Option<Duration>,
    /// Extra attempts on other backends after a failed connect.
    pub retries: u32,
    /// Weight ramp-up time for backends that come back.
    pub slow_start: Option<Duration>,
    /// Use every backend when none is healthy.
    pub fail_open: bool,
    /// HTTP: idle upstream connections older than this are not reused. TCP: proxied
    /// connections idle this long are closed.
    pub idle_timeout: Duration,
    /// The per-backend cap and the queue in front of it.
    pub queue: QueueConfig,
}

/// What one request may spend: its pool's `request_timeout` and `retries`, or its route's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// From sending the request until the response head.
    pub(crate) request_timeout: Duration,
    /// Extra attempts on other backends.
    pub(crate) retries: u32,
}

/// Why a request found no room under its pool's `max_connections`.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue already held `max_queue` requests.
    #[error(
        "every backend of pool {pool} is at max_connections and {max_queue} requests are already queued"
    )]
    Full {
        /// The pool.
        pool: Arc<str>,
        /// Its `max_queue`.
        max_queue: usize,
    },
    /// No room came free within `queue_timeout`.
    #[error(
        "every backend of pool {pool} stayed at max_connections for the queue_timeout of {timeout:?}"
    )]
    Timeout {
        /// The pool.
        pool: Arc<str>,
        /// Its `queue_timeout`.
        timeout: Duration,
    },
}

/// A request's next attempt: the backend and its unit of in-flight count.
pub(crate) type Attempt<'a> = (&'a Arc<Backend>, InFlight);

/// What a look for a backend with room found.
enum Claim {
    /// A backend, its unit already counted.
    Taken(usize, InFlight),
    /// Backends to try exist, but every one is at `max_connections`.
    Full,
    /// Nothing to try: none healthy, or all tried.
    Nothing,
}

impl Pool {
    pub(crate) fn build(
        config: &PoolConfig,
        previous: Option<&Arc<Pool>>,
        reloading: bool,
    ) -> Pool {
        let upstream = (config.http2, config.upstream_tls.clone());
        let queue: Arc<Waiters> =
            previous.map_or_else(Arc::default, |pool| Arc::clone(&pool.queue));
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
                        Arc::clone(&queue),
                        Arc::clone(&backend.name),
                        backend.address,
                        IdleConnections::new(config.max_idle_per_backend, config.idle_timeout),
                        health,
                    ))
                });
                backend_state
                    .set_max_connections(backend.max_connections.or(config.queue.max_connections));
                Endpoint {
                    backend: backend_state,
                    weight: backend.weight,
                }
            })
            .collect::<Box<[Endpoint]>>();
        let balancer = match config.algorithm {
            Algorithm::PeakEwma => Balancer::PeakEwma(PeakEwma::new(config.ewma)),
            Algorithm::ConsistentHash => Balancer::consistent_hash(
                &endpoints,
                config.hash_balance_factor,
                metrics::counter!(crate::metrics::names::HASH_SPILLED, "pool" => config.name.to_string()),
            ),
            algorithm => Balancer::new(algorithm, &endpoints),
        };
        let retry_budget = config.retry_budget.map(|settings| {
            previous
                .and_then(|pool| pool.retry_budget.as_ref())
                .filter(|budget| budget.config == settings)
                .map_or_else(
                    || Arc::new(RetryBudget::new(settings, Instant::now())),
                    Arc::clone,
                )
        });
        let sticky = config
            .sticky
            .as_ref()
            .map(|sticky| Sticky::new(&config.name, sticky, &endpoints));
        Pool {
            name: Arc::clone(&config.name),
            algorithm: config.algorithm,
            endpoints,
            balancer,
            hash_key: config.hash_key.clone().map(RequestKey::new),
            sticky,
            settings: PoolSettings {
                connect_timeout: config.connect_timeout,
                request_timeout: config.request_timeout,
                try_timeout: config.try_timeout,
                retries: config.retries,
                slow_start: config.slow_start,
                fail_open: config.fail_open,
                idle_timeout: config.idle_timeout,
                queue: config.queue,
            },
            proxy_protocol: config.proxy_protocol,
            access_log: false,
            connector: Connector::for_pool(config),
            upstream,
            passive: config.passive.clone(),
            health_check: config.health_check.clone().map(Arc::new),
            failing_open: AtomicBool::new(false),
            queue,
            capped: config.queue.max_connections.is_some()
                || config.backends.iter().any(|b| b.max_connections.is_some()),
            metrics: PoolMetrics::new(&config.name),
            retry_budget,
        }
    }

    /// The `http2` and TLS settings its connector was built from; health checkers are
    /// restarted when a reload changes them.
    pub(crate) fn upstream_settings(&self) -> &(bool, Option<UpstreamTlsConfig>) {
        &self.upstream
    }

    /// What a request may spend here unless its route says otherwise.
    pub(crate) fn budget(&self) -> Budget {
        Budget {
            request_timeout: self.settings.request_timeout,
            retries: self.settings.retries,
        }
    }

    /// What the balancer needs of an HTTP request (its head as the client sent it): its hash
    /// key and sticky pin, when the pool uses them. Other pools pay one branch each.
    pub(crate) fn selection(
        &self,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        client: &ClientInfo,
    ) -> Tried {
        if self.hash_key.is_none() && self.sticky.is_none() {
            return Tried::default();
        }
        let key = self
            .hash_key
            .as_ref()
            .and_then(|key| key.hash(uri, headers, &client.ip));
        let pinned = self
            .sticky
            .as_ref()
            .and_then(|sticky| sticky.pinned(headers));
        Tried::new(key, pinned, client.proto.as_bytes() == b"https")
    }

    /// [`Pool::selection`] for a TCP connection from `client`: its IP is the only key.
    pub(crate) fn connection_selection(&self, client: std::net::IpAddr) -> Tried {
        match self.hash_key {
            Some(_) => Tried::new(Some(crate::balance::ip_hash(client)), None, false),
            None => Tried::default(),
        }
    }

    /// Adds the sticky cookie to a response when the backend that answered (the last one in
    /// `tried`) is not the one the request's cookie named.
    pub(crate) fn pin(&self, tried: &Tried, headers: &mut http::HeaderMap) {
        let (Some(sticky), Some(served)) = (&self.sticky, tried.last()) else {
            return;
        };
        let why = match tried.pinned() {
            Some(pinned) if pinned == served => return,
            Some(_) => Repin::Moved,
            None => Repin::New,
        };
        if let Some(cookie) = sticky.pin(served, tried.secure(), why) {
            tracing::debug!(pool = %self.name, backend = %self.endpoints[served].backend.name, reason = ?why, "sticky: client pinned to backend");
            headers.append(http::header::SET_COOKIE, cookie);
        }
    }

    /// The backend for a request's next attempt, within `retries` extra attempts, with its unit
    /// of in-flight count: picked as by [`Pool::pick`], added to `tried`, and counted as a
    /// retry unless it is the first. `Ok(None)` when nothing is left to try.
    ///
    /// With `max_connections`, only backends below their cap are picked; when every one is at
    /// it the request waits in the pool's queue (at most `max_queue` of them, each for at most
    /// `queue_timeout`) and takes the first room any backend gives back.
    pub async fn next_attempt(
        &self,
        tried: &mut Tried,
        retries: u32,
    ) -> Result<Option<Attempt<'_>>, QueueError> {
        if tried.len() > retries as usize {
            return Ok(None);
        }
        if let Some(budget) = self.retry_budget.as_ref().filter(|_| tried.is_empty()) {
            budget.deposit(Instant::now());
        }
        if !self.capped {
            let Some(index) = self.pick(tried) else {
                return Ok(None);
            };
            if !self.budget_allows(tried) {
                return Ok(None);
            }
            let in_flight = self.endpoints[index].backend.start_request();
            return Ok(Some(self.attempt(index, in_flight, tried)));
        }
        let (index, in_flight) = match self.claim(tried) {
            Claim::Taken(index, in_flight) if self.budget_allows(tried) => (index, in_flight),
            Claim::Full if self.budget_allows(tried) => match self.wait_in_queue(tried).await? {
                Some(taken) => taken,
                None => return Ok(None),
            },
            Claim::Taken(..) | Claim::Full | Claim::Nothing => return Ok(None),
        };
        Ok(Some(self.attempt(index, in_flight, tried)))
    }

    /// Whether the retry budget lets a request that already tried `tried` try again (asked
    /// only once a backend to retry on exists, so `budget` counts only retries that were
    /// possible). First attempts are always allowed.
    fn budget_allows(&self, tried: &Tried) -> bool {
        let Some(budget) = self.retry_budget.as_ref().filter(|_| !tried.is_empty()) else {
            return true;
        };
        let allowed = budget.allows(&self.name, Instant::now());
        if !allowed {
            self.metrics.retry(RetryOutcome::Budget);
        }
        allowed
    }

    /// Records the attempt on the backend at `index` in `tried` (and as a retry if it is one).
    fn attempt(&self, index: usize, in_flight: InFlight, tried: &mut Tried) -> Attempt<'_> {
        if !tried.is_empty() {
            self.metrics.retry(RetryOutcome::Attempted);
            if let Some(budget) = &self.retry_budget {
                budget.withdraw(Instant::now());
            }
        }
        tried.push(index);
        (&self.endpoints[index].backend, in_flight)
    }

    /// A backend below its cap with its unit counted, if there is one.
    fn claim(&self, tried: &Tried) -> Claim {
        // A pick sees a backend with room that a racing request may fill first; look again a
        // few times before calling the pool full.
        for _ in 0..4 {
            let Some(index) = self.pick_below(tried, true) else {
                break;
            };
            if let Some(in_flight) = self.endpoints[index].backend.try_start_request() {
                return Claim::Taken(index, in_flight);
            }
        }
        // Full if a backend left to try could take the request once it has room: a healthy
        // one, or any one while the pool fails open.
        let failing_open = self.settings.fail_open && !self.any_available();
        let waiting_for_room = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(index, _)| !tried.contains(*index))
            .any(|(_, endpoint)| failing_open || endpoint.backend.health.is_available());
        if waiting_for_room {
            Claim::Full
        } else {
            Claim::Nothing
        }
    }

    /// Waits in the queue for a backend below its cap, which a reload may change meanwhile.
    /// `Ok(None)`: while waiting, every backend left to try went down.
    async fn wait_in_queue(&self, tried: &Tried) -> Result<Option<(usize, InFlight)>, QueueError> {
        let settings = self.settings.queue;
        if self.queue.waiting() >= settings.max_queue {
            self.metrics.queue_outcome(QueueOutcome::Full);
            return Err(QueueError::Full {
                pool: Arc::clone(&self.name),
                max_queue: settings.max_queue,
            });
        }
        let _queued = self.metrics.queued();
        let deadline = Instant::now() + settings.timeout;
        let found = self
            .queue
            .wait_for(
                || match self.claim(tried) {
                    Claim::Taken(index, in_flight) => Some(Some((index, in_flight))),
                    Claim::Nothing => Some(None),
                    Claim::Full => None,
                },
                Some(deadline),
            )
            .await;
        match found {
            Some(found) => {
                self.metrics.queue_outcome(QueueOutcome::Served);
                Ok(found)
            }
            None => {
                self.metrics.queue_outcome(QueueOutcome::Timeout);
                Err(QueueError::Timeout {
                    pool: Arc::clone(&self.name),
                    timeout: settings.timeout,
                })
            }
        }
    }

    /// Picks a healthy backend not in `tried`, at its effective (slow-start) weight. With no
    /// healthy backend at all and `fail_open`, picks among all of them instead.
    pub fn pick(&self, tried: &Tried) -> Option<usize> {
        self.pick_below(tried, false)
    }

    /// [`Pool::pick`], among the backends below their cap only if `capped`.
    fn pick_below(&self, tried: &Tried, capped: bool) -> Option<usize> {
        let slow_start = self.settings.slow_start;
        let has_room = |backend: &Backend| !capped || backend.has_room();
        let healthy = self.balancer.pick(&self.endpoints, tried, |_, endpoint| {
            let health = &endpoint.backend.health;
            (health.is_available() && has_room(&endpoint.backend))
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
        let picked = self.balancer.pick(&self.endpoints, tried, |_, endpoint| {
            has_room(&endpoint.backend).then(|| u64::from(endpoint.weight.get()) * WEIGHT_SCALE)
        });
        if picked.is_some() {
            // Counted per pick made, not per look: a queued request looks again and again.
            self.metrics.fail_open.increment(1);
        }
        picked
    }

    /// Whether the algorithm learns from latencies (`peak_ewma`): only then are they measured.
    pub(crate) fn latency_aware(&self) -> bool {
        matches!(self.balancer, Balancer::PeakEwma(_))
    }

    /// `peak_ewma`: a response head (or TCP connect) from `backend` that took `latency`,
    /// arriving at `now`. Other algorithms ignore it.
    pub(crate) fn record_latency(&self, backend: &Backend, latency: Duration, now: Instant) {
        if let Balancer::PeakEwma(ewma) = &self.balancer {
            ewma.observe(backend, latency, now);
        }
    }

    /// `peak_ewma`: a failed attempt on `backend` that ran for `elapsed` (zero when unknown)
    /// under a timeout of `cap`, counted as a latency penalty so a backend that fails fast
    /// does not attract traffic. Other algorithms ignore it.
    pub(crate) fn record_latency_failure(
        &self,
        backend: &Backend,
        elapsed: Duration,
        cap: Duration,
    ) {
        if let Balancer::PeakEwma(ewma) = &self.balancer {
            let now = Instant::now();
            ewma.penalize(backend, elapsed, cap, now);
            let estimate_ms = ewma.estimate(backend, now) / 1e6;
            tracing::debug!(pool = %self.name, backend = %backend.name, estimate_ms, "failure counted as a latency penalty");
        }
    }

    /// `peak_ewma`: the backend's latency estimate now, in milliseconds (for `/status`).
    pub(crate) fn latency_estimate_ms(&self, backend: &Backend) -> Option<f64> {
        match &self.balancer {
            Balancer::PeakEwma(ewma) => Some(ewma.estimate(backend, Instant::now()) / 1e6),
            _ => None,
        }
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
        backend.transitioned(&transition, backend.health.last_error().as_deref());
        let backend = Arc::clone(backend);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(transition) = backend.health.end_ejection() {
                backend.transitioned(&transition, None);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::snapshot::Snapshot;

    fn snapshot(pool_extra: &str) -> Arc<Snapshot> {
        let source = format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
             [pools.app]\nbackends = [\"127.0.0.1:3001\", \"127.0.0.1:3002\"]\n{pool_extra}\n"
        );
        let config = Config::parse("t.toml", &source).expect("valid");
        Arc::new(Snapshot::build(Arc::new(config), None))
    }

    fn pool(snapshot: &Snapshot) -> &Arc<Pool> {
        snapshot.pool("app").expect("pool app")
    }

    /// Runs one request's first attempt on a task of its own; yields the in-flight guard.
    fn attempt(
        snapshot: &Arc<Snapshot>,
    ) -> tokio::task::JoinHandle<Result<Option<InFlight>, QueueError>> {
        let snapshot = Arc::clone(snapshot);
        tokio::spawn(async move {
            let mut tried = Tried::default();
            let pool = pool(&snapshot);
            let attempt = pool.next_attempt(&mut tried, pool.settings.retries).await?;
            Ok(attempt.map(|(_, in_flight)| in_flight))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn queued_requests_take_units_as_they_are_given_back_or_time_out() {
        let snapshot = snapshot("max_connections = 1\nqueue_timeout = \"2s\"");
        let first = attempt(&snapshot).await.expect("task").expect("room");
        let second = attempt(&snapshot).await.expect("task").expect("room");
        let (first, second) = (first.expect("a backend"), second.expect("a backend"));
        assert!(!Arc::ptr_eq(first.backend(), second.backend()), "one each");

        let queued = attempt(&snapshot);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!queued.is_finished());
        assert_eq!(pool(&snapshot).queue.waiting(), 1);
        let freed = Arc::clone(second.backend());
        drop(second);
        let third = queued
            .await
            .expect("task")
            .expect("room")
            .expect("a backend");
        assert!(Arc::ptr_eq(third.backend(), &freed), "the unit given back");

        let started = Instant::now();
        let timed_out = attempt(&snapshot).await.expect("task");
        assert!(
            matches!(timed_out, Err(QueueError::Timeout { .. })),
            "{timed_out:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(pool(&snapshot).queue.waiting(), 0);
        drop((first, third));
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_backend_up_a_capped_pool_answers_at_once_instead_of_queueing() {
        // Active checks: backends start down until their first check passes.
        let snapshot = snapshot("max_connections = 1\n[pools.app.health_check]\nkind = \"tcp\"");
        let started = Instant::now();
        let result = attempt(&snapshot).await.expect("task");
        assert!(matches!(result, Ok(None)), "{result:?}");
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn max_queue_zero_turns_requests_away_without_waiting() {
        let snapshot = snapshot("max_connections = 1\nmax_queue = 0");
        let held: Vec<_> = [attempt(&snapshot), attempt(&snapshot)]
            .into_iter()
            .collect();
        let mut guards = Vec::new();
        for task in held {
            guards.push(task.await.expect("task").expect("room"));
        }
        let result = attempt(&snapshot).await.expect("task");
        assert!(
            matches!(result, Err(QueueError::Full { max_queue: 0, .. })),
            "{result:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_that_raises_the_cap_lets_queued_requests_in_at_once() {
        let old = snapshot("max_connections = 1");
        let held = [attempt(&old), attempt(&old)];
        let mut guards = Vec::new();
        for task in held {
            guards.push(task.await.expect("task").expect("room"));
        }
        let queued = attempt(&old);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!queued.is_finished());
        let config = Config::parse(
            "t.toml",
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
             [pools.app]\nbackends = [\"127.0.0.1:3001\", \"127.0.0.1:3002\"]\nmax_connections = 2\n",
        )
        .expect("valid");
        let new = Snapshot::build(Arc::new(config), Some(&old));
        pool(&new).queue.recheck();
        let let_in = queued.await.expect("task").expect("room");
        assert!(
            let_in.is_some(),
            "the request queued under the old snapshot got room"
        );
        assert_eq!(guards.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backends_own_cap_overrides_the_pools() {
        let source = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
             [pools.app]\nmax_connections = 3\nbackends = [\"127.0.0.1:3001\", \
             { address = \"127.0.0.1:3002\", max_connections = 1 }]\n";
        let config = Config::parse("t.toml", source).expect("valid");
        let snapshot = Arc::new(Snapshot::build(Arc::new(config), None));
        let mut guards = Vec::new();
        for _ in 0..4 {
            guards.push(
                attempt(&snapshot)
                    .await
                    .expect("task")
                    .expect("room")
                    .expect("a backend"),
            );
        }
        let on = |port: u16| {
            guards
                .iter()
                .filter(|guard| guard.backend().address.port() == port)
                .count()
        };
        assert_eq!((on(3001), on(3002)), (3, 1));
        let queued = attempt(&snapshot);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!queued.is_finished(), "both backends are at their caps");
        drop(guards);
        assert!(queued.await.expect("task").expect("room").is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_contention_the_cap_holds_and_every_queued_request_is_served() {
        let snapshot = snapshot("max_connections = 3\nqueue_timeout = \"30s\"");
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let snapshot = Arc::clone(&snapshot);
                let peak = Arc::clone(&peak);
                tokio::spawn(async move {
                    for round in 0..20 {
                        let mut tried = Tried::default();
                        let pool = pool(&snapshot);
                        let (backend, in_flight) = pool
                            .next_attempt(&mut tried, pool.settings.retries)
                            .await
                            .expect("room within the timeout")
                            .expect("a backend");
                        peak.fetch_max(backend.in_flight(), Ordering::SeqCst);
                        if (i + round) % 4 == 0 {
                            tokio::time::sleep(Duration::from_micros(100)).await;
                        } else {
                            tokio::task::yield_now().await;
                        }
                        drop(in_flight);
                    }
                })
            })
            .collect();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("every request finishes")
                .expect("task");
        }
        assert!(
            peak.load(Ordering::SeqCst) <= 3,
            "peak {}",
            peak.load(Ordering::SeqCst)
        );
        assert_eq!(pool(&snapshot).queue.waiting(), 0);
        for endpoint in pool(&snapshot).endpoints.iter() {
            assert_eq!(endpoint.backend.in_flight(), 0);
        }
    }
}
