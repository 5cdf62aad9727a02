//! The health state machine: a pure function of its inputs (probe results, passive ejections,
//! the clock value passed in). No I/O, no clock reads, so every transition is unit-tested.
//!
//! Active checks decide *up* or *down* with rise/fall thresholds; passive ejection lays a timed
//! *ejected* state over an up backend. The effective status is `Unhealthy` when down, else
//! `Ejected` while an ejection runs, else `Healthy`.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// What the hot path and the status API see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Receives traffic.
    Healthy = 0,
    /// Failed its active checks (or has not passed one yet).
    Unhealthy = 1,
    /// Taken out for a while after failing live traffic.
    Ejected = 2,
}

impl Status {
    /// Lower-case name for logs and the status API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Unhealthy => "unhealthy",
            Status::Ejected => "ejected",
        }
    }

    pub(crate) fn from_u8(value: u8) -> Status {
        match value {
            0 => Status::Healthy,
            2 => Status::Ejected,
            _ => Status::Unhealthy,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rise and fall thresholds of active checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thresholds {
    /// Consecutive successes that bring a down backend up.
    pub healthy: u32,
    /// Consecutive failures that take an up backend down.
    pub unhealthy: u32,
}

/// How long passive ejections last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EjectionTimes {
    /// First ejection; each repeated one doubles it.
    pub base: Duration,
    /// Cap on the doubling. A backend that stays in for this long starts again from `base`.
    pub max: Duration,
}

/// Why a status changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Active checks passed this many times in a row.
    ChecksPassed(u32),
    /// Active checks failed this many times in a row.
    ChecksFailed(u32),
    /// Live traffic failed; ejected for this long.
    Ejected(Duration),
    /// The ejection time is over.
    EjectionEnded,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::ChecksPassed(n) => write!(f, "{n} consecutive checks passed"),
            Reason::ChecksFailed(n) => write!(f, "{n} consecutive checks failed"),
            Reason::Ejected(time) => write!(f, "live traffic failed; ejected for {time:?}"),
            Reason::EjectionEnded => f.write_str("ejection time over"),
        }
    }
}

/// A status change, for logging and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Status before.
    pub from: Status,
    /// Status after.
    pub to: Status,
    /// Why.
    pub reason: Reason,
}

/// One backend's health bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    up: bool,
    /// Set until the first probe result: one pass is enough to bring a new backend up.
    first_probe_pending: bool,
    successes: u32,
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections in a row, for doubling.
    ejections: u32,
    /// When the last ejection ended; a long clean stretch after it resets `ejections`.
    returned_at: Option<Instant>,
}

impl Machine {
    /// A new backend: up at once when its pool has no active check, else down until one passes.
    pub(crate) fn new(active_checks: bool) -> Self {
        Self {
            up: !active_checks,
            first_probe_pending: active_checks,
            successes: 0,
            failures: 0,
            ejected_until: None,
            ejections: 0,
            returned_at: None,
        }
    }

    /// The effective status.
    pub(crate) fn status(&self) -> Status {
        if !self.up {
            Status::Unhealthy
        } else if self.ejected_until.is_some() {
            Status::Ejected
        } else {
            Status::Healthy
        }
    }

    /// When the running ejection ends, if one runs.
    pub(crate) fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// Feeds one active probe result, at `now`. Passes count from the last failure or ejection:
    /// `thresholds.healthy` of them in a row bring a down backend up and end a running
    /// ejection early (the backend answers its checks again, as after a restart).
    pub(crate) fn probe(
        &mut self,
        passed: bool,
        thresholds: Thresholds,
        now: Instant,
    ) -> Option<Transition> {
        let from = self.status();
        let reason = if passed {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            let enough = self.first_probe_pending || self.successes >= thresholds.healthy;
            if !enough {
                None
            } else if !self.up {
                self.up = true;
                if self.ejected_until.take().is_some() {
                    self.returned_at = Some(now);
                }
                Some(Reason::ChecksPassed(self.successes))
            } else if self.ejected_until.take().is_some() {
                self.returned_at = Some(now);
                Some(Reason::ChecksPassed(self.successes))
            } else {
                None
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= thresholds.unhealthy {
                self.up = false;
                Some(Reason::ChecksFailed(self.failures))
            } else {
                None
            }
        };
        self.first_probe_pending = false;
        self.transition(from, reason?)
    }

    /// Ejects the backend after failing live traffic; returns the transition and when the
    /// ejection ends. Does nothing if it is already out (down or ejected).
    pub(crate) fn eject(
        &mut self,
        now: Instant,
        times: EjectionTimes,
    ) -> Option<(Transition, Instant)> {
        let from = self.status();
        if from != Status::Healthy {
            return None;
        }
        if self
            .returned_at
            .is_some_and(|returned| now.saturating_duration_since(returned) >= times.max)
        {
            self.ejections = 0;
        }
        // Passing checks end the ejection only when they come after it.
        self.successes = 0;
        let factor = 1u32.checked_shl(self.ejections.min(31)).unwrap_or(u32::MAX);
        let time = times.base.saturating_mul(factor).min(times.max);
        self.ejections = self.ejections.saturating_add(1);
        let until = now + time;
        self.ejected_until = Some(until);
        let transition = self.transition(from, Reason::Ejected(time))?;
        Some((transition, until))
    }

    /// Ends the running ejection if its time is over at `now`.
    pub(crate) fn end_ejection(&mut self, now: Instant) -> Option<Transition> {
        let until = self.ejected_until?;
        if now < until {
            return None;
        }
        let from = self.status();
        self.ejected_until = None;
        self.returned_at = Some(now);
        self.transition(from, Reason::EjectionEnded)
    }

    fn transition(&self, from: Status, reason: Reason) -> Option<Transition> {
        let to = self.status();
        (to != from).then_some(Transition { from, to, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        healthy: 2,
        unhealthy: 3,
    };
    const TIMES: EjectionTimes = EjectionTimes {
        base: Duration::from_secs(10),
        max: Duration::from_secs(60),
    };

    #[test]
    fn without_active_checks_a_backend_starts_healthy() {
        assert_eq!(Machine::new(false).status(), Status::Healthy);
    }

    #[test]
    fn with_active_checks_one_pass_brings_a_new_backend_up() {
        let mut machine = Machine::new(true);
        assert_eq!(machine.status(), Status::Unhealthy);
        let transition = machine.probe(true, T, Instant::now()).expect("comes up");
        assert_eq!(transition.to, Status::Healthy);
        assert_eq!(transition.reason, Reason::ChecksPassed(1));
    }

    #[test]
    fn a_new_backend_failing_its_first_check_needs_the_full_rise() {
        let mut machine = Machine::new(true);
        assert_eq!(machine.probe(false, T, Instant::now()), None);
        assert_eq!(machine.probe(true, T, Instant::now()), None);
        assert_eq!(
            machine.probe(true, T, Instant::now()).map(|t| t.to),
            Some(Status::Healthy)
        );
    }

    #[test]
    fn fall_needs_unhealthy_threshold_consecutive_failures() {
        let mut machine = Machine::new(false);
        assert_eq!(machine.probe(false, T, Instant::now()), None);
        assert_eq!(machine.probe(false, T, Instant::now()), None);
        assert_eq!(
            machine.probe(true, T, Instant::now()),
            None,
            "a success resets the count"
        );
        assert_eq!(machine.probe(false, T, Instant::now()), None);
        assert_eq!(machine.probe(false, T, Instant::now()), None);
        let down = machine
            .probe(false, T, Instant::now())
            .expect("third failure in a row");
        assert_eq!((down.from, down.to), (Status::Healthy, Status::Unhealthy));
        assert_eq!(down.reason, Reason::ChecksFailed(3));
        assert_eq!(
            machine.probe(false, T, Instant::now()),
            None,
            "no repeated transition"
        );
    }

    #[test]
    fn rise_needs_healthy_threshold_consecutive_passes() {
        let mut machine = Machine::new(false);
        for _ in 0..3 {
            machine.probe(false, T, Instant::now());
        }
        assert_eq!(machine.probe(true, T, Instant::now()), None);
        assert_eq!(machine.probe(false, T, Instant::now()), None);
        assert_eq!(machine.probe(true, T, Instant::now()), None);
        let up = machine
            .probe(true, T, Instant::now())
            .expect("two passes in a row");
        assert_eq!((up.from, up.to), (Status::Unhealthy, Status::Healthy));
    }

    #[test]
    fn ejection_doubles_and_is_capped() {
        let mut machine = Machine::new(false);
        let mut now = Instant::now();
        let mut times = Vec::new();
        for _ in 0..5 {
            let (transition, until) = machine.eject(now, TIMES).expect("ejected");
            assert_eq!(transition.to, Status::Ejected);
            times.push(until - now);
            assert_eq!(machine.end_ejection(until - Duration::from_millis(1)), None);
            now = until;
            let back = machine.end_ejection(now).expect("back");
            assert_eq!((back.from, back.to), (Status::Ejected, Status::Healthy));
        }
        let secs: Vec<u64> = times.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [10, 20, 40, 60, 60]);
    }

    #[test]
    fn a_long_clean_stretch_resets_the_doubling() {
        let mut machine = Machine::new(false);
        let now = Instant::now();
        let (_, until) = machine.eject(now, TIMES).expect("ejected");
        machine.end_ejection(until);
        let later = until + TIMES.max;
        let (_, until) = machine.eject(later, TIMES).expect("ejected again");
        assert_eq!(until - later, TIMES.base);
    }

    #[test]
    fn only_healthy_backends_are_ejected() {
        let mut machine = Machine::new(true);
        assert!(machine.eject(Instant::now(), TIMES).is_none());
        let mut machine = Machine::new(false);
        let now = Instant::now();
        machine.eject(now, TIMES).expect("first");
        assert!(machine.eject(now, TIMES).is_none(), "already ejected");
    }

    #[test]
    fn failed_checks_while_ejected_keep_it_down_after_the_ejection() {
        let mut machine = Machine::new(false);
        let now = Instant::now();
        let (_, until) = machine.eject(now, TIMES).expect("ejected");
        for _ in 0..2 {
            assert_eq!(machine.probe(false, T, Instant::now()), None);
        }
        let down = machine
            .probe(false, T, Instant::now())
            .expect("down while ejected");
        assert_eq!((down.from, down.to), (Status::Ejected, Status::Unhealthy));
        assert_eq!(machine.end_ejection(until), None, "still down");
        assert_eq!(machine.status(), Status::Unhealthy);
    }

    #[test]
    fn passing_checks_after_an_ejection_end_it_early() {
        let mut machine = Machine::new(false);
        for _ in 0..5 {
            machine.probe(true, T, Instant::now());
        }
        let now = Instant::now();
        let (_, until) = machine.eject(now, TIMES).expect("ejected");
        assert_eq!(
            machine.probe(true, T, now),
            None,
            "passes before it do not count"
        );
        let back = machine
            .probe(true, T, now)
            .expect("healthy_threshold passes");
        assert_eq!((back.from, back.to), (Status::Ejected, Status::Healthy));
        assert_eq!(back.reason, Reason::ChecksPassed(2));
        assert_eq!(machine.ejected_until(), None);
        assert_eq!(machine.end_ejection(until), None, "nothing left to end");
        let (_, until) = machine.eject(now, TIMES).expect("ejected again");
        assert_eq!(until - now, TIMES.base * 2, "a repeat still doubles");
    }

    #[test]
    fn a_restarted_backend_down_and_ejected_comes_back_on_its_checks() {
        let mut machine = Machine::new(false);
        let now = Instant::now();
        machine.eject(now, TIMES).expect("ejected");
        for _ in 0..3 {
            machine.probe(false, T, now);
        }
        assert_eq!(machine.status(), Status::Unhealthy);
        assert_eq!(machine.probe(true, T, now), None);
        let up = machine.probe(true, T, now).expect("up");
        assert_eq!((up.from, up.to), (Status::Unhealthy, Status::Healthy));
    }
}
