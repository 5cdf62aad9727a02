//! Consistent hashing with bounded load: a weighted hash ring (ketama) over the backends'
//! configured addresses.
//!
//! Each backend owns [`POINTS_PER_WEIGHT`] points per unit of weight on a 64-bit ring, at
//! `xxh3_64_with_seed(address as written, point number)`; a request's key hash (xxh3 too) goes
//! to the first point at or after it. Nothing random and no process-dependent hasher goes in,
//! so every instance with the same backends and weights maps a key to the same backend, across
//! restarts and machines, and a reload that keeps them rebuilds the same ring.
//!
//! Why a ring rather than Maglev (Envoy's default): a backend's points do not depend on the
//! other backends (while the pool has at most [`MAX_POINTS`] points), so removing a backend
//! moves *exactly* its keys and adding one moves only the keys its points capture (about
//! 1/(N+1)); Maglev's permutation table guarantees neither (the paper measures a few percent of
//! extra movement). Skipping a backend (down, tried, at its cap, over the load bound) is the
//! same as removing it: the walk goes on to the next point's backend, which is where the key
//! would live without it, and the key comes back when the backend does. The price: a lookup
//! is an index by the key's top bits plus a binary search of one bucket (a point or two) where
//! Maglev reads one slot, the table is bigger (16 bytes a point with the index), and keys spread
//! less evenly (±9 % of a weight-1 backend's share where Maglev is within a slot). Maglev's
//! extra movement, measured on 10,000 keys with 65,537 slots: 0.1–0.2 % of the other backends'
//! keys on a removal, ~0.2 % between old backends on an addition.
//!
//! Bounded load (Mirrokni et al., "Consistent Hashing with Bounded Loads", as HAProxy's
//! `hash-balance-factor`): with a factor `c` (percent), a backend with more than
//! `c/100 × its weight's share of the eligible backends' in-flight requests + 1` in flight is
//! passed over for the next one along the ring. The totals are only summed when the key's
//! backend has two or more in flight, so an idle or lightly loaded pool pays nothing for it.
//!
//! A request without a key is balanced by smooth weighted round-robin.

use metrics::Counter;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::RoundRobin;
use crate::backend::Endpoint;

/// Ring points per unit of configured weight: ketama's 160 rounded to a power of two; the
/// share of a weight-1 backend then varies by about ±9 % (one standard deviation).
pub(super) const POINTS_PER_WEIGHT: u64 = 128;

/// The most points a ring has (6 MiB): 4,096 backends of weight 1. Bigger pools (or weights)
/// get proportionally fewer points per weight, and then a weight change moves other keys too.
pub(super) const MAX_POINTS: u64 = 1 << 19;

/// Ring points walked before the pick falls back to a scan of all backends: enough to pass
/// many skipped backends in a small pool without an unbounded walk when most are down.
const MAX_WALK: usize = 256;

/// The hash of a request's key, as the ring places it.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// A pool's ring, built from its backends' configured addresses and weights.
#[derive(Debug)]
pub struct ConsistentHash {
    /// Point positions, ascending.
    points: Box<[u64]>,
    /// For each value `b` of a position's top `bits` bits: how many points lie below
    /// `b << (64 - bits)`; one entry more at the end. A lookup binary-searches one bucket (a
    /// few points) instead of the whole ring: a few cache misses instead of ~20 at 4,096
    /// backends.
    buckets: Box<[u32]>,
    /// How many top bits pick a bucket: about log2 of the points, so buckets hold ~1–2 each.
    bits: u32,
    /// The endpoint index owning each point.
    owners: Box<[u32]>,
    /// Each endpoint's share of the ring, in percent.
    shares: Box<[f64]>,
    /// Bounded load, percent of the mean; 0 = unbounded.
    balance_factor: u64,
    /// Picks for requests without a key.
    keyless: RoundRobin,
    /// Picks that passed the key's first eligible backend over for its load
    /// (`fulcrum_hash_spilled_total`).
    spilled: Counter,
}

impl ConsistentHash {
    /// The ring of `endpoints`, in their order; `balance_factor` as in `hash_balance_factor`.
    /// Spills past the load bound are counted in `spilled`.
    pub(super) fn new(endpoints: &[Endpoint], balance_factor: u16, spilled: Counter) -> Self {
        let total_weight: u64 = endpoints.iter().map(|e| u64::from(e.weight.get())).sum();
        let wanted = total_weight.saturating_mul(POINTS_PER_WEIGHT);
        let counts: Vec<u64> = endpoints
            .iter()
            .map(|endpoint| {
                let weight = u64::from(endpoint.weight.get());
                if wanted <= MAX_POINTS {
                    weight * POINTS_PER_WEIGHT
                } else {
                    // Scaled down to fit; every backend keeps at least one point.
                    let scaled = u128::from(weight) * u128::from(MAX_POINTS)
                        / u128::from(total_weight.max(1));
                    u64::try_from(scaled).unwrap_or(1).max(1)
                }
            })
            .collect();
        let total = usize::try_from(counts.iter().sum::<u64>()).unwrap_or(0);
        let mut ring: Vec<(u64, u32)> = Vec::with_capacity(total);
        for ((index, endpoint), &count) in endpoints.iter().enumerate().zip(&counts) {
            let Ok(owner) = u32::try_from(index) else {
                break;
            };
            let address = endpoint.backend.name.as_bytes();
            ring.extend((0..count).map(|point| (xxh3_64_with_seed(address, point), owner)));
        }
        // Ties (a 2^-64 chance) go to the lower address, so the order never depends on the
        // order backends are listed in.
        let name = |owner: u32| endpoints[owner as usize].backend.name.as_bytes();
        ring.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| name(a.1).cmp(name(b.1))));
        let mut shares = vec![0.0; endpoints.len()];
        for (position, &(point, owner)) in ring.iter().enumerate() {
            // A point owns the arc from the previous point (exclusive) up to itself.
            let previous = match position {
                0 => ring.last().map_or(point, |last| last.0),
                _ => ring[position - 1].0,
            };
            let arc = match point.wrapping_sub(previous) {
                0 if ring.len() == 1 => 2f64.powi(64),
                arc => arc as f64,
            };
            shares[owner as usize] += arc / 2f64.powi(64) * 100.0;
        }
        let points: Box<[u64]> = ring.iter().map(|&(point, _)| point).collect();
        let bits = (usize::BITS - 1 - points.len().max(1).leading_zeros()).clamp(1, 24);
        let mut buckets = Vec::with_capacity((1 << bits) + 1);
        let mut below = 0;
        for bucket in 0..=(1u64 << bits) {
            while below < points.len() && points[below] >> (64 - bits) < bucket {
                below += 1;
            }
            buckets.push(u32::try_from(below).unwrap_or(u32::MAX));
        }
        ConsistentHash {
            buckets: buckets.into_boxed_slice(),
            bits,
            points,
            owners: ring.iter().map(|&(_, owner)| owner).collect(),
            shares: shares.into_boxed_slice(),
            balance_factor: u64::from(balance_factor),
            keyless: RoundRobin::new(endpoints),
            spilled,
        }
    }

    /// The share of the ring (percent) of the endpoint at `index`.
    pub(super) fn share(&self, index: usize) -> Option<f64> {
        self.shares.get(index).copied()
    }

    /// The backend for `key`: the first along the ring from it that `weight_of` allows and that
    /// is within the load bound. Without a key, round-robin (`retry` as there).
    pub(super) fn pick(
        &self,
        endpoints: &[Endpoint],
        key: Option<u64>,
        retry: bool,
        weight_of: impl Fn(usize, &Endpoint) -> Option<u64>,
    ) -> Option<usize> {
        let Some(key) = key else {
            return self.keyless.pick(endpoints, retry, weight_of);
        };
        if self.points.is_empty() || self.shares.len() != endpoints.len() {
            return None;
        }
        let len = self.points.len();
        let start = self.position(key) % len;
        let mut load = Load::default();
        // The first allowed backend, in case every allowed one is over the bound.
        let mut first = None;
        let mut previous = None;
        for step in 0..len.min(MAX_WALK) {
            let position = if start + step >= len {
                start + step - len
            } else {
                start + step
            };
            let index = self.owners[position] as usize;
            if previous.replace(index) == Some(index) {
                continue;
            }
            if let Some(picked) = self.consider(endpoints, index, &weight_of, &mut load, &mut first)
            {
                return Some(picked);
            }
        }
        if len > MAX_WALK {
            // Mostly skipped backends on the walk: every backend, in order from the key's own.
            let owner = self.owners[start] as usize;
            for offset in 0..endpoints.len() {
                let index = (owner + offset) % endpoints.len();
                if let Some(picked) =
                    self.consider(endpoints, index, &weight_of, &mut load, &mut first)
                {
                    return Some(picked);
                }
            }
        }
        first
    }

    /// How many points lie below `key`: the position of the first at or after it.
    fn position(&self, key: u64) -> usize {
        let bucket = (key >> (64 - self.bits)) as usize;
        let (Some(&low), Some(&high)) = (self.buckets.get(bucket), self.buckets.get(bucket + 1))
        else {
            return self.points.partition_point(|&point| point < key);
        };
        let (low, high) = (low as usize, high as usize);
        low + self.points[low..high].partition_point(|&point| point < key)
    }

    /// `Some(index)` if the backend at `index` is allowed and within the bound; remembers the
    /// first allowed one in `first`, and counts a spill when the bound passes one over.
    fn consider(
        &self,
        endpoints: &[Endpoint],
        index: usize,
        weight_of: &impl Fn(usize, &Endpoint) -> Option<u64>,
        load: &mut Load,
        first: &mut Option<usize>,
    ) -> Option<usize> {
        let endpoint = &endpoints[index];
        let weight = weight_of(index, endpoint)?;
        let spilled = first.is_some();
        first.get_or_insert(index);
        if self.balance_factor != 0 {
            let in_flight = endpoint.backend.in_flight() as u64;
            // At most one in flight is never over: the bound is always above one.
            if in_flight > 1
                && load.over(endpoints, weight_of, self.balance_factor, in_flight, weight)
            {
                return None;
            }
        }
        if spilled {
            self.spilled.increment(1);
        }
        Some(index)
    }
}

/// The eligible backends' in-flight requests and weights, summed once per pick when needed.
#[derive(Default)]
struct Load {
    totals: Option<(u64, u64)>,
}

impl Load {
    /// Whether a backend with `in_flight` requests at `weight` is over `factor` percent of its
    /// share of the eligible backends' in-flight requests, plus one:
    /// `in_flight > factor/100 × total × weight/total_weight + 1`, without division.
    fn over(
        &mut self,
        endpoints: &[Endpoint],
        weight_of: &impl Fn(usize, &Endpoint) -> Option<u64>,
        factor: u64,
        in_flight: u64,
        weight: u64,
    ) -> bool {
        let (total, total_weight) = *self.totals.get_or_insert_with(|| {
            endpoints
                .iter()
                .enumerate()
                .filter_map(|(index, endpoint)| {
                    weight_of(index, endpoint)
                        .map(|weight| (endpoint.backend.in_flight() as u64, weight))
                })
                .fold((0, 0), |(load, weights), (l, w)| {
                    (load + l, weights.saturating_add(w))
                })
        });
        let total_weight = u128::from(total_weight.max(weight));
        u128::from(in_flight) * 100 * total_weight
            > u128::from(factor) * u128::from(total) * u128::from(weight) + 100 * total_weight
    }
}

#[cfg(test)]
mod tests;
