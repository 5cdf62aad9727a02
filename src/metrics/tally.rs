//! Request-path counters and histograms that cost a plain add per update, handed to Prometheus
//! only when `/metrics` is scraped.
//!
//! The exporter's own handles cost more per update: a counter increment is two atomic adds (its
//! value and a generation, kept for idle-series expiry), a histogram sample a clock reading, an
//! epoch pin and a push onto a bucket chain. A proxied request made four such updates: 15 of
//! its 60 bus-locked instructions and about 500 instructions. Here a [`Tally`] is a set of
//! counts whose growth is added to their exporter counters at each scrape (and when it is
//! dropped), and [`Timings`] are Prometheus buckets rendered by [`render`] after the exporter's
//! text. Both keep their counts in [`Cells`]: a shard per writing thread, added to with a plain
//! load and store (an atomic add locks the bus: about 7 ns each on the bench machine, where a
//! proxied request's user time is about 2 µs).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
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
    tallies: Vec<Weak<dyn Publish>>,
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

/// Counts kept per writing thread: each thread that adds has a shard of its own (one or more
/// cache lines, so no two threads write the same line) and adds with a plain load and store;
/// a read sums the shards. Threads beyond the shards (more than the machine's cores write at
/// once) share one more shard, with atomic adds.
#[derive(Debug)]
pub(crate) struct Cells<const N: usize> {
    shards: Box<[Shard<N>]>,
}

#[derive(Debug)]
#[repr(align(64))]
struct Shard<const N: usize>([AtomicU64; N]);

impl<const N: usize> Cells<N> {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..=slots())
                .map(|_| Shard(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    /// Adds `n` to count `cell`.
    pub(crate) fn add(&self, cell: usize, n: u64) {
        let shared = self.shards.len() - 1;
        let slot = thread_slot();
        if slot < shared {
            // This thread is the shard's only writer: no other add can come between the load
            // and the store.
            let count = &self.shards[slot].0[cell];
            count.store(
                count.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        } else {
            self.shards[shared].0[cell].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Count `cell` so far: every add that happened before the call, perhaps some racing it.
    pub(crate) fn get(&self, cell: usize) -> u64 {
        self.shards.iter().fold(0, |sum, shard| {
            sum.wrapping_add(shard.0[cell].load(Ordering::Relaxed))
        })
    }
}

/// Shards per [`Cells`] for threads of their own: one per core (a runtime's default worker
/// count), at most 64.
fn slots() -> usize {
    static SLOTS: OnceLock<usize> = OnceLock::new();
    *SLOTS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(64)))
}

/// The slots threads hold: a thread takes the lowest free one at its first add and frees it
/// when it ends, so each slot has at most one writer at a time.
#[derive(Default)]
struct Slots {
    free: Vec<usize>,
    next: usize,
}

fn slot_table() -> MutexGuard<'static, Slots> {
    static SLOTS: Mutex<Slots> = Mutex::new(Slots {
        free: Vec::new(),
        next: 0,
    });
    // Nothing panics while holding it, so a poisoned lock is still sound.
    SLOTS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A thread's slot, freed when the thread ends.
struct Slot(usize);

impl Slot {
    fn take() -> Self {
        let mut table = slot_table();
        if let Some(slot) = table.free.pop() {
            return Self(slot);
        }
        if table.next < slots() {
            table.next += 1;
            return Self(table.next - 1);
        }
        Self(usize::MAX)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0 != usize::MAX {
            slot_table().free.push(self.0);
        }
    }
}

/// This thread's slot; `usize::MAX` (the shared shard) when it has none.
fn thread_slot() -> usize {
    thread_local! {
        static SLOT: Slot = Slot::take();
    }
    SLOT.try_with(|slot| slot.0).unwrap_or(usize::MAX)
}

/// Something whose counts go to the exporter at a scrape.
trait Publish: Send + Sync {
    fn publish(&self);
}

/// `N` counters the request path adds to with a plain add each; their exporter counters learn
/// the growth at each scrape and when the tally is dropped.
#[derive(Debug)]
pub(crate) struct Tally<const N: usize = 1>(Arc<TallyInner<N>>);

#[derive(Debug)]
struct TallyInner<const N: usize> {
    counts: Cells<N>,
    /// How much of each count its exporter counter was given.
    published: [AtomicU64; N],
    counters: [Counter; N],
}

impl<const N: usize> Publish for TallyInner<N> {
    /// Gives the exporter's counters what they have not had yet. Concurrent calls give each
    /// unit once: whoever raises `published` past a count gives the difference.
    fn publish(&self) {
        for (index, (published, counter)) in self.published.iter().zip(&self.counters).enumerate() {
            let count = self.counts.get(index);
            let before = published.fetch_max(count, Ordering::Relaxed);
            if count > before {
                counter.increment(count - before);
            }
        }
    }
}

impl<const N: usize> Drop for TallyInner<N> {
    fn drop(&mut self) {
        self.publish();
    }
}

impl<const N: usize> Tally<N> {
    /// A tally publishing count `i` into `counters[i]`.
    pub(crate) fn new(counters: [Counter; N]) -> Self {
        let inner = Arc::new(TallyInner {
            counts: Cells::new(),
            published: std::array::from_fn(|_| AtomicU64::new(0)),
            counters,
        });
        let mut registry = registry();
        let tallies = &mut registry.tallies;
        // Dropped tallies are swept as the list would grow: it stays within twice the most
        // tallies alive at once.
        if tallies.len() == tallies.capacity() {
            tallies.retain(|tally| tally.strong_count() > 0);
        }
        let weak: Weak<TallyInner<N>> = Arc::downgrade(&inner);
        tallies.push(weak);
        Self(inner)
    }

    /// Adds `n` to count `index`.
    pub(crate) fn add_to(&self, index: usize, n: u64) {
        self.0.counts.add(index, n);
    }

    /// Count `index` so far.
    pub(crate) fn get(&self, index: usize) -> u64 {
        self.0.counts.get(index)
    }

    /// All counts so far, summed.
    pub(crate) fn total(&self) -> u64 {
        (0..N).map(|index| self.get(index)).sum()
    }
}

impl Tally {
    /// A tally of one count publishing into `counter`.
    pub(crate) fn single(counter: Counter) -> Self {
        Self::new([counter])
    }

    /// Adds `n`.
    pub(crate) fn add(&self, n: u64) {
        self.add_to(0, n);
    }
}

/// A duration histogram (Prometheus buckets from 0.5 ms to 10 s) updated with two plain adds
/// per sample (see [`Cells`]) and rendered by [`render`]. Made again with the same name and
/// labels, it is the same series.
#[derive(Debug, Clone)]
pub(crate) struct Timings(Arc<TimingsInner>);

#[derive(Debug)]
struct TimingsInner {
    help: &'static str,
    /// The buckets' counts, then the sum of the samples in nanoseconds.
    cells: Cells<{ SUM + 1 }>,
}

/// The cell of [`TimingsInner::cells`] that holds the sum, after the buckets (`+Inf` last).
const SUM: usize = BOUNDS_NANOS.len() + 1;

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
                    cells: Cells::new(),
                })
            })
            .clone();
        Self(inner)
    }

    /// Records one sample.
    pub(crate) fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.0.cells.add(bucket, 1);
        self.0.cells.add(SUM, nanos);
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
    let tallies: Vec<Arc<dyn Publish>> = registry()
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
        for (bucket, bound) in BOUNDS_NANOS.into_iter().enumerate() {
            count += timings.cells.get(bucket);
            let le = Duration::from_nanos(bound).as_secs_f64();
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {count}");
        }
        count += timings.cells.get(BOUNDS_NANOS.len());
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = Duration::from_nanos(timings.cells.get(SUM)).as_secs_f64();
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
    fn cells_count_every_add_from_more_threads_than_they_have_shards() {
        let cells = Arc::new(Cells::<2>::new());
        let threads = slots() + 3;
        // Twice over: the second round's threads take the slots the first round's freed.
        for _ in 0..2 {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let cells = Arc::clone(&cells);
                    std::thread::spawn(move || {
                        for _ in 0..10_000 {
                            cells.add(0, 1);
                            cells.add(1, 3);
                        }
                    })
                })
                .collect();
            for handle in handles {
                handle.join().expect("adding thread");
            }
        }
        assert_eq!(cells.get(0), 2 * 10_000 * threads as u64);
        assert_eq!(cells.get(1), 2 * 30_000 * threads as u64);
    }

    #[test]
    fn a_tally_gives_its_counter_each_unit_once_at_scrapes_and_at_its_drop() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let exporter = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let tally = Tally::single(metrics::counter!("tally_test_total"));
            tally.add(3);
            publish();
            publish();
            assert!(exporter.render().contains("tally_test_total 3\n"));
            tally.add(2);
            assert_eq!(tally.get(0), 5);
            drop(tally);
        });
        assert!(exporter.render().contains("tally_test_total 5\n"));
    }
}
