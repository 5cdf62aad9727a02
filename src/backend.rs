//! Per-backend live state: health, in-flight count, pooled upstream connections.
//!
//! A [`Backend`] outlives config snapshots: a reload that keeps a backend (same pool, same
//! address) hands the same `Arc<Backend>` to the new snapshot, so its counters and idle
//! connections carry over. Per-snapshot facts such as the configured weight live in [`Endpoint`].

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

use crate::health::{Health, Status, Transition};
use crate::limit::{self, Waiters};
use crate::metrics::BackendMetrics;
use crate::upstream::IdleConnections;

/// One backend server and everything known about it at run time.
#[derive(Debug)]
pub struct Backend {
    /// The pool this backend belongs to; with `address`, its identity.
    pub pool: Arc<str>,
    /// The address as configured (`host:port`), for logs and the status API.
    pub name: Arc<str>,
    /// The resolved socket address.
    pub address: SocketAddr,
    /// Requests whose response body has not ended yet; only [`InFlight`] guards change it.
    in_flight: AtomicUsize,
    /// Its cap on requests in flight (0: none): its own `max_connections` or its pool's, as
    /// the latest snapshot says (shared by every snapshot that has this backend).
    max_in_flight: AtomicUsize,
    /// Requests of this backend's pool waiting for room under `max_connections`; shared by
    /// every backend of the pool, and woken when one of them finishes a request.
    pub(crate) queue: Arc<Waiters>,
    /// Keep-alive connections ready for the next request.
    pub(crate) idle: IdleConnections,
    /// Up, down or ejected; fed by active checks and live traffic.
    pub health: Health,
    /// Set when a reload removed this backend; it only finishes what it has in flight.
    retired: AtomicBool,
    /// Metric handles and the one-minute window.
    pub metrics: BackendMetrics,
    /// `peak_ewma`'s latency estimate; kept, like the rest, by reloads that keep the backend.
    pub(crate) latency: Latency,
}

impl Backend {
    /// A backend of `pool` with no traffic yet, keeping its connections between requests in
    /// `idle`, with the given starting `health`; `queue` is its pool's.
    pub fn new(
        pool: Arc<str>,
        queue: Arc<Waiters>,
        name: Arc<str>,
        address: SocketAddr,
        idle: IdleConnections,
        health: Health,
    ) -> Self {
        Self {
            metrics: BackendMetrics::new(&pool, &name),
            pool,
            name,
            address,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            queue,
            idle,
            health,
            retired: AtomicBool::new(false),
            latency: Latency::default(),
        }
    }

    /// Called when a reload removes this backend: closes its idle connections now; requests in
    /// flight finish, and their connections close instead of returning to the pool.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.idle.clear();
        // Its series stay in the exporter; make them say it is gone rather than freeze.
        self.metrics.refresh_gauges(false, 0, 0);
        tracing::info!(pool = %self.pool, backend = %self.name, in_flight = self.in_flight(), "backend removed; draining");
    }

    /// Whether a reload removed this backend.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// The host part of the configured address, for TLS server names.
    pub fn host(&self) -> &str {
        let host = self
            .name
            .rsplit_once(':')
            .map_or(&*self.name, |(host, _)| host);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the returned guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: Arc::clone(self),
        }
    }

    /// Its cap on requests in flight, if it has one.
    pub fn max_connections(&self) -> Option<NonZeroUsize> {
        NonZeroUsize::new(self.max_in_flight.load(Ordering::Relaxed))
    }

    /// Sets its cap (a snapshot build does, from the config).
    pub(crate) fn set_max_connections(&self, max: Option<NonZeroUsize>) {
        self.max_in_flight
            .store(max.map_or(0, NonZeroUsize::get), Ordering::Relaxed);
    }

    /// Whether it is below its cap (or has none).
    pub fn has_room(&self) -> bool {
        self.max_connections()
            .is_none_or(|max| self.in_flight() < max.get())
    }

    /// Like [`Backend::start_request`], if it is below its cap.
    pub fn try_start_request(self: &Arc<Self>) -> Option<InFlight> {
        limit::take_unit(&self.in_flight, self.max_in_flight.load(Ordering::Relaxed)).then(|| {
            InFlight {
                backend: Arc::clone(self),
            }
        })
    }
    /// Acts on a change of its health: logs it with the reason (and `last_error` when it went
    /// down) and, when it came up, wakes its pool's queue, which may now find room on it.
    pub fn transitioned(&self, transition: &Transition, last_error: Option<&str>) {
        let (pool, name) = (&*self.pool, &*self.name);
        let last_error = last_error.unwrap_or("-");
        match transition.to {
            Status::Healthy => {
                tracing::info!(
                    pool, backend = name, from = %transition.from, to = %transition.to,
                    reason = %transition.reason, "backend is up"
                );
                self.queue.recheck();
            }
            Status::Unhealthy | Status::Ejected => tracing::warn!(
                pool, backend = name, from = %transition.from, to = %transition.to,
                reason = %transition.reason, last_error, "backend is down"
            ),
        }
    }
}

/// Holds one unit of a backend's in-flight count; dropping it gives the unit back.
///
/// The proxy keeps it inside the response body, so a request counts until its body ends.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
}

impl InFlight {
    /// The backend this guard counts against.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.queue.give_back(&self.backend.in_flight);
    }
}

/// A latency estimate and when it was last updated: the storage behind `balance::peak_ewma`,
/// which owns the maths. `None` until the first sample (the pool's `default_rtt` stands in).
///
/// A mutex per backend, held for a few loads and stores: uncontended it is one atomic swap
/// each way, and requests to different backends never share it.
#[derive(Debug, Default)]
pub(crate) struct Latency(Mutex<Option<Estimate>>);

/// A latency estimate in nanoseconds, as of `at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Estimate {
    /// Nanoseconds.
    pub(crate) nanos: f64,
    /// When it was last updated.
    pub(crate) at: Instant,
}

impl Latency {
    /// The estimate as last stored.
    pub(crate) fn get(&self) -> Option<Estimate> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the estimate with what `update` makes of the stored one, atomically.
    pub(crate) fn update(&self, update: impl FnOnce(Option<Estimate>) -> Estimate) {
        let mut estimate = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *estimate = Some(update(*estimate));
    }
}

/// A backend as one snapshot sees it: the shared live state plus this config's weight.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Live state, shared with other snapshots that keep this backend.
    pub backend: Arc<Backend>,
    /// Configured weight.
    pub weight: NonZeroU32,
}

/// Endpoints on unroutable addresses with the given weights, for balancer tests.
#[cfg(test)]
pub(crate) fn test_endpoints(weights: &[u32]) -> Vec<Endpoint> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            let address = SocketAddr::from(([192, 0, 2, 1], 1000 + i as u16));
            Endpoint {
                backend: Arc::new(Backend::new(
                    Arc::from("test"),
                    Arc::default(),
                    Arc::from(address.to_string()),
                    address,
                    IdleConnections::new(0, std::time::Duration::from_secs(1)),
                    Health::new(false, false),
                )),
                weight: NonZeroU32::new(weight).expect("test weights are non-zero"),
            }
        })
        .collect()
}
