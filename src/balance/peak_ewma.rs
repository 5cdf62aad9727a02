//! Peak-EWMA power of two choices: the latency-aware algorithm of linkerd2-proxy and Finagle
//! (tower's `load::PeakEwma` with `balance::p2c`), re-derived here.
//!
//! Each backend keeps a latency estimate (stored in `Backend::latency`, so a reload that keeps
//! the backend keeps it). A response-head latency above the estimate replaces it at once (the
//! *peak*: a backend turning slow is shunned immediately); one below pulls it down with the
//! weight `1 − exp(−Δt/decay)`, Δt being the time since the previous sample, so the estimate
//! forgets at a rate set by time, not by traffic. Read between samples, the estimate decays
//! toward zero the same way: silence is taken as good news, so a backend that was shunned is
//! tried again after a while instead of never.
//!
//! A pick draws two distinct eligible backends at random and takes the one with the lower
//! cost = estimate × (in-flight + 1) / weight. Two random choices avoid the herd that "always
//! the cheapest" causes when estimates are stale, and keep the pick O(1).
//!
//! A failure has no meaningful latency (a refused connect takes microseconds), yet must not make
//! a backend look fast: it is recorded as a sample of twice the current estimate, at least
//! `default_rtt`, at most the attempt's timeout — doubling per failure like an exponential
//! backoff in latency space, bounded by what a timeout would cost, and undone by the decay once
//! the failures stop. A timeout is a sample of its full length.

use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Backend, Endpoint, Estimate};
use crate::config::EwmaConfig;

/// Random pairs drawn before falling back to a scan (when few backends are eligible).
const PAIR_DRAWS: usize = 4;

/// A pool's `peak_ewma` settings; the estimates live on the backends.
#[derive(Debug)]
pub struct PeakEwma {
    /// `ewma_decay` in nanoseconds.
    decay: f64,
    /// `default_rtt` in nanoseconds.
    default_rtt: f64,
}

impl PeakEwma {
    /// The algorithm with `config`'s decay and default estimate.
    pub(crate) fn new(config: EwmaConfig) -> Self {
        Self {
            decay: nanos(config.decay).max(1.0),
            default_rtt: nanos(config.default_rtt),
        }
    }

    /// The backend's estimate at `now`, in nanoseconds: `default_rtt` before any sample, then
    /// the last stored estimate decayed toward zero for the time since.
    pub(crate) fn estimate(&self, backend: &Backend, now: Instant) -> f64 {
        match backend.latency.get() {
            None => self.default_rtt,
            Some(estimate) => estimate.nanos * self.weight_of_past(estimate.at, now),
        }
    }

    /// Records a response head that took `latency`, arriving at `now`.
    pub(crate) fn observe(&self, backend: &Backend, latency: Duration, now: Instant) {
        let sample = nanos(latency);
        backend.latency.update(|stored| {
            let Some(stored) = stored else {
                // The first sample starts from `default_rtt`: a new backend is not assumed fast
                // from one lucky answer (it would take every request).
                return self.blend(self.default_rtt, sample, 1.0, now);
            };
            let past = self.weight_of_past(stored.at, now);
            self.blend(stored.nanos, sample, past, now)
        });
    }

    /// Records a failed attempt (connect error, timeout, a `failure_statuses` answer) that ran
    /// for `elapsed`; `cap` (the attempt's timeout) bounds the penalty.
    pub(crate) fn penalize(
        &self,
        backend: &Backend,
        elapsed: Duration,
        cap: Duration,
        now: Instant,
    ) {
        let penalty = (2.0 * self.estimate(backend, now))
            .max(self.default_rtt)
            .min(nanos(cap))
            .max(nanos(elapsed));
        let sample = Duration::from_nanos(penalty as u64);
        self.observe(backend, sample, now);
    }

    /// The new estimate from `old` and a `sample`, where `past` is the weight left to the past.
    fn blend(&self, old: f64, sample: f64, past: f64, now: Instant) -> Estimate {
        let nanos = if sample >= old {
            sample
        } else {
            old * past + sample * (1.0 - past)
        };
        Estimate { nanos, at: now }
    }

    /// `exp(−Δt/decay)`: how much of an estimate made at `then` still counts at `now`.
    fn weight_of_past(&self, then: Instant, now: Instant) -> f64 {
        (-nanos(now.saturating_duration_since(then)) / self.decay).exp()
    }

    /// The cheaper of two random eligible backends; the only one if one is eligible.
    /// `weight_of` gives an endpoint's effective weight, or `None` when it is not eligible.
    pub(super) fn pick(
        &self,
        endpoints: &[Endpoint],
        weight_of: impl Fn(usize, &Endpoint) -> Option<u64>,
    ) -> Option<usize> {
        let len = endpoints.len();
        if len < 2 {
            let endpoint = endpoints.first()?;
            return weight_of(0, endpoint).map(|_| 0);
        }
        let now = Instant::now();
        let cost = |index: usize, weight: u64| {
            let backend = &endpoints[index].backend;
            self.estimate(backend, now) * (backend.in_flight() as f64 + 1.0) / weight as f64
        };
        let cheaper = |(a, wa): (usize, u64), (b, wb): (usize, u64)| {
            if cost(b, wb) < cost(a, wa) { b } else { a }
        };
        // Usually every backend is eligible and the first pair serves.
        for _ in 0..PAIR_DRAWS {
            let a = fastrand::usize(..len);
            let b = (a + 1 + fastrand::usize(..len - 1)) % len;
            if let (Some(wa), Some(wb)) = (weight_of(a, &endpoints[a]), weight_of(b, &endpoints[b]))
            {
                return Some(cheaper((a, wa), (b, wb)));
            }
        }
        // Few are eligible: two of them uniformly at random in one scan (reservoir sampling).
        let mut chosen: [Option<(usize, u64)>; 2] = [None, None];
        let mut seen = 0;
        for (index, endpoint) in endpoints.iter().enumerate() {
            let Some(weight) = weight_of(index, endpoint) else {
                continue;
            };
            seen += 1;
            let slot = if seen <= 2 {
                seen - 1
            } else {
                fastrand::usize(..seen)
            };
            if let Some(slot) = chosen.get_mut(slot) {
                *slot = Some((index, weight));
            }
        }
        match chosen {
            // The scan keeps index order; a coin keeps ties from always going to the first.
            [Some(a), Some(b)] if fastrand::bool() => Some(cheaper(b, a)),
            [Some(a), Some(b)] => Some(cheaper(a, b)),
            [Some((a, _)), None] => Some(a),
            _ => None,
        }
    }
}

/// A duration in nanoseconds, as the estimates keep it.
fn nanos(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::{Instant, advance};

    use super::PeakEwma;
    use crate::backend::{Endpoint, test_endpoints};
    use crate::balance::{Balancer, Tried};
    use crate::config::EwmaConfig;

    const MS: f64 = 1_000_000.0;

    fn ewma() -> PeakEwma {
        PeakEwma::new(EwmaConfig {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
        })
    }

    fn ms(estimate: f64) -> f64 {
        (estimate / MS * 1000.0).round() / 1000.0
    }

    fn all(_: usize, endpoint: &Endpoint) -> Option<u64> {
        Some(u64::from(endpoint.weight.get()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_backend_is_at_default_rtt_until_its_first_sample() {
        let endpoints = test_endpoints(&[1]);
        let backend = &endpoints[0].backend;
        let ewma = ewma();
        assert_eq!(ms(ewma.estimate(backend, Instant::now())), 30.0);
        advance(Duration::from_secs(60)).await;
        assert_eq!(
            ms(ewma.estimate(backend, Instant::now())),
            30.0,
            "no decay without a sample"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slower_sample_replaces_the_estimate_at_once() {
        let endpoints = test_endpoints(&[1]);
        let backend = &endpoints[0].backend;
        let ewma = ewma();
        ewma.observe(backend, Duration::from_millis(130), Instant::now());
        assert_eq!(ms(ewma.estimate(backend, Instant::now())), 130.0);
    }

    #[tokio::test(start_paused = true)]
    async fn faster_samples_pull_the_estimate_down_by_elapsed_time() {
        let endpoints = test_endpoints(&[1]);
        let backend = &endpoints[0].backend;
        let ewma = ewma();
        ewma.observe(backend, Duration::from_millis(100), Instant::now());
        // One decay period later a 10 ms sample: 100·e⁻¹ + 10·(1 − e⁻¹) = 43.89 ms.
        advance(Duration::from_secs(10)).await;
        ewma.observe(backend, Duration::from_millis(10), Instant::now());
        let expected = 100.0 * (-1.0f64).exp() + 10.0 * (1.0 - (-1.0f64).exp());
        assert!((ms(ewma.estimate(backend, Instant::now())) - expected).abs() < 0.01);
        // Many fast samples at the same instant barely move it: time, not traffic, forgets.
        for _ in 0..1000 {
            ewma.observe(backend, Duration::from_millis(1), Instant::now());
        }
        assert!((ms(ewma.estimate(backend, Instant::now())) - expected).abs() < 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn between_samples_the_estimate_decays_toward_zero() {
        let endpoints = test_endpoints(&[1]);
        let backend = &endpoints[0].backend;
        let ewma = ewma();
        ewma.observe(backend, Duration::from_millis(200), Instant::now());
        advance(Duration::from_secs(20)).await;
        let expected = 200.0 * (-2.0f64).exp();
        assert!((ms(ewma.estimate(backend, Instant::now())) - expected).abs() < 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_double_the_estimate_from_default_rtt_up_to_the_timeout() {
        let endpoints = test_endpoints(&[1]);
        let backend = &endpoints[0].backend;
        let ewma = ewma();
        // A fast backend (1 ms) that starts failing in 0 ms.
        ewma.observe(backend, Duration::from_millis(1), Instant::now());
        advance(Duration::from_secs(60)).await;
        let cap = Duration::from_millis(500);
        let mut seen = Vec::new();
        for _ in 0..6 {
            ewma.penalize(backend, Duration::ZERO, cap, Instant::now());
            seen.push(ms(ewma.estimate(backend, Instant::now())));
        }
        assert_eq!(seen, [30.0, 60.0, 120.0, 240.0, 480.0, 500.0]);
        // A timeout counts its full length, even above the cap.
        ewma.penalize(backend, Duration::from_secs(2), cap, Instant::now());
        assert_eq!(ms(ewma.estimate(backend, Instant::now())), 2000.0);
        // Once the failures stop, the decay brings it back into play.
        advance(Duration::from_secs(60)).await;
        assert!(ewma.estimate(backend, Instant::now()) < 30.0 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cheaper_of_two_wins_and_in_flight_and_weight_count() {
        fastrand::seed(7);
        let endpoints = test_endpoints(&[1, 1]);
        let ewma = ewma();
        let now = Instant::now();
        ewma.observe(&endpoints[0].backend, Duration::from_millis(100), now);
        ewma.observe(&endpoints[1].backend, Duration::from_millis(40), now);
        for _ in 0..20 {
            assert_eq!(ewma.pick(&endpoints, all), Some(1));
        }
        // 40 ms × 3 in flight = 120 > 100 × 1: the slow idle one is cheaper now.
        let _held: Vec<_> = (0..2)
            .map(|_| endpoints[1].backend.start_request())
            .collect();
        assert_eq!(ewma.pick(&endpoints, all), Some(0));
        // Weight divides the cost: 100 / 4 = 25 < 120.
        let weighted = |index: usize, endpoint: &Endpoint| {
            Some(u64::from(endpoint.weight.get()) * if index == 0 { 4 } else { 1 })
        };
        drop(_held);
        ewma.observe(&endpoints[1].backend, Duration::from_millis(40), now);
        assert_eq!(ewma.pick(&endpoints, weighted), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn picks_only_eligible_backends_and_spreads_among_equals() {
        fastrand::seed(11);
        let endpoints = test_endpoints(&[1, 1, 1, 1, 1]);
        let balancer = Balancer::PeakEwma(ewma());
        let mut tried = Tried::default();
        assert_eq!(balancer.pick(&endpoints, &tried, |_, _| None), None);
        // Only backend 3 eligible: always it (the scan fallback).
        let only_three = |index: usize, endpoint: &Endpoint| {
            (index == 3).then(|| all(index, endpoint)).flatten()
        };
        for _ in 0..10 {
            assert_eq!(balancer.pick(&endpoints, &tried, only_three), Some(3));
        }
        // Two eligible: both get picked over many rounds (equal cost: the draw decides).
        tried.push(0);
        tried.push(1);
        tried.push(2);
        let mut counts = [0usize; 5];
        for _ in 0..200 {
            let index = balancer
                .pick(&endpoints, &tried, all)
                .expect("one of 3 and 4");
            counts[index] += 1;
        }
        assert_eq!(counts[..3], [0, 0, 0]);
        assert!(counts[3] > 40 && counts[4] > 40, "{counts:?}");
        // With all five, every one is picked.
        let mut counts = [0usize; 5];
        for _ in 0..500 {
            counts[balancer
                .pick(&endpoints, &Tried::default(), all)
                .expect("a backend")] += 1;
        }
        assert!(counts.iter().all(|&n| n > 50), "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_backend_is_picked_when_eligible() {
        let endpoints = test_endpoints(&[1]);
        let ewma = ewma();
        assert_eq!(ewma.pick(&endpoints, all), Some(0));
        assert_eq!(ewma.pick(&endpoints, |_, _| None), None);
        assert_eq!(ewma.pick(&[], all), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_that_keeps_a_backend_keeps_its_estimate() {
        let build = |keys: &str, previous: Option<&crate::snapshot::Snapshot>| {
            let source = format!(
                "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
                 [pools.app]\nalgorithm = \"peak_ewma\"\nbackends = [\"127.0.0.1:3001\"]\n{keys}\n"
            );
            let config = crate::config::Config::parse("t.toml", &source).expect("valid");
            crate::snapshot::Snapshot::build(std::sync::Arc::new(config), previous)
        };
        let first = build("", None);
        let pool = first.pool("app").expect("pool app");
        let backend = std::sync::Arc::clone(&pool.endpoints[0].backend);
        assert_eq!(
            pool.latency_estimate_ms(&backend),
            Some(30.0),
            "default_rtt"
        );
        pool.record_latency(&backend, Duration::from_millis(250), Instant::now());
        let second = build("default_rtt = \"5ms\"", Some(&first));
        let pool = second.pool("app").expect("pool app");
        assert!(std::sync::Arc::ptr_eq(&pool.endpoints[0].backend, &backend));
        assert_eq!(pool.latency_estimate_ms(&backend), Some(250.0));
    }
}
