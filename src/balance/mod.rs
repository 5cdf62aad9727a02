//! Backend selection: one file per algorithm behind the small [`Balancer`] enum.
//!
//! Selection is synchronous, allocation-free and lock-free; it returns `None` when no backend
//! is eligible (all excluded or unavailable), which the proxy answers with 503.

mod least_conn;
mod peak_ewma;
mod round_robin;

use std::sync::atomic::AtomicUsize;

use crate::backend::Endpoint;
use crate::config::{Algorithm, EwmaConfig};

pub(crate) use peak_ewma::PeakEwma;
pub(crate) use round_robin::{Rotation, RoundRobin};

/// The backends a request has already tried; they are never picked again for that request.
///
/// Retries are bounded by config (at most 16), so a small inline array is enough.
#[derive(Debug, Default)]
pub struct Tried {
    indices: [u16; 17],
    len: usize,
}

impl Tried {
    /// Records that the backend at `index` was tried.
    pub fn push(&mut self, index: usize) {
        if let (Some(slot), Ok(index)) = (self.indices.get_mut(self.len), u16::try_from(index)) {
            *slot = index;
            self.len += 1;
        }
    }

    /// Whether the backend at `index` was already tried.
    pub fn contains(&self, index: usize) -> bool {
        self.indices[..self.len]
            .iter()
            .any(|&tried| usize::from(tried) == index)
    }

    /// How many backends were tried.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was tried yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A pool's selection algorithm with the little state it needs.
#[derive(Debug)]
pub enum Balancer {
    /// Smooth weighted round-robin: a precomputed order plus a slot counter, with nginx's
    /// dynamic algorithm (running weights on each backend) for retries, down and ramping backends.
    RoundRobin(RoundRobin),
    /// Weighted least in-flight; the rotor spreads ties.
    LeastConnections {
        /// Where the next scan starts, so equal backends take turns.
        rotor: AtomicUsize,
    },
    /// Power of two choices over peak-EWMA latency × (in-flight + 1) per unit of weight.
    PeakEwma(PeakEwma),
}

impl Balancer {
    /// A balancer for `algorithm` over `endpoints` at their configured weights; `pick` must be
    /// given the same endpoints.
    pub fn new(algorithm: Algorithm, endpoints: &[Endpoint]) -> Self {
        match algorithm {
            Algorithm::RoundRobin => Balancer::RoundRobin(RoundRobin::new(endpoints)),
            Algorithm::LeastConnections => Balancer::LeastConnections {
                rotor: AtomicUsize::new(0),
            },
            // The pool builds it with its own settings; these are the defaults.
            Algorithm::PeakEwma => Balancer::PeakEwma(PeakEwma::new(EwmaConfig::default())),
        }
    }

    /// The index of the backend to use next, never one in `tried`. `weight_of` gives each
    /// endpoint's effective weight (scaled, at least 1), or `None` for endpoints to skip (down).
    pub fn pick(
        &self,
        endpoints: &[Endpoint],
        tried: &Tried,
        weight_of: impl Fn(usize, &Endpoint) -> Option<u64>,
    ) -> Option<usize> {
        let eligible = |index, endpoint: &Endpoint| {
            if tried.contains(index) {
                None
            } else {
                weight_of(index, endpoint)
            }
        };
        match self {
            Balancer::RoundRobin(round_robin) => {
                round_robin.pick(endpoints, !tried.is_empty(), eligible)
            }
            Balancer::LeastConnections { rotor } => least_conn::pick(endpoints, rotor, eligible),
            Balancer::PeakEwma(peak_ewma) => peak_ewma.pick(endpoints, eligible),
        }
    }
}
