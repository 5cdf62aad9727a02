//! A pool's retry budget (Finagle's `RetryBudget`, Linkerd's and Envoy's retry budgets): over a
//! sliding 10 s window, retries may reach `percent`% of the pool's requests plus
//! `min_per_second` × 10, so a failing pool cannot multiply its load by `retries + 1`.
//!
//! The window is ten one-second slots per counter. Each slot is one `AtomicU64` holding the
//! second it counts (high 32 bits, from the budget's creation) and its count (low 32 bits): a
//! slot left from an older second is recycled with one compare-and-swap, so counting is
//! lock-free and a request costs one atomic add. Checking a retry sums the slots of the last ten
//! seconds; a check and the retry it allows are not one atomic step, so racing retries may
//! overshoot the budget by the number racing — a guard rail, not an exact quota.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use tokio::time::Instant;

use crate::config::RetryBudgetConfig;

/// The window's length in one-second slots.
const SLOTS: u32 = 10;

/// A pool's retry budget; a reload that keeps the pool's budget settings keeps it (and its
/// counts).
#[derive(Debug)]
pub(crate) struct RetryBudget {
    /// The settings it enforces.
    pub(crate) config: RetryBudgetConfig,
    /// Second zero of the slots' stamps.
    origin: Instant,
    /// Requests (first attempts) per second.
    requests: [AtomicU64; SLOTS as usize],
    /// Retries made per second.
    retries: [AtomicU64; SLOTS as usize],
    /// Set while retries are being refused, so the change is logged once each way.
    exhausted: AtomicBool,
}

/// What the window holds now, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Requests in the last 10 s.
    pub(crate) requests: u64,
    /// Retries in the last 10 s.
    pub(crate) retries: u64,
    /// Retries the budget allows in the window at these requests.
    pub(crate) allowed: u64,
}

impl RetryBudget {
    /// An empty budget with `config`'s allowance, its window starting at `now`.
    pub(crate) fn new(config: RetryBudgetConfig, now: Instant) -> Self {
        Self {
            config,
            origin: now,
            requests: Default::default(),
            retries: Default::default(),
            exhausted: AtomicBool::new(false),
        }
    }

    /// Counts a request (its first attempt) at `now`.
    pub(crate) fn deposit(&self, now: Instant) {
        count(&self.requests, self.second(now));
    }

    /// Whether a retry at `now` fits the budget; logs when the budget runs out and when it has
    /// room again. The caller counts the retry it makes with [`RetryBudget::withdraw`].
    pub(crate) fn allows(&self, pool: &str, now: Instant) -> bool {
        let usage = self.usage(now);
        let allowed = usage.retries < usage.allowed;
        // `exhausted` should read `!allowed`; whoever flips it logs the change.
        let changed = self.exhausted.load(Relaxed) == allowed
            && self.exhausted.swap(!allowed, Relaxed) == allowed;
        if changed {
            if allowed {
                tracing::info!(
                    pool,
                    requests = usage.requests,
                    retries = usage.retries,
                    "retry budget has room again; retries resume"
                );
            } else {
                tracing::warn!(
                    pool,
                    requests = usage.requests,
                    retries = usage.retries,
                    percent = self.config.percent,
                    min_per_second = self.config.min_per_second,
                    "retry budget exhausted; failed requests are not retried"
                );
            }
        }
        allowed
    }

    /// Counts a retry made at `now`.
    pub(crate) fn withdraw(&self, now: Instant) {
        count(&self.retries, self.second(now));
    }

    /// Requests and retries in the window ending at `now`, and the retries they allow.
    pub(crate) fn usage(&self, now: Instant) -> Usage {
        let second = self.second(now);
        let requests = sum(&self.requests, second);
        let retries = sum(&self.retries, second);
        let allowed = requests * u64::from(self.config.percent) / 100
            + u64::from(self.config.min_per_second) * u64::from(SLOTS);
        Usage {
            requests,
            retries,
            allowed,
        }
    }

    /// The slot stamp of `now`: whole seconds since the budget's creation, wrapping at 2³².
    fn second(&self, now: Instant) -> u32 {
        // Truncation intended: stamps are compared with wrapping arithmetic.
        now.saturating_duration_since(self.origin).as_secs() as u32
    }
}

/// Adds one to the count of `second`, recycling its slot if it still counts an older second.
fn count(slots: &[AtomicU64; SLOTS as usize], second: u32) {
    let slot = &slots[(second % SLOTS) as usize];
    let stamp = u64::from(second) << 32;
    let mut current = slot.load(Relaxed);
    loop {
        if current & !u64::from(u32::MAX) == stamp {
            // The count cannot reach 2³² within one second.
            slot.fetch_add(1, Relaxed);
            return;
        }
        match slot.compare_exchange_weak(current, stamp | 1, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// The counts of the ten seconds up to and including `second`.
fn sum(slots: &[AtomicU64; SLOTS as usize], second: u32) -> u64 {
    slots
        .iter()
        .map(|slot| slot.load(Relaxed))
        .filter(|value| second.wrapping_sub((value >> 32) as u32) < SLOTS)
        .map(|value| value & u64::from(u32::MAX))
        .sum()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::{Instant, advance};

    use super::{RetryBudget, Usage};
    use crate::config::RetryBudgetConfig;

    fn new_budget(percent: u32, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(
            RetryBudgetConfig {
                percent,
                min_per_second,
            },
            Instant::now(),
        )
    }

    /// Makes retries while the budget allows, up to `limit`; returns how many it allowed.
    fn retry_while_allowed(budget: &RetryBudget, limit: u64) -> u64 {
        let mut made = 0;
        while made < limit && budget.allows("test", Instant::now()) {
            budget.withdraw(Instant::now());
            made += 1;
        }
        made
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_capped_at_percent_of_requests_plus_the_reserve() {
        let budget = new_budget(20, 1);
        for _ in 0..100 {
            budget.deposit(Instant::now());
        }
        // 20 % of 100 + 1/s × 10 s.
        assert_eq!(retry_while_allowed(&budget, 1000), 30);
        assert_eq!(
            budget.usage(Instant::now()),
            Usage {
                requests: 100,
                retries: 30,
                allowed: 30
            }
        );
        // Ten more requests earn two more retries.
        for _ in 0..10 {
            budget.deposit(Instant::now());
        }
        assert_eq!(retry_while_allowed(&budget, 1000), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_pool_still_gets_min_per_second() {
        let budget = new_budget(20, 3);
        assert_eq!(retry_while_allowed(&budget, 1000), 30);
        let none = new_budget(0, 0);
        assert_eq!(retry_while_allowed(&none, 1000), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_second_by_second() {
        let budget = new_budget(50, 0);
        for _ in 0..20 {
            budget.deposit(Instant::now());
        }
        assert_eq!(retry_while_allowed(&budget, 1000), 10);
        // 9.5 s later the requests and retries of second zero still count.
        advance(Duration::from_millis(9500)).await;
        assert!(!budget.allows("test", Instant::now()));
        for _ in 0..4 {
            budget.deposit(Instant::now());
        }
        assert_eq!(retry_while_allowed(&budget, 1000), 2);
        // At 10 s second zero has left the window: only the 4 requests and 2 retries remain.
        advance(Duration::from_millis(500)).await;
        assert_eq!(
            budget.usage(Instant::now()),
            Usage {
                requests: 4,
                retries: 2,
                allowed: 2
            }
        );
        // Long after, slots from many windows ago are recycled, not added to.
        advance(Duration::from_secs(95)).await;
        assert_eq!(budget.usage(Instant::now()).requests, 0);
        budget.deposit(Instant::now());
        assert_eq!(budget.usage(Instant::now()).requests, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_counting_loses_nothing() {
        let shared = std::sync::Arc::new(new_budget(10, 0));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let budget = std::sync::Arc::clone(&shared);
                tokio::spawn(async move {
                    for _ in 0..10_000 {
                        budget.deposit(Instant::now());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        // Real time: the 40,000 may straddle a second boundary, never a whole window.
        assert_eq!(shared.usage(Instant::now()).requests, 40_000);
    }

    /// The pool `app` of a snapshot of `pool_keys`, built over `previous` like a reload.
    fn reload(
        pool_keys: &str,
        previous: Option<&crate::snapshot::Snapshot>,
    ) -> crate::snapshot::Snapshot {
        let source = format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
             [pools.app]\nbackends = [\"127.0.0.1:3001\"]\n{pool_keys}\n"
        );
        let config = crate::config::Config::parse("t.toml", &source).expect("valid");
        crate::snapshot::Snapshot::build(std::sync::Arc::new(config), previous)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_the_budget_while_its_settings_are_unchanged() {
        let budget_of = |snapshot: &crate::snapshot::Snapshot| {
            let pool = snapshot.pool("app").expect("pool app");
            pool.retry_budget.clone()
        };
        let first = reload("retry_budget = { percent = 20 }", None);
        let budget = budget_of(&first).expect("a budget");
        budget.deposit(Instant::now());
        // Another key changed: the same budget, its count kept.
        let second = reload("retry_budget = { percent = 20 }\nretries = 1", Some(&first));
        let kept = budget_of(&second).expect("a budget");
        assert!(std::sync::Arc::ptr_eq(&budget, &kept));
        assert_eq!(kept.usage(Instant::now()).requests, 1);
        // Its settings changed: a new, empty budget.
        let third = reload("retry_budget = { percent = 30 }", Some(&second));
        let fresh = budget_of(&third).expect("a budget");
        assert!(!std::sync::Arc::ptr_eq(&kept, &fresh));
        assert_eq!(fresh.usage(Instant::now()).requests, 0);
        assert_eq!(fresh.config.percent, 30);
        // Removed: none.
        assert!(budget_of(&reload("", Some(&third))).is_none());
    }
}
