//! What one lookup's outcome does to a pool's discovered set: the pure policy, apart from DNS
//! and tasks. A good answer replaces the set; a failed or empty one keeps the last good set;
//! NXDOMAIN empties it only once it has been the answer for `2 × refresh`.

use std::time::Duration;

use tokio::time::Instant;

use super::lookup::{Answer, Failure, Found};
use crate::config::DiscoverConfig;

const MAX_REFRESH: Duration = DiscoverConfig::MAX_REFRESH;

/// One pool's discovered set and the NXDOMAIN streak.
#[derive(Debug)]
pub(crate) struct Tracker {
    refresh: Duration,
    /// The last good set; `None` before the first good answer.
    set: Option<Vec<Found>>,
    /// When the current run of NXDOMAIN answers began.
    nxdomain_since: Option<Instant>,
}

/// What to do after a lookup.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The new set, when it differs from the last one.
    pub(crate) changed: Option<Vec<Found>>,
    /// When to look again.
    pub(crate) next: Duration,
}

impl Tracker {
    /// A tracker that starts from `set` (a set kept across a reload), looking up at least every
    /// `refresh`.
    pub(crate) fn new(refresh: Duration, set: Option<Vec<Found>>) -> Self {
        Self {
            refresh,
            set,
            nxdomain_since: None,
        }
    }

    /// Takes one lookup's outcome at `now`.
    pub(crate) fn observe(&mut self, outcome: &Result<Answer, Failure>, now: Instant) -> Verdict {
        let next = self.refresh;
        match outcome {
            Ok(answer) => {
                self.nxdomain_since = None;
                let next = answer
                    .ttl
                    .clamp(self.refresh, MAX_REFRESH.max(self.refresh));
                self.replace(answer.backends.clone(), next)
            }
            Err(Failure::NxDomain) => {
                let since = *self.nxdomain_since.get_or_insert(now);
                if now.duration_since(since) >= self.refresh * 2 {
                    self.replace(Vec::new(), next)
                } else {
                    Verdict {
                        changed: None,
                        next,
                    }
                }
            }
            Err(Failure::Empty) => {
                // The name exists: an NXDOMAIN streak is broken.
                self.nxdomain_since = None;
                Verdict {
                    changed: None,
                    next,
                }
            }
            // A failure says nothing about the name; a streak goes on through it.
            Err(Failure::Error(_)) => Verdict {
                changed: None,
                next,
            },
        }
    }

    fn replace(&mut self, set: Vec<Found>, next: Duration) -> Verdict {
        let changed = (self.set.as_ref() != Some(&set)).then(|| set.clone());
        self.set = Some(set);
        Verdict { changed, next }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    const REFRESH: Duration = Duration::from_secs(1);

    fn found(last: u8) -> Found {
        Found {
            address: std::net::SocketAddr::from(([127, 0, 0, last], 8080)),
            weight: NonZeroU32::MIN,
        }
    }

    fn answer(lasts: &[u8], ttl: u64) -> Result<Answer, Failure> {
        Ok(Answer {
            backends: lasts.iter().map(|&last| found(last)).collect(),
            ttl: Duration::from_secs(ttl),
        })
    }

    #[test]
    fn a_good_answer_replaces_the_set_and_its_ttl_is_clamped() {
        let now = Instant::now();
        let mut tracker = Tracker::new(REFRESH, None);
        let verdict = tracker.observe(&answer(&[2, 3], 30), now);
        assert_eq!(verdict.changed, Some(vec![found(2), found(3)]));
        assert_eq!(verdict.next, Duration::from_secs(30));
        let same = tracker.observe(&answer(&[2, 3], 0), now);
        assert_eq!(same.changed, None, "the same set is no change");
        assert_eq!(same.next, REFRESH, "a TTL below refresh waits refresh");
        let long = tracker.observe(&answer(&[3], 86_400), now);
        assert_eq!(long.changed, Some(vec![found(3)]));
        assert_eq!(long.next, MAX_REFRESH, "a long TTL is capped at 5 minutes");
    }

    #[test]
    fn failures_and_empty_answers_keep_the_last_good_set() {
        let now = Instant::now();
        let mut tracker = Tracker::new(REFRESH, None);
        tracker.observe(&answer(&[2], 5), now);
        for failure in [Failure::Empty, Failure::Error("timed out".to_owned())] {
            let verdict = tracker.observe(&Err(failure), now);
            assert_eq!(verdict.changed, None);
            assert_eq!(verdict.next, REFRESH);
        }
        assert_eq!(tracker.set, Some(vec![found(2)]));
    }

    #[test]
    fn nxdomain_is_believed_only_after_two_refresh_periods() {
        let start = Instant::now();
        let mut tracker = Tracker::new(REFRESH, Some(vec![found(2)]));
        let nx = Err(Failure::NxDomain);
        assert_eq!(tracker.observe(&nx, start).changed, None);
        let error = Err(Failure::Error("SERVFAIL".to_owned()));
        assert_eq!(tracker.observe(&error, start + REFRESH).changed, None);
        assert_eq!(
            tracker
                .observe(&nx, start + REFRESH * 2 - Duration::from_millis(1))
                .changed,
            None
        );
        assert_eq!(
            tracker.observe(&nx, start + REFRESH * 2).changed,
            Some(Vec::new())
        );
        assert_eq!(tracker.observe(&nx, start + REFRESH * 3).changed, None);
    }

    #[test]
    fn an_answer_in_between_restarts_the_nxdomain_streak() {
        let start = Instant::now();
        let mut tracker = Tracker::new(REFRESH, Some(vec![found(2)]));
        let nx = Err(Failure::NxDomain);
        tracker.observe(&nx, start);
        tracker.observe(&Err(Failure::Empty), start + REFRESH);
        assert_eq!(tracker.observe(&nx, start + REFRESH * 2).changed, None);
        assert_eq!(
            tracker.observe(&nx, start + REFRESH * 4).changed,
            Some(Vec::new())
        );
    }
}
