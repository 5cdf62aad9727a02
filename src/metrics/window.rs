//! The one-minute sliding window per backend (requests, errors, latency percentiles) behind
//! `/status` and the dashboard; Prometheus keeps the long-term series.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Slot length of the one-minute window.
const SLOT: Duration = Duration::from_secs(10);
const SLOTS: usize = 6;
/// Latency buckets: four per power of two of microseconds, up to about 2^34 µs.
const LATENCY_BUCKETS: usize = 4 * 35;

/// Requests, errors and a latency histogram over the last minute, in six 10-second slots.
///
/// Lock-free: a slot is reset by whoever first records into it in a new period; a record
/// racing that reset may be lost, which a dashboard can afford.
#[derive(Debug)]
pub struct Window {
    epoch: Instant,
    slots: [Slot; SLOTS],
}

#[derive(Debug)]
struct Slot {
    /// The 10-second period this slot holds, plus one (0 = never used).
    period: AtomicU64,
    /// Requests without a response head (a timed one is counted by its latency bucket: one
    /// atomic add a request instead of two).
    unanswered: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU32; LATENCY_BUCKETS],
}

impl Slot {
    fn new() -> Self {
        Self {
            period: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// What the window says about the last minute.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct WindowSummary {
    /// Requests in the window.
    pub requests: u64,
    /// Requests per second over the window.
    pub requests_per_second: f64,
    /// Share of requests that failed (5xx or no response), 0 to 1.
    pub error_rate: f64,
    /// Median time to response head, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile time to response head, milliseconds.
    pub p99_ms: f64,
}

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

impl Window {
    /// An empty window starting now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            slots: std::array::from_fn(|_| Slot::new()),
        }
    }

    fn period(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_secs() / SLOT.as_secs()) + 1
    }

    /// Records one request: its time to response head (`None` when no response arrived) and
    /// whether it failed (5xx or no response).
    pub fn record(&self, latency: Option<Duration>, error: bool, now: Instant) {
        let period = self.period(now);
        let slot = &self.slots[(period % SLOTS as u64) as usize];
        let seen = slot.period.load(Ordering::Relaxed);
        if seen != period
            && slot
                .period
                .compare_exchange(seen, period, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.unanswered.store(0, Ordering::Relaxed);
            slot.errors.store(0, Ordering::Relaxed);
            for bucket in &slot.latency {
                bucket.store(0, Ordering::Relaxed);
            }
        }
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        match latency {
            Some(latency) => {
                slot.latency[latency_bucket(latency)].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                slot.unanswered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Totals and percentiles over the last minute.
    pub fn summary(&self) -> WindowSummary {
        let now = Instant::now();
        let period = self.period(now);
        let mut unanswered = 0;
        let mut errors = 0;
        let mut latency = [0u64; LATENCY_BUCKETS];
        for slot in &self.slots {
            let slot_period = slot.period.load(Ordering::Relaxed);
            if slot_period == 0 || slot_period + (SLOTS as u64) <= period {
                continue;
            }
            unanswered += slot.unanswered.load(Ordering::Relaxed);
            errors += slot.errors.load(Ordering::Relaxed);
            for (total, bucket) in latency.iter_mut().zip(&slot.latency) {
                *total += u64::from(bucket.load(Ordering::Relaxed));
            }
        }
        let requests = unanswered + latency.iter().sum::<u64>();
        // The window holds five whole slots plus the part of the current one elapsed so far.
        let elapsed = now.saturating_duration_since(self.epoch);
        let into_slot = Duration::from_nanos((elapsed.as_nanos() % SLOT.as_nanos()) as u64);
        let covered = elapsed
            .min(SLOT * (SLOTS as u32 - 1) + into_slot)
            .as_secs_f64()
            .max(1.0);
        WindowSummary {
            requests,
            requests_per_second: requests as f64 / covered,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            p50_ms: percentile(&latency, 0.50),
            p99_ms: percentile(&latency, 0.99),
        }
    }
}

/// Bucket of a latency: four buckets per power of two of microseconds.
fn latency_bucket(latency: Duration) -> usize {
    let micros = u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    let power = 63 - micros.leading_zeros() as usize;
    let sub = if power >= 2 {
        ((micros >> (power - 2)) & 3) as usize
    } else {
        0
    };
    (power * 4 + sub).min(LATENCY_BUCKETS - 1)
}

/// Upper bound of a latency bucket, in milliseconds.
fn bucket_upper_ms(bucket: usize) -> f64 {
    let power = bucket / 4;
    let sub = (bucket % 4) as u64;
    let micros = if power >= 2 {
        ((4 + sub + 1) << (power - 2)) as f64
    } else {
        (1u64 << (power + 1)) as f64
    };
    micros / 1000.0
}

fn percentile(buckets: &[u64; LATENCY_BUCKETS], quantile: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((total as f64) * quantile).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (bucket, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return bucket_upper_ms(bucket);
        }
    }
    bucket_upper_ms(LATENCY_BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_monotonic_and_bounded() {
        let mut last = 0;
        for micros in [
            1u64, 2, 3, 5, 8, 100, 999, 1000, 1500, 10_000, 1_000_000, 60_000_000,
        ] {
            let bucket = latency_bucket(Duration::from_micros(micros));
            assert!(bucket >= last, "{micros}µs");
            assert!(
                bucket_upper_ms(bucket) * 1000.0 >= micros as f64,
                "{micros}µs upper bound"
            );
            assert!(
                bucket_upper_ms(bucket) * 1000.0 <= micros as f64 * 1.5 + 2.0,
                "{micros}µs precision"
            );
            last = bucket;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn window_summarises_the_last_minute_only() {
        let window = Window::new();
        for _ in 0..98 {
            window.record(Some(Duration::from_millis(2)), false, Instant::now());
        }
        window.record(Some(Duration::from_millis(100)), false, Instant::now());
        window.record(None, true, Instant::now());
        tokio::time::advance(Duration::from_secs(9)).await;
        let summary = window.summary();
        assert_eq!(summary.requests, 100);
        assert!((summary.error_rate - 0.01).abs() < 1e-9);
        assert!(summary.p50_ms >= 2.0 && summary.p50_ms < 2.6, "{summary:?}");
        // 99 timed requests: the 99th percentile is the slow one.
        assert!(
            summary.p99_ms >= 100.0 && summary.p99_ms < 150.0,
            "{summary:?}"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(window.summary().requests, 0, "old slots expire");
    }
}
