//! Smooth weighted round-robin, nginx's algorithm: exact under concurrency, O(1) per pick, no lock.
//!
//! nginx's algorithm adds every eligible backend's weight to its running weight, takes the
//! largest (the first one wins a tie) and subtracts the total from the winner. Weights 5,1,1
//! give `a a b a c a a`: never five in a row. While every backend is eligible at its configured
//! weight that order repeats with a period of `sum(weights)` picks, so it is computed once per
//! pool (the *schedule*) and a pick is one `fetch_add` on a slot counter. Each caller gets its
//! own slot, so any `sum(weights)` consecutive picks give every backend exactly its share, in
//! nginx's order, however many threads pick at once. The schedule is a weight-expanded table,
//! but in nginx's smooth order (not bursty), capped at 128 KiB, and not built at all when the
//! weights are equal (the usual pool): then slot `s` is simply backend `s % n`.
//!
//! The dynamic algorithm ([`smooth`], running weights in one atomic per backend, owned by the
//! pool snapshot's [`RoundRobin`] so a reload starts them afresh) takes over when
//! the schedule does not fit:
//! - Retries: the schedule hands out first attempts only, and a retry picks among the backends
//!   not tried yet by their weights.
//! - The scheduled backend is excluded (down or ejected): that one turn goes to a dynamic pick
//!   among the eligible backends. A backend that stays down thus has its turns shared out in
//!   proportion to the others' weights — long-run shares are exact, `w / (total - w_down)`,
//!   though no longer perfectly smooth — and only its share of the picks costs a scan.
//! - A backend is eligible at another weight than its configured one (slow-start ramp): every
//!   pick is dynamic until the ramps end, as the schedule would give it its full share at once.
//!   The schedule notices when it lands on the ramping backend, at most one period later.
//! - The period is longer than [`MAX_SCHEDULE`] even with the weights divided by their gcd, or
//!   computing it would take more than [`MAX_BUILD_STEPS`] (many distinct weights).
//!
//! Dynamic picks never block either, but two racing ones can hand out the same backend; the
//! running weights stay bounded, so long-run shares stay exact, just not within every cycle.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize};

use crate::backend::Endpoint;

/// The longest schedule kept, in picks (128 KiB of `u16`). Longer periods (weights summing
/// higher once divided by their gcd) are served by the dynamic algorithm.
pub(super) const MAX_SCHEDULE: usize = 1 << 16;

/// A bound on the work of building a schedule, in schedule length × distinct weights: about
/// 20 ms, spent on the reload path. Typical pools need a tiny fraction of it.
pub(super) const MAX_BUILD_STEPS: usize = 1 << 22;

/// Round-robin state for one pool snapshot; built with the pool, so a reload starts afresh.
#[derive(Debug)]
pub struct RoundRobin {
    /// One period of nginx's order at the configured weights; `None` if longer than
    /// [`MAX_SCHEDULE`] or too slow to build.
    schedule: Option<Schedule>,
    /// The slot the next scheduled pick takes. Wrapping at `usize::MAX` costs one uneven cycle.
    /// `Relaxed` is enough: slots only need to be unique, and `scale` is a hint any pick fixes.
    next: AtomicUsize,
    /// What `weight_of` returns per unit of configured weight while no backend ramps (the
    /// proxy's `WEIGHT_SCALE`), learnt by a full scan. 0 before that and while a backend ramps:
    /// then every pick is dynamic.
    scale: AtomicU64,
    /// nginx's running weight of each backend (same order as the endpoints), for dynamic picks.
    running: Box<[AtomicI64]>,
}

/// One period of the smooth order: which backend each slot picks.
#[derive(Debug, PartialEq)]
enum Schedule {
    /// All weights equal: slot `s` picks backend `s % n`, no table needed.
    Uniform(usize),
    /// Slot `s` picks `order[s % order.len()]`. Every backend appears in it, so there are at
    /// most [`MAX_SCHEDULE`] backends and their indices fit in a `u16`.
    Table { backends: usize, order: Box<[u16]> },
}

impl RoundRobin {
    /// Precomputes the schedule for `endpoints`' configured weights.
    pub(super) fn new(endpoints: &[Endpoint]) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight.get()).collect();
        RoundRobin {
            schedule: Schedule::new(&weights),
            next: AtomicUsize::new(0),
            scale: AtomicU64::new(0),
            running: endpoints.iter().map(|_| AtomicI64::new(0)).collect(),
        }
    }

    /// The next backend. A `retry` (the request already tried a backend) takes no turn of the
    /// schedule: else a backend that keeps failing would be every request's first attempt, as
    /// each of its failures has the retry take the turn after it.
    pub(super) fn pick(
        &self,
        endpoints: &[Endpoint],
        retry: bool,
        weight_of: impl Fn(usize, &Endpoint) -> Option<u64>,
    ) -> Option<usize> {
        let Some(schedule) = self
            .schedule
            .as_ref()
            .filter(|schedule| !retry && schedule.backends() == endpoints.len())
        else {
            return smooth(endpoints, &self.running, weight_of);
        };
        let Some(scale) = self.scale(endpoints, &weight_of) else {
            return smooth(endpoints, &self.running, weight_of);
        };
        let slot = self.next.fetch_add(1, Relaxed);
        let index = schedule.at(slot);
        let endpoint = &endpoints[index];
        match weight_of(index, endpoint) {
            Some(weight) if Some(weight) == u64::from(endpoint.weight.get()).checked_mul(scale) => {
                Some(index)
            }
            // Ramping: back to dynamic picks until a scan finds every weight nominal again.
            Some(_) => {
                self.scale.store(0, Relaxed);
                smooth(endpoints, &self.running, weight_of)
            }
            // Excluded: this turn goes to the eligible backends by their weights.
            None => {
                let picked = smooth(endpoints, &self.running, weight_of);
                if picked.is_none() {
                    // Nothing was eligible, and the proxy then picks again (fail-open): hand the
                    // slot back, or that second pick would only ever see every other slot. If
                    // another pick took a slot meanwhile, this one stays skipped; that is fine.
                    let _ =
                        self.next
                            .compare_exchange(slot.wrapping_add(1), slot, Relaxed, Relaxed);
                }
                picked
            }
        }
    }

    /// The learnt scale, or a scan for it; `None` while weights are not the configured ones.
    fn scale(
        &self,
        endpoints: &[Endpoint],
        weight_of: impl Fn(usize, &Endpoint) -> Option<u64>,
    ) -> Option<u64> {
        let scale = self.scale.load(Relaxed);
        if scale != 0 {
            return Some(scale);
        }
        let scale = common_scale(endpoints, weight_of)?;
        self.scale.store(scale, Relaxed);
        Some(scale)
    }
}

/// The factor `k` such that every eligible backend's `weight_of` is `k` × its configured
/// weight, if there is one: then the schedule's shares are the right ones. Stops at the first
/// backend that does not fit.
fn common_scale(
    endpoints: &[Endpoint],
    weight_of: impl Fn(usize, &Endpoint) -> Option<u64>,
) -> Option<u64> {
    let mut scale = None;
    for (index, endpoint) in endpoints.iter().enumerate() {
        let Some(weight) = weight_of(index, endpoint) else {
            continue;
        };
        let configured = u64::from(endpoint.weight.get());
        match scale {
            None if weight % configured == 0 && weight > 0 => scale = Some(weight / configured),
            Some(scale) if configured.checked_mul(scale) == Some(weight) => {}
            _ => return None,
        }
    }
    scale
}

impl Schedule {
    /// nginx's order over one period for `weights`, or `None` if there are no weights or the
    /// period is longer than [`MAX_SCHEDULE`] or too slow to compute.
    fn new(weights: &[u32]) -> Option<Schedule> {
        let gcd = weights.iter().fold(0, |gcd, &weight| gcd_of(gcd, weight));
        if gcd == 0 {
            return None;
        }
        if weights.iter().all(|&weight| weight == gcd) {
            return Some(Schedule::Uniform(weights.len()));
        }
        let total: u64 = weights.iter().map(|&weight| u64::from(weight / gcd)).sum();
        if total > MAX_SCHEDULE as u64 {
            return None;
        }
        let total = total as i64;
        // Backends of equal weight have running weights that move in step, so they win in
        // index order, in turn: each step compares one candidate per distinct weight, which
        // keeps the build fast for big pools.
        let mut sorted: Vec<(u32, u16)> = Vec::with_capacity(weights.len());
        for (index, &weight) in weights.iter().enumerate() {
            sorted.push((weight / gcd, u16::try_from(index).ok()?));
        }
        sorted.sort_unstable();
        let mut groups: Vec<Group> = sorted
            .chunk_by(|a, b| a.0 == b.0)
            .map(|chunk| Group {
                weight: i64::from(chunk[0].0),
                members: chunk.iter().map(|&(_, index)| index).collect(),
                picks: 0,
            })
            .collect();
        if (total as usize).saturating_mul(groups.len()) > MAX_BUILD_STEPS {
            return None;
        }
        let mut order = Vec::with_capacity(total as usize);
        for step in 1..=total {
            // Running weight after `step` additions: step × weight − total × times picked.
            let best = groups
                .iter_mut()
                .map(|group| (step * group.weight - total * group.rounds(), group))
                .reduce(|best, next| {
                    let better = next.0 > best.0
                        || (next.0 == best.0 && next.1.candidate() < best.1.candidate());
                    if better { next } else { best }
                });
            let (_, group) = best?;
            order.push(group.candidate());
            group.picks += 1;
        }
        Some(Schedule::Table {
            backends: weights.len(),
            order: order.into_boxed_slice(),
        })
    }

    /// How many backends the schedule was built for.
    fn backends(&self) -> usize {
        match self {
            Schedule::Uniform(backends) | Schedule::Table { backends, .. } => *backends,
        }
    }

    /// The backend that slot `slot` picks.
    fn at(&self, slot: usize) -> usize {
        match self {
            Schedule::Uniform(backends) => slot % backends,
            Schedule::Table { order, .. } => usize::from(order[slot % order.len()]),
        }
    }
}

/// Turns in smooth weighted order over a fixed set of weights, for anything that is not a
/// pool's backends (a route's `split` across pools): one `fetch_add` per turn.
#[derive(Debug)]
pub(crate) struct Rotation {
    schedule: Schedule,
    next: AtomicUsize,
}

impl Rotation {
    /// The rotation for `weights`, or `None` if its period is longer than [`MAX_SCHEDULE`].
    pub(crate) fn new(weights: &[u32]) -> Option<Self> {
        Some(Rotation {
            schedule: Schedule::new(weights)?,
            next: AtomicUsize::new(0),
        })
    }

    /// The index whose turn it is.
    pub(crate) fn next(&self) -> usize {
        self.schedule.at(self.next.fetch_add(1, Relaxed))
    }
}

/// Backends of one weight while building a schedule.
struct Group {
    weight: i64,
    /// Indices in increasing order.
    members: Vec<u16>,
    /// Picks of this group so far; members take turns.
    picks: usize,
}

impl Group {
    /// The member whose turn it is: the first of those picked least.
    fn candidate(&self) -> u16 {
        self.members[self.picks % self.members.len()]
    }

    /// How many times that member was picked.
    fn rounds(&self) -> i64 {
        (self.picks / self.members.len()) as i64
    }
}

fn gcd_of(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// nginx's dynamic pick over the backends `weight_of` says are eligible, at those weights;
/// `running` holds each backend's running weight.
fn smooth(
    endpoints: &[Endpoint],
    running: &[AtomicI64],
    weight_of: impl Fn(usize, &Endpoint) -> Option<u64>,
) -> Option<usize> {
    let mut total: i64 = 0;
    let mut best: Option<(usize, i64)> = None;
    for (index, (endpoint, running)) in endpoints.iter().zip(running).enumerate() {
        let Some(weight) = weight_of(index, endpoint) else {
            continue;
        };
        let weight = i64::try_from(weight).unwrap_or(i64::MAX / 1024);
        let current = running.fetch_add(weight, Relaxed) + weight;
        total += weight;
        if best.is_none_or(|(_, best_weight)| current > best_weight) {
            best = Some((index, current));
        }
    }
    let (index, _) = best?;
    running[index].fetch_sub(total, Relaxed);
    Some(index)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::atomic::{AtomicI64, AtomicUsize};
    use std::sync::{Arc, Barrier};

    use super::{MAX_BUILD_STEPS, MAX_SCHEDULE, Schedule};
    use crate::backend::{Endpoint, test_endpoints};
    use crate::balance::{Balancer, Tried};
    use crate::config::Algorithm;

    fn all(_: usize, endpoint: &Endpoint) -> Option<u64> {
        Some(u64::from(endpoint.weight.get()))
    }

    /// Like the proxy: configured weights × 1000.
    fn scaled(_: usize, endpoint: &Endpoint) -> Option<u64> {
        Some(u64::from(endpoint.weight.get()) * 1000)
    }

    fn round_robin(endpoints: &[Endpoint]) -> Balancer {
        Balancer::new(Algorithm::RoundRobin, endpoints)
    }

    fn sequence(weights: &[u32], picks: usize) -> Vec<usize> {
        let endpoints = test_endpoints(weights);
        let balancer = round_robin(&endpoints);
        (0..picks)
            .map(|_| {
                balancer
                    .pick(&endpoints, &Tried::default(), all)
                    .expect("a backend")
            })
            .collect()
    }

    /// nginx's algorithm run directly, from fresh running weights.
    fn dynamic_sequence(weights: &[u32], picks: usize) -> Vec<usize> {
        let endpoints = test_endpoints(weights);
        let running: Vec<AtomicI64> = weights.iter().map(|_| AtomicI64::new(0)).collect();
        (0..picks)
            .map(|_| super::smooth(&endpoints, &running, all).expect("a backend"))
            .collect()
    }

    fn counts(picks: &[usize], backends: usize) -> Vec<usize> {
        let mut counts = vec![0; backends];
        for &pick in picks {
            counts[pick] += 1;
        }
        counts
    }

    fn schedule(weights: &[u32]) -> Option<Schedule> {
        Schedule::new(weights)
    }

    #[test]
    fn weights_5_1_1_interleave_like_nginx() {
        assert_eq!(sequence(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn shares_are_exact_per_cycle() {
        let picks = sequence(&[1, 1, 2], 400);
        assert_eq!(counts(&picks, 3), [100, 100, 200]);
        // Exact in every cycle of four, in nginx's order.
        for cycle in picks.chunks(4) {
            assert_eq!(cycle, [2, 0, 1, 2]);
        }
    }

    #[test]
    fn schedule_matches_the_dynamic_algorithm() {
        // Seeded, so a failure reproduces.
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for _ in 0..200 {
            let backends = rng.usize(1..=12);
            let max = if rng.bool() { 4 } else { 60 };
            let weights: Vec<u32> = (0..backends).map(|_| rng.u32(1..=max)).collect();
            let period = weights.iter().sum::<u32>() as usize;
            assert_eq!(
                sequence(&weights, 2 * period),
                dynamic_sequence(&weights, 2 * period),
                "weights {weights:?}"
            );
        }
    }

    #[test]
    fn equal_weights_need_no_table() {
        assert_eq!(schedule(&[7, 7, 7]), Some(Schedule::Uniform(3)));
        // Even more backends than a table could hold.
        let many = vec![1; MAX_SCHEDULE + 5];
        assert_eq!(schedule(&many), Some(Schedule::Uniform(MAX_SCHEDULE + 5)));
        let picks = sequence(&[1; 1000], 2500);
        assert!(picks.iter().enumerate().all(|(i, &p)| p == i % 1000));
    }

    #[test]
    fn weights_are_divided_by_their_gcd() {
        let Some(Schedule::Table { order, .. }) = schedule(&[30_000, 10_000, 20_000]) else {
            panic!("a table");
        };
        assert_eq!(order.len(), 6);
        assert_eq!(
            sequence(&[30_000, 10_000, 20_000], 12),
            dynamic_sequence(&[3, 1, 2], 12)
        );
    }

    #[test]
    fn periods_over_the_cap_fall_back_to_the_dynamic_algorithm() {
        let weights = [MAX_SCHEDULE as u32, 1];
        assert_eq!(schedule(&weights), None);
        let period = MAX_SCHEDULE + 1;
        let picks = sequence(&weights, period);
        assert_eq!(counts(&picks, 2), [MAX_SCHEDULE, 1]);
        assert_eq!(picks, dynamic_sequence(&weights, period));
    }

    #[test]
    fn schedules_too_slow_to_build_fall_back_to_the_dynamic_algorithm() {
        // 300 distinct weights: a period of 45,150 picks, under the cap, but too much work.
        let weights: Vec<u32> = (1..=300).collect();
        let period = weights.iter().sum::<u32>() as usize;
        assert!(period <= MAX_SCHEDULE && period * weights.len() > MAX_BUILD_STEPS);
        assert_eq!(schedule(&weights), None);
        // A big pool with a few distinct weights still gets one.
        let weights: Vec<u32> = (0..4096).map(|i| 1 + i % 3).collect();
        assert!(matches!(schedule(&weights), Some(Schedule::Table { .. })));
    }

    #[test]
    fn concurrent_picks_give_exact_shares() {
        for (weights, rounds) in [(vec![3, 1], 2_500), (vec![5, 1, 1], 1_000)] {
            let endpoints = Arc::new(test_endpoints(&weights));
            let balancer = Arc::new(round_robin(&endpoints));
            let period = weights.iter().sum::<u32>() as usize;
            let totals: Arc<Vec<AtomicUsize>> =
                Arc::new(weights.iter().map(|_| AtomicUsize::new(0)).collect());
            let barrier = Arc::new(Barrier::new(4));
            let uneven = Arc::new(AtomicUsize::new(0));
            // 4 threads, one period each per round, then a check that the shares are exact.
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (endpoints, balancer) = (Arc::clone(&endpoints), Arc::clone(&balancer));
                    let (totals, barrier) = (Arc::clone(&totals), Arc::clone(&barrier));
                    let (weights, uneven) = (weights.clone(), Arc::clone(&uneven));
                    std::thread::spawn(move || {
                        for round in 1..=rounds {
                            for _ in 0..period {
                                let index = balancer
                                    .pick(&endpoints, &Tried::default(), scaled)
                                    .expect("a backend");
                                totals[index].fetch_add(1, Relaxed);
                            }
                            if barrier.wait().is_leader()
                                && totals.iter().zip(&weights).any(|(total, &weight)| {
                                    total.load(Relaxed) != 4 * round * weight as usize
                                })
                            {
                                uneven.fetch_add(1, Relaxed);
                            }
                            barrier.wait();
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().expect("thread finished");
            }
            let totals: Vec<usize> = totals.iter().map(|total| total.load(Relaxed)).collect();
            let expected: Vec<usize> = weights.iter().map(|&w| 4 * rounds * w as usize).collect();
            assert_eq!(totals, expected, "weights {weights:?}");
            assert_eq!(uneven.load(Relaxed), 0, "rounds with uneven shares");
        }
    }

    #[test]
    fn excluded_backends_are_skipped() {
        let endpoints = test_endpoints(&[1, 1, 1]);
        let balancer = round_robin(&endpoints);
        let mut tried = Tried::default();
        tried.push(0);
        tried.push(2);
        for _ in 0..5 {
            assert_eq!(balancer.pick(&endpoints, &tried, all), Some(1));
        }
        tried.push(1);
        assert_eq!(balancer.pick(&endpoints, &tried, all), None);
    }

    #[test]
    fn retries_take_no_turn_from_the_schedule() {
        // Backend 0 fails every attempt without being marked down; each failure is retried.
        let endpoints = test_endpoints(&[1, 1]);
        let balancer = round_robin(&endpoints);
        let mut first_attempts = [0; 2];
        for _ in 0..100 {
            let mut tried = Tried::default();
            let index = balancer
                .pick(&endpoints, &tried, scaled)
                .expect("a backend");
            first_attempts[index] += 1;
            if index == 0 {
                tried.push(0);
                assert_eq!(balancer.pick(&endpoints, &tried, scaled), Some(1));
            }
        }
        // Not every request is sent to the failing backend first.
        assert_eq!(first_attempts, [50, 50]);
    }

    #[test]
    fn a_down_backends_share_goes_to_the_others_by_weight() {
        let endpoints = test_endpoints(&[2, 1, 1]);
        let balancer = round_robin(&endpoints);
        let down = |index: usize, endpoint: &Endpoint| {
            if index == 2 {
                None
            } else {
                scaled(index, endpoint)
            }
        };
        let picks: Vec<_> = (0..1200)
            .map(|_| {
                balancer
                    .pick(&endpoints, &Tried::default(), down)
                    .expect("a backend")
            })
            .collect();
        assert_eq!(counts(&picks, 3), [800, 400, 0]);
        // Back up: the schedule resumes where it is, exact per period again.
        let picks: Vec<_> = (0..400)
            .map(|_| {
                balancer
                    .pick(&endpoints, &Tried::default(), scaled)
                    .expect("a backend")
            })
            .collect();
        assert_eq!(counts(&picks, 3), [200, 100, 100]);
    }

    #[test]
    fn a_pick_that_finds_nothing_hands_its_slot_back() {
        // Like the proxy failing open: every pick first finds nothing healthy, then picks
        // among all backends. Both backends must still take turns.
        let endpoints = test_endpoints(&[1, 1]);
        let balancer = round_robin(&endpoints);
        let picks: Vec<_> = (0..6)
            .map(|_| {
                assert_eq!(
                    balancer.pick(&endpoints, &Tried::default(), |_, _| None),
                    None
                );
                balancer
                    .pick(&endpoints, &Tried::default(), scaled)
                    .expect("a backend")
            })
            .collect();
        assert_eq!(picks, [0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn effective_weights_steer_the_shares() {
        // A backend ramping up under slow start at a quarter of its weight.
        let endpoints = test_endpoints(&[1, 1]);
        let balancer = round_robin(&endpoints);
        let ramping = |index: usize, _: &Endpoint| Some(if index == 0 { 250 } else { 1000 });
        let picks: Vec<_> = (0..125)
            .map(|_| {
                balancer
                    .pick(&endpoints, &Tried::default(), ramping)
                    .expect("a backend")
            })
            .collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 25);
    }

    #[test]
    fn a_ramp_that_starts_later_is_noticed_and_its_end_restores_the_schedule() {
        let endpoints = test_endpoints(&[1, 1, 2]);
        let balancer = round_robin(&endpoints);
        let ramp = Cell::new(None::<u64>);
        let weight_of = |index: usize, endpoint: &Endpoint| match ramp.get() {
            Some(weight) if index == 0 => Some(weight),
            _ => scaled(index, endpoint),
        };
        let picks = |n: usize| -> Vec<usize> {
            let picks: Vec<_> = (0..n)
                .map(|_| {
                    balancer
                        .pick(&endpoints, &Tried::default(), weight_of)
                        .expect("a backend")
                })
                .collect();
            counts(&picks, 3)
        };
        assert_eq!(picks(40), [10, 10, 20]);
        // Backend 0 at a tenth of its weight: the schedule lands on it in the second pick (the
        // order is 2 0 1 2), and from then on the dynamic algorithm gives it 100 / 3100.
        ramp.set(Some(100));
        let ramping = picks(4000);
        assert!(ramping[0].abs_diff(4000 * 100 / 3100) <= 2, "{ramping:?}");
        // Ramp over: the next pick re-learns the scale, and every period is exact again.
        ramp.set(None);
        assert_eq!(picks(40), [10, 10, 20]);
    }
}
