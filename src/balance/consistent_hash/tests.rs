//! The ring's guarantees over 10,000 keys: determinism, exact movement on removal, about
//! 1/(N+1) on addition, weights, skipping, and bounded load.

use std::net::SocketAddr;

use metrics::Counter;

use super::{ConsistentHash, key_hash};
use crate::backend::{Endpoint, test_endpoints};
use crate::balance::{Balancer, Tried};

const KEYS: u64 = 10_000;

fn ring(endpoints: &[Endpoint], factor: u16) -> ConsistentHash {
    ConsistentHash::new(endpoints, factor, Counter::noop())
}

fn all(_: usize, endpoint: &Endpoint) -> Option<u64> {
    Some(u64::from(endpoint.weight.get()))
}

/// The backend address each of the keys `0..KEYS` maps to.
fn mapping(endpoints: &[Endpoint], ring: &ConsistentHash) -> Vec<SocketAddr> {
    (0..KEYS)
        .map(|key| {
            let index = ring
                .pick(endpoints, Some(key_hash(&key.to_le_bytes())), false, all)
                .expect("a backend");
            endpoints[index].backend.address
        })
        .collect()
}

#[test]
fn the_same_backends_map_every_key_the_same_whatever_their_order() {
    let endpoints = test_endpoints(&[1, 2, 1, 3, 1]);
    let first = mapping(&endpoints, &ring(&endpoints, 0));
    assert_eq!(first, mapping(&endpoints, &ring(&endpoints, 0)));
    let reversed: Vec<Endpoint> = endpoints.iter().rev().cloned().collect();
    assert_eq!(first, mapping(&reversed, &ring(&reversed, 0)));
}

#[test]
fn a_known_key_maps_to_a_known_backend_on_every_machine() {
    // xxh3 is specified, so this holds on any platform and build: a change here changes which
    // backend every deployed key goes to.
    let endpoints = test_endpoints(&[1, 1, 1, 1]);
    let ring = ring(&endpoints, 0);
    let picks: Vec<usize> = ["alice", "bob", "carol", "dave", "erin", "frank"]
        .iter()
        .map(|key| {
            ring.pick(&endpoints, Some(key_hash(key.as_bytes())), false, all)
                .expect("a backend")
        })
        .collect();
    assert_eq!(picks, GOLDEN);
}

/// What [`a_known_key_maps_to_a_known_backend_on_every_machine`] expects.
const GOLDEN: [usize; 6] = [2, 2, 2, 3, 2, 2];

#[test]
fn removing_a_backend_moves_only_its_keys() {
    let endpoints = test_endpoints(&[1; 10]);
    let before = mapping(&endpoints, &ring(&endpoints, 0));
    let removed = endpoints[3].backend.address;
    let rest: Vec<Endpoint> = endpoints
        .iter()
        .filter(|endpoint| endpoint.backend.address != removed)
        .cloned()
        .collect();
    let after = mapping(&rest, &ring(&rest, 0));
    let mut moved = 0;
    for (old, new) in before.iter().zip(&after) {
        if *old == removed {
            moved += 1;
        } else {
            assert_eq!(old, new, "a key of a kept backend moved");
        }
    }
    // Its share of the keys: a tenth, give or take the ring's unevenness.
    assert!((500..=1_600).contains(&moved), "{moved} keys moved");
}

#[test]
fn adding_a_backend_moves_about_one_in_n_plus_one_keys_all_to_it() {
    let endpoints = test_endpoints(&[1; 11]);
    let before = mapping(&endpoints[..10], &ring(&endpoints[..10], 0));
    let after = mapping(&endpoints, &ring(&endpoints, 0));
    let added = endpoints[10].backend.address;
    let mut moved = 0;
    for (old, new) in before.iter().zip(&after) {
        if old != new {
            assert_eq!(*new, added, "a key moved between two old backends");
            moved += 1;
        }
    }
    // 1/11 of 10,000 is 909.
    assert!((600..=1_250).contains(&moved), "{moved} keys moved");
}

#[test]
fn weights_set_the_shares_which_sum_to_the_whole_ring() {
    let endpoints = test_endpoints(&[1, 3, 1, 3]);
    let ring = ring(&endpoints, 0);
    let shares: Vec<f64> = (0..4).map(|i| ring.share(i).expect("a share")).collect();
    let total: f64 = shares.iter().sum();
    assert!((total - 100.0).abs() < 1e-6, "{shares:?}");
    for heavy in [1, 3] {
        for light in [0, 2] {
            let ratio = shares[heavy] / shares[light];
            assert!((2.0..=4.5).contains(&ratio), "{shares:?}");
        }
    }
    let keys = mapping(&endpoints, &ring);
    let on = |i: usize| {
        keys.iter()
            .filter(|address| **address == endpoints[i].backend.address)
            .count() as f64
    };
    assert!(on(1) / on(0) > 2.0 && on(3) / on(2) > 2.0);
}

#[test]
fn a_skipped_backend_loses_its_keys_as_if_removed_and_gets_them_back() {
    let endpoints = test_endpoints(&[1; 6]);
    let ring6 = ring(&endpoints, 0);
    let rest: Vec<Endpoint> = endpoints
        .iter()
        .filter(|endpoint| endpoint.backend.address != endpoints[2].backend.address)
        .cloned()
        .collect();
    let without = mapping(&rest, &ring(&rest, 0));
    let down = |index: usize, endpoint: &Endpoint| (index != 2).then(|| all(index, endpoint))?;
    for (key, expected) in (0..KEYS).zip(&without) {
        let index = ring6
            .pick(&endpoints, Some(key_hash(&key.to_le_bytes())), false, down)
            .expect("a backend");
        assert_eq!(endpoints[index].backend.address, *expected);
    }
    assert_eq!(mapping(&endpoints, &ring6), mapping(&endpoints, &ring6));
    let none = ring6.pick(&endpoints, Some(1), false, |_, _| None);
    assert_eq!(none, None, "nothing eligible");
}

#[test]
fn many_skipped_backends_in_a_big_pool_still_find_the_eligible_one() {
    let endpoints = test_endpoints(&[1; 300]);
    let ring = ring(&endpoints, 0);
    let only = |index: usize, endpoint: &Endpoint| (index == 123).then(|| all(index, endpoint))?;
    for key in 0..200u64 {
        assert_eq!(ring.pick(&endpoints, Some(key), false, only), Some(123));
    }
}

#[test]
fn a_backend_over_the_load_bound_is_passed_over_for_the_next_along_the_ring() {
    let endpoints = test_endpoints(&[1, 1, 1, 1]);
    let bounded = ring(&endpoints, 125);
    let unbounded = ring(&endpoints, 0);
    let key = Some(key_hash(b"hot"));
    let home = bounded
        .pick(&endpoints, key, false, all)
        .expect("a backend");
    // Idle pool, then one in flight: never over (the bound is at least one).
    let mut held = vec![endpoints[home].backend.start_request()];
    assert_eq!(bounded.pick(&endpoints, key, false, all), Some(home));
    // Two in flight, all on `home`: 2 > 1.25 × 2/4 + 1, so the key spills.
    held.push(endpoints[home].backend.start_request());
    let spill = bounded
        .pick(&endpoints, key, false, all)
        .expect("a backend");
    assert_ne!(spill, home);
    assert_eq!(unbounded.pick(&endpoints, key, false, all), Some(home));
    // The spill always goes to the same next backend along the ring.
    assert_eq!(bounded.pick(&endpoints, key, false, all), Some(spill));
    // With load everywhere, `home` is within its bound again: 2 ≤ 1.25 × 5/4 + 1.
    held.push(endpoints[spill].backend.start_request());
    let others: Vec<usize> = (0..4).filter(|&i| i != home && i != spill).collect();
    held.extend(others.iter().map(|&i| endpoints[i].backend.start_request()));
    assert_eq!(bounded.pick(&endpoints, key, false, all), Some(home));
    drop(held);
    assert_eq!(bounded.pick(&endpoints, key, false, all), Some(home));
}

#[test]
fn when_every_eligible_backend_is_over_the_bound_the_keys_own_one_serves() {
    // Only `home` is eligible, with plenty in flight: the bound cannot be met, no 503 for it.
    let endpoints = test_endpoints(&[1, 1]);
    let ring = ring(&endpoints, 100);
    let key = Some(key_hash(b"k"));
    let home = ring.pick(&endpoints, key, false, all).expect("a backend");
    let _held: Vec<_> = (0..5)
        .map(|_| endpoints[home].backend.start_request())
        .collect();
    let only_home =
        |index: usize, endpoint: &Endpoint| (index == home).then(|| all(index, endpoint))?;
    assert_eq!(ring.pick(&endpoints, key, false, only_home), Some(home));
}

#[test]
fn requests_without_a_key_go_round_robin() {
    let endpoints = test_endpoints(&[1, 1, 1]);
    let ring = ring(&endpoints, 0);
    let picks: Vec<usize> = (0..6)
        .map(|_| ring.pick(&endpoints, None, false, all).expect("a backend"))
        .collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
}

#[test]
fn the_balancer_hashes_the_key_skips_tried_backends_and_honours_a_pin() {
    let endpoints = test_endpoints(&[1; 5]);
    let balancer = Balancer::consistent_hash(&endpoints, 0, Counter::noop());
    let key = Some(key_hash(b"user-7"));
    let mut tried = Tried::new(key, None, false);
    let first = balancer.pick(&endpoints, &tried, all).expect("a backend");
    assert_eq!(balancer.pick(&endpoints, &tried, all), Some(first));
    tried.push(first);
    let retry = balancer.pick(&endpoints, &tried, all).expect("a backend");
    assert_ne!(retry, first);
    assert_eq!(tried.last(), Some(first));
    // A pin wins over the key while its backend is eligible, for any algorithm.
    let pinned = (first + 1) % 5;
    let tried = Tried::new(key, Some(pinned), false);
    assert_eq!(balancer.pick(&endpoints, &tried, all), Some(pinned));
    let least = Balancer::new(crate::config::Algorithm::LeastConnections, &endpoints);
    for _ in 0..3 {
        assert_eq!(least.pick(&endpoints, &tried, all), Some(pinned));
    }
    let pinned_down =
        |index: usize, endpoint: &Endpoint| (index != pinned).then(|| all(index, endpoint))?;
    assert_ne!(balancer.pick(&endpoints, &tried, pinned_down), Some(pinned));
}

#[test]
fn the_bucket_index_finds_the_same_point_as_a_search_of_the_whole_ring() {
    for weights in [vec![1], vec![1, 2, 3], vec![1; 40], vec![7; 300]] {
        let endpoints = test_endpoints(&weights);
        let ring = ring(&endpoints, 0);
        let mut key: u64 = 12345;
        for _ in 0..5_000 {
            key = key
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let whole = ring.points.partition_point(|&point| point < key);
            assert_eq!(ring.position(key), whole, "key {key:x}");
        }
        let last = ring.points[ring.points.len() - 1];
        for edge in [0, u64::MAX, ring.points[0], last, last.wrapping_add(1)] {
            let whole = ring.points.partition_point(|&point| point < edge);
            assert_eq!(ring.position(edge), whole, "key {edge:x}");
        }
    }
}

#[test]
fn a_pool_too_big_for_the_point_budget_keeps_its_weights() {
    // 4,096 backends of weights 1, 2, 3: twice the budget, so about 64 points per weight.
    let weights: Vec<u32> = (0..4096).map(|i| 1 + i % 3).collect();
    let endpoints = test_endpoints(&weights);
    let ring = ring(&endpoints, 0);
    assert!(ring.points.len() as u64 <= super::MAX_POINTS);
    assert!(ring.points.len() as u64 > super::MAX_POINTS * 9 / 10);
    let (mut ones, mut threes) = (0.0, 0.0);
    for (index, weight) in weights.iter().enumerate() {
        let share = ring.share(index).expect("a share");
        match weight {
            1 => ones += share,
            3 => threes += share,
            _ => {}
        }
    }
    assert!((2.7..=3.3).contains(&(threes / ones)), "{threes} / {ones}");
}
