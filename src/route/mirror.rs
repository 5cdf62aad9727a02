//! A route's mirror: which of its requests get a copy for another pool, and how many copies may
//! be out at once. The copy itself is sent by the proxy (`proxy/l7/mirror.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::MirrorConfig;
use crate::metrics::{MirrorMetrics, MirrorOutcome};
use crate::pool::Pool;

/// A route's mirror with its pool resolved.
#[derive(Debug)]
pub(crate) struct Mirror {
    /// The pool that gets the copies.
    pub(crate) pool: Arc<Pool>,
    percent: u64,
    /// Requests the route has seen, for an even sample.
    seen: AtomicU64,
    /// One permit per copy in flight (`max_in_flight`).
    permits: Arc<Semaphore>,
    /// Largest body copied.
    pub(crate) max_body: usize,
    /// Outcome counters.
    pub(crate) metrics: MirrorMetrics,
}

impl Mirror {
    pub(super) fn build(
        config: &MirrorConfig,
        listener: &str,
        route: &str,
        pool_of: impl Fn(&str) -> Option<Arc<Pool>>,
    ) -> Option<Mirror> {
        Some(Mirror {
            pool: pool_of(&config.pool)?,
            percent: u64::from(config.percent),
            seen: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            max_body: config.max_body,
            metrics: MirrorMetrics::new(listener, route),
        })
    }

    /// Whether this request gets a copy: `percent` of the route's requests, spread evenly,
    /// while fewer than `max_in_flight` copies are out. The permit is the copy's slot.
    pub(crate) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let seen = self.seen.fetch_add(1, Ordering::Relaxed);
        let sampled = (seen + 1) * self.percent / 100 != seen * self.percent / 100;
        if !sampled {
            return None;
        }
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.metrics.record(MirrorOutcome::Busy);
                None
            }
        }
    }
}
