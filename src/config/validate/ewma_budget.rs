//! A pool's `peak_ewma` settings (`ewma_decay`, `default_rtt`) and its `retry_budget`.

use std::time::Duration;

use toml::Spanned;

use super::checker::Checker;
use crate::config::defaults;
use crate::config::raw::{RawAlgorithm, RawPool, RawRetryBudget};
use crate::config::types::{EwmaConfig, RetryBudgetConfig};

/// Shortest `ewma_decay`: below it one sample is the whole estimate, which is no average.
const MIN_EWMA_DECAY: Duration = Duration::from_millis(10);
/// Longest `ewma_decay`: beyond it a slow backend keeps its reputation for far too long.
const MAX_EWMA_DECAY: Duration = Duration::from_secs(3600);
/// Longest `default_rtt`: a minute is slower than any backend worth balancing to.
const MAX_DEFAULT_RTT: Duration = Duration::from_secs(60);
/// Largest `retry_budget.percent`: ten retries per request is already more than `retries`
/// (at most 16) makes sensible.
const MAX_BUDGET_PERCENT: i64 = 1000;
/// Largest `retry_budget.min_per_second`.
const MAX_BUDGET_PER_SECOND: i64 = 1_000_000;

impl Checker<'_> {
    /// `ewma_decay` and `default_rtt`, with a warning when the algorithm does not use them.
    pub(super) fn ewma(&mut self, key: &str, raw: &RawPool) -> Option<EwmaConfig> {
        let peak_ewma = raw
            .algorithm
            .as_ref()
            .is_some_and(|a| *a.get_ref() == RawAlgorithm::PeakEwma);
        for (name, value) in [
            ("ewma_decay", &raw.ewma_decay),
            ("default_rtt", &raw.default_rtt),
        ] {
            if let Some(value) = value.as_ref().filter(|_| !peak_ewma) {
                self.warn(
                    value,
                    &format!("{key}.{name}"),
                    "only algorithm = \"peak_ewma\" uses it; ignored",
                );
            }
        }
        let decay = self.duration_within(
            raw.ewma_decay.as_ref(),
            &format!("{key}.ewma_decay"),
            defaults::EWMA_DECAY,
            (MIN_EWMA_DECAY, MAX_EWMA_DECAY),
        );
        let default_rtt = self.duration_within(
            raw.default_rtt.as_ref(),
            &format!("{key}.default_rtt"),
            defaults::DEFAULT_RTT,
            (Duration::from_nanos(1), MAX_DEFAULT_RTT),
        );
        Some(EwmaConfig {
            decay: decay?,
            default_rtt: default_rtt?,
        })
    }

    /// `retry_budget`, absent unless written (retries are then bounded by `retries` alone).
    pub(super) fn retry_budget(
        &mut self,
        key: &str,
        raw: Option<&Spanned<RawRetryBudget>>,
    ) -> Option<Option<RetryBudgetConfig>> {
        let Some(raw) = raw.map(Spanned::get_ref) else {
            return Some(None);
        };
        let mut count =
            |value: Option<&Spanned<i64>>, name: &str, default: u32, max: i64| match value {
                None => Some(default),
                Some(value) => self
                    .int_in(value, &format!("{key}.retry_budget.{name}"), 0, max)
                    .and_then(|n| u32::try_from(n).ok()),
            };
        let percent = count(
            raw.percent.as_ref(),
            "percent",
            defaults::RETRY_BUDGET_PERCENT,
            MAX_BUDGET_PERCENT,
        );
        let min_per_second = count(
            raw.min_per_second.as_ref(),
            "min_per_second",
            defaults::RETRY_BUDGET_MIN_PER_SECOND,
            MAX_BUDGET_PER_SECOND,
        );
        Some(Some(RetryBudgetConfig {
            percent: percent?,
            min_per_second: min_per_second?,
        }))
    }

    /// A duration from `bounds.0` to `bounds.1`, or `default` when absent.
    fn duration_within(
        &mut self,
        raw: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Option<Duration> {
        let duration = self.duration(raw, key, default)?;
        if let Some(raw) = raw.filter(|_| duration < min || duration > max) {
            self.report(
                raw,
                key,
                format!(
                    "{:?} is out of range (must be from {} to {})",
                    raw.get_ref(),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
            return None;
        }
        Some(duration)
    }
}
