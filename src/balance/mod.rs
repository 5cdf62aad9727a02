//! Backend selection: one file per algorithm behind the small [`Balancer`] enum.
//!
//! Selection is synchronous, allocation-free and lock-free; it returns `None` when no backend
//! is eligible (all excluded or unavailable), which the proxy answers with 503.

mod consistent_hash;
mod key;
mod least_conn;
mod peak_ewma;
mod round_robin;
mod sticky;

use std::sync::atomic::AtomicUsize;

use crate::backend::Endpoint;
use crate::config::{Algorithm, EwmaConfig};

pub(crate) use consistent_hash::ConsistentHash;
pub(crate) use key::{RequestKey, ip_hash};
pub(crate) use peak_ewma::PeakEwma;
pub(crate) use round_robin::{Rotation, RoundRobin};
pub(crate) use sticky::{Repin, Sticky};

/// What the balancer knows of one request: the backends it already tried (never picked again
/// for it), and what pins it: its hash key (`consistent_hash` pools) and the backend its sticky
/// cookie names. `Tried::default()` is a request with neither.
///
/// Retries are bounded by config (at most 16), so a small inline array is enough.
#[derive(Debug, Default)]
pub struct Tried {
    indices: [u16; 17],
    len: usize,
    /// The hash of the request's key; `None`: no key (round-robin) or not a hashing pool.
    key: Option<u64>,
    /// The backend the request's sticky cookie names, if it names one of the pool's.
    pinned: Option<u32>,
    /// Whether the client connection is TLS, so a sticky cookie set for it is `Secure`.
    secure: bool,
}

impl Tried {
    /// A request with this key hash (see [`RequestKey`]) and sticky pin, nothing tried yet.
    pub fn new(key: Option<u64>, pinned: Option<usize>, secure: bool) -> Self {
        Tried {
            key,
            pinned: pinned.and_then(|index| u32::try_from(index).ok()),
            secure,
            ..Tried::default()
        }
    }

    /// The backend tried last: the one serving the request once it answered.
    pub fn last(&self) -> Option<usize> {
        self.len
            .checked_sub(1)
            .map(|last| usize::from(self.indices[last]))
    }

    /// The backend the request's sticky cookie names, if any.
    pub fn pinned(&self) -> Option<usize> {
        self.pinned.map(|index| index as usize)
    }

    /// Whether a cookie set for this request must be `Secure` (a TLS client connection).
    pub fn secure(&self) -> bool {
        self.secure
    }

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
    /// A weighted hash ring with bounded load; round-robin for requests without a key.
    ConsistentHash(Box<ConsistentHash>),
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
            Algorithm::ConsistentHash => {
                Balancer::consistent_hash(endpoints, 0, metrics::Counter::noop())
            }
        }
    }

    /// A `consistent_hash` balancer with bounded load at `balance_factor` percent (0: none);
    /// keys passed over for load are counted in `spilled`.
    pub fn consistent_hash(
        endpoints: &[Endpoint],
        balance_factor: u16,
        spilled: metrics::Counter,
    ) -> Self {
        Balancer::ConsistentHash(Box::new(ConsistentHash::new(
            endpoints,
            balance_factor,
            spilled,
        )))
    }

    /// The share of the hash ring (percent) of the endpoint at `index`; `None` unless this is a
    /// `consistent_hash` balancer.
    pub fn table_share(&self, index: usize) -> Option<f64> {
        match self {
            Balancer::ConsistentHash(ring) => ring.share(index),
            _ => None,
        }
    }

    /// The index of the backend to use next, never one in `tried`. `weight_of` gives each
    /// endpoint's effective weight (scaled, at least 1), or `None` for endpoints to skip (down).
    /// The backend a sticky cookie names comes first if it is eligible.
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
        if let Some(pinned) = tried.pinned() {
            if endpoints
                .get(pinned)
                .is_some_and(|endpoint| eligible(pinned, endpoint).is_some())
            {
                return Some(pinned);
            }
        }
        match self {
            Balancer::RoundRobin(round_robin) => {
                round_robin.pick(endpoints, !tried.is_empty(), eligible)
            }
            Balancer::LeastConnections { rotor } => least_conn::pick(endpoints, rotor, eligible),
            Balancer::PeakEwma(peak_ewma) => peak_ewma.pick(endpoints, eligible),
            Balancer::ConsistentHash(ring) => {
                ring.pick(endpoints, tried.key, !tried.is_empty(), eligible)
            }
        }
    }
}
