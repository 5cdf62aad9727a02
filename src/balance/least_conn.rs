//! Weighted least-connections: the fewest in-flight requests per unit of weight wins.
//!
//! The scan starts at a rotating offset, so backends with equal load take turns instead of the
//! first one always winning. Loads are compared by cross-multiplying (`a/wa < b/wb` as
//! `a*wb < b*wa`), so there is no division and no rounding.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use crate::backend::Endpoint;

pub(super) fn pick(
    endpoints: &[Endpoint],
    rotor: &AtomicUsize,
    weight_of: impl Fn(usize, &Endpoint) -> Option<u64>,
) -> Option<usize> {
    let len = endpoints.len();
    if len == 0 {
        return None;
    }
    let start = rotor.fetch_add(1, Relaxed) % len;
    let mut best: Option<(usize, u64, u64)> = None;
    for offset in 0..len {
        let index = if start + offset >= len {
            start + offset - len
        } else {
            start + offset
        };
        let endpoint = &endpoints[index];
        let Some(weight) = weight_of(index, endpoint) else {
            continue;
        };
        let load = endpoint.backend.in_flight() as u64;
        let better = match best {
            None => true,
            Some((_, best_load, best_weight)) => {
                u128::from(load) * u128::from(best_weight)
                    < u128::from(best_load) * u128::from(weight)
            }
        };
        if better {
            best = Some((index, load, weight));
        }
    }
    best.map(|(index, _, _)| index)
}

#[cfg(test)]
mod tests {
    use crate::backend::{Endpoint, test_endpoints};
    use crate::balance::{Balancer, Tried};
    use crate::config::Algorithm;

    fn all(_: usize, endpoint: &Endpoint) -> Option<u64> {
        Some(u64::from(endpoint.weight.get()))
    }

    #[test]
    fn picks_the_least_loaded() {
        let endpoints = test_endpoints(&[1, 1, 1]);
        let balancer = Balancer::new(Algorithm::LeastConnections, &endpoints);
        let _a = endpoints[0].backend.start_request();
        let _b = endpoints[1].backend.start_request();
        for _ in 0..3 {
            assert_eq!(balancer.pick(&endpoints, &Tried::default(), all), Some(2));
        }
    }

    #[test]
    fn load_is_divided_by_weight() {
        let endpoints = test_endpoints(&[1, 4]);
        let balancer = Balancer::new(Algorithm::LeastConnections, &endpoints);
        // 1 in flight on weight 1 (load 1) vs 3 on weight 4 (load 0.75): the heavy one wins.
        let _a = endpoints[0].backend.start_request();
        let _b: Vec<_> = (0..3)
            .map(|_| endpoints[1].backend.start_request())
            .collect();
        assert_eq!(balancer.pick(&endpoints, &Tried::default(), all), Some(1));
    }

    #[test]
    fn ties_rotate() {
        let endpoints = test_endpoints(&[1, 1, 1]);
        let balancer = Balancer::new(Algorithm::LeastConnections, &endpoints);
        let picks: Vec<_> = (0..6)
            .map(|_| {
                balancer
                    .pick(&endpoints, &Tried::default(), all)
                    .expect("a backend")
            })
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn guards_release_load_on_drop() {
        let endpoints = test_endpoints(&[1, 1]);
        let guard = endpoints[0].backend.start_request();
        assert_eq!(endpoints[0].backend.in_flight(), 1);
        drop(guard);
        assert_eq!(endpoints[0].backend.in_flight(), 0);
    }
}
