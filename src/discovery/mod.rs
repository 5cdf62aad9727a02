//! DNS service discovery: pools whose backends are the A/AAAA or SRV records of a name.
//!
//! One task per `discover` pool looks its name up with hickory-resolver ([`lookup`]), again
//! when the records' TTL runs out (clamped to `[refresh, 5 min]`), and the [`tracker`] decides
//! what the answer does to the pool's set. The sets live in the [`Registry`]; when one changes
//! the server rebuilds its snapshot from the config with the sets merged in, through the path
//! a reload takes (`reload/discovery.rs`), so a discovered backend has its own health,
//! in-flight count, idle connections and slow start, kept while its address stays and
//! drained when it goes.

mod lookup;
mod tracker;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_resolver::TokioResolver;
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{BackendConfig, Config, DiscoverConfig, DiscoverTarget, DnsConfig};
use crate::metrics::names;
use lookup::{Answer, Failure, Found};
use tracker::{Tracker, Verdict};

/// The resolver every task of one `[dns]` config shares, or why there is none.
type SharedResolver = Arc<Result<Arc<TokioResolver>, String>>;

/// The discovered sets and what the last lookups said, shared by the tasks, the server and
/// `/status`.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pools: Mutex<BTreeMap<Arc<str>, Entry>>,
    /// Signalled when a set changes: the server rebuilds its snapshot.
    changed: Notify,
    /// Bumped on every lookup outcome, for [`Discovery::first_answers`].
    observed: watch::Sender<u64>,
}

/// One `discover` pool.
#[derive(Debug)]
struct Entry {
    discover: DiscoverConfig,
    /// The task that may write here; an older one's late outcome is ignored.
    task: u64,
    /// The last good set; `None` before the first good answer.
    set: Option<Vec<Found>>,
    /// Whether the current task has had an outcome yet.
    answered: bool,
    last_good: Option<SystemTime>,
    last_lookup: Option<SystemTime>,
    last_outcome: Option<&'static str>,
    last_error: Option<String>,
}

/// A pool's `discovery` object in `/status`.
#[derive(Debug, Serialize)]
pub(crate) struct DiscoveryStatus {
    /// The A/AAAA name (with `port`), or absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    /// The SRV name, or absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    srv: Option<String>,
    refresh_ms: u64,
    /// Backends in the last good set (besides the static ones).
    backends: usize,
    /// Unix time of the last good answer (`null`: none yet).
    last_good_unix: Option<f64>,
    /// Unix time of the last lookup.
    last_lookup_unix: Option<f64>,
    /// `ok`, `empty`, `nxdomain` or `error` (`null`: no lookup yet).
    last_outcome: Option<&'static str>,
    /// What went wrong with the last lookup, if it failed.
    last_error: Option<String>,
}

fn unix(time: Option<SystemTime>) -> Option<f64> {
    time.and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map(|since| since.as_secs_f64())
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Arc<str>, Entry>> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `config` with every `discover` pool's last good set added to its backends (an address
    /// also listed in `backends` stays the static one).
    pub(crate) fn merge(&self, config: &Config) -> Config {
        let pools = self.lock();
        let mut merged = config.clone();
        for pool in &mut merged.pools {
            let Some(set) = pool
                .discover
                .as_ref()
                .and_then(|_| pools.get(&pool.name))
                .and_then(|entry| entry.set.as_ref())
            else {
                continue;
            };
            for found in set {
                if pool.backends.iter().any(|b| b.address == found.address) {
                    continue;
                }
                pool.backends.push(BackendConfig {
                    name: Arc::from(found.address.to_string()),
                    address: found.address,
                    weight: found.weight,
                    max_connections: None,
                });
            }
        }
        merged
    }

    /// The `discovery` object of pool `pool`, if it discovers.
    pub(crate) fn status(&self, pool: &str) -> Option<DiscoveryStatus> {
        let pools = self.lock();
        let entry = pools.get(pool)?;
        let (name, port, srv) = match &entry.discover.target {
            DiscoverTarget::Name { name, port } => (Some(name.to_string()), Some(*port), None),
            DiscoverTarget::Srv(srv) => (None, None, Some(srv.to_string())),
        };
        Some(DiscoveryStatus {
            name,
            port,
            srv,
            refresh_ms: u64::try_from(entry.discover.refresh.as_millis()).unwrap_or(u64::MAX),
            backends: entry.set.as_ref().map_or(0, Vec::len),
            last_good_unix: unix(entry.last_good),
            last_lookup_unix: unix(entry.last_lookup),
            last_outcome: entry.last_outcome,
            last_error: entry.last_error.clone(),
        })
    }

    /// Records task `task`'s lookup outcome for `pool`: status, metrics, log, and the set.
    fn record(
        &self,
        pool: &Arc<str>,
        task: u64,
        outcome: &Result<Answer, Failure>,
        verdict: &Verdict,
    ) {
        let mut pools = self.lock();
        let Some(entry) = pools.get_mut(pool).filter(|entry| entry.task == task) else {
            return;
        };
        let now = SystemTime::now();
        let label = outcome.as_ref().map_or_else(Failure::label, |_| "ok");
        let target = entry.discover.target.to_string();
        metrics::counter!(names::DISCOVERY_REFRESHES, "pool" => pool.to_string(), "outcome" => label)
            .increment(1);
        let kept = entry.set.as_ref().map_or(0, Vec::len);
        match outcome {
            Ok(answer) => {
                if entry.last_outcome.is_some_and(|last| last != "ok") {
                    tracing::info!(pool = %pool, target = %target, backends = answer.backends.len(), "discovery: answers again");
                }
                entry.last_good = Some(now);
                entry.last_error = None;
            }
            Err(failure) => {
                if entry.last_outcome != Some(label) {
                    tracing::warn!(pool = %pool, target = %target, outcome = label, error = %failure, kept_backends = kept, "discovery: no usable answer; keeping the last good set");
                } else {
                    tracing::debug!(pool = %pool, target = %target, outcome = label, error = %failure, "discovery: still no usable answer");
                }
                entry.last_error = Some(failure.to_string());
            }
        }
        entry.last_lookup = Some(now);
        entry.last_outcome = Some(label);
        entry.answered = true;
        if let Some(set) = &verdict.changed {
            if matches!(outcome, Err(Failure::NxDomain)) {
                tracing::warn!(pool = %pool, target = %target, removed = kept, "discovery: NXDOMAIN for twice the refresh interval; believing it");
            }
            metrics::gauge!(names::DISCOVERY_BACKENDS, "pool" => pool.to_string())
                .set(set.len() as f64);
            entry.set = Some(set.clone());
            self.changed.notify_one();
        }
        drop(pools);
        self.observed
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    fn all_answered(&self) -> bool {
        self.lock().values().all(|entry| entry.answered)
    }
}

/// The discovery tasks of a running server.
#[derive(Debug)]
pub(crate) struct Discovery {
    registry: Arc<Registry>,
    stop: CancellationToken,
    /// The `[dns]` the tasks run with, and its resolver.
    resolver: Option<(DnsConfig, SharedResolver)>,
    /// Running tasks: pool, what it looks up, its id, and its stop.
    tasks: Vec<(Arc<str>, DiscoverConfig, u64, CancellationToken)>,
    next_task: u64,
}

impl Discovery {
    /// No tasks yet; every task stops with `stop`.
    pub(crate) fn new(stop: CancellationToken) -> Self {
        Self {
            registry: Arc::default(),
            stop,
            resolver: None,
            tasks: Vec::new(),
            next_task: 0,
        }
    }

    /// The sets and their status.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Completes when a discovered set changed since the last call returned.
    pub(crate) async fn changed(&self) {
        self.registry.changed.notified().await;
    }

    /// Runs one task per `discover` pool of `config`: a pool whose `discover` (and `[dns]`) is
    /// unchanged keeps its task; a changed one starts over from the set it had, which it keeps
    /// until the new name answers; a pool without `discover` forgets its set.
    pub(crate) fn sync(&mut self, config: &Config) {
        let resolver = match &self.resolver {
            Some((dns, resolver)) if *dns == config.dns => Arc::clone(resolver),
            _ => {
                for (.., stop) in self.tasks.drain(..) {
                    stop.cancel();
                }
                let built = lookup::resolver(&config.dns).map(Arc::new);
                if let Err(err) = &built {
                    tracing::error!(error = %err, "discovery: no resolver; discover pools keep what they have");
                }
                let resolver = Arc::new(built);
                self.resolver = Some((config.dns.clone(), Arc::clone(&resolver)));
                resolver
            }
        };
        let wanted = |pool: &str| {
            config
                .pool(pool)
                .and_then(|pool| pool.discover.as_ref())
                .cloned()
        };
        self.tasks.retain(|(pool, discover, _, stop)| {
            let keep = wanted(pool).as_ref() == Some(discover);
            if !keep {
                stop.cancel();
            }
            keep
        });
        let mut pools = self.registry.lock();
        pools.retain(|pool, _| {
            let keep = wanted(pool).is_some();
            if !keep {
                // The exporter keeps a series once written; a pool that no longer discovers
                // has no discovered backends.
                metrics::gauge!(names::DISCOVERY_BACKENDS, "pool" => pool.to_string()).set(0.0);
            }
            keep
        });
        for pool in &config.pools {
            let Some(discover) = &pool.discover else {
                continue;
            };
            if self.tasks.iter().any(|(name, ..)| *name == pool.name) {
                continue;
            }
            self.next_task += 1;
            let task = self.next_task;
            let entry = pools
                .entry(Arc::clone(&pool.name))
                .or_insert_with(|| Entry {
                    discover: discover.clone(),
                    task,
                    set: None,
                    answered: false,
                    last_good: None,
                    last_lookup: None,
                    last_outcome: None,
                    last_error: None,
                });
            entry.discover = discover.clone();
            entry.task = task;
            entry.answered = false;
            let stop = self.stop.child_token();
            tracing::info!(pool = %pool.name, target = %discover.target, refresh_ms = discover.refresh.as_millis() as u64, "discovery started");
            tokio::spawn(run(
                Arc::clone(&pool.name),
                task,
                Tracker::new(discover.refresh, entry.set.clone()),
                discover.target.clone(),
                Arc::clone(&resolver),
                Arc::clone(&self.registry),
                stop.clone(),
            ));
            self.tasks
                .push((Arc::clone(&pool.name), discover.clone(), task, stop));
        }
    }

    /// Waits until every task has had its first outcome, for at most `within`; `false` if
    /// some had not by then.
    pub(crate) async fn first_answers(&self, within: Duration) -> bool {
        let mut observed = self.registry.observed.subscribe();
        let all = async {
            while !self.registry.all_answered() {
                if observed.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(within, all).await.is_ok()
    }
}

/// One pool's task: look up, record, wait, until stopped.
async fn run(
    pool: Arc<str>,
    task: u64,
    mut tracker: Tracker,
    target: DiscoverTarget,
    resolver: SharedResolver,
    registry: Arc<Registry>,
    stop: CancellationToken,
) {
    loop {
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = lookup::lookup(&resolver, &target) => outcome,
        };
        let verdict = tracker.observe(&outcome, tokio::time::Instant::now());
        registry.record(&pool, task, &outcome, &verdict);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(verdict.next) => {}
        }
    }
}
