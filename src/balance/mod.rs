//! Backend selection: one file per algorithm behind the small [`Balancer`] enum.
//!
//! Selection is synchronous, allocation-free and lock-free; it returns `None` when no backend
//! is eligible (all excluded or unavailable), which the proxy answers with 503.

mod least_conn;
mod round_robin;

use std::sync::atomic::AtomicUsize;

use crate::backend::Endpoint;
use crate::config::Algorithm;

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
    /// Smooth weighted round-robin; its running weights live on each backend.
    RoundRobin,
    /// Weighted least in-flight; the rotor spreads ties.
    LeastConnections {
        /// Where the next scan starts, so equal backends take turns.
        rotor: AtomicUsize,
    },
}

impl Balancer {
    /// A balancer for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::RoundRobin => Balancer::RoundRobin,
            Algorithm::LeastConnections => Balancer::LeastConnections {
                rotor: AtomicUsize::new(0),
            },
        }
    }

    /// The index of the backend to use next. `weight_of` gives each eligible endpoint's
    /// effective weight (scaled, at least 1) and `None` for endpoints to skip.
    pub fn pick(
        &self,
        endpoints: &[Endpoint],
        weight_of: impl Fn(usize, &Endpoint) -> Option<u64>,
    ) -> Option<usize> {
        match self {
            Balancer::RoundRobin => round_robin::pick(endpoints, weight_of),
            Balancer::LeastConnections { rotor } => least_conn::pick(endpoints, rotor, weight_of),
        }
    }
}
