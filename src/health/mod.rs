//! Backend health in three pieces: the pure state machine ([`machine`]), the shared state the
//! hot path reads ([`Health`], atomics only on the request path), and the checker tasks
//! ([`checker`]) that probe backends and stop with them.
//!
//! Active checks and passive signals (failed live requests) feed the same machine, which lives in
//! the backend's live state, so it survives config reloads.

pub(crate) mod checker;
pub(crate) mod machine;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub(crate) use machine::{EjectionTimes, Machine, Reason, Status, Thresholds, Transition};

use crate::config::{HealthCheckConfig, PassiveConfig};
use checker::ProbeError;

/// Marks "no ramp running" in [`Health::ramp_start`].
const NOT_RAMPING: u64 = u64::MAX;

/// Weights are scaled by this so slow start can ramp a weight-1 backend smoothly.
pub(crate) const WEIGHT_SCALE: u64 = 1000;

/// One backend's health as every part of the proxy sees it.
#[derive(Debug)]
pub struct Health {
    /// The machine's status, mirrored for lock-free reads.
    status: AtomicU8,
    /// Passive failures in a row; reset by any success.
    passive_failures: AtomicU32,
    /// Reference point for `ramp_start`.
    epoch: Instant,
    /// Nanoseconds after `epoch` when the slow-start ramp began, or [`NOT_RAMPING`].
    ramp_start: AtomicU64,
    /// Set after the first active probe result, for readiness.
    probed: AtomicBool,
    /// Whether coming up the first time starts the slow-start ramp: only for backends added by
    /// a reload; at start-up every backend is new and none should be held back.
    ramp_first_up: AtomicBool,
    /// The machine itself and the last error, touched only on probes and ejections.
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    machine: Machine,
    last_error: Option<String>,
}

impl Health {
    /// Health of a new backend: down until its first passing check when `active_checks`,
    /// else up. `ramp` starts it under slow start (a backend added by a reload).
    pub fn new(active_checks: bool, ramp: bool) -> Self {
        let machine = Machine::new(active_checks);
        let epoch = Instant::now();
        Self {
            status: AtomicU8::new(machine.status() as u8),
            passive_failures: AtomicU32::new(0),
            epoch,
            ramp_start: AtomicU64::new(if ramp { 0 } else { NOT_RAMPING }),
            probed: AtomicBool::new(false),
            ramp_first_up: AtomicBool::new(ramp),
            inner: Mutex::new(Inner {
                machine,
                last_error: None,
            }),
        }
    }

    /// The current status (one atomic load).
    pub fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// Whether the backend may receive new requests.
    pub fn is_available(&self) -> bool {
        self.status() == Status::Healthy
    }

    /// The most recent failure seen by a probe or live traffic.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// `weight` scaled by [`WEIGHT_SCALE`] and by the slow-start ramp, never below 1.
    pub fn effective_weight(&self, weight: u32, slow_start: Option<Duration>) -> u64 {
        let full = u64::from(weight) * WEIGHT_SCALE;
        let start = self.ramp_start.load(Ordering::Relaxed);
        let Some(slow_start) = slow_start.filter(|_| start != NOT_RAMPING) else {
            return full;
        };
        let elapsed = (self.epoch.elapsed().as_nanos() as u64).saturating_sub(start);
        let window = slow_start.as_nanos() as u64;
        if elapsed >= window {
            self.ramp_start.store(NOT_RAMPING, Ordering::Relaxed);
            return full;
        }
        ((u128::from(full) * u128::from(elapsed) / u128::from(window.max(1))) as u64).max(1)
    }

    /// Feeds an active probe result (`failure`: why it failed, `None` when it passed); returns
    /// the transition if the status changed.
    pub(crate) fn record_probe(
        &self,
        failure: Option<ProbeError>,
        check: &HealthCheckConfig,
    ) -> Option<Transition> {
        let thresholds = Thresholds {
            healthy: check.healthy_threshold,
            unhealthy: check.unhealthy_threshold,
        };
        self.probed.store(true, Ordering::Relaxed);
        let mut inner = self.lock();
        let passed = failure.is_none();
        if let Some(err) = failure {
            inner.last_error = Some(err.to_string());
        }
        let transition = inner.machine.probe(passed, thresholds, Instant::now());
        self.publish(&inner.machine, transition.as_ref());
        transition
    }

    /// Whether an active probe has reported at least once.
    pub fn probed(&self) -> bool {
        self.probed.load(Ordering::Relaxed)
    }

    /// The effective weight as a fraction of the configured one (slow start), 0 to 1.
    pub fn weight_fraction(&self, slow_start: Option<Duration>) -> f64 {
        self.effective_weight(1, slow_start) as f64 / WEIGHT_SCALE as f64
    }

    /// A live request to this backend went fine.
    pub fn record_success(&self) {
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A live request failed; returns true when this makes `consecutive_failures` in a row
    /// (the caller then decides whether the pool can afford an ejection).
    pub fn record_failure(&self, error: &dyn std::fmt::Display, passive: &PassiveConfig) -> bool {
        if passive.consecutive_failures == 0 {
            return false;
        }
        let failures = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= passive.consecutive_failures {
            self.lock().last_error = Some(error.to_string());
            true
        } else {
            false
        }
    }

    /// Ejects the backend; returns the transition and when the ejection ends.
    pub fn eject(&self, passive: &PassiveConfig) -> Option<(Transition, Instant)> {
        self.passive_failures.store(0, Ordering::Relaxed);
        let times = EjectionTimes {
            base: passive.ejection_time,
            max: passive.max_ejection_time,
        };
        let mut inner = self.lock();
        let ejected = inner.machine.eject(Instant::now(), times);
        self.publish(&inner.machine, ejected.as_ref().map(|(t, _)| t));
        ejected
    }

    /// Ends the ejection if its time is over.
    pub fn end_ejection(&self) -> Option<Transition> {
        let mut inner = self.lock();
        let transition = inner.machine.end_ejection(Instant::now());
        self.publish(&inner.machine, transition.as_ref());
        transition
    }

    /// When the running ejection ends, if one runs.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.lock().machine.ejected_until()
    }

    /// Mirrors the machine's status for the hot path and starts the slow-start ramp when the
    /// backend comes back.
    fn publish(&self, machine: &Machine, transition: Option<&Transition>) {
        self.status.store(machine.status() as u8, Ordering::Relaxed);
        let first_up = transition.is_some_and(|t| t.reason == Reason::ChecksPassed(1))
            && !self.ramp_first_up.swap(true, Ordering::Relaxed);
        if transition.is_some_and(|t| t.to == Status::Healthy) && !first_up {
            let now = self.epoch.elapsed().as_nanos() as u64;
            self.ramp_start.store(now, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the machine half-updated in a way that
        // matters more than losing health tracking, so keep going with the data as it is.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_linearly_to_full_weight() {
        let health = Health::new(false, true);
        let slow_start = Some(Duration::from_secs(10));
        assert_eq!(
            health.effective_weight(2, slow_start),
            1,
            "starts near zero"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(health.effective_weight(2, slow_start), 1000);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(health.effective_weight(2, slow_start), 2000);
        assert_eq!(
            health.ramp_start.load(Ordering::Relaxed),
            NOT_RAMPING,
            "ramp finished"
        );
    }

    #[test]
    fn without_slow_start_weight_is_full() {
        let health = Health::new(false, true);
        assert_eq!(health.effective_weight(3, None), 3000);
        let health = Health::new(false, false);
        assert_eq!(
            health.effective_weight(3, Some(Duration::from_secs(1))),
            3000
        );
    }

    #[test]
    fn passive_failures_reset_on_success() {
        let passive = PassiveConfig {
            consecutive_failures: 3,
            ejection_time: Duration::from_secs(1),
            max_ejection_time: Duration::from_secs(4),
            max_ejected_percent: 100,
            failure_statuses: crate::config::StatusSet(vec![502..=504]),
        };
        let health = Health::new(false, false);
        assert!(!health.record_failure(&"x", &passive));
        assert!(!health.record_failure(&"x", &passive));
        health.record_success();
        assert!(!health.record_failure(&"x", &passive));
        assert!(!health.record_failure(&"x", &passive));
        assert!(health.record_failure(&"boom", &passive));
        assert!(health.eject(&passive).is_some());
        assert_eq!(health.status(), Status::Ejected);
        assert!(!health.is_available());
        assert_eq!(health.last_error().as_deref(), Some("boom"));
    }
}
