//! Request-path counters and histograms that cost one relaxed atomic add per update, handed to
//! Prometheus only when `/metrics` is scraped.
//!
//! The exporter's own handles cost more per update: a counter increment is two atomic adds (its
//! value and a generation, kept for idle-series expiry), a histogram sample a clock reading, an
//! epoch pin and a push onto a bucket chain. A proxied request made four such updates: 15 of
//! its 60 bus-locked instructions and about 500 instructions. Here a [`Tally`] is an atomic
//! count whose growth is added to its exporter counter at each scrape (and when it is dropped),
//! and [`Timings`] are Prometheus buckets kept as atomics and rendered by [`render`] after the
//! exporter's text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use metrics::Counter;

/// Upper bounds of the duration buckets, in nanoseconds: 0.5 ms to 10 s (then `+Inf`).
const BOUNDS_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Every live tally, to publish at a scrape; and every histogram ever made, by name and
/// labels (a series stays, as the exporter's do, once it exists).
#[derive(Default)]
struct Registry {
    tallies: Vec<Weak<TallyInner>>,
    timings: BTreeMap<(&'static str, String), Arc<TimingsInner>>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
        tallies: Vec::new(),
        timings: BTreeMap::new(),
    });
    // Nothing panics while holding it, so a poisoned lock is still sound.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A counter the request path adds to with one atomic add; its exporter counter learns the
/// growth at each scrape and when the tally is dropped.
#[derive(Debug)]
pub(crate) struct Tally(Arc<TallyInner>);

#[derive(Debug)]
struct TallyInner {
    count: AtomicU64,
    /// How much of `count` the exporter's counter was given.
    published: AtomicU64,
    counter: Counter,
}

impl TallyInner {
    /// Gives the exporter's counter what it has not had yet. Concurrent calls give each unit
    /// once: whoever raises `published` past a count gives the difference.
    fn publish(&self) {
        let count = self.count.load(Ordering::Relaxed);
        let before = self.published.fetch_max(count, Ordering::Relaxed);
        if count > before {
            self.counter.increment(count - before);
        }
    }
}

impl Drop for TallyInner {
    fn drop(&mut self) {
        self.publish();
    }
}

impl Tally {
    /// A tally publishing into `counter`.
    pub(crate) fn new(counter: Counter) -> Self {
        let inner = Arc::new(TallyInner {
            count: AtomicU64::new(0),
            published: AtomicU64::new(0),
            counter,
        });
        let mut registry = registry();
        let tallies = &mut registry.tallies;
        // Dropped tallies are swept as the list would grow: it stays within twice the most
        // tallies alive at once.
        if tallies.len() == tallies.capacity() {
            tallies.retain(|tally| tally.strong_count() > 0);
        }
        tallies.push(Arc::downgrade(&inner));
        Self(inner)
    }

    /// Adds `n`.
    pub(crate) fn add(&self, n: u64) {
        self.0.count.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub(crate) fn get(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

/// A duration histogram (Prometheus buckets from 0.5 ms to 10 s) updated with two atomic adds
/// per sample and rendered by [`render`]. Made again with the same name and labels, it is the
/// same series.
#[derive(Debug, Clone)]
pub(crate) struct Timings(Arc<TimingsInner>);

#[derive(Debug)]
struct TimingsInner {
    help: &'static str,
    buckets: [AtomicU64; BOUNDS_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Timings {
    /// The histogram `name` with `labels`, described by `help`.
    pub(crate) fn new(name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Self {
        let mut rendered = String::new();
        for (key, value) in labels {
            if !rendered.is_empty() {
                rendered.push(',');
            }
            let _ = write!(rendered, "{key}=\"{}\"", escape(value));
        }
        let inner = registry()
            .timings
            .entry((name, rendered))
            .or_insert_with(|| {
                Arc::new(TimingsInner {
                    help,
                    buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                    sum_nanos: AtomicU64::new(0),
                })
            })
            .clone();
        Self(inner)
    }

    /// Records one sample.
    pub(crate) fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.0.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// A label value escaped for the text format: backslash, double quote and line feed.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// Hands every tally's growth to its exporter counter: called before the exporter renders.
pub(crate) fn publish() {
    let tallies: Vec<Arc<TallyInner>> = registry()
        .tallies
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    // Published outside the lock, and dropped there: a last drop publishes too.
    for tally in &tallies {
        tally.publish();
    }
}

/// Appends every histogram to `out` in the Prometheus text format.
pub(crate) fn render(out: &mut String) {
    let registry = registry();
    let mut family = None;
    for ((name, labels), timings) in &registry.timings {
        if family != Some(*name) {
            family = Some(*name);
            let _ = writeln!(out, "# HELP {name} {}", timings.help);
            let _ = writeln!(out, "# TYPE {name} histogram");
        }
        let sep = if labels.is_empty() { "" } else { "," };
        let mut count = 0;
        for (bucket, bound) in timings.buckets.iter().zip(BOUNDS_NANOS) {
            count += bucket.load(Ordering::Relaxed);
            let le = Duration::from_nanos(bound).as_secs_f64();
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {count}");
        }
        count += timings.buckets[BOUNDS_NANOS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = Duration::from_nanos(timings.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_first_bucket_at_or_above_them_and_render_cumulatively() {
        let timings = Timings::new(
            "tally_test_seconds",
            "A test histogram.",
            &[("pool", "a\"b"), ("backend", "x")],
        );
        timings.record(Duration::from_micros(500));
        timings.record(Duration::from_micros(501));
        timings.record(Duration::from_millis(3));
        timings.record(Duration::from_secs(11));
        let mut text = String::new();
        render(&mut text);
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("tally_test_seconds"))
            .collect();
        let labels = "pool=\"a\\\"b\",backend=\"x\"";
        for want in [
            "# HELP tally_test_seconds A test histogram.".to_owned(),
            "# TYPE tally_test_seconds histogram".to_owned(),
            format!("tally_test_seconds_bucket{{{labels},le=\"0.0005\"}} 1"),
            format!("tally_test_seconds_bucket{{{labels},le=\"0.001\"}} 2"),
            format!("tally_test_seconds_bucket{{{labels},le=\"0.0025\"}} 2"),
            format!("tally_test_seconds_bucket{{{labels},le=\"0.005\"}} 3"),
            format!("tally_test_seconds_bucket{{{labels},le=\"10\"}} 3"),
            format!("tally_test_seconds_bucket{{{labels},le=\"+Inf\"}} 4"),
            format!("tally_test_seconds_sum{{{labels}}} 11.004001"),
            format!("tally_test_seconds_count{{{labels}}} 4"),
        ] {
            assert!(lines.contains(&want.as_str()), "{want} in {lines:#?}");
        }
        // The same name and labels are the same series.
        Timings::new(
            "tally_test_seconds",
            "A test histogram.",
            &[("pool", "a\"b"), ("backend", "x")],
        )
        .record(Duration::ZERO);
        let mut again = String::new();
        render(&mut again);
        assert!(again.contains(&format!("tally_test_seconds_count{{{labels}}} 5")));
    }

    #[test]
    fn a_tally_gives_its_counter_each_unit_once_at_scrapes_and_at_its_drop() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let exporter = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let tally = Tally::new(metrics::counter!("tally_test_total"));
            tally.add(3);
            publish();
            publish();
            assert!(exporter.render().contains("tally_test_total 3\n"));
            tally.add(2);
            assert_eq!(tally.get(), 5);
            drop(tally);
        });
        assert!(exporter.render().contains("tally_test_total 5\n"));
    }
}
