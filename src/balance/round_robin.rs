//! Smooth weighted round-robin, nginx's algorithm, without a lock.
//!
//! Each pick adds every eligible backend's weight to its running weight, takes the largest
//! (first one wins a tie) and subtracts the total from the winner. Weights 5,1,1 give
//! `a a b a c a a`: never five in a row. The running weights are per-backend atomics, so
//! concurrent picks never block; a race can hand two callers the same backend, but the winner's
//! running weight then drops by twice the total, so the long-run shares stay exact.

use std::sync::atomic::Ordering::Relaxed;

use crate::backend::Endpoint;

pub(super) fn pick(
    endpoints: &[Endpoint],
    weight_of: impl Fn(usize, &Endpoint) -> Option<u64>,
) -> Option<usize> {
    let mut total: i64 = 0;
    let mut best: Option<(usize, i64)> = None;
    for (index, endpoint) in endpoints.iter().enumerate() {
        let Some(weight) = weight_of(index, endpoint) else {
            continue;
        };
        let weight = i64::try_from(weight).unwrap_or(i64::MAX / 1024);
        let current = endpoint.backend.rr_weight.fetch_add(weight, Relaxed) + weight;
        total += weight;
        if best.is_none_or(|(_, best_weight)| current > best_weight) {
            best = Some((index, current));
        }
    }
    let (index, _) = best?;
    endpoints[index].backend.rr_weight.fetch_sub(total, Relaxed);
    Some(index)
}

#[cfg(test)]
mod tests {
    use crate::backend::{Endpoint, test_endpoints};
    use crate::balance::{Balancer, Tried};
    use crate::config::Algorithm;

    fn all(_: usize, endpoint: &Endpoint) -> Option<u64> {
        Some(u64::from(endpoint.weight.get()))
    }

    fn except(tried: &Tried) -> impl Fn(usize, &Endpoint) -> Option<u64> + '_ {
        move |index, endpoint| (!tried.contains(index)).then(|| u64::from(endpoint.weight.get()))
    }

    fn sequence(weights: &[u32], picks: usize) -> Vec<usize> {
        let endpoints = test_endpoints(weights);
        let balancer = Balancer::new(Algorithm::RoundRobin);
        (0..picks)
            .map(|_| balancer.pick(&endpoints, all).expect("a backend"))
            .collect()
    }

    #[test]
    fn weights_5_1_1_interleave_like_nginx() {
        assert_eq!(sequence(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn shares_are_exact_per_cycle() {
        let picks = sequence(&[1, 1, 2], 400);
        let count = |i| picks.iter().filter(|&&p| p == i).count();
        assert_eq!((count(0), count(1), count(2)), (100, 100, 200));
        // Exact in every cycle of four, in nginx's order.
        for cycle in picks.chunks(4) {
            assert_eq!(cycle, [2, 0, 1, 2]);
        }
    }

    #[test]
    fn excluded_backends_are_skipped() {
        let endpoints = test_endpoints(&[1, 1, 1]);
        let balancer = Balancer::new(Algorithm::RoundRobin);
        let mut tried = Tried::default();
        tried.push(0);
        tried.push(2);
        for _ in 0..5 {
            assert_eq!(balancer.pick(&endpoints, except(&tried)), Some(1));
        }
        tried.push(1);
        assert_eq!(balancer.pick(&endpoints, except(&tried)), None);
    }

    #[test]
    fn effective_weights_steer_the_shares() {
        // A backend ramping up under slow start at a quarter of its weight.
        let endpoints = test_endpoints(&[1, 1]);
        let balancer = Balancer::new(Algorithm::RoundRobin);
        let ramping = |index: usize, _: &Endpoint| Some(if index == 0 { 250 } else { 1000 });
        let picks: Vec<_> = (0..125)
            .map(|_| balancer.pick(&endpoints, ramping).expect("a backend"))
            .collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 25);
    }

    #[test]
    fn concurrent_picks_keep_exact_long_run_shares() {
        let endpoints = std::sync::Arc::new(test_endpoints(&[3, 1]));
        let balancer = std::sync::Arc::new(Balancer::new(Algorithm::RoundRobin));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let endpoints = endpoints.clone();
                let balancer = balancer.clone();
                std::thread::spawn(move || {
                    let mut counts = [0usize; 2];
                    for _ in 0..10_000 {
                        let index = balancer.pick(&endpoints, all);
                        counts[index.expect("a backend")] += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut totals = [0usize; 2];
        for thread in threads {
            let counts = thread.join().expect("thread finished");
            totals[0] += counts[0];
            totals[1] += counts[1];
        }
        // 40_000 picks at 3:1; races may shift a pick or two, never the share.
        assert!(totals[0].abs_diff(30_000) <= 8, "{totals:?}");
        assert_eq!(totals[0] + totals[1], 40_000);
    }
}
